"""Featurisation for training: log-mel features computed once, labels tokenised, long items dropped.

Features are stored as float16 ``(n_mels, 3000)`` arrays (half the disk and memory of float32; the
log-mel values lie in [-1.5, 1.5] after Whisper's scaling, well inside float16's precision) and
turned back into float32 by the collator. With waveform augmentation (``--augment``) the training rows
keep their decoded audio instead, and the collator featurises each batch after augmenting it
(:mod:`whisper_finetune.data.augment`). Each example's labels carry its own language token
(:class:`LanguageLabels`) when it has a ``language``.
"""
import logging
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from datasets import Array2D, Features, Sequence, Value

from ..audio import CHUNK_SECONDS, DECODER_POSITIONS, N_FRAMES, AudioContext, decode_example_audio
from . import timestamps
from .bad_audio import BAD_LENGTH, decode_batch
from .loading import undecoded
from .schema import AUDIO_COLUMN, END_COLUMN, ID_COLUMN, LANGUAGE_COLUMN, RECORDING_COLUMN, START_COLUMN, TEXT_COLUMN
from ..errors import UserError
from ..text import language_code, language_name

logger = logging.getLogger(__name__)

MAX_LABEL_TOKENS = DECODER_POSITIONS  # prefix and text tokens of one label
FEATURE_COLUMN = "input_features"
LABEL_COLUMN = "labels"
LENGTH_COLUMN = "input_length"  # seconds of audio, kept for length-grouped sampling
CONTEXT_FRAMES = "context_frames"  # batch key: the batch's bucket in log-mel frames (dynamic audio context)
SAMPLES_COLUMN = "audio_samples"  # --augment: the decoded clip (float32), featurised per batch after augmentation
REPLAY_COLUMN = "replay_row"  # --distill_rows replay: 1 on --replay_datasets rows, 0 on training rows
INDEX_COLUMN = "example_index"  # --augment: the row's number, which (with the epoch) seeds its augmentation


def full_context_step(step, ratio):
    """Whether optimizer step ``step`` trains on the full 30 s window (a ``ratio`` share of steps).

    Decided by the step number alone: every process and every accumulated micro-batch of a step agree
    (they must, as a short-context step leaves the decoder's weights alone), and a resumed run makes
    the same choices with no RNG state to save.
    """
    if ratio <= 0:
        return False
    return zlib.crc32(int(step).to_bytes(8, "little")) / 2**32 < ratio


def clean_text(text, lowercase=False, remove_punctuation=False):
    """Optional text handling of training targets: lower-casing and/or punctuation removal."""
    if lowercase:
        text = text.lower()
    if remove_punctuation:
        text = "".join(" " if unicodedata.category(ch)[0] == "P" else ch for ch in text)
        text = re.sub(r"\s+", " ", text).strip()
    return text


