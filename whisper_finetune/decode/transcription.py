"""Transcribe one audio file of any length with any Decoder; write txt, srt, vtt or json.

Two ways to segment audio longer than Whisper's 30 s window, chosen by :func:`plan_segmentation`:

* **timestamps** (``--timestamps True``, PyTorch backend, a model that can predict timestamps): the
  whole recording is decoded by transformers' long-form ``generate``, sequentially on the timestamps
  Whisper predicts (each next 30 s window starts where the last complete segment ended, as in
  openai-whisper's ``transcribe``); one segment per predicted segment, with word times on request
  (cross-attention alignment).
* **cut-at-silence** (the default, and for models fine-tuned on ``<|notimestamps|>`` only): the audio
  is cut into pieces of at most 30 s, each cut placed at the quietest moment (lowest short-time energy)
  within the last ``search_seconds`` of its window, so a cut falls between words rather than inside
  one. The pieces are decoded in batches and their texts joined; nothing is truncated. Each piece gives
  one segment with its exact start and end time.

Why not overlapping windows stitched on shared words: a window that starts inside a word often makes
Whisper stop after a word or two ("The"), and stitching on such a text loses whole sentences; cutting
in pauses avoids both the broken start and the stitching.

With ``vad`` non-speech is removed first (:mod:`whisper_finetune.decode.vad`) and every time is mapped back.
"""
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import numpy as np

from ..model import loading, sources
from ..audio import CHUNK_SECONDS, N_SAMPLES, SAMPLE_RATE, load_audio
from .config import DEFAULT_SEARCH_SECONDS, TranscribeConfig, check_search_seconds, check_values, output_format
from .backends import make_decoder
from ..errors import OptionError
from ..files import atomic_write_text
from .vad import remove_non_speech

logger = logging.getLogger(__name__)

ENERGY_FRAME = SAMPLE_RATE // 50  # 20 ms frames for the energy curve
ENERGY_SMOOTHING = 5  # frames (100 ms) averaged, so a pause must last, not just a zero crossing
TIMESTAMPS = "timestamps"  # the two segmentations (json "segmentation")
CUT_AT_SILENCE = "cut-at-silence"
SUMMARY_FILE = "training_summary.json"  # written beside every model our trainer saves (reporting.SUMMARY_FILE)


@dataclass(frozen=True)
class Word:
    """One word of a segment decoded on timestamps (``--word_timestamps True``)."""

    word: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class Segment:
    """One decoded piece of the audio (cut-at-silence) or one predicted segment (timestamps)."""

    start: float  # seconds
    end: float
    text: str
    words: Optional[Tuple[Word, ...]] = None  # with word timestamps only

    def to_dict(self):
        """``start``, ``end``, ``text`` (and ``words`` when word times were asked for)."""
        data = asdict(self)
        if self.words is None:
            del data["words"]
        return data


@dataclass
class Transcript:
    """The joined text, its segments, and what produced them (``metadata["segmentation"]`` says how it was cut)."""

    text: str
    segments: list
    duration: float
    metadata: dict = field(default_factory=dict)
    decode_seconds: float = 0.0  # voice activity detection, features and decoding; model loading excluded


