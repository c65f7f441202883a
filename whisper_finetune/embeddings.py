"""Hidden states of a Whisper model, by name and layer, pooled over the frames that hold real audio.

Names (``transformers`` 4.57, ``WhisperEncoder.forward`` / ``WhisperDecoder.forward``), for a model
with ``L`` layers on that side:

* ``encoder_last_hidden_state``: the final encoder layer's output after the encoder's layer norm.
* ``encoder_hidden_states[i]``: ``L + 1`` entries. Index 0 is the input to the first layer (the two
  convolutions plus the positional embedding); index ``i`` for ``1 <= i < L`` is the output of layer
  ``i``; index ``L`` (``-1``) is the final layer's output *after* the layer norm, the very tensor of
  ``encoder_last_hidden_state``. The final layer's output before the layer norm is not among them.
* ``last_hidden_state`` and ``decoder_hidden_states[i]``: the same for the decoder (index 0 is the
  token plus positional embedding of the decoder prompt).

Encoder frames are 20 ms apart (:data:`whisper_finetune.audio.ENCODER_FRAMES_PER_SECOND`); the
encoder always sees a 30 s window, so a clip of ``n`` samples fills only the first
``ceil(n / 320)`` of its 1500 frames. Pooling and ``pool="none"`` keep those frames only, unless
``pool_over_padding`` asks for all 1500 (what the seed README's ``torch.mean(..., dim=1)`` did).

Results are written as one ``.npz`` per embedding (keyed by utterance id, streamed to disk so a
large dataset never sits in memory) and a ``manifest.json`` recording the model, the options, the
shapes and the pooling.
"""
import json
import logging
import math
import os
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import (ENCODER_FRAMES, ENCODER_FRAMES_PER_SECOND, ENCODER_STRIDE, HOP_LENGTH, N_SAMPLES, SAMPLE_RATE,
                    decode_example_audio, load_audio)
from .data.loading import load_datasets
from .data.schema import AUDIO_COLUMN, ID_COLUMN, DatasetSpec
from .errors import UserError
from .files import atomic_write_text, publish
from .model.loading import (decoder_prompt_ids, is_english_only, load_model, load_processor, resolve_language,
                            torch_device)
from .model.sources import resolve_model
from .embeddings_config import (DECODER_LAST, DECODER_STATES, ENCODER_LAST, ENCODER_STATES, MANIFEST,
                                EmbeddingConfig, resolve_targets, validate_config)

logger = logging.getLogger(__name__)

SAMPLES_PER_ENCODER_FRAME = HOP_LENGTH * ENCODER_STRIDE  # 320 samples = 20 ms


# ---------------------------------------------------------------------------------------------
# Computing embeddings for one batch
# ---------------------------------------------------------------------------------------------
def real_frames(num_samples):
    """Encoder frames (20 ms each) whose centre lies inside ``num_samples`` of audio, at most 1500.

    Log-mel frame ``t`` is centred on sample ``160 t``; encoder frame ``j`` on log-mel frame ``2 j``,
    i.e. sample ``320 j``; so ``ceil(n / 320)`` frames cover a clip of ``n`` samples.
    """
    return int(min(ENCODER_FRAMES, max(1, math.ceil(num_samples / SAMPLES_PER_ENCODER_FRAME))))