class LanguageLabels:
    """Each example's own language token in its labels.

    Labels are tokenised with the tokenizer's prefix, ``<|startoftranscript|><|lang|><|task|><|notimestamps|>``
    for the run's language; an example whose ``language`` (a Whisper code or name) differs gets that
    language's token in their place, and one without a language gets ``default`` (``None``: the run's).
    English-only models have no language token: their examples must all be English.
    """

    def __init__(self, tokenizer, default=None, source="data"):
        self.tokenizer = tokenizer
        self.source = source  # names the data in errors
        # training._configure_tokenizer leaves an English-only tokenizer without a task (it has no
        # language or task tokens).
        self.english_only = tokenizer.task is None
        self._codes = {}
        self._heads = {}
        self.default = None  # code() falls back on it: set before the default itself is resolved
        self.default = self.code(default)
        prefix = list(tokenizer.prefix_tokens)
        # The part replaced: <|startoftranscript|>[<|lang|>]<|task|>, without a closing <|notimestamps|>
        # (timestamp labels have none, and both kinds go through relabel).
        notimestamps = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
        self._head_length = len(prefix) - (1 if prefix and prefix[-1] == notimestamps else 0)

    def code(self, value):
        """The Whisper code of ``value`` (no value: ``default``); a one-line error for an unknown language, or
        a language other than English on an English-only model."""
        if value is None or not str(value).strip():
            return self.default
        if value not in self._codes:
            try:
                code = language_code(value)
            except UserError as exc:
                raise UserError(f"{self.source}: {exc}") from None
            if code is None:
                code = self.default
            elif self.english_only and code != "en":
                raise UserError(f"{self.source}: holds {language_name(code).title()} ({code}) examples, but the model "
                                f"is English-only (.en) and can be trained on English only; use a multilingual "
                                f"Whisper model")
            self._codes[value] = code
        return self._codes[value]

    def check(self, values):
        """Resolve every distinct value once, before any featurising: bad languages fail in seconds."""
        for value in set(values):
            self.code(value)

    def relabel(self, ids, value):
        """``ids`` (tokenised with the tokenizer's prefix) with the language token of ``value``."""
        code = self.code(value)
        if code is None or self.english_only:
            return ids
        if code not in self._heads:
            self._heads[code] = self.tokenizer.convert_tokens_to_ids(
                ["<|startoftranscript|>", f"<|{code}|>", f"<|{self.tokenizer.task}|>"])
        return self._heads[code] + list(ids[self._head_length:])


def _languages_of(dataset, processor, languages):
    """``languages``, else the default :class:`LanguageLabels` when the rows have a language column."""
    if languages is None and LANGUAGE_COLUMN in (dataset.column_names or ()):
        languages = LanguageLabels(processor.tokenizer)
    return languages


def _preparer(processor, sampling_rate, lowercase=False, remove_punctuation=False, languages=None,
              keep_audio=False, max_bad=0, bad_log=None):
    """A batched map function: common-schema rows -> features (float16) or, with ``keep_audio``, the decoded
    audio (featurised later, after augmentation), labels (each row's language token when it has one)
    and input length. With ``max_bad`` above 0 a row whose audio cannot be decoded is recorded in
    ``bad_log`` and gets the length ``BAD_LENGTH`` (dropped later, :mod:`.bad_audio`)."""
    extractor, tokenizer = processor.feature_extractor, processor.tokenizer

    def prepare(batch):
        values = batch[AUDIO_COLUMN]
        audios, bad = decode_batch(values, batch.get(ID_COLUMN) or [None] * len(values), sampling_rate, max_bad,
                                   bad_log)
        texts = [clean_text(t, lowercase, remove_punctuation) for t in batch[TEXT_COLUMN]]
        labels = tokenizer(texts).input_ids
        if languages is not None:  # rows without a language column take the default language
            values = batch[LANGUAGE_COLUMN] if LANGUAGE_COLUMN in batch else [None] * len(labels)
            labels = [languages.relabel(ids, value) for ids, value in zip(labels, values)]
        if keep_audio:
            prepared = {SAMPLES_COLUMN: audios}
        else:
            # Whisper's extractor expects 16 kHz; other rates are the user's explicit choice.
            mels = extractor(audios, sampling_rate=extractor.sampling_rate, return_tensors="np").input_features
            prepared = {FEATURE_COLUMN: mels.astype(np.float16)}  # (batch, n_mels, 3000)
        lengths = [BAD_LENGTH if broken else len(a) / sampling_rate for a, broken in zip(audios, bad)]
        return {**prepared, LABEL_COLUMN: labels, LENGTH_COLUMN: lengths}

    return prepare


def _schema(processor, keep_audio=False):
    inputs = ({SAMPLES_COLUMN: Sequence(Value("float32"))} if keep_audio else
              {FEATURE_COLUMN: Array2D((processor.feature_extractor.feature_size, N_FRAMES), "float16")})
    return Features({**inputs, LABEL_COLUMN: Sequence(Value("int32")), LENGTH_COLUMN: Value("float32")})


