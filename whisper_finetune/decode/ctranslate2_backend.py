"""The CTranslate2 backend: a converted copy of the checkpoint (cached while its weights are unchanged)."""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import torch

from .. import files
from ..model import loading, sources
from ..errors import OptionError, UserError
from ..model.loading import PreparedModel
from .options import MAX_TARGET_POSITIONS, PreparedDecoder

logger = logging.getLogger(__name__)

CT2_CACHE_ROOT = os.path.join(os.path.expanduser("~"), ".cache", "whisper-finetune", "ct2")
CT2_STAMP_FILE = "whisper_finetune_stamp.json"


def _weights_stamp(model_path):
    """Identify a checkpoint's weights by file name, size and mtime (cheap; changes when re-saved)."""
    entries = []
    for name in sorted(os.listdir(model_path)):
        full = os.path.join(model_path, name)
        if os.path.isfile(full) and (name in sources.WEIGHT_FILES or name.endswith((".safetensors", ".bin"))
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
        if os.path.isdir(model_path) and sources.adapter_base(model_path):
            source = os.path.join(work, "merged")
            loading.load_model(model_path).save_pretrained(source)
        start = time.perf_counter()
        out = os.path.join(work, "ct2")
        present = [f for f in copy_files if os.path.exists(os.path.join(source, f))]
        TransformersConverter(source, copy_files=present or None).convert(out, quantization=quantization, force=True)
        with open(os.path.join(out, CT2_STAMP_FILE), "w", encoding="utf-8") as f:
            json.dump(stamp, f)
        files.publish_dir(out, cache_dir)  # an older conversion is renamed aside, never half-deleted
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