def hidden_states(whisper_model, input_features, targets, decoder_input_ids=None):
    """Run a ``WhisperModel`` once and return ``{target.name: tensor}`` for the requested targets.

    ``input_features``: ``(batch, n_mels, 3000)``. Encoder tensors are ``(batch, 1500, d_model)``,
    decoder tensors ``(batch, prompt_length, d_model)``; ``decoder_input_ids`` (``(batch, prompt_length)``)
    is needed only when a decoder target is requested, and the decoder only runs then.
    """
    want_states = any(t.index is not None for t in targets)
    if any(t.side == "decoder" for t in targets):
        if decoder_input_ids is None:
            raise ValueError("decoder targets need decoder_input_ids")
        out = whisper_model(input_features, decoder_input_ids=decoder_input_ids, output_hidden_states=want_states,
                            use_cache=False, return_dict=True)
        tensors = {ENCODER_LAST: out.encoder_last_hidden_state, ENCODER_STATES: out.encoder_hidden_states,
                   DECODER_LAST: out.last_hidden_state, DECODER_STATES: out.decoder_hidden_states}
    else:
        out = whisper_model.encoder(input_features, output_hidden_states=want_states, return_dict=True)
        tensors = {ENCODER_LAST: out.last_hidden_state, ENCODER_STATES: out.hidden_states}
    return {t.name: tensors[t.source] if t.index is None else tensors[t.source][t.index] for t in targets}


def pool_item(tensor, frames, pool):
    """Keep the first ``frames`` time steps of ``tensor`` (``(time, d)``), then average them when
    ``pool == "mean"``; returns float32 numpy, ``(frames, d)`` or ``(d,)``."""
    kept = tensor[:frames].float()  # (frames, d)
    if pool == "mean":
        kept = kept.mean(dim=0)  # (d,)
    return kept.cpu().numpy()


def embed_audio(whisper_model, feature_extractor, audios, targets, pool="mean", pool_over_padding=False,
                decoder_prompt=None, device="cpu"):
    """Embed a batch of mono 16 kHz clips (each at most 30 s); returns ``{target.name: [array per clip]}``.

    Encoder outputs keep the frames covering each clip's audio (all 1500 with ``pool_over_padding``);
    decoder outputs keep every prompt position. ``decoder_prompt`` is the list of decoder input ids.
    """
    features = feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    dtype = next(whisper_model.parameters()).dtype
    features = features.to(device=device, dtype=dtype)  # (batch, n_mels, 3000)
    decoder_input_ids = None
    if decoder_prompt is not None:
        decoder_input_ids = torch.tensor([list(decoder_prompt)] * len(audios), device=device)  # (batch, prompt)
    with torch.inference_mode():
        tensors = hidden_states(whisper_model, features, targets, decoder_input_ids)
    frames = [ENCODER_FRAMES if pool_over_padding else real_frames(len(a)) for a in audios]
    result = {}
    for target in targets:
        tensor = tensors[target.name]  # (batch, time, d)
        result[target.name] = [pool_item(tensor[i], frames[i] if target.side == "encoder" else tensor.shape[1], pool)
                               for i in range(len(audios))]
    return result


# ---------------------------------------------------------------------------------------------
# The whole run: inputs -> batches -> .npz files + manifest
# ---------------------------------------------------------------------------------------------
@dataclass
class EmbeddingResult:
    """What :func:`extract_embeddings` wrote: the manifest (also in ``manifest.json``) and file paths."""

    output_dir: str
    manifest: dict
    files: dict = field(default_factory=dict)  # canonical name -> .npz path

    def __str__(self):
        lines = [f"wrote {self.output_dir}",
                 f"items embedded: {self.manifest['num_items']} (from {self.manifest['num_utterances']} utterances)"]
        for entry in self.manifest["embeddings"]:
            lines.append(f"  {entry['file']}: {entry['shape_per_item']}  {entry['meaning']}")
        lines.append(f"wall time: {self.manifest['wall_seconds']:.1f} s")
        return "\n".join(lines)


def _load_sources(config):
    """``[(label, dataset or None, paths or None)]`` and the utterance ids, checked for repeats."""
    if config.audio_paths:
        ids = [os.path.splitext(os.path.basename(p))[0] for p in config.audio_paths]
        sources = [("files", None, list(config.audio_paths))]
    else:
        if config.eval_datasets:
            specs = [DatasetSpec(name, split=None) for name in config.eval_datasets]
        else:
            specs = [DatasetSpec(config.dataset, config.dataset_config, config.split, config.text_column,
                                 config.audio_column)]
        loaded = load_datasets(specs, custom=bool(config.eval_datasets))
        sources = [(spec.label, ds.select_columns([ID_COLUMN, AUDIO_COLUMN]), None) for spec, ds in zip(specs, loaded)]
        ids = [uid for _, ds, _ in sources for uid in ds[ID_COLUMN]]
    seen = set()
    for uid in ids:
        if uid in seen:
            raise UserError(f"utterance id {uid!r} occurs more than once in the input; ids key the output files, "
                            f"so they must be unique (embed the inputs separately)")
        seen.add(uid)
    return sources, len(ids)


