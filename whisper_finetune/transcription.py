"""Transcribe one audio file of any length with any Decoder; write txt, srt, vtt or json.

Audio longer than Whisper's 30 s window is cut into pieces of at most 30 s, each cut placed at the
quietest moment (lowest short-time energy) within the last ``search_seconds`` of its window, so a
cut falls between words rather than inside one. The pieces are decoded in batches and their texts
joined; nothing is truncated. Each piece gives one segment with its exact start and end time.

Why not overlapping windows stitched on shared words: a window that starts inside a word often makes
Whisper stop after a word or two ("The"), and stitching on such a text loses whole sentences; cutting
in pauses avoids both the broken start and the stitching.
"""
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from . import modeling
from .audio import CHUNK_SECONDS, SAMPLE_RATE, load_audio
from .decoding import DecodingOptions, make_decoder, validate_options
from .errors import OptionError
from .files import atomic_write_text
from .modeling import ModelOptions
from .options import option

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")
DEFAULT_SEARCH_SECONDS = 8.0  # where, before the end of each 30 s window, a cut may go
ENERGY_FRAME = SAMPLE_RATE // 50  # 20 ms frames for the energy curve
ENERGY_SMOOTHING = 5  # frames (100 ms) averaged, so a pause must last, not just a zero crossing


@dataclass(frozen=True, kw_only=True)
class TranscribeConfig(ModelOptions):
    """Options of :func:`transcribe`: the model options plus one field per transcribe_audio.py flag."""

    path_to_audio: str = option(help="audio file (wav, flac, ogg, mp3; any rate, mono or stereo, any length)")
    output: Optional[str] = option(None, "also write the transcript to this file: .txt, .srt, .vtt or .json "
                                   "(segments with start/end seconds)")
    search_seconds: float = option(DEFAULT_SEARCH_SECONDS, "long audio is cut into pieces of at most 30 s, each cut "
                                   "at the quietest moment within the last this many seconds of its window (more "
                                   "than 0, at most 15)")
    decoding: DecodingOptions = DecodingOptions()


@dataclass(frozen=True)
class Segment:
    """One decoded piece of the audio."""

    start: float  # seconds
    end: float
    text: str


@dataclass
class Transcript:
    """The joined text, its segments, and what produced them."""

    text: str
    segments: list
    duration: float
    metadata: dict = field(default_factory=dict)


def check_search_seconds(search_seconds):
    """Raise :class:`UserError` unless ``0 < search_seconds <= 15``."""
    if not 0 < search_seconds <= CHUNK_SECONDS / 2:
        raise OptionError("search_seconds", search_seconds, f"must be more than 0 and at most {CHUNK_SECONDS / 2:g}")


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
                           "segments": [asdict(s) for s in transcript.segments], **transcript.metadata},
                          indent=2, ensure_ascii=False) + "\n"
    separator = "," if fmt == "srt" else "."
    blocks = ["WEBVTT\n"] if fmt == "vtt" else []
    for number, seg in enumerate(transcript.segments, start=1):
        times = f"{_timestamp(seg.start, separator)} --> {_timestamp(seg.end, separator)}"
        blocks.append((f"{number}\n" if fmt == "srt" else "") + f"{times}\n{seg.text}\n")
    return "\n".join(blocks)


def output_format(path):
    """The writer for ``path``'s extension; errors list the accepted ones."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise OptionError("output", path, f"unknown extension; use one of {', '.join('.' + f for f in OUTPUT_FORMATS)}")
    return fmt


def transcribe(config: TranscribeConfig) -> Transcript:
    """Load the model, transcribe ``config.path_to_audio`` whole, and write ``config.output`` when given."""
    fmt = output_format(config.output) if config.output else None
    if not os.path.isfile(config.path_to_audio):
        raise OptionError("path_to_audio", config.path_to_audio, "no such file")
    check_search_seconds(config.search_seconds)
    validate_options(config.decoding)
    device = modeling.decoding_device(config.device, config.decoding.backend)
    prepared = modeling.prepare_model(config, config.decoding)
    audio = load_audio(config.path_to_audio)  # (samples,) mono float32, 16 kHz
    if len(audio) == 0:
        raise OptionError("path_to_audio", config.path_to_audio, "the file holds no audio samples")
    options = prepared.options
    decoder = make_decoder(prepared, device)
    text, segments = transcribe_array(audio, decoder, prepared.processor.feature_extractor, config.search_seconds,
                                      options.batch_size, options.context_frames)
    metadata = {"audio": config.path_to_audio, "model": prepared.source.model_path, "language": options.language,
                "task": options.task, "decoder_prompt": prepared.prompt_text,
                "decoding": asdict(options)}
    transcript = Transcript(text, segments, round(len(audio) / SAMPLE_RATE, 3), metadata)
    if fmt:
        os.makedirs(os.path.dirname(os.path.abspath(config.output)), exist_ok=True)
        atomic_write_text(config.output, format_transcript(transcript, fmt))
        logger.info("wrote %s", config.output)
    return transcript
