"""Loading models and processors, language/task set-up, LoRA, learning-rate defaults.

Which folder or Hub id a model name stands for is settled first, by :mod:`.sources` (no torch needed); a LoRA
adapter folder is merged into its base model on load.
"""
import logging
import os
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

from ..errors import OptionError, UserError
from .options import ModelOptions
from .sources import ModelSource, adapter_base, resolve_model_source
from ..text import language_code

logger = logging.getLogger(__name__)

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


def save_processor(processor, folder):
    """``processor.save_pretrained(folder)`` plus the feature extractor's own ``preprocessor_config.json``.

    transformers 5 writes the feature extractor only inside ``processor_config.json``; CTranslate2's
    converter, faster-whisper (the mel count of 128-mel models) and transformers 4 read it from
    ``preprocessor_config.json``, so every folder we write carries both.
    """
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)


def generation_config_of(source: ModelSource):
    """The model's ``GenerationConfig`` (from a LoRA adapter's base when the adapter folder has none)."""
    try:
        return GenerationConfig.from_pretrained(source.model_path)
    except OSError:
        base = adapter_base(source.model_path) if os.path.isdir(source.model_path) else None
        if base:
            return GenerationConfig.from_pretrained(base)
        raise UserError(f"cannot read a generation config from {source.model_path}")


@dataclass(frozen=True)
class PreparedModel:
    """A model resolved once for decoding: where it is, its processor and generation config, and the
    decoding options with the language settled against it. Every decoder takes one."""

    source: ModelSource
    processor: WhisperProcessor
    generation_config: GenerationConfig
    options: "DecodingOptions"  # noqa: F821 (decoding imports this module)
    english_only: bool

    @property
    def prompt_ids(self):
        """``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>`` for these options."""
        return decoder_prompt_ids(self.processor.tokenizer, self.options.language, self.options.task,
                                  no_timestamps=True, english_only=self.english_only)

    @property
    def prompt_text(self):
        """The prompt as its tokens joined, for result files."""
        return "".join(self.processor.tokenizer.convert_ids_to_tokens(self.prompt_ids))


def prepare_model(model: ModelOptions, options) -> PreparedModel:
    """Check the model options, load the processor and settle the language for this model (no weights loaded)."""
    source = resolve_model_source(model.is_public_repo, model.hf_model, model.ckpt_dir, model.temp_ckpt_folder)
    return prepare_source(source, model.language, options)


def prepare_source(source: ModelSource, language, options) -> PreparedModel:
    """:func:`prepare_model` for a model already located (tools that take one ``--model`` value)."""
    processor = load_processor(source.processor_path)
    generation_config = generation_config_of(source)
    code = resolve_language(language, generation_config, options.task)
    return PreparedModel(source, processor, generation_config, replace(options, language=code),
                         is_english_only(generation_config))


def load_processor(path):
    """Load a ``WhisperProcessor`` (feature extractor + tokenizer); errors name the path."""
    try:
        return WhisperProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a Whisper processor from {path}: {str(exc).splitlines()[0]}") from exc


def load_model(path, device="cpu", dtype=torch.float32, attn_implementation="sdpa"):
    """Load a ``WhisperForConditionalGeneration`` in eval mode; LoRA adapter folders are merged."""
    base = adapter_base(path) if os.path.isdir(path) else None
    try:
        if base:
            from peft import PeftModel

            model = WhisperForConditionalGeneration.from_pretrained(base, dtype=dtype,
                                                                    attn_implementation=attn_implementation)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
            saved = os.path.join(path, "generation_config.json")
            if os.path.exists(saved):
                model.generation_config = GenerationConfig.from_pretrained(path)
        else:
            model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype,
                                                                    attn_implementation=attn_implementation)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load a Whisper model from {path}: {str(exc).splitlines()[0]}") from exc
    return model.to(device).eval()


def skip_language_detection(model):
    """Keep ``generate`` from detecting a language on an English-only model: transformers runs language
    detection whenever its generation config has ``lang_to_id``, even when it is None."""
    if hasattr(model.generation_config, "lang_to_id"):
        del model.generation_config.lang_to_id


