"""data_prep: a Kaldi-style folder (``text`` + ``audio_paths``, optional ``utt2spk`` and ``languages``) -> a
validated dataset.

Other corpus formats (Common Voice, audiofolder, NeMo, Lhotse) are read by :mod:`whisper_finetune.data.formats`
into entries that :func:`check_entries` checks with the same checks as the Kaldi reader's; every format is
then written by the same :func:`prepare_dataset`, which records the source format beside the dataset.

Instead of ``audio_paths`` (one file per utterance) the folder may be a Kaldi data directory, whose
``segments`` cut each utterance from a recording listed in ``wav.scp``.

Every entry is checked first and each problem reported with its utterance id and line; the audio is
decoded, resampled and re-encoded as 16-bit WAV *inside* the dataset (so it survives the source files
being moved), a few dozen clips at a time (flat memory), and the dataset appears only when complete.
The columns are those of :mod:`whisper_finetune.data.loading`'s common schema plus ``duration`` (seconds), and
for segments ``recording_id``, ``start`` and ``end`` (seconds in the recording). An optional ``languages``
file (``<id> <code>``) adds a ``language`` column: each listed utterance's Whisper language code, which
training puts into its labels (rows without one take the run's ``--language``).
"""
import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
from unittest import mock
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import datasets
from datasets import Audio, Dataset, Features, Value

from ..audio import SAMPLE_RATE, audio_info, encode_wav, load_audio, load_audio_spans
from ..errors import DataValidationError, OptionError, UserError
from ..options import option
from ..text import language_code
from .formats import FORMATS, check_format_options, detect_format, read_entries, read_lines
from .loading import (AUDIO_COLUMN, DURATION_COLUMN, END_COLUMN, ID_COLUMN, LANGUAGE_COLUMN, MAX_SECONDS,
                      PREP_INFO_FILE, RECORDING_COLUMN, SPEAKER_COLUMN, START_COLUMN, TEXT_COLUMN)

logger = logging.getLogger(__name__)

# Rows buffered before each Arrow write: bounds data_prep memory (a row holds one encoded clip).
WRITER_BATCH_SIZE = 64
# How far (seconds) a segment may end past its recording: segment times are rounded (Kaldi writes 2 decimals).
END_TOLERANCE = 0.01
MAX_OVERLAPS_SHOWN = 10  # overlapping pairs named in the warning
SEGMENT_FORMAT = "<utt-id> <recording-id> <start-seconds> <end-seconds>"
LANGUAGES_FILE = "languages"  # optional: <utt-id> <language code or name>
# A wav.scp value data_prep cannot open as a file: Kaldi's piped commands, stdin and archive offsets.
_ARCHIVE_OFFSET = re.compile(r":[0-9]+$")


@dataclass(frozen=True)
class DataPrepConfig:
    """Options of :func:`prepare_dataset` (one per data_prep.py flag)."""

    source_data_dir: str = option(help="folder holding the corpus: `text` and `audio_paths` (or Kaldi's `wav.scp` + "
                                       "`segments`), or a Common Voice release, audiofolder, NeMo or Lhotse corpus")
    output_data_dir: str = option(help="folder to write the dataset to (must not exist unless --overwrite True)")
    sampling_rate: int = option(SAMPLE_RATE, "resample all audio to this rate (Hz)")
    num_proc: int = option(1, "processes decoding audio in parallel")
    skip_invalid: bool = option(False, "drop invalid utterances (and list them) instead of stopping")
    overwrite: bool = option(False, "replace an existing --output_data_dir")
    num_shards: Optional[int] = option(None, "write the dataset in this many Arrow shards (large corpora; training "
                                       "reads them memory-mapped)")
    max_shard_size: Optional[str] = option(None, "or: maximum size of one shard, e.g. 500MB")
    format: Optional[str] = option(None, "how the source folder is laid out", choices=FORMATS,
                                   default_text="detected from the folder's files")
    split: Optional[Tuple[str, ...]] = option(None, "common_voice: the release's .tsv file(s) to read, e.g. train dev",
                                              default_text="train")
    manifest: Optional[Tuple[str, ...]] = option(None, "nemo: the JSON-lines manifest(s); lhotse: a cuts manifest, or "
                                                 "a recordings and a supervisions manifest (absolute, or relative to "
                                                 "--source_data_dir)", default_text="the only one(s) in the folder")
    text_column: Optional[str] = option(None, "audiofolder: the metadata column holding the transcription",
                                        default_text="the one of transcription, sentence, text")
    max_duration: float = option(MAX_SECONDS, "longest clip kept, seconds (Whisper's window)", cli=False)


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


