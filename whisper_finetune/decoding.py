"""Batched decoding of 30 s log-mel windows behind one interface: PyTorch, CTranslate2, JAX.

Every backend gets the decoder prompt ``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>``
explicitly (built by :func:`whisper_finetune.modeling.decoder_prompt_ids`): the language the user
asks for is the language decoded, whatever ``forced_decoder_ids`` a checkpoint carries.
CTranslate2 and JAX are imported only when asked for.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch

from . import checkpoints, modeling
from .errors import OptionError, UserError
from .features import AudioContext
from .modeling import PreparedModel
from .options import option

logger = logging.getLogger(__name__)

BACKENDS = ("pytorch", "ctranslate2", "jax")
AUDIO_CONTEXTS = ("full", "dynamic")
TASKS = ("transcribe", "translate")
TORCH_COMPUTE_TYPES = {"default": None, "float32": torch.float32, "float16": torch.float16,
                       "bfloat16": torch.bfloat16}
CT2_COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                     "float16", "bfloat16", "float32")
MAX_TARGET_POSITIONS = 448  # Whisper's decoder length: prompt + generated tokens must fit
CT2_CACHE_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "whisper-finetune", "ct2")
CT2_STAMP_FILE = "whisper_finetune_stamp.json"


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode (the decoding flags of every evaluator and transcriber); written into result files."""

    language: Optional[str] = option(None, "Whisper code, settled against the model by modeling.prepare_model",
                                     cli=False)
    task: str = option("transcribe", "transcribe, or translate to English (multilingual models only)",
                       choices=TASKS, group="decoding")
    num_beams: int = option(1, "beam size (1 = greedy)", group="decoding")
    max_new_tokens: int = option(128, "most tokens generated per 30 s window", group="decoding")
    batch_size: int = option(16, "utterances (or 30 s windows) decoded together", group="decoding")
    backend: str = option("pytorch", "pytorch (transformers generate), ctranslate2 (converted once, cached beside "
                          "the checkpoint) or jax", choices=BACKENDS, group="decoding")
    compute_type: str = option("default", "pytorch: float32, float16 or bfloat16 (default: float16 on GPU, float32 on "
                               "CPU); ctranslate2: int8, int8_float16, float16, bfloat16, float32, ...",
                               group="decoding")
    half_precision: bool = option(False, "jax: compute in bfloat16", group="decoding")
    audio_context: str = option("full", "full: every batch padded to Whisper's 30 s window; dynamic: cut to the "
                                "batch's longest clip rounded up to --audio_context_bucket_seconds (pytorch "
                                "and ctranslate2 backends; faster on short clips, for models fine-tuned with "
                                "--dynamic_audio_context: stock models lose accuracy)", choices=AUDIO_CONTEXTS,
                                group="decoding")
    context: AudioContext = AudioContext()

    def context_frames(self, seconds):
        """Log-mel frames to decode a batch whose longest clip lasts ``seconds`` (``None``: all 3000)."""
        return self.context.frames(seconds) if self.audio_context == "dynamic" else None


class Decoder(Protocol):
    """A loaded model that turns batches of log-mel windows into text."""

    options: DecodingOptions
    compile_seconds: float  # 0 for eager backends
    fork_safe: bool  # False: data-loader workers must not be forked after it loaded (its runtime has threads)

    def decode(self, features: np.ndarray) -> list:
        """``features`` (batch, n_mels, 3000) float32 log-mel -> one plain text per row."""


def validate_options(options: DecodingOptions):
    """Check option values before any model is loaded; errors name the flag and list accepted values."""
    if options.backend not in BACKENDS:
        raise OptionError("backend", options.backend, f"choose one of {', '.join(BACKENDS)}")
    if options.task not in TASKS:
        raise OptionError("task", options.task, f"choose one of {', '.join(TASKS)}")
    if options.num_beams < 1:
        raise OptionError("num_beams", options.num_beams, "must be 1 (greedy) or more")
    if options.batch_size < 1:
        raise OptionError("batch_size", options.batch_size, "must be at least 1")
    if not 1 <= options.max_new_tokens <= MAX_TARGET_POSITIONS - 4:
        raise OptionError("max_new_tokens", options.max_new_tokens, f"must be between 1 and {MAX_TARGET_POSITIONS - 4}")
    if options.audio_context not in AUDIO_CONTEXTS:
        raise OptionError("audio_context", options.audio_context, f"choose one of {', '.join(AUDIO_CONTEXTS)}")
    if options.audio_context == "dynamic" and options.backend == "jax":
        raise OptionError("audio_context", "dynamic", "needs --backend pytorch or ctranslate2 (the JAX decoder is "
                          "compiled for one input shape, 30 s)")
    options.context.check()
    allowed = CT2_COMPUTE_TYPES if options.backend == "ctranslate2" else tuple(TORCH_COMPUTE_TYPES)
    if options.backend != "jax" and options.compute_type not in allowed:
        raise UserError(f"--compute_type {options.compute_type} is not valid with --backend {options.backend}: "
                        f"choose one of {', '.join(allowed)}")


