"""Which model a script loads, and on which device: the model flags every evaluator and transcriber shares.

Kept apart from :mod:`.loading` (torch, transformers) so that a script's ``-h`` and its option errors come
before any of those heavy imports.
"""
import argparse
from dataclasses import dataclass
from typing import Optional, Union

from ..options import option


def parse_device(value):
    """``--device``: an integer (-1 CPU, N GPU N) or ``all``."""
    if str(value).strip().lower() == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected -1 (CPU), a GPU number or all, got {value!r}") from None


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Which model to load and for what language/device: the model flags of every evaluator and transcriber."""

    is_public_repo: bool = option(True, "True: load --hf_model (Hub id or local folder); False: load --ckpt_dir",
                                  group="model")
    hf_model: Optional[str] = option(None, "Hub id or local model folder (with --is_public_repo True)", group="model")
    ckpt_dir: Optional[str] = option(None, "local checkpoint folder, e.g. op_dir/checkpoint-394 (with "
                                     "--is_public_repo False)", group="model")
    temp_ckpt_folder: Optional[str] = option(None, "folder holding the processor files for a bare Trainer checkpoint "
                                             "that lacks them (by default they are taken from the checkpoint's "
                                             "parent folder); never modified", group="model")
    language: Optional[str] = option(None, "language name or code (hindi, hi); omitted: the language saved with a "
                                     "fine-tuned model, else detected. English-only models accept only English",
                                     group="model")
    device: Union[int, str] = option(-1, "-1 for CPU, N for GPU N (JAX also takes all: every local accelerator)",
                                     parse=parse_device, group="model")
