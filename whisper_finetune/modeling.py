"""Loading models and processors, language/task set-up, LoRA, learning-rate defaults.

A model is named by a Hub id, a local folder, a checkpoint written by our trainer (self-contained),
a bare ``transformers.Trainer`` checkpoint (processor files in its parent folder) or a LoRA adapter
folder (``adapter_config.json``; merged into its base model on load).
"""
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from .errors import UserError
from .text import language_code

logger = logging.getLogger(__name__)

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")

# Fine-tuning learning rates: the pre-training maximum (Whisper paper, table 1) divided by 40, as
# Jong Wook Kim recommends, keyed by (d_model, decoder layers) which identify each size.
PRETRAIN_MAX_LR = {
    (384, 4): ("tiny", 1.5e-3),
    (512, 6): ("base", 1e-3),
    (768, 12): ("small", 5e-4),
    (1024, 24): ("medium", 2.5e-4),
    (1280, 32): ("large", 1.75e-4),
}
LARGE_V2_MAX_LR = 2.0e-4  # large-v2 shares large's shape; recognised by name
FINE_TUNE_LR_DIVISOR = 40


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights and its processor live, and a short name for result files."""

    model_path: str
    processor_path: str
    name: str


def _looks_like_hub_id(name):
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "/", "~"))


def _has_processor(folder):
    return all(os.path.exists(os.path.join(folder, f)) for f in PROCESSOR_FILES)


def _has_weights(folder):
    return any(os.path.exists(os.path.join(folder, f)) for f in WEIGHT_FILES)


def _short_name(path):
    path = os.path.normpath(path)
    if os.path.isdir(path):
        parent, base = os.path.split(os.path.abspath(path))
        return f"{os.path.basename(parent)}_{base}" if base.startswith("checkpoint-") else base
    return path.replace("/", "_")


def resolve_model_source(is_public_repo=True, hf_model=None, ckpt_dir=None, temp_ckpt_folder=None):
    """Check the model flags and say where weights and processor are, before any long work starts.

    ``is_public_repo=True`` takes ``hf_model`` (Hub id or local folder); ``False`` takes ``ckpt_dir``.
    For a bare Trainer checkpoint without processor files the processor comes from its parent folder,
    or from ``temp_ckpt_folder`` when that holds one; the checkpoint itself is never modified.
    """
    if is_public_repo:
        if not hf_model:
            raise UserError("--is_public_repo True needs --hf_model (a Hub id or a local model folder)")
        if ckpt_dir:
            raise UserError("--ckpt_dir is only used with --is_public_repo False; with True pass --hf_model")
        if os.path.isdir(hf_model):
            if not _has_weights(hf_model) and not os.path.exists(os.path.join(hf_model, "config.json")):
                raise UserError(f"--hf_model {hf_model}: folder holds no model (no config.json or weights)")
            processor = hf_model if _has_processor(hf_model) else _adapter_base(hf_model) or hf_model
            return ModelSource(hf_model, processor, _short_name(hf_model))
        if not _looks_like_hub_id(hf_model):
            raise UserError(f"--hf_model {hf_model}: no such folder, and not a Hub id (owner/name)")
        return ModelSource(hf_model, hf_model, hf_model.replace("/", "_"))
    if not ckpt_dir:
        raise UserError("--is_public_repo False needs --ckpt_dir (a local checkpoint folder)")
    if hf_model:
        raise UserError("--hf_model is only used with --is_public_repo True; with False pass --ckpt_dir")
    if not os.path.isdir(ckpt_dir):
        raise UserError(f"--ckpt_dir {ckpt_dir}: no such folder")
    if not _has_weights(ckpt_dir):
        raise UserError(f"--ckpt_dir {ckpt_dir}: no model weights in it (looked for {', '.join(WEIGHT_FILES[:3])})")
    candidates = [ckpt_dir, os.path.dirname(os.path.abspath(ckpt_dir))]
    if temp_ckpt_folder:
        candidates.append(temp_ckpt_folder)
    adapter_base = _adapter_base(ckpt_dir)
    if adapter_base:
        candidates.append(adapter_base)
    for folder in candidates:
        if os.path.isdir(folder) and _has_processor(folder) or folder == adapter_base:
            return ModelSource(ckpt_dir, folder, _short_name(ckpt_dir))
    raise UserError(f"--ckpt_dir {ckpt_dir}: no processor files ({', '.join(PROCESSOR_FILES)}) in it or its parent "
                    f"folder; pass --temp_ckpt_folder pointing at a folder that has them")


def _adapter_base(folder):
    config = os.path.join(folder, "adapter_config.json")
    if not os.path.exists(config):
        return None
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")


def load_processor(path):
    """Load a ``WhisperProcessor`` (feature extractor + tokenizer); errors name the path."""
    try:
        return WhisperProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a Whisper processor from {path}: {str(exc).splitlines()[0]}") from exc


def load_model(path, device="cpu", dtype=torch.float32, attn_implementation="sdpa"):
    """Load a ``WhisperForConditionalGeneration`` in eval mode; LoRA adapter folders are merged."""
    base = _adapter_base(path) if os.path.isdir(path) else None
    try:
        if base:
            from peft import PeftModel

            model = WhisperForConditionalGeneration.from_pretrained(base, dtype=dtype,
                                                                    attn_implementation=attn_implementation)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
            saved = os.path.join(path, "generation_config.json")
            if os.path.exists(saved):
                from transformers import GenerationConfig

                model.generation_config = GenerationConfig.from_pretrained(path)
        else:
            model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype,
                                                                    attn_implementation=attn_implementation)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a Whisper model from {path}: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval()


def torch_device(device):
    """Map the ``--device`` flag (-1 = CPU, N = GPU N) to a ``torch.device``; error if GPU N is absent."""
    device = int(device)
    if device < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UserError(f"--device {device}: no such GPU ({available} visible); use --device -1 for CPU")
    return torch.device(f"cuda:{device}")


def is_english_only(generation_config):
    """True for English-only (``.en``) checkpoints, which take no language or task token."""
    return not getattr(generation_config, "is_multilingual", True) or not getattr(generation_config, "lang_to_id", None)


def resolve_language(language, generation_config, task="transcribe"):
    """Decide the language code to decode with; ``None`` means no language token.

    English-only models: ``None``/English give ``None`` (English with a warning that it is implied);
    any other language is an error. Multilingual models: the requested language, else the language
    saved in the generation config by our trainer, else ``None`` (Whisper detects it, with a warning).
    """
    code = language_code(language)
    if is_english_only(generation_config):
        if code not in (None, "en"):
            raise UserError(f"--language {language}: this model is English-only (.en) and cannot decode "
                            f"{language}; use a multilingual Whisper model")
        if code == "en":
            logger.info("English-only model: --language en is implied and no language token is used")
        if task == "translate":
            raise UserError("--task translate needs a multilingual model; this one is English-only")
        return None
    if code is None:
        saved = getattr(generation_config, "language", None)
        code = language_code(saved) if saved else None
        if code:
            logger.info("no --language given: using the model's saved language %r", code)
        else:
            logger.warning("no --language given and none saved with the model: Whisper will detect it per batch")
    return code


def set_language_and_task(model, language_code_, task="transcribe"):
    """Write language and task into the generation config, so generation and saved models agree.

    ``forced_decoder_ids`` is cleared: current transformers ignores it in favour of these fields.
    """
    config = model.generation_config
    if is_english_only(config):
        config.language = None
        config.task = None
    else:
        config.language = language_code_
        config.task = task
    config.forced_decoder_ids = None
    model.config.forced_decoder_ids = None
    return model


def decoder_prompt_ids(tokenizer, language_code_, task="transcribe", no_timestamps=True, english_only=False):
    """The token ids that start decoding: ``<|startoftranscript|>[<|lang|><|task|>][<|notimestamps|>]``."""
    tokens = ["<|startoftranscript|>"]
    if not english_only:
        if language_code_:
            tokens.append(f"<|{language_code_}|>")
        tokens.append(f"<|{task}|>")
    if no_timestamps:
        tokens.append("<|notimestamps|>")
    return tokenizer.convert_tokens_to_ids(tokens)


def default_learning_rate(config, model_name=""):
    """Pre-training maximum learning rate / 40 for the model's size (see the README table)."""
    key = (config.d_model, config.decoder_layers)
    if key not in PRETRAIN_MAX_LR:
        logger.warning("unknown Whisper size %s: using base's learning rate", key)
        key = (512, 6)
    size, peak = PRETRAIN_MAX_LR[key]
    if size == "large" and "large-v2" in str(model_name):
        peak = LARGE_V2_MAX_LR
    return peak / FINE_TUNE_LR_DIVISOR
