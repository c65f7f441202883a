"""Where a model is, from its name alone: a Hub id, or a local folder and what it holds.

A model is named by a Hub id, a local folder, a checkpoint written by our trainer (self-contained),
a bare ``transformers.Trainer`` checkpoint (processor files in its parent folder) or a LoRA adapter
folder (``adapter_config.json``; merged into its base model on load). Telling these apart needs only the
file system and a config file or two, so this module imports neither torch nor transformers: every script
runs :func:`resolve_model` right after parsing its flags, and a mistyped model path is refused at once.
"""
import json
import os
from dataclasses import dataclass

from ..errors import OptionError, UserError

PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer_config.json")
# transformers 5 saves the feature extractor inside processor_config.json; a folder with that file
# instead of preprocessor_config.json holds a processor too.
PROCESSOR_CONFIG_FILE = "processor_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights and its processor live, and a short name for result files."""

    model_path: str
    processor_path: str
    name: str


def looks_like_hub_id(name):
    """``owner/name`` or ``name``, not a path."""
    parts = name.split("/")
    return len(parts) <= 2 and all(parts) and not name.startswith((".", "/", "~"))


def _has_processor(folder):
    def has(name):
        return os.path.exists(os.path.join(folder, name))

    return has("tokenizer_config.json") and (has("preprocessor_config.json") or has(PROCESSOR_CONFIG_FILE))


def _has_weights(folder):
    return any(os.path.exists(os.path.join(folder, f)) for f in WEIGHT_FILES)


def _short_name(path):
    path = os.path.normpath(path)
    if os.path.isdir(path):
        parent, base = os.path.split(os.path.abspath(path))
        return f"{os.path.basename(parent)}_{base}" if base.startswith("checkpoint-") else base
    return path.replace("/", "_")


def resolve_model(name, option_name="model", temp_ckpt_folder=None):
    """Where the weights and the processor of ``name`` are: a Hub id, a model folder, our checkpoint, a bare
    Trainer checkpoint (processor from its parent or ``temp_ckpt_folder``) or a LoRA adapter folder.

    Errors name ``option_name``, the option that gave ``name``.
    """
    if not os.path.isdir(name):
        if os.path.exists(name) or not looks_like_hub_id(name):
            raise OptionError(option_name, name, "no such folder, and not a Hub id (owner/name)")
        return ModelSource(name, name, name.replace("/", "_"))
    check_whisper_folder(name, option_name)
    if not _has_weights(name):
        if os.path.exists(os.path.join(name, "config.json")):
            return ModelSource(name, name, _short_name(name))  # weights named otherwise: from_pretrained decides
        raise OptionError(option_name, name, f"folder holds no model (no config.json or weights: looked for "
                          f"{', '.join(WEIGHT_FILES[:3])})")
    base = adapter_base(name)
    candidates = [name, os.path.dirname(os.path.abspath(name))] + [f for f in (temp_ckpt_folder, base) if f]
    for folder in candidates:
        if folder == base or os.path.isdir(folder) and _has_processor(folder):
            return ModelSource(name, folder, _short_name(name))
    hint = "; pass --temp_ckpt_folder pointing at a folder that has them" if option_name == "ckpt_dir" else ""
    raise OptionError(option_name, name, f"no processor files ({', '.join(PROCESSOR_FILES)}) in it or its parent "
                      f"folder{hint}")


def resolve_model_source(is_public_repo=True, hf_model=None, ckpt_dir=None, temp_ckpt_folder=None):
    """Check the model flags and say where weights and processor are, before any long work starts.

    ``is_public_repo=True`` takes ``hf_model`` (Hub id or local folder); ``False`` takes ``ckpt_dir``
    (a local checkpoint; the checkpoint itself is never modified).
    """
    if is_public_repo:
        if not hf_model:
            raise UserError("--is_public_repo True needs --hf_model (a Hub id or a local model folder)")
        if ckpt_dir:
            raise UserError("--ckpt_dir is only used with --is_public_repo False; with True pass --hf_model")
        return resolve_model(hf_model, "hf_model")
    if not ckpt_dir:
        raise UserError("--is_public_repo False needs --ckpt_dir (a local checkpoint folder)")
    if hf_model:
        raise UserError("--hf_model is only used with --is_public_repo True; with False pass --ckpt_dir")
    if not os.path.isdir(ckpt_dir):
        raise OptionError("ckpt_dir", ckpt_dir, "no such folder")
    return resolve_model(ckpt_dir, "ckpt_dir", temp_ckpt_folder)


def adapter_base(folder):
    """The base model a LoRA adapter folder names (``None`` for a folder that is not an adapter)."""
    config = os.path.join(folder, "adapter_config.json")
    if not os.path.exists(config):
        return None
    with open(config, encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")


def check_whisper_folder(folder, option_name):
    """Refuse a model folder whose ``config.json`` (a LoRA adapter's: its base's) names another architecture.

    A folder without the file passes: what it holds is for the loader to find out.
    """
    base = adapter_base(folder)
    config_path = os.path.join(base if base and os.path.isdir(base) else folder, "config.json")
    if not os.path.exists(config_path):
        return
    try:
        with open(config_path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (ValueError, AttributeError) as exc:  # not JSON, or JSON that is no object
        raise OptionError(option_name, folder, f"its config.json is not a model config ({exc})") from exc
    if model_type != "whisper":
        raise OptionError(option_name, folder, f"not a Whisper model: its config.json says model_type "
                          f"{model_type!r}, expected 'whisper'")


def check_trainable_model(name, option_name="model_name"):
    """What training starts from: a Hub id, or a local Whisper folder with its ``config.json``."""
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise OptionError(option_name, name, "folder holds no model (no config.json)")
        check_whisper_folder(name, option_name)
    elif not looks_like_hub_id(name):
        raise OptionError(option_name, name, "no such folder, and not a Hub id (owner/name)")