def featurize(dataset, processor, sampling_rate, num_proc=1, lowercase=False, remove_punctuation=False,
              cache_file_name=None, desc="featurising", languages=None, keep_audio=False, max_bad=0, bad_log=None):
    """Map a common-schema dataset to ``input_features`` (float16), ``labels`` and ``input_length``.

    The tokenizer must already carry the prefix tokens (language/task) the labels should start with;
    rows with a ``language`` get theirs instead (``languages``: a :class:`LanguageLabels`, by default
    one with the tokenizer's language). With ``keep_audio`` the rows keep their decoded audio
    (``audio_samples``) instead of features, for augmentation. With ``cache_file_name`` the result is
    written there and reused when it exists (other ranks of a distributed run read what the main
    process wrote). With ``max_bad`` above 0, rows whose audio cannot be decoded are kept with the length
    ``BAD_LENGTH``, for :func:`.bad_audio.drop_bad` to name, count and drop.
    """
    num_proc = max(1, min(num_proc, len(dataset)))
    prepare = _preparer(processor, sampling_rate, lowercase, remove_punctuation,
                        _languages_of(dataset, processor, languages), keep_audio, max_bad, bad_log)
    return dataset.map(prepare, batched=True,
                       batch_size=16, remove_columns=dataset.column_names, features=_schema(processor, keep_audio),
                       num_proc=num_proc if num_proc > 1 else None,
                       cache_file_name=cache_file_name, load_from_cache_file=cache_file_name is not None,
                       desc=desc)


def featurize_windows(dataset, processor, sampling_rate, ratio, lowercase=False, remove_punctuation=False,
                      cache_file_name=None, fingerprint=None, desc="featurising timestamp windows", languages=None):
    """The timestamp-training counterpart of :func:`featurize`: one row per window, not per utterance.

    Rows cut from recordings (``recording_id``/``start``/``end`` columns) are packed into windows of at
    most 30 s (:func:`timestamps.plan_windows`); a window's audio is its segments placed at their times,
    silence between them (the dataset holds the segments, not the recordings). ``ratio`` of the windows
    (:func:`timestamps.keeps_timestamps`) get timestamp labels; the others are labelled
    ``<|notimestamps|> text`` and their audio ends with their last whole segment, so no labels miss
    speech that the audio holds. Rows without a recording are windows of their own:
    ``<|0.00|> text<|duration|>`` or today's labels. A window's language token is its rows' language
    (``languages``, as in :func:`featurize`); one recording's segments must share one. Returns
    ``(dataset, counts)``.
    """
    texts = [clean_text(t, lowercase, remove_punctuation) for t in dataset[TEXT_COLUMN]]
    segmented = all(c in dataset.column_names for c in (RECORDING_COLUMN, START_COLUMN, END_COLUMN))
    planned = timestamps.plan_windows(
        dataset[ID_COLUMN], texts, *(dataset[c] for c in (RECORDING_COLUMN, START_COLUMN, END_COLUMN))
        if segmented else ())
    plans = planned.plans
    with_timestamps = sum(timestamps.keeps_timestamps(plan.key, ratio) for plan in plans)
    counts = {"windows": len(plans), "windows_with_timestamps": with_timestamps,
              "dropped_segments_over_30s": planned.dropped_over_30s,
              "dropped_overlapping_segments": planned.dropped_overlapping}
    logger.info("%d utterance(s) -> %d training window(s), %d with timestamps (ratio %g); dropped %d segment(s) "
                "over %d s and %d overlapping an earlier one", len(dataset), len(plans), with_timestamps, ratio,
                planned.dropped_over_30s, CHUNK_SECONDS, planned.dropped_overlapping)
    extractor, tokenizer = processor.feature_extractor, processor.tokenizer
    prefix = list(tokenizer.prefix_tokens)[:-1]  # <|startoftranscript|>[<|lang|><|task|>] without <|notimestamps|>
    languages = _languages_of(dataset, processor, languages)
    window_languages = _window_languages(dataset, plans, languages) if languages is not None else None

    stored = undecoded(dataset)  # decoded below, by soundfile

    def read(row):
        return decode_example_audio(stored[row][AUDIO_COLUMN], sampling_rate)

    def window_audio(plan, seconds):
        audio = np.zeros(int(round(seconds * sampling_rate)), np.float32)  # (samples,) silence between segments
        for row, offset in zip(plan.rows, plan.offsets):
            first = int(round(offset * sampling_rate))
            if first < len(audio):
                clip = read(row)[:len(audio) - first]
                audio[first:first + len(clip)] = clip
        return audio

    def prepare(batch):
        audios, labels = [], []
        for number in batch["window"]:
            plan = plans[number]
            stamped = timestamps.keeps_timestamps(plan.key, ratio)
            window = plan.window
            if window is None:
                audio = read(plan.rows[0])
                ids = (timestamps.single_segment_labels(len(audio) / sampling_rate, plan.text, tokenizer, prefix)
                       if stamped else tokenizer(plan.text).input_ids)
            elif stamped:
                audio = window_audio(plan, window.end - window.start)
                ids = timestamps.timestamp_labels(window, tokenizer, prefix)
            else:
                audio = window_audio(plan, window.segments[-1].end - window.start)
                ids = tokenizer(" ".join(s.text for s in window.segments)).input_ids
            audios.append(audio)
            labels.append(ids if window_languages is None else languages.relabel(ids, window_languages[number]))
        mels = extractor(audios, sampling_rate=extractor.sampling_rate, return_tensors="np").input_features
        return {FEATURE_COLUMN: mels.astype(np.float16),  # (batch, n_mels, 3000)
                LABEL_COLUMN: labels, LENGTH_COLUMN: [len(a) / sampling_rate for a in audios]}

    from datasets import Dataset

    index = Dataset.from_dict({"window": list(range(len(plans)))})
    featurised = index.map(prepare, batched=True, batch_size=16, remove_columns=["window"],
                           features=_schema(processor), cache_file_name=cache_file_name,
                           load_from_cache_file=cache_file_name is not None, new_fingerprint=fingerprint, desc=desc)
    return featurised, counts


