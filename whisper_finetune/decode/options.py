"""What every decoding backend takes: the decoding options, their checks, and the Decoder interface.

Every backend gets the decoder prompt ``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>``
explicitly (built by :func:`whisper_finetune.model.loading.decoder_prompt_ids`): the language the user
asks for is the language decoded, whatever ``forced_decoder_ids`` a checkpoint carries. The backends
are :mod:`.torch_backend` (PyTorch; also whole recordings on timestamps and Whisper's hallucination
guards, :class:`GuardOptions`), :mod:`.ctranslate2_backend` and :mod:`.jax_backend`;
:func:`whisper_finetune.decode.backends.make_decoder` picks one.
"""
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Optional, Protocol

import numpy as np

from ..audio import DECODER_POSITIONS, AudioContext
from ..errors import OptionError, UserError
from ..options import option

if TYPE_CHECKING:  # only named in annotations; loading imports torch and transformers, which -h must not wait for
    from ..model.loading import PreparedModel

logger = logging.getLogger(__name__)

BACKENDS = ("pytorch", "ctranslate2", "jax")
AUDIO_CONTEXTS = ("full", "dynamic")
TASKS = ("transcribe", "translate")
TORCH_COMPUTE_TYPES = ("default", "float32", "float16", "bfloat16")  # torch dtypes of these names; default: by device
CT2_COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                     "float16", "bfloat16", "float32")
MAX_TARGET_POSITIONS = DECODER_POSITIONS  # prompt + generated tokens must fit
WHISPER_TEMPERATURES = "0.0,0.2,0.4,0.6,0.8,1.0"  # openai-whisper's transcribe() fallback schedule
# With --condition_on_previous_text the previous text takes up to half the decoder's positions
# (transformers keeps max_target_positions // 2 - 1 tokens of it, plus <|startofprev|> and the prompt).
MAX_NEW_TOKENS_CONDITIONED = MAX_TARGET_POSITIONS // 2 - 4
FALLBACK_SEED = 0  # temperature fallback samples; seeded per call so that a run can be repeated


def parse_temperatures(text):
    """``"0.0,0.2,0.4"`` -> ``(0.0, 0.2, 0.4)``; ``None`` when a value is not a number."""
    try:
        return tuple(float(t) for t in str(text).split(","))
    except ValueError:
        return None


