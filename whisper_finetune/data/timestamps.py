"""Timestamp-training windows: long annotated recordings packed into 30 s windows with timestamp labels.

Today's labels (:mod:`whisper_finetune.data.features`) are ``<|startoftranscript|>[<|lang|><|task|>]
<|notimestamps|> text <|endoftext|>`` for clips of at most 30 s. Whisper was pre-trained on a mix:
some windows are transcribed with ``<|notimestamps|>``, the others as segments framed by timestamp
tokens relative to the window start::

    <|startoftranscript|><|en|><|transcribe|><|0.00|> Hello<|1.50|><|2.10|> there<|5.08|><|28.40|><|endoftext|>

The last ``<|28.40|>`` stands alone: a segment starts there but runs past the window's end, so its
text and end time belong to the next window, which starts at 28.40 s (into this one). Training on
such windows keeps the model able to predict timestamps (which long-form transcription relies on)
after fine-tuning.

This module is pure (no audio, no datasets, no model): it turns a recording's segments into
:class:`Window` spans and the spans into label token ids. The caller cuts the audio of each window
(``window.start`` .. ``window.end``), chooses per window with :func:`keeps_timestamps` whether its
labels carry timestamps or ``<|notimestamps|>``, and drops labels that :func:`within_label_limit`
rejects (over Whisper's 448 decoder positions), as :func:`features.drop_too_long` does today.

Text is used as given: the caller applies ``features.clean_text`` (lower-casing, punctuation) to
segment texts exactly as to today's labels.
"""
import logging
import math
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

from ..audio import CHUNK_SECONDS, DECODER_POSITIONS, ENCODER_FRAMES
from ..errors import UserError

logger = logging.getLogger(__name__)

# One timestamp position per encoder frame: 30 s / 1500 positions = 0.02 s.
TIME_PRECISION = CHUNK_SECONDS / ENCODER_FRAMES
# The encoder's input window: no window (and no single segment in it) may be longer.
WINDOW_SECONDS = float(CHUNK_SECONDS)
# <|0.00|> .. <|30.00|>: both ends included, so one more token than positions (1501).
TIMESTAMP_TOKENS = ENCODER_FRAMES + 1
# Seconds of float noise tolerated when comparing times (e.g. 4.52 + 30.0 == 34.519999999999996, so a
# 4.52-34.52 segment would not fit its own 30 s window); far below one 0.02 s timestamp step.
_TOLERANCE = 1e-6

NO_TIMESTAMPS_TOKEN = "<|notimestamps|>"
# Training windows of a recording start up to this long before their first segment (pack_windows):
# about the longest pause between sentences of our long-form sets (0.3-1.5 s), with room to spare.
MAX_LEAD_SECONDS = 2.0