def cut_points(audio, search_seconds=DEFAULT_SEARCH_SECONDS):
    """Sample positions ``[0, c1, ..., len(audio)]`` splitting ``audio`` (mono, 16 kHz) into pieces of at
    most 30 s; each inner cut is at the (latest) quietest 100 ms within the last ``search_seconds`` of its window."""
    window = CHUNK_SECONDS * SAMPLE_RATE
    search = int(search_seconds * SAMPLE_RATE)
    cuts = [0]
    while len(audio) - cuts[-1] > window:
        low = cuts[-1] + window - search
        frames = audio[low:cuts[-1] + window][: search // ENERGY_FRAME * ENERGY_FRAME]
        energy = np.square(frames.reshape(-1, ENERGY_FRAME)).mean(axis=1)  # (frames,)
        smooth = np.convolve(energy, np.ones(ENERGY_SMOOTHING) / ENERGY_SMOOTHING, mode="same")
        quietest = len(smooth) - 1 - int(np.argmin(smooth[::-1]))  # the latest of equally quiet frames
        cuts.append(low + quietest * ENERGY_FRAME + ENERGY_FRAME // 2)
    return cuts + [len(audio)]


def transcribe_array(audio, decoder, feature_extractor, search_seconds=DEFAULT_SEARCH_SECONDS, batch_size=16,
                     context_frames=None):
    """Transcribe a mono float32 array at 16 kHz of any length; returns ``(text, segments)``.

    ``context_frames`` (seconds -> log-mel frames; ``DecodingOptions.context_frames``) cuts each batch to its
    bucket for a dynamic audio context; ``None`` keeps Whisper's 30 s window.
    """
    check_search_seconds(search_seconds)
    cuts = cut_points(audio, search_seconds)
    pieces = list(zip(cuts, cuts[1:]))
    texts = []
    for i in range(0, len(pieces), batch_size):
        chunks = [audio[a:b] for a, b in pieces[i:i + batch_size]]
        features = feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        frames = context_frames(max(len(c) for c in chunks) / SAMPLE_RATE) if context_frames else None
        features = features[:, :, :frames] if frames else features  # (B, n_mels, 3000 or the bucket's frames)
        texts.extend(t.strip() for t in decoder.decode(features.astype(np.float32)))
    segments = [Segment(round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3), t) for (a, b), t in zip(pieces, texts) if t]
    return " ".join(s.text for s in segments), segments


def can_predict_timestamps(model_config, generation_config, model_folder=None):
    """Whether a model can decode on timestamps, and why: ``(bool, reason)``.

    Fine-tuning on ``<|notimestamps|>`` alone unlearns the timestamp tokens, although the checkpoint still
    has them. Our trainer records what it did in ``config.timestamp_training``: a dict (``{"ratio": r}``,
    trained with ``--timestamps True``) can, ``False`` cannot. Without that attribute, a folder holding
    ``training_summary.json`` is an older fine-tune of ours (trained on ``<|notimestamps|>`` only): it
    cannot. Any other model (stock Whisper, third-party fine-tunes) can when its generation config
    knows the timestamp tokens (``no_timestamps_token_id``), as transformers' long-form ``generate`` needs.
    """
    trained = getattr(model_config, "timestamp_training", None) if model_config is not None else None
    if isinstance(trained, dict):
        return True, f"fine-tuned with timestamps (timestamp_training {json.dumps(trained)})"
    if trained is not None:
        return False, f"fine-tuned on <|notimestamps|> only (timestamp_training {json.dumps(trained)})"
    if model_folder and os.path.isfile(os.path.join(model_folder, SUMMARY_FILE)):
        return False, f"fine-tuned by an older version of this project on <|notimestamps|> only ({SUMMARY_FILE})"
    if getattr(generation_config, "no_timestamps_token_id", None) is None:
        return False, "its generation config has no no_timestamps_token_id"
    return True, "a stock or third-party Whisper with timestamp tokens"


def _model_config(source):
    """The model's ``config.json`` (a LoRA adapter's base model's); ``None`` when there is none to read."""
    from transformers import WhisperConfig

    for path in (source.model_path, os.path.isdir(source.model_path) and sources.adapter_base(source.model_path)):
        if path:
            try:
                return WhisperConfig.from_pretrained(path)
            except OSError:
                continue
    return None


def _summary_folder(source):
    """The folder whose ``training_summary.json`` tells an older fine-tune of ours: the model folder, or the
    training output folder of a ``checkpoint-N`` inside it."""
    if not os.path.isdir(source.model_path):
        return None
    folder = os.path.abspath(source.model_path)
    if os.path.basename(folder).startswith("checkpoint-") and not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
        return os.path.dirname(folder)
    return folder


def plan_segmentation(config, prepared):
    """``(segmentation, reason)``: :data:`TIMESTAMPS` when ``config.timestamps`` asks for it and the model can
    (:func:`can_predict_timestamps`), else :data:`CUT_AT_SILENCE`. Logged, since it decides what the cues are.

    Raises :class:`OptionError` when an option that needs timestamps was given for a model that has none.
    """
    if not config.timestamps:
        segmentation, reason = CUT_AT_SILENCE, "--timestamps False"
    else:
        can, why = can_predict_timestamps(_model_config(prepared.source), prepared.generation_config,
                                          _summary_folder(prepared.source))
        segmentation, reason = (TIMESTAMPS, f"the model is {why}") if can else \
            (CUT_AT_SILENCE, f"--timestamps True, but the model cannot predict timestamps: {why}")
        needs_timestamps = {"word_timestamps": config.word_timestamps,
                            "condition_on_previous_text": config.decoding.guards.condition_on_previous_text}
        for name, value in needs_timestamps.items():
            if value and not can:
                raise OptionError(name, True, f"needs decoding on timestamps, and this model cannot predict "
                                  f"timestamps ({why}): its audio would be cut at silence")
    logger.info("segmentation: %s (%s)", segmentation, reason)
    return segmentation, reason


def long_form_features(audio, feature_extractor):
    """``(features, attention_mask)`` of a whole recording for :meth:`TorchDecoder.decode_long_form`:
    (1, n_mels, frames) float32 and (1, frames).

    Up to 30 s the audio is padded to 30 s before the log-mel, as every short-form decode is (transformers
    would pad the log-mel itself with zeros, which is not what silence looks like); longer audio keeps its
    own length, as the long-form ``generate`` expects.
    """
    padding = {} if len(audio) <= N_SAMPLES else {"truncation": False, "padding": "longest"}
    inputs = feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="np",
                               **padding)
    return inputs.input_features.astype(np.float32), inputs.attention_mask


