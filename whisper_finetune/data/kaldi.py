"""The Kaldi-style folder reader of data_prep: ``text`` + ``audio_paths``, or Kaldi's ``wav.scp`` + ``segments``;
optional ``utt2spk`` (speakers) and ``languages`` (``<id> <code>``)."""
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace


from ..errors import UserError
from .formats import read_lines
from .schema import MAX_SECONDS
from .checks import (Recording, Utterance, check_audio_file, check_clip, check_language, check_recording,
                     check_segment, warn_overlaps)

logger = logging.getLogger(__name__)

SEGMENT_FORMAT = "<utt-id> <recording-id> <start-seconds> <end-seconds>"
LANGUAGES_FILE = "languages"  # optional: <utt-id> <language code or name>
# A wav.scp value data_prep cannot open as a file: Kaldi's piped commands, stdin and archive offsets.
_ARCHIVE_OFFSET = re.compile(r":[0-9]+$")


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
    recordings = read_wav_scp(source_dir) if index_name == "segments" else None
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

    speakers = read_speakers(source_dir, text_lines, problems, bad)
    languages = read_languages(source_dir, text_lines, problems, bad)
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
            problem, utterance = kaldi_segment(source_dir, recordings, uid, value, where, max_duration)
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
        warn_overlaps(utterances)
    return utterances, problems


@dataclass
class WavScp:
    """Kaldi's ``wav.scp`` as read: each recording's first line and path, its repeated lines, and the
    recordings checked so far (each file's header is read once, however many segments it has)."""

    entries: dict = field(default_factory=dict)  # recording id -> (line number, path as written)
    repeats: dict = field(default_factory=dict)  # recording id -> [later line numbers]
    checked: dict = field(default_factory=dict)  # recording id -> Recording


def read_wav_scp(source_dir):
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


def find_recording(source_dir, recordings, rid):
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


def kaldi_segment(source_dir, recordings, uid, value, where, max_duration):
    """Check one ``segments`` entry (``value``: ``<recording-id> <start> <end>``) with :func:`check_segment`."""
    fields = value.split()
    try:
        times = [float(f) for f in fields[1:]]
    except ValueError:
        times = []
    if len(fields) != 3 or len(times) != 2 or not all(map(math.isfinite, times)):
        return ("malformed segment", f"{where}: expected '{SEGMENT_FORMAT}', got '{uid} {value}'"), None
    rid, (start, end) = fields[0], times
    recording = find_recording(source_dir, recordings, rid)
    if recording is None:
        return ("unknown recording", f"{where}: recording {rid} has no entry in wav.scp"), None
    return check_segment(recording, uid, start, end, where, max_duration)


# ---------------------------------------------------------------------------------------------
# The checks every reader shares (Kaldi's above, formats.py's through check_entries)
# ---------------------------------------------------------------------------------------------


def read_speakers(source_dir, text_lines, problems, bad):
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


def read_languages(source_dir, text_lines, problems, bad):
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