def _utterances(sources):
    """Yield ``(id, label, audio)`` one utterance at a time (audio decoded lazily)."""
    for label, dataset, paths in sources:
        if paths is not None:
            for path in paths:
                yield os.path.splitext(os.path.basename(path))[0], path, load_audio(path)
        else:
            for row in dataset:
                yield row[ID_COLUMN], label, decode_example_audio(row[AUDIO_COLUMN])


def _windows(uid, where, audio, split_long):
    """Yield ``(key, start_sample, audio)``: one window, or one per 30 s with ``split_long``."""
    if len(audio) == 0:
        raise UserError(f"{where}: utterance {uid} holds no audio samples")
    if len(audio) <= N_SAMPLES:
        yield uid, 0, audio
    elif split_long:
        for k, start in enumerate(range(0, len(audio), N_SAMPLES)):
            yield f"{uid}#{k}", start, audio[start:start + N_SAMPLES]
    else:
        logger.warning("%s: utterance %s lasts %.1f s, longer than Whisper's 30 s window: only the first 30 s is "
                       "embedded (pass --split_long to embed every 30 s window)", where, uid, len(audio) / SAMPLE_RATE)
        yield uid, 0, audio[:N_SAMPLES]


class NpzWriter:
    """Write arrays one at a time into an ``.npz`` (what ``np.savez`` writes, but streamed)."""

    def __init__(self, path):
        self.path = path
        self._zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, key, array):
        """Store ``array`` under ``key`` (``np.load(path)[key]`` reads it back)."""
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)

    def close(self):
        self._zip.close()


def _previous_files(output_dir):
    """The .npz files an earlier run recorded in ``output_dir``'s manifest (removed after an overwrite)."""
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.exists(path):
        return set()
    with open(path, encoding="utf-8") as f:
        entries = json.load(f).get("embeddings", [])
    return {os.path.abspath(os.path.join(output_dir, os.path.basename(e["file"]))) for e in entries}


def _decoder_prompt(config, model, tokenizer):
    """The decoder input ids: ``[decoder_start_token_id]``, or the forced prompt for a language."""
    if config.decoder_prompt == "start":
        return [model.config.decoder_start_token_id]
    english_only = is_english_only(model.generation_config)
    code = resolve_language(config.language, model.generation_config, config.task)
    if code is None and not english_only:
        raise UserError("--decoder_prompt forced on a multilingual model needs --language (e.g. --language hi)")
    return decoder_prompt_ids(tokenizer, code, config.task, no_timestamps=True, english_only=english_only)


