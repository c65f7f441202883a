"""The one schema every dataset is read into: its column names, what one dataset to read is, and what a
data_prep folder holds.

:mod:`.loading` brings datasets of every kind to these columns; they are declared here, apart from it
(it imports datasets), because the option dataclasses name them, and the scripts check their dataset folders,
before those imports: a script's ``-h`` or a mistyped folder must not wait for them.
"""
import os
from dataclasses import dataclass
from typing import Optional

from ..audio import CHUNK_SECONDS
from ..errors import UserError

AUDIO_COLUMN = "audio"
TEXT_COLUMN = "sentence"
ID_COLUMN = "id"
DURATION_COLUMN = "duration"
SPEAKER_COLUMN = "speaker"  # only when the source folder has a utt2spk file
# Only for rows cut from long recordings (a Kaldi ``segments`` file): which recording, and where in it
# (seconds); timestamp training packs such rows back into windows of their recording.
RECORDING_COLUMN = "recording_id"
START_COLUMN = "start"
END_COLUMN = "end"
SEGMENT_COLUMNS = (RECORDING_COLUMN, START_COLUMN, END_COLUMN)
# Optional: the example's language (a Whisper code or name; data_prep writes codes), which training puts
# into the example's labels as its language token; rows without one take the run's --language.
LANGUAGE_COLUMN = "language"
# Looked for, in this order, when a dataset's text column is not given.
TEXT_COLUMN_CANDIDATES = ("sentence", "text", "transcription", "transcript", "raw_transcription",
                          "normalized_text", "raw_text")
ID_COLUMN_CANDIDATES = ("id", "utt_id", "utterance_id", "audio_id", "segment_id", "path", "file")
MAX_SECONDS = CHUNK_SECONDS  # longer clips do not fit Whisper's window


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to read: a Hub id or local folder, with config, split and column names."""

    name: str
    config: Optional[str] = None
    split: str = "train"
    text_column: Optional[str] = None
    audio_column: str = AUDIO_COLUMN

    @property
    def label(self):
        """A short human-readable name: ``name[/config][/split]``."""
        parts = [self.name.rstrip("/")] + [p for p in (self.config, self.split) if p]
        return "/".join(parts)


def is_saved_dataset(path):
    """True when ``path`` is a ``save_to_disk`` folder (data_prep output)."""
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, "dataset_info.json"))
                                    or os.path.exists(os.path.join(path, "dataset_dict.json")))


def check_dataset_folder(path):
    """Refuse, with one line, a dataset folder that is not there or that data_prep did not write."""
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such dataset folder (make one with custom_data/data_prep.py)")
    if not is_saved_dataset(path):
        raise UserError(f"{path}: not a data_prep dataset (no dataset_info.json); make one with "
                        f"custom_data/data_prep.py")
