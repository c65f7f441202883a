"""Batched Whisper decoding on JAX: transformers' ``FlaxWhisperForConditionalGeneration`` from PyTorch weights.

:class:`JaxDecoder` is the ``"jax"`` backend of :func:`whisper_finetune.decode.backends.make_decoder`. It

* loads PyTorch weights directly: :func:`whisper_finetune.model.loading.load_model` reads them (Hub id,
  folder, trainer checkpoint; LoRA adapters merged) and transformers' PyTorch-to-Flax converter
  (what ``from_pretrained(..., from_pt=True)`` uses) turns them into Flax parameters, so no Flax
  weights need to exist anywhere;
* compiles ``generate`` once, ahead of time, with ``jax.pmap`` over every selected device (data
  parallel), for one fixed batch shape: every batch, the last one included, is padded to
  ``batch_size`` (rounded up to a multiple of the device count), so nothing recompiles; the compile
  time is kept in ``compile_seconds``, apart from decoding time;
* with ``half_precision`` casts parameters and features to bfloat16.

Devices: ``device=-1`` uses every local CPU device (one by default; several with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), ``device=N`` accelerator N alone, and
``device="all"`` every local accelerator.
"""
import logging
import math
import time

import numpy as np

from ..audio import N_FRAMES
from .options import PreparedDecoder
from ..errors import OptionError, UserError
from ..model.loading import is_english_only

logger = logging.getLogger(__name__)


def jax_devices(device):
    """The devices to decode on: ``-1`` -> all local CPU devices, ``N`` -> accelerator N, ``"all"`` -> every
    local accelerator."""
    import jax

    if str(device).strip().lower() == "all":
        accelerators = [d for d in jax.local_devices() if d.platform != "cpu"]
        if not accelerators:
            raise UserError("--device all: JAX sees no GPU or TPU; use --device -1 for CPU")
        return accelerators
    try:
        device = int(device)
    except ValueError as exc:
        raise UserError(f"--device {device}: expected -1 (CPU), an accelerator number, or all") from exc
    if device < 0:
        return jax.local_devices(backend="cpu")
    accelerators = [d for d in jax.local_devices() if d.platform != "cpu"]
    if device >= len(accelerators):
        raise UserError(f"--device {device}: JAX sees no such accelerator ({len(accelerators)} visible: "
                        f"{', '.join(str(d) for d in accelerators) or 'none'}); use --device -1 for CPU")
    return [accelerators[device]]