def extract_embeddings(config: EmbeddingConfig) -> EmbeddingResult:
    """Embed every input utterance and write ``<name>.npz`` per requested embedding plus ``manifest.json``.

    Inputs, names and the output folder are checked before the model runs. Files are written under
    temporary names in ``output_dir`` and renamed into place only when every utterance is done.
    """
    started = time.perf_counter()
    validate_config(config)
    device = torch_device(config.device)
    source = resolve_model(config.model, "model")
    sources, num_utterances = _load_sources(config)
    processor = load_processor(source.processor_path)
    model = load_model(source.model_path, device=device)
    whisper = model.model  # WhisperModel: encoder + decoder, no LM head
    targets = resolve_targets(config.embeddings, model.config.encoder_layers, model.config.decoder_layers)
    prompt = None
    if any(t.side == "decoder" for t in targets):
        prompt = _decoder_prompt(config, model, processor.tokenizer)
    elif config.decoder_prompt != "start":
        logger.warning("--decoder_prompt %s is unused: no decoder embedding was requested", config.decoder_prompt)
    previous = _previous_files(config.output_dir)
    os.makedirs(config.output_dir, exist_ok=True)
    writers = {}
    items = []
    try:
        for target in targets:
            fd, tmp = tempfile.mkstemp(dir=config.output_dir, prefix=f".tmp-{target.name}-", suffix=".npz")
            os.close(fd)
            writers[target.name] = NpzWriter(tmp)

        def flush(batch):
            outputs = embed_audio(whisper, processor.feature_extractor, [b[-1] for b in batch], targets, config.pool,
                                  config.pool_over_padding, prompt, device)
            for i, (key, *_rest) in enumerate(batch):
                for name, arrays in outputs.items():
                    writers[name].add(key, arrays[i])

        batch = []
        progress = tqdm(_utterances(sources), total=num_utterances, desc="embedding", unit="utt")
        for uid, where, audio in progress:
            for key, start, window in _windows(uid, where, audio, config.split_long):
                items.append({"key": key, "id": uid, "source": where, "start_s": start / SAMPLE_RATE,
                              "duration_s": len(window) / SAMPLE_RATE, "frames": real_frames(len(window))})
                batch.append((key, window))
                if len(batch) == config.batch_size:
                    flush(batch)
                    batch = []
        if batch:
            flush(batch)
        files = {}
        for name, writer in writers.items():
            writer.close()
            files[name] = os.path.join(config.output_dir, f"{name}.npz")
            publish(writer.path, files[name])
    finally:
        for writer in writers.values():
            writer.close()
            if os.path.exists(writer.path):
                os.remove(writer.path)

    manifest = _manifest(config, source, model, targets, prompt, items, num_utterances, files,
                         time.perf_counter() - started)
    atomic_write_text(os.path.join(config.output_dir, MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    for stale in previous - {os.path.abspath(p) for p in files.values()}:
        if os.path.isfile(stale):  # written by the run this one --overwrite-s, not asked for now
            os.remove(stale)
    logger.info("embedded %d items in %.1f s", len(items), manifest["wall_seconds"])
    return EmbeddingResult(config.output_dir, manifest, files)


def _manifest(config, source, model, targets, prompt, items, num_utterances, files, seconds):
    d_model = model.config.d_model
    layers = {"encoder": model.config.encoder_layers, "decoder": model.config.decoder_layers}
    prompt_len = len(prompt) if prompt else 0
    embeddings = []
    for t in targets:
        if config.pool == "mean":
            shape = [d_model]
        elif t.side == "decoder":
            shape = [prompt_len, d_model]
        else:
            shape = [ENCODER_FRAMES if config.pool_over_padding else "frames", d_model]
        embeddings.append({"request": t.request, "name": t.name, "source": t.source, "index": t.index,
                           "meaning": t.meaning(layers[t.side]), "file": os.path.basename(files[t.name]),
                           "shape_per_item": shape, "dtype": "float32"})
    if config.pool_over_padding:
        pooling = f"encoder: all {ENCODER_FRAMES} frames of the 30 s window, padding included"
    else:
        pooling = (f"encoder: only the frames covering real audio, ceil(samples / {SAMPLES_PER_ENCODER_FRAME}) "
                   f"({1000 // ENCODER_FRAMES_PER_SECOND} ms per frame; 'frames' per item)")
    pooling += "; decoder: every prompt position"
    return {
        "model": source.model_path, "model_name": source.name, "processor": source.processor_path,
        "d_model": d_model, "encoder_layers": layers["encoder"], "decoder_layers": layers["decoder"],
        "options": asdict(config), "pool": config.pool, "pooling": pooling,
        "encoder_frames_per_second": ENCODER_FRAMES_PER_SECOND, "decoder_input_ids": prompt,
        "embeddings": embeddings, "num_utterances": num_utterances, "num_items": len(items),
        "wall_seconds": round(seconds, 3), "items": items,
    }
