"""Transcripts made by a model for audio that has none: ``--replay_audio``'s labels, cached, and the labels
of ``bench/real_speech_set.py``.

A fine-tune keeps what its base model could do by replaying speech of the old domain (``--replay_datasets``),
but users often hold that audio without transcripts. The base model itself then labels it, once, with beam
search: replayed with ``--distill_rows replay``, those rows ask the fine-tune to keep answering as the base
model did, which needs the base model's own words, not correct ones. Labels are cached by the audio's
content and the labelling settings (``labels.jsonl``, one line per clip, appended as each batch is done), so
a second run, a resumed run or another rank decodes nothing, and a run killed while labelling loses at most
one batch.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import files
from ..audio import SAMPLE_RATE, decode_example_audio, encode_wav, load_audio
from ..data.loading import load_custom_dataset
from ..data.schema import AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, LANGUAGE_COLUMN, TEXT_COLUMN, is_saved_dataset
from ..errors import UserError
from ..model import loading, sources
from ..text import language_code

logger = logging.getLogger(__name__)

# Beam 5: openai-whisper's and faster-whisper's beam size, the base model's best decoding.
LABEL_BEAMS = 5
# Whisper's own cap on tokens sampled per 30 s window (openai-whisper's sample_len = n_text_ctx // 2 = 224),
# less the 4 prompt tokens.
LABEL_MAX_NEW_TOKENS = 220
LABEL_BATCH_SIZE = 8  # windows decoded together (beam 5: 40 hypotheses)
# A clip is labelled in windows that fit Whisper's 30 s input; a longer file is cut into equal parts.
WINDOW_SECONDS = 30.0
# openai-whisper's compression_ratio_threshold: a text zlib shrinks more than this is a repetition loop
# ("4-4-4-4 ...", "ha ha ha ..."), which the base model emits on some short or odd clips; replayed, such a
# label would teach the fine-tune the loop.
LOOP_COMPRESSION_RATIO = 2.4
REPLAY_AUDIO_DIR = "replay_audio"  # in --output_dir: the cache and the labelled dataset
CACHE_FILE = "labels.jsonl"


@dataclass(frozen=True)
class LabelSettings:
    """Which model labels, and how: the cache key of every label, recorded in the training summary."""

    model: str
    language: Optional[str] = None  # a Whisper code; None: each clip's detected language (English for .en models)
    num_beams: int = LABEL_BEAMS
    max_new_tokens: int = LABEL_MAX_NEW_TOKENS

    @property
    def key(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Label:
    """One clip's transcript and the language token it was decoded with (None: an English-only model)."""

    text: str
    language: Optional[str]

    @property
    def looped(self):
        """Whether the text is a repetition loop (:data:`LOOP_COMPRESSION_RATIO`)."""
        return compression_ratio(self.text) > LOOP_COMPRESSION_RATIO


