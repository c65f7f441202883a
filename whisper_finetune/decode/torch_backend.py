"""The PyTorch backend: transformers ``generate`` on 30 s windows, and whole recordings on timestamps."""
import logging

import numpy as np
import torch

from ..model import loading
from ..model.loading import PreparedModel
from .options import FALLBACK_SEED, PreparedDecoder

logger = logging.getLogger(__name__)

class TorchDecoder(PreparedDecoder):
    """transformers ``generate`` (SDPA attention, inference mode) with language and task passed explicitly."""

    def __init__(self, prepared: PreparedModel, device="cpu"):
        super().__init__(prepared)
        options = self.options
        self.device = torch.device(device)
        dtype = None if options.compute_type == "default" else getattr(torch, options.compute_type)
        if dtype is None:  # fp16 on GPU is the usual fast choice; CPU stays float32
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.model = loading.load_model(prepared.source.model_path, self.device, dtype=dtype)
        loading.set_language_and_task(self.model, options.language, options.task)
        if options.audio_context == "dynamic":
            loading.enable_dynamic_audio_context(self.model)
        if self.english_only:
            loading.skip_language_detection(self.model)

    def generate_kwargs(self):
        """Arguments to ``generate``: the prompt's language and task given explicitly (not via config), and the
        hallucination guards that are on (none by default)."""
        kwargs = {"max_new_tokens": self.options.max_new_tokens, "num_beams": self.options.num_beams,
                  "return_timestamps": False, **self.options.guards.generate_kwargs()}
        if not self.english_only:
            kwargs.update(language=self.options.language, task=self.options.task)
        return kwargs

    def _generate(self, *args, **kwargs):
        """``generate``, with the sampling of a temperature fallback seeded (the global RNG is left as it was)."""
        if len(self.options.guards.temperatures()) == 1:
            return self.model.generate(*args, **kwargs)
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            torch.manual_seed(FALLBACK_SEED)
            return self.model.generate(*args, **kwargs)

    @torch.inference_mode()
    def decode(self, features):
        inputs = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)  # (B, n_mels, frames)
        if not self.options.guards.batch_safe():
            return [text for row in inputs.split(1) for text in self._decode_tensor(row)]
        return self._decode_tensor(inputs)

    def _decode_tensor(self, inputs):
        tokens = self._generate(inputs, **self.generate_kwargs())  # (B, generated) prompt stripped
        # A window skipped by --no_speech_threshold comes back as an empty float tensor, and transformers
        # pads the whole batch in that dtype: token ids must be integers again for the tokenizer.
        return [t.strip() for t in self.processor.batch_decode(tokens.long(), skip_special_tokens=True)]

    @torch.inference_mode()
    def decode_long_form(self, features, attention_mask, word_timestamps=False):
        """Decode one recording of any length sequentially on predicted timestamps (transformers' long-form
        ``generate``: each next window starts at the last timestamp predicted in the one before).

        ``features``: (1, n_mels, frames) float32 log-mel of the whole recording, at least 3000 frames;
        ``attention_mask``: (1, frames), 1 on the recording's frames. Returns one dict per predicted segment:
        ``start``, ``end`` (seconds), ``tokens`` (ids, timestamp tokens included) and, with
        ``word_timestamps``, ``token_times`` (each token's start in seconds, from cross-attention DTW on the
        generation config's ``alignment_heads``), else ``None``.
        """
        inputs = torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self.dtype)
        mask = torch.from_numpy(np.ascontiguousarray(attention_mask)).to(self.device)
        kwargs = {**self.generate_kwargs(), "return_timestamps": True}
        output = self._generate(inputs, attention_mask=mask, return_segments=True,
                                return_token_timestamps=word_timestamps, **kwargs)
        return [{"start": float(s["start"]), "end": float(s["end"]), "tokens": s["tokens"].tolist(),
                 "token_times": s["token_timestamps"].tolist() if word_timestamps else None}
                for s in output["segments"][0]]