class PreparedDecoder:
    """What every backend keeps of the :class:`PreparedModel` it was built from."""

    compile_seconds = 0.0  # eager backends compile nothing
    fork_safe = True

    def __init__(self, prepared: PreparedModel):
        self.prepared = prepared
        self.options = prepared.options
        self.processor = prepared.processor
        self.english_only = prepared.english_only
        self.prompt_ids = prepared.prompt_ids


class TorchDecoder(PreparedDecoder):
    """transformers ``generate`` (SDPA attention, inference mode) with language and task passed explicitly."""

    def __init__(self, prepared: PreparedModel, device="cpu"):
        super().__init__(prepared)
        options = self.options
        self.device = torch.device(device)
        dtype = TORCH_COMPUTE_TYPES[options.compute_type]
        if dtype is None:  # fp16 on GPU is the usual fast choice; CPU stays float32
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.model = modeling.load_model(prepared.source.model_path, self.device, dtype=dtype)
        modeling.set_language_and_task(self.model, options.language, options.task)
        if options.audio_context == "dynamic":
            modeling.enable_dynamic_audio_context(self.model)
        if self.english_only and hasattr(self.model.generation_config, "lang_to_id"):
            # transformers runs language detection whenever this attribute exists, even when it is None
            del self.model.generation_config.lang_to_id

    def generate_kwargs(self):
        """Arguments to ``generate``: the prompt's language and task given explicitly (not via config)."""
        kwargs = {"max_new_tokens": self.options.max_new_tokens, "num_beams": self.options.num_beams,
                  "return_timestamps": False}
        if not self.english_only:
            kwargs.update(language=self.options.language, task=self.options.task)
        return kwargs

    @torch.inference_mode()
    def decode(self, features):
        inputs = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)  # (B, n_mels, frames)
        tokens = self.model.generate(inputs, **self.generate_kwargs())  # (B, generated) prompt stripped
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]


def _weights_stamp(model_path):
    """Identify a checkpoint's weights by file name, size and mtime (cheap; changes when re-saved)."""
    entries = []
    for name in sorted(os.listdir(model_path)):
        full = os.path.join(model_path, name)
        if os.path.isfile(full) and (name in modeling.WEIGHT_FILES or name.endswith((".safetensors", ".bin"))
                                     or name in ("config.json", "generation_config.json")):
            stat = os.stat(full)
            entries.append([name, stat.st_size, int(stat.st_mtime_ns)])
    return entries


def ct2_cache_dir(model_path):
    """Where the converted model lives: ``<checkpoint>.ct2`` beside a local checkpoint when its parent is
    writable, else ``~/.cache/whisper-finetune/ct2/<hash>`` (Hub ids, read-only folders)."""
    if os.path.isdir(model_path):
        absolute = os.path.abspath(model_path).rstrip("/")
        if os.access(os.path.dirname(absolute), os.W_OK):
            return absolute + ".ct2"
        key = absolute
    else:
        key = model_path
    return os.path.join(CT2_CACHE_ROOT, hashlib.sha256(key.encode()).hexdigest()[:16])


