"""The checks every corpus reader shares: each utterance's audio, duration, segment and language, with the
problem named by utterance id and where it was found; :func:`check_entries` runs them on the entries of the
readers of other formats (:mod:`.formats`) as the Kaldi reader (:mod:`.kaldi`) runs them on its lines."""
import logging
import os
from dataclasses import dataclass, replace
from typing import Optional


from ..audio import audio_info
from ..errors import UserError
from ..text import language_code
from .schema import MAX_SECONDS

logger = logging.getLogger(__name__)

# How far (seconds) a segment may end past its recording: segment times are rounded (Kaldi writes 2 decimals).
END_TOLERANCE = 0.01
MAX_OVERLAPS_SHOWN = 10  # overlapping pairs named in the warning


@dataclass(frozen=True)
class Utterance:
    """One validated entry: id, transcription, absolute audio path, duration from the file header.

    For a segment of a ``wav.scp`` recording, ``path`` is the recording's, ``start``/``end`` are the
    segment's times in it (seconds, as written in ``segments``) and ``duration`` is the segment's.
    """

    uid: str
    text: str
    path: str
    duration: float
    speaker: Optional[str] = None  # from the optional utt2spk file
    recording_id: Optional[str] = None  # the rest only for segments
    start: Optional[float] = None
    end: Optional[float] = None
    language: Optional[str] = None  # Whisper code from the optional languages file


@dataclass(frozen=True)
class Recording:
    """One checked recording (a ``wav.scp`` entry, or any file segments are cut from): absolute path and
    duration, or the problem all its segments share."""

    rid: str
    path: Optional[str] = None
    duration: float = 0.0
    reason: Optional[str] = None  # set when the recording cannot be used
    problem: Optional[str] = None


def check_audio_file(value, source_dir):
    """Check an audio file as a corpus lists it (``value``: absolute, or relative to ``source_dir``).

    Returns ``(absolute path, duration from the header, None)``, or ``(None, 0.0, (reason, message))``
    when no path is given, the file is missing or it is not readable audio (the message names ``value``).
    """
    if not value:
        return None, 0.0, ("missing audio", "no audio path given")
    path = os.path.expanduser(value)
    path = os.path.abspath(path if os.path.isabs(path) else os.path.join(source_dir, path))
    if not os.path.isfile(path):
        return None, 0.0, ("missing audio", f"audio file {value} not found")
    try:
        return path, audio_info(path)[0], None
    except UserError:
        return None, 0.0, ("unreadable audio", f"audio file {value} is not readable audio")


def check_clip(duration, value, max_duration=MAX_SECONDS):
    """``(reason, message)`` for a whole-file clip (``value`` as listed) that is empty or longer than
    ``max_duration``, else ``None``."""
    if duration <= 0:
        return "empty audio", f"audio file {value} holds no samples"
    if duration > max_duration:
        return "longer than 30 s", f"{duration:.1f} s is longer than Whisper's {max_duration:g} s window"
    return None


def check_recording(rid, value, source_dir, where=None):
    """The :class:`Recording` ``rid`` whose file ``value`` lists (see :func:`check_audio_file`); a problem's
    message starts with ``where`` when given (e.g. the wav.scp line)."""
    path, duration, problem = check_audio_file(value, source_dir)
    if problem:
        return Recording(rid, reason=problem[0], problem=f"{where}: {problem[1]}" if where else problem[1])
    return Recording(rid, path, duration)


def check_segment(recording, uid, start, end, where, max_duration=MAX_SECONDS):
    """Check the segment ``start``-``end`` (seconds) of a checked ``recording``.

    Returns ``((reason, message), None)`` for a problem, else ``(None, utterance)`` (text and speaker
    left for the caller). A segment may end at most :data:`END_TOLERANCE` seconds past its recording.
    """
    rid = recording.rid
    if recording.problem:
        return (recording.reason, f"{where}: {recording.problem}"), None
    if start < 0:
        return ("negative start", f"{where}: start {start:g} s is negative"), None
    if end <= start:
        return ("end not after start", f"{where}: end {end:g} s is not after start {start:g} s"), None
    if end > recording.duration + END_TOLERANCE:
        return ("beyond end of recording", f"{where}: end {end:g} s is beyond the end of recording {rid} "
                f"({recording.duration:.2f} s)"), None
    duration = min(end, recording.duration) - start
    if duration > max_duration:
        return ("longer than 30 s", f"{where}: {duration:.1f} s is longer than Whisper's {max_duration:g} s "
                f"window"), None
    return None, Utterance(uid, "", recording.path, duration, recording_id=rid, start=start, end=end)