@dataclass(frozen=True)
class Segment:
    """A transcribed stretch of a recording: ``start`` and ``end`` in seconds from its beginning."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Window:
    """One training example: the audio span ``start`` .. ``end`` (seconds in the recording) and its labels.

    ``end`` is ``start + 30`` or the recording's end, whichever comes first. ``segments`` lie wholly
    inside the span; ``next_start`` is the start of the segment that the window's end cuts (its
    labels end with that time alone), or ``None`` when no segment is cut.
    """

    recording_id: str
    start: float
    end: float
    segments: tuple[Segment, ...]
    next_start: Optional[float]

    @property
    def key(self) -> str:
        """A name that is stable across runs and unique within a corpus (a recording's windows start at
        distinct segments): the natural key for :func:`keeps_timestamps`."""
        return f"{self.recording_id}@{self.start:.3f}"


@dataclass(frozen=True)
class PackResult:
    """The windows of one recording, and how many segments were dropped for lasting over 30 s alone."""

    windows: tuple[Window, ...]
    dropped_over_30s: int


def _check_segments(recording_id: str, segments: Sequence[Segment], duration: float) -> None:
    """Reject segments that could not give valid labels (``segments`` sorted by start).

    Overlapping segments are refused rather than repaired: their timestamps would go backwards
    (``<|2.00|><|1.80|>``), which Whisper reads as the start of a new 30 s window.
    """
    previous = None
    for segment in segments:
        if segment.start < 0 or segment.end < segment.start or segment.end > duration + _TOLERANCE:
            raise UserError(f"recording {recording_id!r}: segment {segment.start:g}-{segment.end:g} s "
                            f"must have 0 <= start <= end <= the recording's duration ({duration:g} s)")
        if previous is not None and segment.start < previous.end - _TOLERANCE:
            raise UserError(f"recording {recording_id!r}: segments {previous.start:g}-{previous.end:g} s and "
                            f"{segment.start:g}-{segment.end:g} s overlap; timestamps must not go backwards")
        previous = segment


def pack_windows(recording_id: str, segments: Sequence[Segment], duration: float,
                 max_lead: float = 0.0) -> PackResult:
    """Greedily pack a recording's segments, in time order, into windows of at most 30 s.

    A window starts at the first segment not yet used and takes every following segment that ends
    within 30 s of its start. The first segment that starts inside the window but ends after it is
    cut, as in Whisper's pre-training: the window's labels end with its start time alone and the
    next window starts at it. A segment starting after the window's end simply starts the next
    window (the silence between is never trained on). A segment longer than 30 s fits no window: it
    is dropped and counted.

    With ``max_lead`` > 0 a window starts up to that many seconds before its first segment (never
    before the previous segment's end), a share of the pause chosen by the crc32 of the window's
    place: without it every window would open with speech at ``<|0.00|>``, and the model would learn
    to put the first cue at 0.00 even after a pause, which sequential long-form decoding (each
    window starts where the last cue ended) always meets. Raises :class:`UserError` for segments outside the recording or
    overlapping each other.
    """
    ordered = sorted(segments, key=lambda s: (s.start, s.end))
    _check_segments(recording_id, ordered, duration)
    windows, dropped, i, previous_end = [], 0, 0, 0.0
    while i < len(ordered):
        first = ordered[i]
        if first.end - first.start > WINDOW_SECONDS + _TOLERANCE:
            logger.debug("recording %r: dropped segment %g-%g s (over %g s)", recording_id, first.start,
                         first.end, WINDOW_SECONDS)
            dropped += 1
            i += 1
            previous_end = first.end  # no later window may lead into its speech
            continue
        pause = max(0.0, first.start - previous_end)
        share = zlib.crc32(f"{recording_id}@{first.start:.3f}".encode("utf-8")) / 2**32
        start = first.start - min(max_lead, pause) * share
        end = min(start + WINDOW_SECONDS, duration)
        inside = []
        while i < len(ordered) and ordered[i].end <= end + _TOLERANCE:
            inside.append(ordered[i])
            i += 1
        previous_end = inside[-1].end if inside else previous_end
        # Segments are sorted and do not overlap: the one after the last fit is cut or starts later.
        cut = i < len(ordered) and ordered[i].start < end - _TOLERANCE
        windows.append(Window(recording_id, start, end, tuple(inside), ordered[i].start if cut else None))
    return PackResult(tuple(windows), dropped)


def timestamp_index(seconds: float) -> int:
    """``seconds`` as a count of 0.02 s steps, rounded to the nearest (halves up), within 0 .. 1500.

    The clamp only absorbs float noise at the ends (e.g. 30.0000001 s): callers never pass times
    outside a window.
    """
    return min(TIMESTAMP_TOKENS - 1, max(0, math.floor(seconds / TIME_PRECISION + 0.5)))


def known_token_id(tokenizer, token):
    """The id of ``token``, or None when the vocabulary lacks it (transformers 4 answers None for an unknown
    token, transformers 5 the id of the unknown-token token)."""
    found = tokenizer.convert_tokens_to_ids(token)
    return None if found is None or (found == tokenizer.unk_token_id and token != tokenizer.unk_token) else found


def timestamp_token_id(tokenizer, seconds: float) -> int:
    """The id of the timestamp token nearest ``seconds`` (``<|1.50|>`` for 1.509).

    Whisper's vocabulary puts ``<|0.00|>`` .. ``<|30.00|>`` right after ``<|notimestamps|>`` (as
    openai/whisper's tokenizer and transformers' ``timestamp_begin`` count them), so the id is
    counted from there: tokenizer files saved before the Hub checkpoints named those tokens (the
    ones ``../shared/models/prepare.py`` builds) lack the names but the model has the ids.
    """
    no_timestamps = known_token_id(tokenizer, NO_TIMESTAMPS_TOKEN)
    if no_timestamps is None:
        raise UserError(f"the tokenizer has no {NO_TIMESTAMPS_TOKEN} token: timestamp training needs a Whisper "
                        f"tokenizer (its timestamp tokens follow that one)")
    return no_timestamps + 1 + timestamp_index(seconds)


def _text_ids(tokenizer, text: str) -> list[int]:
    """Segment text with one leading space, as Whisper writes text after a timestamp (`` Hello``).

    The text is otherwise tokenised as is, like today's labels; empty text gives no tokens.
    """
    text = text.strip()
    return tokenizer.encode(" " + text, add_special_tokens=False) if text else []


def _checked_prefix(tokenizer, prefix_ids: Sequence[int]) -> list[int]:
    """``prefix_ids`` as a new list; ``<|notimestamps|>`` in it would contradict the timestamps that follow."""
    if known_token_id(tokenizer, NO_TIMESTAMPS_TOKEN) in prefix_ids:
        raise ValueError(f"prefix_ids must not contain {NO_TIMESTAMPS_TOKEN} in timestamp labels")
    return list(prefix_ids)


def timestamp_labels(window: Window, tokenizer, prefix_ids: Sequence[int]) -> list[int]:
    """Label ids of a window: prefix, then ``<|start|> text<|end|>`` per segment, the cut segment's
    start alone if any, and ``<|endoftext|>``.

    ``prefix_ids`` are ``<|startoftranscript|>`` and, for multilingual models, ``<|lang|><|task|>``
    (never ``<|notimestamps|>``). Times are relative to ``window.start``, rounded to 0.02 s.
    """
    ids = _checked_prefix(tokenizer, prefix_ids)
    for segment in window.segments:
        ids.append(timestamp_token_id(tokenizer, segment.start - window.start))
        ids.extend(_text_ids(tokenizer, segment.text))
        ids.append(timestamp_token_id(tokenizer, segment.end - window.start))
    if window.next_start is not None:
        ids.append(timestamp_token_id(tokenizer, window.next_start - window.start))
    ids.append(tokenizer.eos_token_id)
    return ids


def single_segment_labels(duration: float, text: str, tokenizer, prefix_ids: Sequence[int]) -> list[int]:
    """Timestamp labels for a clip with no segment times (a row of today's corpora): the whole clip
    as one segment, ``<|0.00|> text<|duration|>``, the duration capped at 30 s."""
    if duration < 0:
        raise ValueError(f"duration {duration:g} s must not be negative")
    end = min(duration, WINDOW_SECONDS)
    return timestamp_labels(Window("", 0.0, end, (Segment(0.0, end, text),), None), tokenizer, prefix_ids)


def keeps_timestamps(key: str, ratio: float) -> bool:
    """Whether the window named ``key`` (e.g. :attr:`Window.key`) is trained with timestamps.

    A ``ratio`` share of keys say yes; the rest are trained with ``<|notimestamps|>``. Decided by
    the crc32 of the key, like :func:`features.full_context_step` for steps: the same choice in every
    process, every epoch and every run, with no RNG state. Raising ``ratio`` only adds keys.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"timestamp ratio {ratio:g} must be between 0 and 1")
    return zlib.crc32(key.encode("utf-8")) / 2**32 < ratio


