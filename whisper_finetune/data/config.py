"""The options of custom_data/data_prep.py, and the checks that need no corpus.

Declared apart from :mod:`.corpus`, which imports datasets: ``-h``, a mistyped flag and a bad value answer
before that import.
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..audio import SAMPLE_RATE
from ..errors import OptionError, UserError
from ..options import option
from .formats import FORMATS
from .schema import MAX_SECONDS


@dataclass(frozen=True)
class DataPrepConfig:
    """Options of :func:`prepare_dataset` (one per data_prep.py flag)."""

    source_data_dir: str = option(help="folder holding the corpus: `text` and `audio_paths` (or Kaldi's `wav.scp` + "
                                       "`segments`), or a Common Voice release, audiofolder, NeMo or Lhotse corpus")
    output_data_dir: str = option(help="folder to write the dataset to (must not exist unless --overwrite True)")
    sampling_rate: int = option(SAMPLE_RATE, "resample all audio to this rate (Hz)")
    num_proc: int = option(1, "processes decoding audio in parallel")
    skip_invalid: bool = option(False, "drop invalid utterances (and list them) instead of stopping")
    overwrite: bool = option(False, "replace an existing --output_data_dir")
    num_shards: Optional[int] = option(None, "write the dataset in this many Arrow shards (large corpora; training "
                                       "reads them memory-mapped)")
    max_shard_size: Optional[str] = option(None, "or: maximum size of one shard, e.g. 500MB")
    format: Optional[str] = option(None, "how the source folder is laid out", choices=FORMATS,
                                   default_text="detected from the folder's files")
    split: Optional[Tuple[str, ...]] = option(None, "common_voice: the release's .tsv file(s) to read, e.g. train dev",
                                              default_text="train")
    manifest: Optional[Tuple[str, ...]] = option(None, "nemo: the JSON-lines manifest(s); lhotse: a cuts manifest, or "
                                                 "a recordings and a supervisions manifest (absolute, or relative to "
                                                 "--source_data_dir)", default_text="the only one(s) in the folder")
    text_column: Optional[str] = option(None, "audiofolder: the metadata column holding the transcription",
                                        default_text="the one of transcription, sentence, text")
    max_duration: float = option(MAX_SECONDS, "longest clip kept, seconds (Whisper's window)", cli=False)


def check_values(config: DataPrepConfig):
    """Refuse, with one line, a source that is not a folder, an output that would be replaced without
    ``--overwrite`` and a rate no audio has. Cheap: data_prep.py runs it before importing datasets,
    :func:`.corpus.prepare_dataset` again."""
    if not os.path.isdir(config.source_data_dir):
        raise OptionError("source_data_dir", config.source_data_dir, "no such folder")
    if os.path.exists(os.path.abspath(config.output_data_dir)) and not config.overwrite:
        raise UserError(f"--output_data_dir {config.output_data_dir} already exists; pass --overwrite to replace it")
    if config.sampling_rate <= 0:
        raise OptionError("sampling_rate", config.sampling_rate, "must be a positive number of Hz")