def load_flax_model(model_path, dtype=None):
    """Load ``(FlaxWhisperForConditionalGeneration, params)`` from PyTorch weights (folder, checkpoint, Hub id).

    ``dtype`` is the computation dtype of the Flax modules (default float32; the parameters stay
    float32 either way: cast them with ``model.to_bf16``). The weights are read by
    :func:`whisper_finetune.model.loading.load_model` (LoRA adapters merged) and converted; the Flax
    model is built without random initialisation, which would cost a jit-compiled forward pass.
    """
    from types import SimpleNamespace

    from flax.traverse_util import flatten_dict, unflatten_dict
    from transformers import FlaxWhisperForConditionalGeneration
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    from ..model.loading import load_model

    torch_model = load_model(model_path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = FlaxWhisperForConditionalGeneration(torch_model.config, _do_init=False, **kwargs)
    model.generation_config = torch_model.generation_config
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    del torch_model
    # The converter only reads the target's parameter names and shapes; a shape tree provides them.
    target = SimpleNamespace(base_model_prefix=model.base_model_prefix, params=model.params_shape_tree)
    converted = flatten_dict(convert_pytorch_state_dict_to_flax(state, target))
    expected = flatten_dict(model.params_shape_tree)
    missing = sorted(".".join(k) for k in expected if k not in converted)
    if missing:
        raise UserError(f"{model_path}: weights missing for JAX: {', '.join(missing[:5])}")
    # Keys the Flax model does not have (proj_out: Flax ties it to the token embedding) are dropped.
    return model, unflatten_dict({k: v for k, v in converted.items() if k in expected})


def forced_decoder_ids(generation_config, language=None, task="transcribe"):
    """``[(position, token or None)]`` forcing ``<|lang|><|task|><|notimestamps|>`` after ``<|startoftranscript|>``.

    Position 0 is ``<|startoftranscript|>``, the decoder's start token.

    English-only models take no language or task token; ``language=None`` on a multilingual model
    leaves position 1 free, so the model detects the language.
    """
    forced = []
    if not is_english_only(generation_config):
        if language and f"<|{language}|>" not in generation_config.lang_to_id:
            raise OptionError("language", language, f"the model has no <|{language}|> token")
        forced.append((1, generation_config.lang_to_id[f"<|{language}|>"] if language else None))
        if task not in generation_config.task_to_id:
            raise OptionError("task", task, f"choose one of {', '.join(generation_config.task_to_id)}")
        forced.append((2, generation_config.task_to_id[task]))
    forced.append((len(forced) + 1, generation_config.no_timestamps_token_id))
    return forced


class JaxDecoder(PreparedDecoder):
    """Decode log-mel batches with a jitted, data-parallel FlaxWhisper ``generate`` (see the module docstring).

    ``compilations`` counts how often ``generate`` was traced: 1 after construction, and it stays 1.
    """

    # JAX runs threads of its own: a fork after it started can deadlock, so data loaders feeding this
    # decoder start their workers with forkserver (see evaluation.decode_dataset).
    fork_safe = False

    def __init__(self, prepared, device=-1):
        import jax
        import jax.numpy as jnp
        from flax.jax_utils import replicate
        from transformers.generation.flax_utils import FlaxGenerationMixin

        super().__init__(prepared)
        options = self.options
        self.devices = jax_devices(device)
        self.batch_size = math.ceil(options.batch_size / len(self.devices)) * len(self.devices)
        if self.batch_size != options.batch_size:
            logger.info("batch size %d rounded up to %d (a multiple of the %d devices)", options.batch_size,
                        self.batch_size, len(self.devices))
        self.dtype = jnp.bfloat16 if options.half_precision else jnp.float32
        self.compile_seconds = 0.0
        self.compilations = 0  # incremented each time generate is traced (i.e. compiled)

        # Half precision: bfloat16 parameters *and* module computation dtype (Flax layers would
        # otherwise cast bfloat16 parameters back to float32 and compute in float32).
        model, params = load_flax_model(prepared.source.model_path, self.dtype)
        if options.half_precision:
            params = model.to_bf16(params)
        config = model.generation_config
        forced = forced_decoder_ids(config, options.language, options.task)
        config.forced_decoder_ids = forced
        # FlaxGenerationMixin counts the forced prompt in max_new_tokens; PyTorch's generate does not.
        config.max_new_tokens = min(options.max_new_tokens + len(forced),
                                    model.config.max_target_positions - 1)
        config.num_beams = options.num_beams
        config.do_sample = False
        # The prompt as the result files show it (a language left free for detection is not shown).
        self.prompt_ids = [config.decoder_start_token_id] + [t for _, t in forced if t is not None]

        def generate(params, features):  # features: (per_device_batch, n_mels, 3000)
            self.compilations += 1  # runs only while tracing
            # The mixin's generate, not FlaxWhisper's override: that one rebuilds forced_decoder_ids
            # from language names and cannot leave the language free.
            output = FlaxGenerationMixin.generate(model, features, generation_config=config, params=params)
            return output.sequences  # (per_device_batch, max_length)

        self.model = model
        self._params = replicate(params, self.devices)
        self._generate = jax.pmap(generate, devices=self.devices)
        # Compiled ahead of time for the one batch shape used, so decode time excludes compilation
        # and a different shape fails instead of silently recompiling.
        shape = (len(self.devices), self.batch_size // len(self.devices), model.config.num_mel_bins, N_FRAMES)
        began = time.perf_counter()
        self._compiled = self._generate.lower(self._params, jax.ShapeDtypeStruct(shape, self.dtype)).compile()
        self.compile_seconds = time.perf_counter() - began
        logger.info("JAX generate compiled in %.1f s for %d device(s), %d windows per call", self.compile_seconds,
                    len(self.devices), self.batch_size)

    def generate_tokens(self, features):
        """Token ids for ``features`` ``(batch, n_mels, 3000)``, one row per input, prompt included."""
        import jax

        features = np.asarray(features, dtype=np.float32)
        n_devices = len(self.devices)
        rows = []
        for start in range(0, len(features), self.batch_size):
            batch = features[start:start + self.batch_size]  # (b, n_mels, frames)
            real = len(batch)
            if real < self.batch_size:
                # Pad to the compiled shape with copies of the last row: they finish when it does, so
                # the padding adds no decoding steps (zeros could run on to max_new_tokens).
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - real, axis=0)])
            batch = batch.reshape(n_devices, self.batch_size // n_devices, *batch.shape[1:])
            batch = batch.astype(self.dtype)
            sequences = jax.device_get(self._compiled(self._params, batch))  # (devices, per_device, length)
            rows.extend(sequences.reshape(-1, sequences.shape[-1])[:real])
        return rows

    def decode(self, features):
        """Texts for ``features`` ``(batch, n_mels, 3000)`` float32 log-mel."""
        return [text.strip() for text in
                self.processor.batch_decode(self.generate_tokens(features), skip_special_tokens=True)]