def within_label_limit(labels: Sequence[int]) -> bool:
    """Whether ``labels`` fit Whisper's 448 decoder positions; the caller drops those that do not.

    Counted like :func:`features.drop_too_long` counts today's labels (prefix included).
    """
    return len(labels) <= DECODER_POSITIONS


@dataclass(frozen=True)
class WindowPlan:
    """Where a training window's audio comes from: dataset rows placed at offsets in a silent span.

    ``window`` is the packed :class:`Window` of a recording's segments (its rows are those segments,
    in time order, then the cut segment's row if any); ``None`` for a row with no recording, which
    is a window of its own (``rows`` holds just it, ``text`` its text, its length is its audio's).
    """

    key: str  # what :func:`keeps_timestamps` decides on
    rows: tuple[int, ...]
    offsets: tuple[float, ...]  # seconds from the window's start where each row's audio begins
    window: Optional[Window] = None
    text: str = ""


@dataclass(frozen=True)
class WindowPlans:
    """The windows of a dataset, and how many segments were dropped for lasting over 30 s alone."""

    plans: tuple[WindowPlan, ...]
    dropped_over_30s: int
    dropped_overlapping: int = 0


def plan_windows(ids: Sequence[str], texts: Sequence[str], recording_ids: Optional[Sequence[Optional[str]]] = None,
                 starts: Optional[Sequence[float]] = None, ends: Optional[Sequence[float]] = None) -> WindowPlans:
    """Group the rows of a dataset into training windows (metadata only: no audio is read).

    Rows that share a ``recording_id`` are packed with :func:`pack_windows` (the recording is taken to
    end at its last segment: nothing after it is known); rows without one (``None`` or empty) stay
    one-row windows keyed by their id. A segment that overlaps an earlier one of its recording
    (data_prep keeps such pairs, with a warning) is left out of the windows and counted: timestamps
    may not go backwards.
    """
    recording_ids = recording_ids if recording_ids is not None else [None] * len(ids)
    by_recording: dict[str, list[int]] = {}
    plans = []
    for row, recording in enumerate(recording_ids):
        if recording:
            by_recording.setdefault(recording, []).append(row)
        else:
            plans.append(WindowPlan(str(ids[row]), (row,), (0.0,), None, texts[row]))
    dropped = overlapping = 0
    for recording, rows in by_recording.items():
        rows = sorted(rows, key=lambda r: (float(starts[r]), float(ends[r])))
        kept = []
        for row in rows:
            if kept and float(starts[row]) < float(ends[kept[-1]]) - _TOLERANCE:
                overlapping += 1
                continue
            kept.append(row)
        row_of = {(float(starts[r]), float(ends[r])): r for r in kept}
        # A window's next_start is its cut segment's own start (the same float): the first kept row
        # starting there (kept is in pack_windows' order).
        first_row_at = {}
        for r in kept:
            first_row_at.setdefault(float(starts[r]), r)
        segments = [Segment(float(starts[r]), float(ends[r]), texts[r]) for r in kept]
        packed = pack_windows(recording, segments, max(s.end for s in segments), MAX_LEAD_SECONDS)
        dropped += packed.dropped_over_30s
        for window in packed.windows:
            rows = [row_of[(s.start, s.end)] for s in window.segments]
            starts_placed = [s.start for s in window.segments]
            if window.next_start is not None:
                rows.append(first_row_at[window.next_start])
                starts_placed.append(window.next_start)
            plans.append(WindowPlan(window.key, tuple(rows), tuple(start - window.start for start in starts_placed),
                                    window))
    return WindowPlans(tuple(plans), dropped, overlapping)