def _window_languages(dataset, plans, languages):
    """The language of each window (checked before any featurising): the one its rows share."""
    if LANGUAGE_COLUMN not in dataset.column_names:
        return None
    values = dataset[LANGUAGE_COLUMN]
    languages.check(values)
    chosen = []
    for plan in plans:
        codes = sorted({str(languages.code(values[row])) for row in plan.rows})
        if len(codes) > 1:
            raise UserError(f"{languages.source}: recording {plan.window.recording_id} has segments in several "
                            f"languages ({', '.join(codes)}); a timestamp window carries one language token, so "
                            f"split the recording into one per language")
        chosen.append(values[plan.rows[0]])
    return chosen


def featurize_stream(stream, processor, sampling_rate, lowercase=False, remove_punctuation=False, languages=None,
                     max_bad=0, bad_log=None):
    """The streaming counterpart of :func:`featurize` + :func:`drop_too_long` for an ``IterableDataset``.

    Decoding, resampling, log-mel features and tokenising happen lazily as examples are read; clips
    over 30 s and labels over 448 tokens are skipped on the fly (they cannot be counted in advance),
    and a row's language is checked when it is read. With ``max_bad`` above 0 an example whose audio cannot
    be decoded is recorded in ``bad_log`` (a :class:`.bad_audio.BadAudioLog`) and skipped; the training loop
    counts them there.
    """
    prepare = _preparer(processor, sampling_rate, lowercase, remove_punctuation,
                        languages or LanguageLabels(processor.tokenizer), max_bad=max_bad, bad_log=bad_log)

    def prepare_and_filter(batch):  # a batched map may return fewer rows than it was given
        out = prepare(batch)
        keep = [i for i, (seconds, ids) in enumerate(zip(out[LENGTH_COLUMN], out[LABEL_COLUMN]))
                if 0 <= seconds <= CHUNK_SECONDS and len(ids) <= MAX_LABEL_TOKENS]
        return {key: [values[i] for i in keep] for key, values in out.items()}

    columns = [c for c in (stream.column_names or [AUDIO_COLUMN, TEXT_COLUMN]) if c]
    return stream.map(prepare_and_filter, batched=True, batch_size=16, remove_columns=columns,
                      features=_schema(processor))