def compression_ratio(text):
    """How many times zlib shrinks ``text`` (UTF-8), as openai-whisper measures it; 0 for an empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class Clip:
    """A window of audio to label: 16 kHz mono float32, with where it came from."""

    id: str
    source: str
    audio: np.ndarray  # (samples,)

    @functools.cached_property  # looked up many times per run: hashed once
    def sha256(self):
        return hashlib.sha256(np.ascontiguousarray(self.audio, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class ReplayAudio:
    """What ``--replay_audio`` became: the labelled dataset replayed, and how its labels were made."""

    sources: Tuple[str, ...]
    dataset: Optional[str]  # the data_prep-style dataset written from the labels; None when every label is empty
    cache: str
    settings: LabelSettings
    clips: int
    seconds: float
    decoded: int  # clips labelled by this run
    cached: int  # clips whose label came from the cache
    empty: int  # clips the base model heard no words in: not replayed
    looped: int  # clips whose label is a repetition loop: not replayed
    languages: Dict[str, int]  # replayed clips per language token


class Labeller:
    """A model loaded once to label 16 kHz clips of at most 30 s, one window each (beam search by default).

    ``language``: the prompt's language for every clip (multilingual models); ``None``: the language saved
    with the model, else each clip's own (transformers' ``detect_language``), decoded in that language.
    """

    def __init__(self, model: str, language: Optional[str] = None, num_beams: int = LABEL_BEAMS,
                 max_new_tokens: int = LABEL_MAX_NEW_TOKENS, batch_size: int = LABEL_BATCH_SIZE, device="cpu"):
        source = sources.resolve_model(model, "model_name")
        generation_config = loading.generation_config_of(source)
        self.english_only = loading.is_english_only(generation_config)
        # As the model decodes by default: the language given, else the one saved with it (a model we
        # fine-tuned), else each clip's detected one.
        self.language = None if self.english_only else language_code(
            language or getattr(generation_config, "language", None))
        self.processor = loading.load_processor(source.processor_path)
        self.model = loading.load_model(source.model_path, device)
        if self.english_only:
            loading.skip_language_detection(self.model)
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "return_timestamps": False}
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def _detect(self, inputs):
        """The Whisper code of each row's most likely language token (transformers' ``detect_language``)."""
        ids = self.model.detect_language(inputs)  # (B,) or (B, 1) language token ids
        return [token[2:-2] for token in self.processor.tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist())]

    @torch.inference_mode()
    def _generate(self, inputs, language):
        kwargs = dict(self.generate_kwargs) if self.english_only else {
            **self.generate_kwargs, "language": language, "task": "transcribe"}
        tokens = self.model.generate(inputs, **kwargs)  # (B, generated), prompt stripped
        return [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]

    def label(self, clips: Dict[str, np.ndarray], progress=None) -> Dict[str, Label]:
        """{clip id: :class:`Label`}; ``progress(clips done)`` after each batch."""
        extractor = self.processor.feature_extractor
        ids = list(clips)
        labels = {}
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start:start + self.batch_size]
            inputs = extractor([clips[i] for i in batch], sampling_rate=SAMPLE_RATE,
                               return_tensors="pt").input_features.to(self.device)  # (B, n_mels, 3000)
            if self.english_only:
                languages = [None] * len(batch)
            elif self.language:
                languages = [self.language] * len(batch)
            else:
                languages = self._detect(inputs)
            for code in sorted(set(languages), key=str):  # one generate call per language in the batch
                rows = [i for i, lang in enumerate(languages) if lang == code]
                texts = self._generate(inputs[rows], code)
                labels.update({batch[i]: Label(text.strip(), code) for i, text in zip(rows, texts)})
            if progress:
                progress(len(batch))
        return labels


def audio_clips(source: str) -> List[Clip]:
    """The clips of one ``--replay_audio`` entry: every audio file under a folder (searched recursively), or
    every row of a data_prep dataset (its text ignored); each cut into windows of at most 30 s."""
    clips = []
    if is_saved_dataset(source):
        dataset = load_custom_dataset(source)
        for uid, value in zip(dataset[ID_COLUMN], dataset[AUDIO_COLUMN]):
            clips += _windows(str(uid), source, decode_example_audio(value))
        return clips
    for path in audio_files(source):
        uid = os.path.splitext(os.path.relpath(path, source))[0].replace(os.sep, "/")
        clips += _windows(uid, source, load_audio(path))
    return clips


def audio_files(source: str) -> List[str]:
    """The audio files under ``source`` (audiomentations' list of extensions), sorted; a one-line error when
    ``source`` is neither a folder holding some nor a data_prep dataset."""
    from audiomentations.core.utils import SUPPORTED_EXTENSIONS, find_audio_files

    if not os.path.isdir(source):
        raise UserError(f"--replay_audio {source}: no such folder")
    found = sorted(str(p) for p in find_audio_files(source))
    if not found:
        raise UserError(f"--replay_audio {source}: no audio files in it (looked for {' '.join(SUPPORTED_EXTENSIONS)}) "
                        f"and not a data_prep dataset")
    return found


def check_source(source: str):
    """Fail in seconds, before any model is loaded, on an entry that holds no audio."""
    if not is_saved_dataset(source):
        audio_files(source)


def _windows(uid, source, audio):
    """``audio`` (samples,) as one clip, or cut into equal windows of at most :data:`WINDOW_SECONDS`."""
    window = int(WINDOW_SECONDS * SAMPLE_RATE)
    if len(audio) <= window:
        return [Clip(uid, source, audio)]
    parts = -(-len(audio) // window)  # ceil
    bounds = np.linspace(0, len(audio), parts + 1).astype(int)
    return [Clip(f"{uid}#{k}", source, audio[a:b]) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]


def read_cache(path, settings: LabelSettings) -> Dict[str, Label]:
    """{audio sha256: label} of the cache lines made with ``settings``; a line cut off by a kill is skipped."""
    labels = {}
    if not os.path.isfile(path):
        return labels
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d: not a whole JSON line (a run killed while writing it); it is labelled "
                               "again", path, number)
                continue
            if entry.get("settings") == settings.key:
                labels[entry["sha256"]] = Label(entry["text"], entry["language"])
    return labels


def replay_audio(sources, settings: LabelSettings, output_dir, device="cpu") -> ReplayAudio:
    """Label every clip of ``sources`` not yet in the cache under ``output_dir``/replay_audio, and write the
    labelled clips as a dataset (audio, sentence, id, duration, language) that training reads like a data_prep
    folder. Its folder is named by its content, so a changed set never reuses an older feature cache."""
    folder = os.path.join(output_dir, REPLAY_AUDIO_DIR)
    os.makedirs(folder, exist_ok=True)
    cache = os.path.join(folder, CACHE_FILE)
    clips = [clip for source in sources for clip in audio_clips(source)]
    known = read_cache(cache, settings)
    todo = {}
    for clip in clips:
        if clip.sha256 not in known:
            todo.setdefault(clip.sha256, clip)
    logger.info("--replay_audio: %d clip(s), %d labelled before; labelling %d with %s (beam %d)", len(clips),
                len(clips) - sum(1 for c in clips if c.sha256 in todo), len(todo), settings.model,
                settings.num_beams)
    if todo:
        labeller = Labeller(settings.model, settings.language, settings.num_beams, settings.max_new_tokens,
                            device=device)
        items = list(todo.values())
        with tqdm(total=len(items), desc="labelling --replay_audio", unit="clip") as bar:
            for start in range(0, len(items), LABEL_BATCH_SIZE):  # cached batch by batch: a kill loses one
                part = items[start:start + LABEL_BATCH_SIZE]
                labels = labeller.label({c.sha256: c.audio for c in part}, progress=bar.update)
                _append(cache, settings, part, labels)
                known.update(labels)
    kept = [clip for clip in clips if known[clip.sha256].text and not known[clip.sha256].looped]
    dataset = _write_dataset(folder, kept, known) if kept else None
    if not kept:
        logger.warning("--replay_audio: the base model heard no words (or only a repetition loop) in any of the %d "
                       "clip(s): nothing to replay", len(clips))
    languages = Counter(known[clip.sha256].language or "en" for clip in kept)
    return ReplayAudio(tuple(sources), dataset, cache, settings, len(clips),
                       round(sum(len(c.audio) for c in clips) / SAMPLE_RATE, 2),
                       decoded=sum(1 for c in clips if c.sha256 in todo),
                       cached=sum(1 for c in clips if c.sha256 not in todo),
                       empty=sum(1 for c in clips if not known[c.sha256].text),
                       looped=sum(1 for c in clips if known[c.sha256].looped), languages=dict(sorted(languages.items())))


def _append(cache, settings, clips, labels):
    """One cache line per clip, flushed to disk before the next batch is decoded; a line a kill cut off is
    ended first, so that the new lines stay whole."""
    lines = [json.dumps({"sha256": clip.sha256, "settings": settings.key, "source": clip.source, "id": clip.id,
                         "text": labels[clip.sha256].text, "language": labels[clip.sha256].language},
                        ensure_ascii=False) + "\n" for clip in clips]
    with open(cache, "a+b") as f:  # appends go to the end wherever the last-byte check leaves the position
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write("".join(lines).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _write_dataset(folder, clips, labels):
    from datasets import Audio, Dataset

    from ..data.corpus import prep_features, small_write_batches

    content = hashlib.sha256("\n".join(f"{c.id} {c.sha256} {labels[c.sha256].text} {labels[c.sha256].language}"
                                       for c in clips).encode("utf-8")).hexdigest()[:16]
    path = os.path.join(folder, f"dataset-{content}")
    if is_saved_dataset(path):
        return path
    rows = [{ID_COLUMN: f"{i:06d}-{clip.id}", AUDIO_COLUMN: {"bytes": encode_wav(clip.audio, SAMPLE_RATE),
                                                           "path": f"{i:06d}.wav"},
             TEXT_COLUMN: labels[clip.sha256].text, DURATION_COLUMN: len(clip.audio) / SAMPLE_RATE,
             LANGUAGE_COLUMN: labels[clip.sha256].language or "en"}
            for i, clip in enumerate(clips)]
    dataset = Dataset.from_list(rows, features=prep_features(SAMPLE_RATE, with_language=True))
    dataset = dataset.cast_column(AUDIO_COLUMN, Audio(sampling_rate=SAMPLE_RATE))
    with files.atomic_dir(path) as staged, small_write_batches():
        dataset.save_to_disk(staged)
    return path