def words_of(tokens, token_times, tokenizer, start, end):
    """The words of one segment decoded on timestamps, with their times.

    ``tokens``: the segment's ids (timestamp tokens included) and ``token_times`` each token's start (seconds,
    DTW on cross-attention). A word starts at a text token whose text starts with a space (punctuation joins
    the word before); it lasts until the next token after it starts (openai-whisper's rule). Times are kept
    inside ``[start, end]``, the segment's. Languages written without spaces give one word per segment.
    """
    words, current, first = [], [], None  # token ids and index of the first token of the word being read
    # Whisper's special and timestamp tokens all come after the text vocabulary, which ends at <|endoftext|>.
    text_vocabulary = tokenizer.eos_token_id

    def close(next_index):
        if current:
            until = token_times[next_index] if next_index < len(token_times) else end
            word = tokenizer.decode(current).strip()
            if word:
                t0 = min(max(token_times[first], start), end)
                words.append(Word(word, round(t0, 3), round(min(max(until, t0), end), 3)))

    for i, token in enumerate(tokens):
        if token >= text_vocabulary:
            close(i)
            current, first = [], None
            continue
        if current and tokenizer.decode([token]).startswith(" "):
            close(i)
            current, first = [], None
        if not current:
            first = i
        current.append(token)
    close(len(tokens))
    return tuple(words)


def transcribe_long_form(audio, decoder, feature_extractor, word_timestamps=False):
    """Transcribe a mono float32 array at 16 kHz on predicted timestamps (a :class:`TorchDecoder`); returns
    ``(text, segments)`` with one segment per predicted segment (those without a letter or digit dropped), times
    held inside the audio."""
    features, mask = long_form_features(audio, feature_extractor)
    tokenizer = decoder.processor.tokenizer
    duration = len(audio) / SAMPLE_RATE
    segments = []
    for predicted in decoder.decode_long_form(features, mask, word_timestamps):
        text = tokenizer.decode(predicted["tokens"], skip_special_tokens=True).strip()
        if not any(ch.isalnum() for ch in text):
            # Nothing but punctuation: what Whisper writes, confidently, into silence (a cue of "." per
            # window), so no threshold skips it; a subtitle with no word in it is no subtitle.
            continue
        start = min(max(predicted["start"], 0.0), duration)
        end = min(max(predicted["end"], start), duration)
        words = words_of(predicted["tokens"], predicted["token_times"], tokenizer, start, end) \
            if word_timestamps else None
        segments.append(Segment(round(start, 3), round(end, 3), text, words))
    return " ".join(s.text for s in segments), segments