def by_recording(utterances):
    """Segments grouped by recording (in order of first appearance), each group sorted by start time."""
    groups = {}
    for utt in utterances:
        groups.setdefault(utt.recording_id, []).append(utt)
    return [tuple(sorted(group, key=lambda u: (u.start, u.end))) for group in groups.values()]


def warn_overlaps(segments):
    """Log one warning naming the pairs of kept segments of one recording that overlap (they stay kept)."""
    pairs = []
    for group in by_recording(segments):
        latest = None  # the segment reaching furthest so far
        for seg in group:
            if latest is not None and seg.start < latest.end:
                pairs.append(f"{latest.uid} ({latest.start:g}-{latest.end:g} s) and {seg.uid} "
                             f"({seg.start:g}-{seg.end:g} s) of recording {seg.recording_id}")
            if latest is None or seg.end > latest.end:
                latest = seg
    if pairs:
        more = len(pairs) - MAX_OVERLAPS_SHOWN
        logger.warning("%d pair(s) of overlapping segments (all kept): %s%s", len(pairs),
                       "; ".join(pairs[:MAX_OVERLAPS_SHOWN]), f"; ... and {more} more" if more > 0 else "")


def check_language(value):
    """``(Whisper code, None)`` for a language code or name Whisper knows, else ``(None, (reason, message))``."""
    try:
        return language_code(value), None
    except UserError:
        return None, ("unknown language", f"unknown language {value!r}; use a Whisper language code or name "
                                          f"(en, hi, Hindi...)")


def check_entries(entries, problems=(), max_duration=MAX_SECONDS):
    """Check the :class:`~whisper_finetune.data.formats.Entry` list a reader of another format found, with
    the Kaldi reader's checks; returns ``(utterances, problems)`` like :func:`validate_corpus`.

    ``problems`` (what the reader itself found, e.g. malformed lines) come first. An id listed twice is a
    problem of both entries; then, per entry, an empty transcription, a missing speaker (where the corpus
    has speakers), an unknown language, and the audio: a whole file (:func:`check_audio_file`,
    :func:`check_clip`) or a segment of a recording (:func:`check_segment`; each file's header read once).
    Each message starts ``id <uid> (<where the entry is written>)``.
    """
    problems = list(problems)
    first, bad = {}, set()
    for entry in entries:
        if entry.uid in first:
            problems.append(("duplicate id", entry.uid, f"{entry.where}: id {entry.uid} repeats {first[entry.uid]}"))
            bad.add(entry.uid)
        else:
            first[entry.uid] = entry.where
    recordings = {}  # (folder, file as listed) -> Recording: each file's header is read once
    utterances = []
    for entry in entries:
        if entry.uid in bad:
            continue
        problem, utterance = check_entry(entry, recordings, max_duration)
        if problem:
            problems.append((problem[0], entry.uid, problem[1]))
        else:
            utterances.append(utterance)
    if utterances and utterances[0].recording_id is not None:
        warn_overlaps(utterances)
    return utterances, problems


def check_entry(entry, recordings, max_duration):
    """``((reason, message), None)`` for the first problem of one entry, else ``(None, utterance)``."""
    where = f"id {entry.uid} ({entry.where})"
    if not entry.text:
        return ("empty transcription", f"{where}: empty transcription"), None
    if entry.speaker == "":
        return ("no speaker", f"{where}: no speaker"), None
    language, problem = check_language(entry.language) if entry.language else (None, None)
    if problem:
        return (problem[0], f"{where}: {problem[1]}"), None
    if entry.start is None:
        path, duration, problem = check_audio_file(entry.audio, entry.base_dir)
        problem = problem or check_clip(duration, entry.audio, max_duration)
        if problem:
            return (problem[0], f"{where}: {problem[1]}"), None
        utterance = Utterance(entry.uid, "", path, duration)
    else:
        key = (entry.base_dir, entry.audio)
        if key not in recordings:
            recordings[key] = check_recording(entry.recording_id or entry.audio, entry.audio, entry.base_dir)
        problem, utterance = check_segment(recordings[key], entry.uid, entry.start, entry.end, where, max_duration)
        if problem:
            return problem, None
    return None, replace(utterance, text=entry.text, speaker=entry.speaker, language=language)
