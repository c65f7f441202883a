"""The options of export_model.py, and the parity rule its check enforces.

Declared apart from :mod:`.run`, whose exporters import torch and transformers: ``-h``, a mistyped flag and a
bad value answer before those imports.
"""
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import OptionError
from ..model.sources import resolve_model
from ..options import option
from ..text import NORMALIZERS
from .targets import FORMATS, plan_targets

# The parity rule: an unquantised export may differ from PyTorch by at most this WER on a set
# of at least this many utterances (smaller sets are reported, not enforced: one word moves WER a lot).
PARITY_MAX_WER_DELTA = 0.005
PARITY_MIN_UTTERANCES = 50


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`.run.export` does (one field per ``export_model.py`` flag)."""

    model: str = option(help="model to export: our output folder, a checkpoint-N, a LoRA adapter folder (merged into "
                        "its base model first) or a Hub id")
    output_dir: str = option(help="folder to create with the exports, the model card and export_report.json (built "
                             "in a temporary folder beside it, renamed into place at the end)")
    formats: Tuple[str, ...] = option(("ctranslate2",), f"one or more of {', '.join(FORMATS)}", flag="format",
                                      metavar="FORMAT")
    quantizations: Tuple[str, ...] = option(
        (), "how weights are stored; each value applies to every chosen format that accepts it (accepted values "
        "are listed below)",
        flag="quantization", metavar="Q", default_text="each format's unquantised default")
    overwrite: bool = option(False, "replace --output_dir when it exists (the old one is removed only once the new "
                             "one is complete)")
    verify_datasets: Tuple[str, ...] = option(
        (), "data_prep folders (custom_data/data_prep.py) or Hub dataset ids, decoded by every export's runtime and "
        "by PyTorch", metavar="DATASET", group="parity check", default_text="none: no check")
    verify_split: str = option("test", "split of Hub datasets in --verify_datasets", group="parity check")
    verify_config: Optional[str] = option(None, "configuration of Hub datasets in --verify_datasets",
                                          group="parity check")
    verify_language: Optional[str] = option(None, "language name or code to decode with", group="parity check",
                                            default_text="the model's saved language; English for .en models")
    verify_max_samples: Optional[int] = option(None, "check only the first N utterances of each dataset (quick "
                                               f"runs; parity is enforced on sets of at least "
                                               f"{PARITY_MIN_UTTERANCES})", group="parity check", default_text="all")
    verify_batch_size: int = option(16, "utterances decoded together by PyTorch and onnxruntime (faster-whisper and "
                                    "whisper.cpp take one clip at a time)", group="parity check")
    normalizer: Optional[str] = option(None, "text normaliser for WER/CER (indic: the former name of unicode)",
                                       choices=NORMALIZERS, group="parity check",
                                       default_text="english for English and .en models, unicode otherwise")


def check_values(options: ExportOptions):
    """Refuse, with one line, what no export could use: the formats and quantisations, the destination, the
    verification's numbers, a ``--model`` that is neither a Hub id nor a Whisper folder. Cheap: export_model.py
    runs it before importing torch; :func:`.run.export` again, with the packages each format needs. Returns the
    planned targets."""
    targets = plan_targets(options.formats, options.quantizations)
    out = os.path.abspath(options.output_dir)
    if os.path.exists(out) and not options.overwrite:
        raise OptionError("output_dir", options.output_dir, "already exists: pass --overwrite to replace it, or "
                          "choose another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OptionError("output_dir", options.output_dir, "is a file, not a folder")
    model = os.path.abspath(options.model)
    if model == out or model.startswith(out + os.sep):
        raise OptionError("output_dir", options.output_dir, "would replace the model being exported")
    if options.verify_max_samples is not None and options.verify_max_samples < 1:
        raise OptionError("verify_max_samples", options.verify_max_samples, "must be at least 1")
    if options.verify_batch_size < 1:
        raise OptionError("verify_batch_size", options.verify_batch_size, "must be at least 1")
    resolve_model(options.model, "model")
    return targets