def convert_to_ct2(model_path, cache_dir=None, quantization=None, copy_files=()):
    """Convert a checkpoint with CTranslate2's ``TransformersConverter`` once; reuse it while the stamp matches.

    The stamp holds the weights' names/sizes/mtimes and the ctranslate2 version; a re-saved checkpoint
    is converted again. The conversion is written to a temporary folder and renamed into place. LoRA
    adapter folders are merged into their base model first. ``quantization`` (int8, float16, ...; None
    keeps the checkpoint's float32) is how the weights are stored; ``copy_files`` are copied from the
    checkpoint folder when present (export: tokenizer.json, preprocessor_config.json). Returns the
    converted folder.
    """
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    cache_dir = cache_dir or ct2_cache_dir(model_path)
    stamp = {"source": os.path.abspath(model_path) if os.path.isdir(model_path) else model_path,
             "weights": _weights_stamp(model_path) if os.path.isdir(model_path) else None,
             "ctranslate2": ctranslate2.__version__}
    if quantization or copy_files:  # only then, so that existing caches keep matching their stamp
        stamp.update(quantization=quantization, copy_files=list(copy_files))
    stamp_path = os.path.join(cache_dir, CT2_STAMP_FILE)
    if os.path.exists(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                logger.info("using the CTranslate2 conversion in %s", cache_dir)
                return cache_dir
        logger.info("checkpoint changed since its CTranslate2 conversion: converting again")
    parent = os.path.dirname(cache_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".ct2-tmp-", dir=parent)
    try:
        source = model_path
        if os.path.isdir(model_path) and modeling.adapter_base(model_path):
            source = os.path.join(work, "merged")
            modeling.load_model(model_path).save_pretrained(source)
        start = time.perf_counter()
        out = os.path.join(work, "ct2")
        present = [f for f in copy_files if os.path.exists(os.path.join(source, f))]
        TransformersConverter(source, copy_files=present or None).convert(out, quantization=quantization, force=True)
        with open(os.path.join(out, CT2_STAMP_FILE), "w", encoding="utf-8") as f:
            json.dump(stamp, f)
        checkpoints.publish_dir(out, cache_dir)  # an older conversion is renamed aside, never half-deleted
        logger.info("converted %s to CTranslate2 in %.1f s -> %s", model_path, time.perf_counter() - start, cache_dir)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"cannot convert {model_path} to CTranslate2: {str(exc).splitlines()[0]}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cache_dir


class CT2Decoder(PreparedDecoder):
    """CTranslate2's Whisper ``generate`` on a converted copy of the checkpoint, in batches."""

    def __init__(self, prepared: PreparedModel, device="cpu"):
        import ctranslate2

        super().__init__(prepared)
        options = self.options
        device = torch.device(device)
        self.model_dir = convert_to_ct2(prepared.source.model_path)
        compute_type = "default" if options.compute_type in ("default", "auto") else options.compute_type
        try:
            self.model = ctranslate2.models.Whisper(
                self.model_dir, device="cuda" if device.type == "cuda" else "cpu",
                device_index=device.index or 0, compute_type=compute_type,
                intra_threads=0 if device.type == "cuda" else (torch.get_num_threads() or 0))
        except ValueError as exc:  # e.g. a compute type the device does not support
            raise OptionError("compute_type", options.compute_type, str(exc)) from exc
        if 2 * options.max_new_tokens > MAX_TARGET_POSITIONS:
            logger.warning("--max_new_tokens %d: CTranslate2 generates at most %d tokens per window",
                           options.max_new_tokens, MAX_TARGET_POSITIONS // 2)

    def decode(self, features):
        import ctranslate2

        batch = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
        # CTranslate2's Whisper halves max_length (like openai-whisper's sample_len = n_text_ctx // 2),
        # so 2 x max_new_tokens gives max_new_tokens generated tokens; at most 224.
        max_length = min(MAX_TARGET_POSITIONS, 2 * self.options.max_new_tokens)
        results = self.model.generate(batch, [list(self.prompt_ids)] * len(features), beam_size=self.options.num_beams,
                                      max_length=max_length)
        texts = self.processor.batch_decode([r.sequences_ids[0] for r in results], skip_special_tokens=True)
        return [t.strip() for t in texts]


def make_decoder(prepared: PreparedModel, device="cpu") -> Decoder:
    """Load the prepared model for its backend (``prepared.options.backend``) on ``device``."""
    validate_options(prepared.options)
    backend = prepared.options.backend
    if backend == "pytorch":
        return TorchDecoder(prepared, device)
    if backend == "ctranslate2":
        return CT2Decoder(prepared, device)
    from .jax_decoding import JaxDecoder

    return JaxDecoder(prepared, device)