def drop_too_long(dataset, label):
    """Drop clips over 30 s and labels over 448 tokens; returns ``(dataset, counts)`` and logs counts."""
    lengths = dataset[LENGTH_COLUMN]
    label_lengths = [len(ids) for ids in dataset.with_format("numpy", columns=[LABEL_COLUMN])[LABEL_COLUMN]]
    too_long_audio = {i for i, s in enumerate(lengths) if s > CHUNK_SECONDS}
    too_long_labels = {i for i, n in enumerate(label_lengths) if n > MAX_LABEL_TOKENS}
    keep = [i for i in range(len(dataset)) if i not in too_long_audio and i not in too_long_labels]
    counts = {"kept": len(keep), "dropped_over_30s": len(too_long_audio),
              "dropped_labels_over_448_tokens": len(too_long_labels - too_long_audio)}
    logger.info("%s: kept %d, dropped %d clip(s) over %d s and %d label(s) over %d tokens", label, counts["kept"],
                counts["dropped_over_30s"], CHUNK_SECONDS, counts["dropped_labels_over_448_tokens"],
                MAX_LABEL_TOKENS)
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), counts


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """Stack features and pad labels with -100 (ignored by the loss), as in transformers' example.

    A leading decoder-start token is stripped from the labels: the model prepends it again when it
    shifts the labels right to make the decoder inputs. Rows that hold audio instead of features
    (``--augment``) are augmented and featurised here by ``waveforms``, for the epoch last given to
    :meth:`set_epoch`; evaluation rows always hold features.
    """

    decoder_start_token_id: int
    context: Optional[AudioContext] = None  # set: each batch also says its bucket (dynamic audio context)
    waveforms: Optional[Callable] = None  # augment.OnTheFlyFeatures: items -> (features, seconds)

    def set_epoch(self, epoch):
        """Called by the trainer before each epoch's batches are drawn (also in a resumed run)."""
        if self.waveforms is not None:
            self.waveforms.epoch = epoch

    def __call__(self, items):
        if self.waveforms is not None and SAMPLES_COLUMN in items[0]:
            features, seconds = self.waveforms(items)  # seconds after augmentation (speed changes them)
        else:
            features = torch.stack([torch.as_tensor(np.asarray(item[FEATURE_COLUMN])) for item in items])
            seconds = [float(np.asarray(item[LENGTH_COLUMN])) for item in items]
        labels = [torch.as_tensor(np.asarray(item[LABEL_COLUMN]), dtype=torch.long) for item in items]
        padded = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)  # (batch, tokens)
        if padded.shape[1] and (padded[:, 0] == self.decoder_start_token_id).all():
            padded = padded[:, 1:]
        batch = {FEATURE_COLUMN: features.float(), LABEL_COLUMN: padded}  # features: (batch, n_mels, 3000)
        if REPLAY_COLUMN in items[0]:
            batch[REPLAY_COLUMN] = torch.tensor([bool(np.asarray(item[REPLAY_COLUMN])) for item in items])  # (batch,)
        if self.context is not None:
            # The features stay whole: whether this batch is cut to its bucket is the trainer's choice
            # per optimizer step (features.full_context_step).
            batch[CONTEXT_FRAMES] = self.context.frames(max(seconds))
        return batch