@dataclass
class PrepSummary:
    """What :func:`prepare_dataset` kept and dropped; ``str()`` gives the printed summary."""

    output_dir: str
    kept: int
    durations: list = field(default_factory=list, repr=False)
    dropped: dict = field(default_factory=dict)  # reason -> list of messages
    source_format: str = "kaldi"  # one of formats.FORMATS

    def __str__(self):
        lines = [f"wrote {self.output_dir}", f"source format: {self.source_format}", f"utterances kept: {self.kept}"]
        n_dropped = sum(len(v) for v in self.dropped.values())
        lines.append(f"utterances dropped: {n_dropped}")
        for reason, messages in sorted(self.dropped.items()):
            lines.append(f"  {reason}: {len(messages)}")
            lines.extend(f"    {m}" for m in messages)
        if self.durations:
            lines.append(f"total audio: {sum(self.durations) / 3600:.4f} h")
            lines.append(f"duration (s): min {min(self.durations):.2f}  mean {statistics.fmean(self.durations):.2f}"
                         f"  max {max(self.durations):.2f}")
        return "\n".join(lines)


def read_kaldi_file(path, needed="the source folder needs 'text' and 'audio_paths', or 'text', 'wav.scp' and "
                                  "'segments'; name another corpus format with --format"):
    """Read a ``<id> <value>`` file; returns ``[(line_number, id, value)]`` (blank lines skipped).

    Raises :class:`UserError` for a missing file (saying what is ``needed``) or invalid UTF-8, naming the line.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file ({needed})")
    entries = []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        entries.append((number, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return entries


def validate_corpus(source_dir, max_duration=MAX_SECONDS):
    """Check a Kaldi-style folder; returns ``(utterances, problems)``.

    The audio comes from ``audio_paths`` (``<id> <path>``, one file per utterance) or, in a Kaldi data
    directory, from ``segments`` cutting each utterance from a ``wav.scp`` recording (see
    :func:`_check_segment`); a folder with both is refused. ``problems`` is a list of
    ``(reason, uid, message)``; each message names the utterance id and the line number. Utterances
    with a problem are not in ``utterances``.
    """
    text_file = os.path.join(source_dir, "text")
    paths_file = os.path.join(source_dir, "audio_paths")
    segments_file = os.path.join(source_dir, "segments")
    if os.path.exists(segments_file) and os.path.exists(paths_file):
        raise UserError(f"{source_dir} has both audio_paths and segments: keep one (audio_paths lists one file per "
                        f"utterance; segments cuts utterances from the recordings in wav.scp)")
    if not os.path.exists(segments_file) and not os.path.exists(paths_file) \
            and os.path.exists(os.path.join(source_dir, "wav.scp")):
        raise UserError(f"{source_dir} has wav.scp but no segments file: add segments ({SEGMENT_FORMAT}) or list one "
                        f"file per utterance in audio_paths")
    index_name = "segments" if os.path.exists(segments_file) else "audio_paths"
    texts = read_kaldi_file(text_file)
    entries = read_kaldi_file(os.path.join(source_dir, index_name))
    recordings = _read_wav_scp(source_dir) if index_name == "segments" else None
    problems = []
    bad = set()

    def check_duplicates(entries, name):
        first = {}
        for number, uid, _ in entries:
            if uid in first:
                problems.append(("duplicate id", uid, f"{name} line {number}: id {uid} repeats line {first[uid]}"))
                bad.add(uid)
            else:
                first[uid] = number
        return first

    text_lines = check_duplicates(texts, "text")
    entry_lines = check_duplicates(entries, index_name)
    for uid, number in text_lines.items():
        if uid not in entry_lines:
            problems.append((f"id missing from {index_name}", uid,
                             f"text line {number}: id {uid} has no entry in {index_name}"))
            bad.add(uid)
    for uid, number in entry_lines.items():
        if uid not in text_lines:
            problems.append(("id missing from text", uid, f"{index_name} line {number}: id {uid} has no entry in text"))
            bad.add(uid)

    common_text = [uid for _, uid, _ in texts if uid in entry_lines and uid not in bad]
    common_entries = [uid for _, uid, _ in entries if uid in text_lines and uid not in bad]
    if common_text != common_entries:
        for a, b in zip(common_text, common_entries):
            if a != b:
                problems.append(("ids out of order", a, f"text line {text_lines[a]}: id {a}, but the matching "
                                 f"{index_name} line {entry_lines[b]} has id {b}; both files must list ids in the "
                                 f"same order"))
                break

    speakers = _read_speakers(source_dir, text_lines, problems, bad)
    languages = _read_languages(source_dir, text_lines, problems, bad)
    text_by_id = {uid: value for _, uid, value in texts}
    utterances = []
    for number, uid, value in entries:
        if uid in bad or uid not in text_by_id:
            continue
        where = f"id {uid} (text line {text_lines[uid]}, {index_name} line {number})"
        if not text_by_id[uid]:
            problems.append(("empty transcription", uid, f"{where}: empty transcription"))
            continue
        speaker = speakers.get(uid) if speakers is not None else None
        language = languages.get(uid)
        if recordings is not None:
            problem, utterance = _kaldi_segment(source_dir, recordings, uid, value, where, max_duration)
            if problem:
                problems.append((problem[0], uid, problem[1]))
            else:
                utterances.append(replace(utterance, text=text_by_id[uid], speaker=speaker, language=language))
            continue
        path, duration, problem = check_audio_file(value, source_dir)
        problem = problem or check_clip(duration, value, max_duration)
        if problem:
            problems.append((problem[0], uid, f"{where}: {problem[1]}"))
        else:
            utterances.append(Utterance(uid, text_by_id[uid], path, duration, speaker, language=language))
    if recordings is not None:
        _warn_overlaps(utterances)
    return utterances, problems


@dataclass
class WavScp:
    """Kaldi's ``wav.scp`` as read: each recording's first line and path, its repeated lines, and the
    recordings checked so far (each file's header is read once, however many segments it has)."""

    entries: dict = field(default_factory=dict)  # recording id -> (line number, path as written)
    repeats: dict = field(default_factory=dict)  # recording id -> [later line numbers]
    checked: dict = field(default_factory=dict)  # recording id -> Recording


def _read_wav_scp(source_dir):
    """Read Kaldi's ``wav.scp`` (``<recording-id> <path>``, relative paths from ``source_dir``).

    A piped command (``sox a.wav -t wav - |``), standard input (``-``) or an archive offset
    (``a.ark:1234``) raises :class:`UserError` naming the file, the line and the recording: data_prep
    opens the audio files itself and never runs commands from the data.
    """
    path = os.path.join(source_dir, "wav.scp")
    table = WavScp()
    for number, rid, value in read_kaldi_file(path, "a source folder with 'segments' needs 'wav.scp' "
                                                    "(<recording-id> <path>)"):
        kind = ("a piped command" if value.endswith("|") or value.startswith("|") else
                "standard input" if value == "-" else
                "an extended filename (archive offset)" if _ARCHIVE_OFFSET.search(value) else None)
        if kind:
            raise UserError(f"{path}, line {number}: recording {rid}: {value!r} is {kind}; data_prep reads only "
                            f"audio file paths: write the audio to files first and list those")
        if rid in table.entries:
            table.repeats.setdefault(rid, []).append(number)
        else:
            table.entries[rid] = (number, value)
    return table


def _recording(source_dir, recordings, rid):
    """The checked :class:`Recording` ``rid`` of ``recordings`` (its header read once), or ``None`` if unknown."""
    if rid not in recordings.entries:
        return None
    if rid not in recordings.checked:
        number, value = recordings.entries[rid]
        where = f"recording {rid} (wav.scp line {number})"
        if rid in recordings.repeats:
            lines = ", ".join(map(str, recordings.repeats[rid]))
            recording = Recording(rid, reason="duplicate recording id",
                                  problem=f"{where}: id {rid} repeats on wav.scp line(s) {lines}")
        else:
            recording = check_recording(rid, value, source_dir, where)
        recordings.checked[rid] = recording
    return recordings.checked[rid]


def _kaldi_segment(source_dir, recordings, uid, value, where, max_duration):
    """Check one ``segments`` entry (``value``: ``<recording-id> <start> <end>``) with :func:`check_segment`."""
    fields = value.split()
    try:
        times = [float(f) for f in fields[1:]]
    except ValueError:
        times = []
    if len(fields) != 3 or len(times) != 2 or not all(map(math.isfinite, times)):
        return ("malformed segment", f"{where}: expected '{SEGMENT_FORMAT}', got '{uid} {value}'"), None
    rid, (start, end) = fields[0], times
    recording = _recording(source_dir, recordings, rid)
    if recording is None:
        return ("unknown recording", f"{where}: recording {rid} has no entry in wav.scp"), None
    return check_segment(recording, uid, start, end, where, max_duration)


# ---------------------------------------------------------------------------------------------
# The checks every reader shares (Kaldi's above, formats.py's through check_entries)
# ---------------------------------------------------------------------------------------------
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


def _by_recording(utterances):
    """Segments grouped by recording (in order of first appearance), each group sorted by start time."""
    groups = {}
    for utt in utterances:
        groups.setdefault(utt.recording_id, []).append(utt)
    return [tuple(sorted(group, key=lambda u: (u.start, u.end))) for group in groups.values()]


def _warn_overlaps(segments):
    """Log one warning naming the pairs of kept segments of one recording that overlap (they stay kept)."""
    pairs = []
    for group in _by_recording(segments):
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


def _read_speakers(source_dir, text_lines, problems, bad):
    """``id -> speaker`` from the optional Kaldi ``utt2spk`` file (``None`` without one).

    With the file, every utterance needs a speaker (reports and per-speaker scores would otherwise
    silently leave some out); problems are added to ``problems`` and ``bad`` like the other files'.
    """
    path = os.path.join(source_dir, "utt2spk")
    if not os.path.exists(path):
        return None
    speakers = {}
    for number, uid, speaker in read_kaldi_file(path):
        if uid in speakers:
            problems.append(("duplicate id", uid, f"utt2spk line {number}: id {uid} is listed twice"))
            bad.add(uid)
        elif uid not in text_lines:
            problems.append(("id missing from text", uid, f"utt2spk line {number}: id {uid} has no entry in text"))
        elif not speaker:
            problems.append(("no speaker", uid, f"utt2spk line {number}: id {uid} has no speaker"))
            bad.add(uid)
        else:
            speakers[uid] = speaker
    for uid, number in text_lines.items():
        if uid not in speakers and uid not in bad:
            problems.append(("no speaker", uid, f"text line {number}: id {uid} has no entry in utt2spk"))
            bad.add(uid)
    return speakers


def _read_languages(source_dir, text_lines, problems, bad):
    """``id -> Whisper language code`` from the optional ``languages`` file (empty without one).

    Unlike utt2spk it may leave utterances out: those take the training run's ``--language``. A code or
    name Whisper does not know, a missing code or a repeated id is a problem of that utterance, reported
    and handled like the other files' (the utterance is dropped with ``--skip_invalid``).
    """
    path = os.path.join(source_dir, LANGUAGES_FILE)
    if not os.path.exists(path):
        return {}
    languages, first = {}, {}
    for number, uid, value in read_kaldi_file(path):
        if uid in first:
            problems.append(("duplicate id", uid, f"languages line {number}: id {uid} repeats line {first[uid]}"))
            bad.add(uid)
            continue
        first[uid] = number
        if uid not in text_lines:
            problems.append(("id missing from text", uid, f"languages line {number}: id {uid} has no entry in text"))
        elif not value:
            problems.append(("no language", uid, f"languages line {number}: id {uid} has no language code"))
            bad.add(uid)
        else:
            code, problem = check_language(value)
            if problem:
                problems.append((problem[0], uid, f"languages line {number}: id {uid}: {problem[1]}"))
                bad.add(uid)
            else:
                languages[uid] = code
    return languages


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
        problem, utterance = _check_entry(entry, recordings, max_duration)
        if problem:
            problems.append((problem[0], entry.uid, problem[1]))
        else:
            utterances.append(utterance)
    if utterances and utterances[0].recording_id is not None:
        _warn_overlaps(utterances)
    return utterances, problems


def _check_entry(entry, recordings, max_duration):
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


def _prep_features(sampling_rate, with_speaker=False, with_segments=False, with_language=False):
    columns = {ID_COLUMN: Value("string"), AUDIO_COLUMN: Audio(sampling_rate=sampling_rate),
               TEXT_COLUMN: Value("string"), DURATION_COLUMN: Value("float32")}
    if with_speaker:
        columns[SPEAKER_COLUMN] = Value("string")
    if with_language:
        columns[LANGUAGE_COLUMN] = Value("string")  # None for utterances the languages file leaves out
    if with_segments:
        columns.update({RECORDING_COLUMN: Value("string"), START_COLUMN: Value("float64"),
                        END_COLUMN: Value("float64")})
    return Features(columns)


def _row(utt, audio, sampling_rate, with_speaker, with_language=False):
    row = {ID_COLUMN: utt.uid, AUDIO_COLUMN: {"bytes": encode_wav(audio, sampling_rate), "path": f"{utt.uid}.wav"},
           TEXT_COLUMN: utt.text, DURATION_COLUMN: len(audio) / sampling_rate}
    if with_speaker:
        row[SPEAKER_COLUMN] = utt.speaker
    if with_language:
        row[LANGUAGE_COLUMN] = utt.language
    return row


def _generate_rows(shards, sampling_rate, with_speaker=False, with_language=False):
    """Decode one shard of utterances at a time; only one clip is in memory per worker."""
    for shard in shards:
        for utt in shard:
            yield _row(utt, load_audio(utt.path, sampling_rate), sampling_rate, with_speaker, with_language)


def _generate_segment_rows(shards, sampling_rate, with_speaker=False, with_language=False):
    """Cut the segments of one recording at a time (each shard holds whole recordings, so every
    recording is opened once, by one worker); only one clip is in memory per worker."""
    for shard in shards:
        for segments in shard:
            clips = load_audio_spans(segments[0].path, [(seg.start, seg.end) for seg in segments], sampling_rate)
            for seg, audio in zip(segments, clips):
                yield {**_row(seg, audio, sampling_rate, with_speaker, with_language),
                       RECORDING_COLUMN: seg.recording_id,
                       START_COLUMN: seg.start, END_COLUMN: seg.end}


def prepare_dataset(config: DataPrepConfig) -> PrepSummary:
    """Validate a corpus folder (Kaldi, or a format of :mod:`~whisper_finetune.data.formats`: ``config.format``,
    else detected) and write it as a dataset that ``load_from_disk`` opens, with :data:`PREP_INFO_FILE` beside
    it naming the source format.

    Invalid utterances raise :class:`DataValidationError` (all problems listed), or are dropped with
    ``skip_invalid``. Segments are written grouped by recording (in the order ``segments`` first names
    each), by start time within one, so that each recording is read once. The output is built in a
    temporary sibling folder and renamed into place only when complete, so a failure or Ctrl-C never
    leaves a half-written ``output_data_dir``.
    """
    out = os.path.abspath(config.output_data_dir)
    if not os.path.isdir(config.source_data_dir):
        raise OptionError("source_data_dir", config.source_data_dir, "no such folder")
    if os.path.exists(out) and not config.overwrite:
        raise UserError(f"--output_data_dir {config.output_data_dir} already exists; pass --overwrite to replace it")
    if config.sampling_rate <= 0:
        raise OptionError("sampling_rate", config.sampling_rate, "must be a positive number of Hz")

    source_format = config.format or detect_format(config.source_data_dir, config.manifest)
    check_format_options(source_format, split=config.split, manifest=config.manifest, text_column=config.text_column)
    if source_format == "kaldi":
        utterances, problems = validate_corpus(config.source_data_dir, config.max_duration)
    else:
        entries, problems = read_entries(config.source_data_dir, source_format, config.split, config.manifest,
                                         config.text_column)
        utterances, problems = check_entries(entries, problems, config.max_duration)
    if problems and not config.skip_invalid:
        raise DataValidationError([message for _, _, message in problems])
    if not utterances:
        raise OptionError("source_data_dir", config.source_data_dir, "no valid utterances to write")
    dropped = {}
    for reason, _, message in problems:
        dropped.setdefault(reason, []).append(message)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        with_speaker = any(utt.speaker is not None for utt in utterances)
        with_language = any(utt.language is not None for utt in utterances)
        with_segments = utterances[0].recording_id is not None
        # Segments travel as whole recordings (tuples of their segments): one worker reads each file once.
        units = _by_recording(utterances) if with_segments else utterances
        num_proc = max(1, min(config.num_proc, len(units)))
        # Contiguous shards, one per process: from_generator concatenates them in order, so the
        # dataset keeps the corpus order.
        bounds = [round(i * len(units) / num_proc) for i in range(num_proc + 1)]
        shards = [units[a:b] for a, b in zip(bounds, bounds[1:])]
        dataset = Dataset.from_generator(
            _generate_segment_rows if with_segments else _generate_rows,
            features=_prep_features(config.sampling_rate, with_speaker, with_segments, with_language),
            gen_kwargs={"shards": shards, "sampling_rate": config.sampling_rate, "with_speaker": with_speaker,
                        "with_language": with_language},
            num_proc=num_proc if num_proc > 1 else None, cache_dir=os.path.join(work, "cache"),
            split="train", writer_batch_size=WRITER_BATCH_SIZE)
        staged = os.path.join(work, "dataset")
        # save_to_disk copies in batches of datasets.config.DEFAULT_MAX_BATCH_SIZE rows (1000): with a
        # whole clip per row that is up to ~1 GB; copy in small batches so memory stays flat.
        with mock.patch.object(datasets.config, "DEFAULT_MAX_BATCH_SIZE", WRITER_BATCH_SIZE):
            dataset.save_to_disk(staged, num_shards=config.num_shards, max_shard_size=config.max_shard_size)
        with open(os.path.join(staged, PREP_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump({"source_format": source_format, "source_data_dir": os.path.abspath(config.source_data_dir)},
                      f, indent=2, ensure_ascii=False)
        durations = list(dataset[DURATION_COLUMN])
        del dataset
        if os.path.exists(out):  # only reached with --overwrite
            old = out + ".old-" + os.path.basename(work)
            os.replace(out, old)
            os.replace(staged, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PrepSummary(out, len(durations), durations, dropped, source_format)