def narrow_positions_for_short_inputs(encoder):
    """Let transformers' ``WhisperEncoder`` run on fewer than 3000 log-mel frames (a dynamic audio context).

    transformers refuses any other length and adds all 1500 positional embeddings. For a shorter input
    the first ``frames / 2`` positions are used, as whisper.cpp's ``audio_ctx`` does: a forward pre-hook
    narrows ``embed_positions`` (a view of the same frozen sinusoids) and ``config.max_source_positions``
    for the call, and a forward hook restores both, also when the call fails. The 30 s path is
    transformers' own, untouched, and the saved model stays a plain Whisper checkpoint.
    """
    stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
    full, full_positions = encoder.embed_positions, encoder.config.max_source_positions

    def narrow(module, args, kwargs):
        features = args[0] if args else kwargs["input_features"]  # (batch, n_mels, frames)
        positions = features.shape[-1] // stride
        if positions == full.num_embeddings or features.shape[-1] % stride:
            return None  # 30 s (or a length transformers reports as wrong)
        module.embed_positions = nn.Embedding.from_pretrained(full.weight[:positions], freeze=True)
        module.config.max_source_positions = positions
        return None

    def restore(module, args, kwargs, output):
        module.embed_positions, module.config.max_source_positions = full, full_positions
        return None

    encoder.register_forward_pre_hook(narrow, with_kwargs=True)
    encoder.register_forward_hook(restore, with_kwargs=True, always_call=True)


def enable_dynamic_audio_context(model):
    """Let ``model`` (a ``WhisperForConditionalGeneration``) encode and decode inputs shorter than 30 s.

    Whisper's ``generate`` pads every input back to 3000 frames (with zeros, not the log-mel of
    silence), so on this model instance inputs shorter than that are encoded first and handed to
    ``generate`` as ``encoder_outputs``; the Trainer's evaluation and our decoders both go through it.
    """
    narrow_positions_for_short_inputs(model.model.encoder)
    generate = model.generate
    full_frames = model.config.max_source_positions * model.model.encoder.conv1.stride[0] * \
        model.model.encoder.conv2.stride[0]

    def generate_on_own_length(input_features=None, **kwargs):
        if input_features is None or input_features.shape[-1] >= full_frames or "encoder_outputs" in kwargs:
            return generate(input_features, **kwargs)
        with torch.no_grad():
            kwargs["encoder_outputs"] = model.model.encoder(input_features)  # (batch, frames / 2, d_model)
        return generate(**kwargs)

    model.generate = generate_on_own_length
    return model


def torch_device(device):
    """Map the ``--device`` flag (-1 = CPU, N = GPU N) to a ``torch.device``; error if GPU N is absent."""
    device = int(device)
    if device < 0:
        return torch.device("cpu")
    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise OptionError("device", device, f"no such GPU ({available} visible); use --device -1 for CPU")
    return torch.device(f"cuda:{device}")


def decoding_device(device, backend):
    """The ``--device`` value for ``backend``: a ``torch.device`` for pytorch/ctranslate2, unchanged for JAX."""
    if backend == "jax":
        return device
    if str(device).strip().lower() == "all":
        raise UserError(f"--device all is only for --backend jax; with {backend} use -1 (CPU) or a GPU number")
    return torch_device(device)


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
    single_eos(config)
    return model


def load_for_training(model_name, language_code_, task="transcribe", dynamic_audio_context=False):
    """The base model as a training run starts from it, before anything is made trainable: sdpa attention,
    the run's language and task tokens and, with ``dynamic_audio_context``, the short-context encoder.
    The fine-tune and its distillation teacher both start here, so they see every batch alike."""
    model = WhisperForConditionalGeneration.from_pretrained(model_name, attn_implementation="sdpa")
    set_language_and_task(model, language_code_, task)
    if dynamic_audio_context:
        enable_dynamic_audio_context(model)
    return model


def single_eos(generation_config):
    """Make ``eos_token_id`` one id again where a list of one was saved.

    ``generate`` during the Trainer's evaluation leaves ``[50256]`` in the generation config that our
    checkpoints save; transformers' Whisper timestamp processor (long-form decoding on timestamps)
    slices logits with it and fails on a list.
    """
    eos = generation_config.eos_token_id
    if isinstance(eos, (list, tuple)) and len(eos) == 1:
        generation_config.eos_token_id = int(eos[0])
    return generation_config


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
    """Pre-training maximum learning rate / 40 for the model's size (see docs/training.md)."""
    key = (config.d_model, config.decoder_layers)
    if key not in PRETRAIN_MAX_LR:
        logger.warning("unknown Whisper size %s: using base's learning rate", key)
        key = (512, 6)
    size, peak = PRETRAIN_MAX_LR[key]
    if size == "large" and "large-v2" in str(model_name):
        peak = LARGE_V2_MAX_LR
    return peak / FINE_TUNE_LR_DIVISOR
