"""The options of the evaluator scripts (PyTorch, CTranslate2 and JAX; custom and Hugging Face datasets)
and of the report page (evaluate/report.py).

Declared apart from :mod:`.evaluation` and :mod:`.report`, which import torch, transformers, datasets and
jiwer: a script's ``-h`` and its option errors come before those imports.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from ..data.bad_audio import check_limit, max_bad_examples_option
from ..data.schema import AUDIO_COLUMN, DatasetSpec, check_dataset_folder
from ..decode.options import DecodingOptions, validate_options
from ..errors import OptionError, UserError
from ..model.options import ModelOptions
from ..model.sources import resolve_model_source
from ..options import option
from ..text import METRICS, NORMALIZERS

DEFAULT_MAX_EMBEDDED_AUDIO_MB = 50.0  # --max_embedded_audio_mb: megabytes of audio the report page embeds


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelOptions):
    """Everything an evaluator script passes to :func:`.evaluation.evaluate`: the model options plus one field per
    data, scoring and decoding flag."""

    output_dir: str = option(help="folder for the result files (one .txt and one .json per dataset)",
                             group="data and results")
    eval_datasets: Tuple[str, ...] = option((), "one or more data_prep output folders (custom_data/data_prep.py)",
                                            group="data and results")
    dataset: Optional[str] = option(None, "Hub dataset id (google/fleurs) or a local dataset folder (save_to_disk "
                                    "output or a folder load_dataset reads)", group="data and results")
    config: Optional[str] = option(None, "dataset configuration, e.g. gu_in", group="data and results")
    split: str = option("test", "dataset split", group="data and results")
    text_column: Optional[str] = option(None, "column holding the transcription", group="data and results",
                                        default_text="the first of sentence, text, transcription, transcript, ...")
    audio_column: str = option(AUDIO_COLUMN, "column holding the audio", group="data and results")
    normalizer: Optional[str] = option(None, "text normaliser for WER/CER (indic: the former name of unicode)",
                                       choices=NORMALIZERS, group="data and results",
                                       default_text="english for English and .en models, unicode otherwise")
    primary_metric: Optional[str] = option(None, "the metric reported first and meant to be read", choices=METRICS,
                                           group="data and results",
                                           default_text="cer for zh, ja, th, lo, my, yue, km, bo (no spaces "
                                                        "between words), wer otherwise")
    max_samples: Optional[int] = option(None, "evaluate only the first N utterances of each dataset (quick runs)",
                                        group="data and results", default_text="all")
    num_workers: int = option(2, "DataLoader workers decoding and featurising audio while the model runs (0: in the "
                              "main process)", group="data and results")
    max_bad_examples: int = max_bad_examples_option()
    decoding: DecodingOptions = DecodingOptions()
    custom: bool = option(False, "data_prep folders (eval_datasets) or a Hugging Face dataset (dataset)", cli=False)
    result_marker: Optional[str] = option(None, "added to result file names, e.g. jax", cli=False)

    def dataset_specs(self):
        """The datasets to evaluate, as :class:`DatasetSpec`."""
        if self.custom:
            return tuple(DatasetSpec(name=path, split=None) for path in self.eval_datasets)
        if self.dataset is None:
            return ()
        return (DatasetSpec(name=self.dataset, config=self.config, split=self.split, text_column=self.text_column,
                            audio_column=self.audio_column),)


def check_values(config: EvalConfig):
    """Refuse, with one line, option values no evaluation could use (the decoding options included), and a model
    or dataset folder that is not there: the checks that need neither the libraries nor the model's or the data's
    contents. Cheap: the scripts run it before importing torch."""
    if not config.dataset_specs():
        raise UserError("--eval_datasets: give at least one dataset" if config.custom else "--dataset: give a dataset")
    if config.max_samples is not None and config.max_samples < 1:
        raise OptionError("max_samples", config.max_samples, "must be at least 1")
    if config.num_workers < 0:
        raise OptionError("num_workers", config.num_workers, "must be 0 or more")
    check_limit(config.max_bad_examples)
    validate_options(config.decoding)
    resolve_model_source(config.is_public_repo, config.hf_model, config.ckpt_dir, config.temp_ckpt_folder)
    if config.custom:
        for spec in config.dataset_specs():
            check_dataset_folder(spec.name)


@dataclass(frozen=True)
class ReportConfig:
    """The options of evaluate/report.py."""

    results: Tuple[str, ...] = option(help="evaluator output folders (every <model>__<dataset>.json with its .txt "
                                      "in them) or single result .json files; the first one given is the baseline "
                                      "of comparisons", positional=True, metavar="RESULT_DIR_OR_JSON")
    output: str = option(help="the HTML page to write (replaced if it exists)")
    max_embedded_audio_mb: float = option(DEFAULT_MAX_EMBEDDED_AUDIO_MB, "megabytes of audio embedded in the page; "
                                          "clips beyond it are linked instead (0: link every clip)")
    title: str = option("Whisper evaluation report", "the page's title")


def check_report_values(config: ReportConfig):
    """Refuse, with one line, a value no report could use; evaluate/report.py runs it before importing jiwer,
    :func:`.report.build_report` checks the budget again."""
    if config.max_embedded_audio_mb < 0:
        raise OptionError("max_embedded_audio_mb", config.max_embedded_audio_mb, "must be 0 or more")
