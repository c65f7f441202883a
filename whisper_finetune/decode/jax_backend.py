"""Batched Whisper decoding on JAX with our own plain-JAX Whisper (:mod:`.jax_whisper`; no Flax, no transformers model).

:class:`JaxDecoder` is the ``"jax"`` backend of :func:`whisper_finetune.decode.backends.make_decoder`. It

* loads PyTorch weights directly: :func:`whisper_finetune.model.loading.load_model` reads them (Hub id,
  folder, trainer checkpoint; LoRA adapters merged) and :func:`.jax_whisper.load_params` turns them into
  a pytree of JAX arrays, so no Flax weights need to exist anywhere;
* compiles ``generate`` (greedy, or beam search with ``num_beams > 1``) once, ahead of time, data
  parallel over every selected device (``jax.shard_map`` over a one-axis mesh: each device decodes
  its slice of the batch), for one fixed batch shape: every batch, the last one included, is padded
  to ``batch_size`` (rounded up to a multiple of the device count), so nothing recompiles; the
  compile time is kept in ``compile_seconds``, apart from decoding time;
* with ``half_precision`` casts parameters and features to bfloat16.

Devices: ``device=-1`` uses every local CPU device (one by default; several with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), ``device=N`` accelerator N alone, and
``device="all"`` every local accelerator.
"""
import logging
import math
import time

import numpy as np

from . import jax_whisper
from .options import PreparedDecoder
from ..errors import OptionError, UserError
from ..extras import require
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


def decoder_prompt(generation_config, language=None, task="transcribe"):
    """The decoder prompt ``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>`` as token ids.

    English-only models take no language or task token; ``language=None`` on a multilingual model
    leaves position 1 as ``None``: the model detects the language there (per row, as transformers does).
    """
    prompt = [generation_config.decoder_start_token_id]
    if not is_english_only(generation_config):
        if language and f"<|{language}|>" not in generation_config.lang_to_id:
            raise OptionError("language", language, f"the model has no <|{language}|> token")
        prompt.append(generation_config.lang_to_id[f"<|{language}|>"] if language else None)
        if task not in generation_config.task_to_id:
            raise OptionError("task", task, f"choose one of {', '.join(generation_config.task_to_id)}")
        prompt.append(generation_config.task_to_id[task])
    prompt.append(generation_config.no_timestamps_token_id)
    return prompt


class JaxDecoder(PreparedDecoder):
    """Decode log-mel batches with our plain-JAX Whisper (:mod:`.jax_whisper`), jit-compiled once and data
    parallel (see the module docstring).

    ``compilations`` counts how often ``generate`` was traced: 1 after construction, and it stays 1.
    """

    # JAX runs threads of its own: a fork after it started can deadlock, so data loaders feeding this
    # decoder start their workers with forkserver (see evaluation.decode_dataset).
    fork_safe = False

    def __init__(self, prepared, device=-1):
        require("jax", "the JAX backend")  # one line naming the extra when jax is not installed
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

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

        # Half precision: every parameter and the features in bfloat16, so the products run in bfloat16.
        self.shape, params, config = jax_whisper.load_params(prepared.source.model_path, self.dtype)
        prompt = decoder_prompt(config, options.language, options.task)
        self.plan = jax_whisper.plan_for(config, prompt, options.max_new_tokens, options.num_beams, self.shape)
        # The prompt as the result files show it (a language left free for detection is not shown).
        self.prompt_ids = [t for t in prompt if t is not None]

        # On CPUs the encoder attends one row at a time (its scores then fit in cache); accelerators take the
        # whole batch at once.
        rows_at_once = 1 if self.devices[0].platform == "cpu" else 0

        def generate(params, features):  # features: (per_device_batch, n_mels, frames)
            self.compilations += 1  # runs only while tracing
            return jax_whisper.generate(params, features, self.plan, self.shape, rows_at_once)  # (batch, length)

        # Data parallel: each device decodes its slice of the batch with its own copy of the parameters,
        # and its own loop (a device whose rows all ended stops; no collectives between devices).
        mesh = Mesh(np.array(self.devices), ("batch",))
        rows = PartitionSpec("batch")
        self._features_sharding = NamedSharding(mesh, rows)
        self._params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        self._generate = jax.jit(jax.shard_map(generate, mesh=mesh, in_specs=(PartitionSpec(), rows),
                                               out_specs=rows, check_vma=False))
        # Compiled ahead of time for the one batch shape used, so decode time excludes compilation
        # and a different shape fails instead of silently recompiling.
        shape = (self.batch_size, self.shape.n_mels, self.shape.frames)
        began = time.perf_counter()
        self._compiled = self._generate.lower(
            self._params, jax.ShapeDtypeStruct(shape, self.dtype, sharding=self._features_sharding)).compile()
        self.compile_seconds = time.perf_counter() - began
        logger.info("JAX generate compiled in %.1f s for %d device(s), %d windows per call", self.compile_seconds,
                    len(self.devices), self.batch_size)

    def generate_tokens(self, features):
        """Token ids for ``features`` ``(batch, n_mels, 3000)``, one row per input, prompt included."""
        import jax

        features = np.asarray(features, dtype=np.float32)
        rows = []
        for start in range(0, len(features), self.batch_size):
            batch = features[start:start + self.batch_size]  # (b, n_mels, frames)
            real = len(batch)
            if real < self.batch_size:
                # Pad to the compiled shape with copies of the last row: they finish when it does, so
                # the padding adds no decoding steps (zeros could run on to max_new_tokens).
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - real, axis=0)])
            batch = jax.device_put(batch.astype(self.dtype), self._features_sharding)
            sequences = jax.device_get(self._compiled(self._params, batch))  # (batch_size, length)
            rows.extend(sequences[:real])
        return rows

    def decode(self, features):
        """Texts for ``features`` ``(batch, n_mels, 3000)`` float32 log-mel."""
        return [text.strip() for text in
                self.processor.batch_decode(self.generate_tokens(features), skip_special_tokens=True)]