@dataclass(frozen=True)
class GuardOptions:
    """Whisper's guards against hallucinated text (openai-whisper's ``transcribe`` options), applied by
    transformers' ``generate``. The defaults turn every guard off, so decoding is plain greedy or beam search."""

    temperature_fallback: str = option(
        "0.0", "comma-separated decoding temperatures: a window whose text fails --compression_ratio_threshold or "
        "--logprob_threshold is decoded again, sampling at the next temperature (0.0: greedy or beam search only; "
        f"Whisper's default: {WHISPER_TEMPERATURES})", group="hallucination guards")
    compression_ratio_threshold: Optional[float] = option(
        None, "decode a window again at the next temperature when its text's gzip compression ratio is above this "
        "(repetitive text; None: off; Whisper's default: 2.4)", group="hallucination guards")
    logprob_threshold: Optional[float] = option(
        None, "decode a window again at the next temperature when its average token log-probability is below this "
        "(None: off; Whisper's default: -1.0)", group="hallucination guards")
    no_speech_threshold: Optional[float] = option(
        None, "skip a window as silence when its <|nospeech|> probability is above this and its average "
        "log-probability below --logprob_threshold (needs it; None: off; Whisper's default: 0.6)",
        group="hallucination guards")
    condition_on_previous_text: bool = option(
        False, "long-form decoding on timestamps (transcribe_audio.py --timestamps True) gives each window the text "
        "of the previous ones as a prompt (more consistent text, but one hallucination can repeat; Whisper's "
        "default: True)", group="hallucination guards")

    def temperatures(self):
        """The fallback temperatures as floats (check them with :meth:`check` first)."""
        return parse_temperatures(self.temperature_fallback)

    def changed(self):
        """The flags set away from their defaults (the guards that are on), as ``{flag: value}``."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != f.default and not (f.name == "temperature_fallback"
                                                               and self.temperatures() == (0.0,))}

    def check(self, max_new_tokens=None):
        """Raise :class:`OptionError` for a value transformers would reject or silently ignore."""
        temperatures = self.temperatures()
        if (not temperatures or any(not 0 <= t <= 1 for t in temperatures)
                or any(b <= a for a, b in zip(temperatures, temperatures[1:]))):
            raise OptionError("temperature_fallback", self.temperature_fallback,
                              f"give comma-separated temperatures from 0 to 1 in ascending order, e.g. "
                              f"{WHISPER_TEMPERATURES} (Whisper's) or 0.0 (no fallback)")
        if self.compression_ratio_threshold is not None and self.compression_ratio_threshold <= 1:
            raise OptionError("compression_ratio_threshold", self.compression_ratio_threshold,
                              "must be more than 1 (a gzip compression ratio; Whisper's default: 2.4), or None")
        if self.logprob_threshold is not None and self.logprob_threshold >= 0:
            raise OptionError("logprob_threshold", self.logprob_threshold,
                              "must be below 0 (an average log-probability; Whisper's default: -1.0), or None")
        if self.no_speech_threshold is not None:
            if not 0 < self.no_speech_threshold < 1:
                raise OptionError("no_speech_threshold", self.no_speech_threshold,
                                  "must be between 0 and 1 (a probability; Whisper's default: 0.6), or None")
            if self.logprob_threshold is None:
                # transformers skips a window only when both hold (and fails without --logprob_threshold)
                raise OptionError("no_speech_threshold", self.no_speech_threshold,
                                  "needs --logprob_threshold too: a window is skipped as silence only when its "
                                  "average log-probability is also below it (Whisper's default: -1.0)")
        retried = [name for name in ("compression_ratio_threshold", "logprob_threshold")
                   if getattr(self, name) is not None]
        if retried and len(temperatures) == 1 and not (retried == ["logprob_threshold"] and self.no_speech_threshold):
            name = retried[0]
            raise OptionError(name, getattr(self, name), "does nothing without a temperature to fall back to: pass "
                              f"--temperature_fallback with two or more temperatures, e.g. {WHISPER_TEMPERATURES}")
        if (self.condition_on_previous_text and max_new_tokens is not None
                and max_new_tokens > MAX_NEW_TOKENS_CONDITIONED):
            raise OptionError("max_new_tokens", max_new_tokens,
                              f"must be at most {MAX_NEW_TOKENS_CONDITIONED} with --condition_on_previous_text True "
                              f"(the previous text takes up to half of the decoder's {MAX_TARGET_POSITIONS} "
                              f"positions)")

    def generate_kwargs(self):
        """Arguments to Whisper's ``generate``: none when every guard is off, so default decoding is unchanged."""
        changed = self.changed()
        kwargs = {}
        if "temperature_fallback" in changed:
            kwargs["temperature"] = self.temperatures()
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
            if name in changed:
                kwargs[name] = changed[name]
        if self.condition_on_previous_text:
            kwargs["condition_on_prev_tokens"] = True
        return kwargs

    def batch_safe(self):
        """Whether ``generate`` may decode several windows in one batch with these guards.

        Not with a temperature fallback and --no_speech_threshold together: transformers (4.57) keeps each
        window's "skip as silence" flag by its place in the shrinking batch of windows that fall back, so a
        window skipped at temperature 0 is un-skipped when another window of its batch falls back (measured:
        60 s of tones cut in two gave "So ." batched, "." window by window)."""
        return self.no_speech_threshold is None or len(self.temperatures()) == 1


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode (the decoding flags of every evaluator and transcriber); written into result files."""

    language: Optional[str] = option(None, "Whisper code, settled against the model by loading.prepare_model",
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
    guards: GuardOptions = GuardOptions()

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


def validate_options(options: DecodingOptions, long_form=False):
    """Check option values before any model is loaded; errors name the flag and list accepted values.

    ``long_form``: the caller decodes whole recordings on timestamps (transcription's timestamps path),
    the only decoding that has a previous text to condition on.
    """
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
    guards = options.guards
    guards.check(options.max_new_tokens)
    changed = guards.changed()
    if changed and options.backend != "pytorch":
        name = next(iter(changed))
        raise OptionError(name, changed[name], f"needs --backend pytorch: the guards are transformers' generate's "
                          f"(--backend {options.backend} decodes without them)")
    if guards.condition_on_previous_text and not long_form:
        raise OptionError("condition_on_previous_text", True, "applies only to long-form decoding on timestamps "
                          "(transcribe_audio.py --timestamps True): utterances and cut-at-silence pieces are "
                          "decoded each on its own, with no previous text")
    allowed = CT2_COMPUTE_TYPES if options.backend == "ctranslate2" else TORCH_COMPUTE_TYPES
    if options.backend != "jax" and options.compute_type not in allowed:
        raise UserError(f"--compute_type {options.compute_type} is not valid with --backend {options.backend}: "
                        f"choose one of {', '.join(allowed)}")


class PreparedDecoder:
    """What every backend keeps of the :class:`PreparedModel` it was built from."""

    compile_seconds = 0.0  # eager backends compile nothing
    fork_safe = True

    def __init__(self, prepared: "PreparedModel"):
        self.prepared = prepared
        self.options = prepared.options
        self.processor = prepared.processor
        self.english_only = prepared.english_only
        self.prompt_ids = prepared.prompt_ids