def map_segments(segments, time_map):
    """``segments`` with their (and their words') times mapped from the joined speech to the original audio.

    A segment starting just before a junction of speech spans starts after it (Whisper starts a segment
    where the one before ended, often in the pause); a word does not (its start is where its sound is).
    """
    def mapped(start, end, snap_start=True):
        start = time_map.to_original(start, "start", snap=snap_start)
        # a start snapped past a junction can pass an end that was not: the end then stays with it
        return round(start, 3), round(max(time_map.to_original(end, "end"), start), 3)

    out = []
    for seg in segments:
        words = None if seg.words is None else \
            tuple(Word(w.word, *mapped(w.start, w.end, snap_start=False)) for w in seg.words)
        out.append(Segment(*mapped(seg.start, seg.end), seg.text, words))
    return out


def _timestamp(seconds, separator):
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def format_transcript(transcript: Transcript, fmt):
    """Render as ``txt``, ``srt``, ``vtt`` or ``json`` (segments with start/end seconds)."""
    if fmt == "txt":
        return transcript.text + "\n"
    if fmt == "json":
        return json.dumps({"text": transcript.text, "duration": transcript.duration,
                           "segments": [s.to_dict() for s in transcript.segments], **transcript.metadata},
                          indent=2, ensure_ascii=False) + "\n"
    separator = "," if fmt == "srt" else "."
    blocks = ["WEBVTT\n"] if fmt == "vtt" else []
    for number, seg in enumerate(transcript.segments, start=1):
        times = f"{_timestamp(seg.start, separator)} --> {_timestamp(seg.end, separator)}"
        blocks.append((f"{number}\n" if fmt == "srt" else "") + f"{times}\n{seg.text}\n")
    return "\n".join(blocks)


def transcribe(config: TranscribeConfig) -> Transcript:
    """Load the model, transcribe ``config.path_to_audio`` whole, and write ``config.output`` when given.

    The segmentation (timestamps or cut-at-silence) is chosen by :func:`plan_segmentation` and recorded in
    ``metadata["segmentation"]``; with ``config.vad`` the times of every segment and word are the original
    audio's.
    """
    check_values(config)
    fmt = output_format(config.output) if config.output else None
    device = loading.decoding_device(config.device, config.decoding.backend)
    prepared = loading.prepare_model(config, config.decoding)
    segmentation, _ = plan_segmentation(config, prepared)
    audio = load_audio(config.path_to_audio)  # (samples,) mono float32, 16 kHz
    if len(audio) == 0:
        raise OptionError("path_to_audio", config.path_to_audio, "the file holds no audio samples")
    options = prepared.options
    start = time.perf_counter()
    speech, time_map = remove_non_speech(audio) if config.vad else (audio, None)
    decode_seconds = time.perf_counter() - start
    if len(speech) == 0:
        logger.info("no speech found in %s: the transcript is empty", config.path_to_audio)
        text, segments = "", []
    else:
        decoder = make_decoder(prepared, device, long_form=segmentation == TIMESTAMPS)
        start = time.perf_counter()
        if segmentation == TIMESTAMPS:
            text, segments = transcribe_long_form(speech, decoder, prepared.processor.feature_extractor,
                                                  config.word_timestamps)
        else:
            text, segments = transcribe_array(speech, decoder, prepared.processor.feature_extractor,
                                              config.search_seconds, options.batch_size, options.context_frames)
        if time_map is not None:
            segments = map_segments(segments, time_map)
        decode_seconds += time.perf_counter() - start
    tokenizer = prepared.processor.tokenizer
    # Decoding on timestamps starts without <|notimestamps|>: Whisper then predicts <|0.00|> first.
    prompt = prepared.prompt_text if segmentation == CUT_AT_SILENCE else "".join(tokenizer.convert_ids_to_tokens(
        loading.decoder_prompt_ids(tokenizer, options.language, options.task, no_timestamps=False,
                                    english_only=prepared.english_only)))
    metadata = {"audio": config.path_to_audio, "model": prepared.source.model_path, "language": options.language,
                "task": options.task, "decoder_prompt": prompt, "decoding": asdict(options),
                "segmentation": segmentation, "word_timestamps": config.word_timestamps, "vad": config.vad}
    if time_map is not None:
        metadata["speech_seconds"] = round(time_map.speech_seconds, 3)
    transcript = Transcript(text, segments, round(len(audio) / SAMPLE_RATE, 3), metadata, decode_seconds)
    if fmt:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        atomic_write_text(config.output, format_transcript(transcript, fmt))
        logger.info("wrote %s", config.output)
    return transcript
