"""Corpus formats besides Kaldi's: each reader turns a folder into :class:`Entry` objects (one per utterance,
unchecked) plus the problems of its own lines, and :func:`whisper_finetune.data.checks.check_entries` checks them
with the Kaldi reader's checks, so every format reports every problem the same way and is written by the
same code.

* ``common_voice``: a Common Voice release (``<split>.tsv`` + ``clips/``). ``path`` -> ``clips/<path>``,
  ``sentence`` -> text, ``client_id`` -> speaker, ``locale`` -> language (:func:`common_voice_language`).
  The id is the clip's file name without its extension (unique in Common Voice). The ``.tsv`` files are
  read as Common Voice writes them: tab-separated, UTF-8, without any quoting (a sentence may start with ``"``).
* ``audiofolder``: a Hugging Face audiofolder, ``metadata.csv`` or ``metadata.jsonl`` whose ``file_name``
  is relative to it (subfolders too); the text column is ``--text_column`` or the one of
  :data:`AUDIOFOLDER_TEXT_COLUMNS` it has; optional ``speaker_id`` and ``language``; the id is the ``id``
  column where it has a value, else ``file_name`` without its extension.
* ``nemo``: NeMo manifests (JSON lines: ``audio_filepath`` relative to the manifest's folder or absolute,
  ``text``, ``duration``, optional ``offset`` and ``lang``). When any entry has an ``offset``, every entry is
  the segment ``offset`` .. ``offset + duration`` of its file (cut as Kaldi ``segments`` are; ids
  ``<file>-<start ms>-<end ms>``), else each entry is its whole file (id: the file without extension; the
  header's duration is used).
* ``lhotse``: read with lhotse itself: a CutSet manifest, or a RecordingSet and a SupervisionSet
  manifest; each supervision is one segment of its recording (id: the supervision's). Lhotse opens a
  relative source path from the current folder, and so does data_prep.

:func:`detect_format` tells a folder's format from its files.
"""
import csv
import gzip
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import OptionError, UserError
from ..extras import require
from ..text import language_code

logger = logging.getLogger(__name__)

FORMATS = ("kaldi", "common_voice", "audiofolder", "nemo", "lhotse")
KALDI_FILES = ("text", "audio_paths", "wav.scp", "segments")
CV_SPLITS = ("train", "dev", "test", "validated", "other", "invalidated")  # the .tsv files detection looks for
CV_CLIPS = "clips"
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")
AUDIOFOLDER_TEXT_COLUMNS = ("transcription", "sentence", "text")
MANIFEST_SUFFIXES = (".json", ".jsonl", ".jsonl.gz")  # files detection peeks into for NeMo and Lhotse manifests
# The formats each format-specific option belongs to.
FORMAT_OPTIONS = {"split": ("common_voice",), "manifest": ("nemo", "lhotse"), "text_column": ("audiofolder",)}


@dataclass(frozen=True)
class Entry:
    """One utterance as a reader found it, before any check.

    ``audio`` is the file as the corpus lists it (relative paths start at ``base_dir``). ``speaker`` is
    ``None`` in a corpus without speakers and ``""`` for an entry lacking one where the corpus has them
    (a problem, as in Kaldi's utt2spk). ``language`` is a Whisper code or name (anything else is reported
    as an unknown language). ``start``/``end`` (seconds) make the entry a segment of the file, whose
    recording id is ``recording_id``.
    """

    uid: str
    where: str  # where it is written, e.g. "train.tsv line 3"
    text: str
    audio: str
    base_dir: str
    speaker: Optional[str] = None
    language: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    recording_id: Optional[str] = None


def read_lines(path):
    """``[(line number, line)]`` of a UTF-8 text file (line ends and byte-order marks removed, blank lines kept).

    Raises :class:`UserError` naming the line for invalid UTF-8.
    """
    lines = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}, line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                f"save the file as UTF-8") from exc
            lines.append((number, line.rstrip("\r\n").lstrip("\ufeff")))
    return lines


# ---------------------------------------------------------------------------------------------
# Which format, and which options go with it
# ---------------------------------------------------------------------------------------------
def _first_object(path):
    """The first line of a JSON-lines file as a dict, or ``None`` (not JSON lines, unreadable)."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    value = json.loads(line)
                    return value if isinstance(value, dict) else None
    except (OSError, ValueError, EOFError):
        return None
    return None


def manifest_kind(path):
    """``nemo``, or the Lhotse manifest a file holds (``cuts``, ``recordings``, ``supervisions``), from its
    first line; ``None`` for anything else (an audiofolder's metadata.jsonl among them)."""
    first = _first_object(path)
    if first is None:
        return None
    if "audio_filepath" in first:
        return "nemo"
    if "supervisions" in first or str(first.get("type", "")).endswith("Cut"):
        return "cuts"
    if "sources" in first and "sampling_rate" in first:
        return "recordings"
    if "recording_id" in first and "start" in first and "duration" in first:
        return "supervisions"
    return None


def _format_of(kind):
    return None if kind is None else "nemo" if kind == "nemo" else "lhotse"


def _candidate_manifests(source_dir):
    return [os.path.join(source_dir, n) for n in sorted(os.listdir(source_dir))
            if n.endswith(MANIFEST_SUFFIXES) and os.path.isfile(os.path.join(source_dir, n))]


def _manifest_path(source_dir, name):
    path = os.path.expanduser(name)
    path = path if os.path.isabs(path) else os.path.join(source_dir, path)
    if not os.path.isfile(path):
        raise OptionError("manifest", name, f"no such file (looked for {path})")
    return path


def detect_format(source_dir, manifests=None):
    """The format of ``source_dir`` from its files (logged): Kaldi's ``text``/``audio_paths``/``wav.scp``/
    ``segments``, Common Voice ``.tsv`` files beside ``clips/``, an audiofolder's ``metadata.csv``/``.jsonl``,
    NeMo or Lhotse manifests (``manifests`` when given, else the folder's JSON-lines files).

    A folder showing several formats raises :class:`UserError` asking for ``--format``; one showing none is
    read as Kaldi (whose reader then says which files it needs).
    """
    names = set(os.listdir(source_dir))
    found = {}
    if manifests:
        for name in manifests:
            kind = manifest_kind(_manifest_path(source_dir, name))
            if kind is not None:
                found.setdefault(_format_of(kind), []).append(name)
    else:
        found["kaldi"] = [n for n in KALDI_FILES if n in names]
        tsvs = [f"{s}.tsv" for s in CV_SPLITS if f"{s}.tsv" in names]
        found["common_voice"] = tsvs + [f"{CV_CLIPS}/"] if tsvs and os.path.isdir(os.path.join(source_dir, CV_CLIPS)) \
            else []
        found["audiofolder"] = [n for n in AUDIOFOLDER_METADATA if n in names]
        for path in _candidate_manifests(source_dir):
            kind = manifest_kind(path)
            if kind is not None:
                found.setdefault(_format_of(kind), []).append(os.path.basename(path))
    found = {fmt: files for fmt, files in found.items() if files}
    if len(found) > 1:
        shown = "; ".join(f"{fmt}: {', '.join(files)}" for fmt, files in found.items())
        raise UserError(f"{source_dir} holds files of several corpus formats ({shown}): choose one with --format "
                        f"{'|'.join(FORMATS)}")
    if not found:
        if manifests:
            raise OptionError("manifest", " ".join(manifests), "neither a NeMo nor a Lhotse manifest: pass --format")
        logger.info("format: kaldi (no other format's files found in %s)", source_dir)
        return "kaldi"
    [(fmt, files)] = found.items()
    logger.info("detected format: %s (%s)", fmt, ", ".join(files))
    return fmt


def check_format_options(source_format, **options):
    """Refuse an option of another format (``split=("train",)`` for a NeMo corpus...) with an :class:`OptionError`."""
    for name, value in options.items():
        if value is not None and source_format not in FORMAT_OPTIONS[name]:
            shown = " ".join(value) if isinstance(value, tuple) else value
            raise OptionError(name, shown, f"only for --format {' or '.join(FORMAT_OPTIONS[name])} (this corpus is "
                                           f"{source_format})")


def read_entries(source_dir, source_format, split=None, manifest=None, text_column=None):
    """The :class:`Entry` list and the problems of the lines themselves, ``[(reason, uid, message)]``, of a
    corpus of ``source_format`` (any of :data:`FORMATS` but ``kaldi``, which :mod:`~whisper_finetune.data.kaldi`
    reads)."""
    if source_format == "common_voice":
        entries, problems = read_common_voice(source_dir, split or ("train",))
    elif source_format == "audiofolder":
        entries, problems = read_audiofolder(source_dir, text_column)
    elif source_format == "nemo":
        entries, problems = read_nemo(source_dir, manifest)
    elif source_format == "lhotse":
        entries, problems = read_lhotse(source_dir, manifest)
    else:
        raise OptionError("format", source_format, f"choose one of {', '.join(FORMATS[1:])} (kaldi is corpus.py's)")
    logger.info("%s: %d entries read (%d unusable line(s))", source_format, len(entries), len(problems))
    return entries, problems


def _cell(value):
    """A metadata value as text: ``None`` -> ``""``, surrounding whitespace removed."""
    return "" if value is None else str(value).strip()


# ---------------------------------------------------------------------------------------------
# Common Voice
# ---------------------------------------------------------------------------------------------
def common_voice_language(locale):
    """The Whisper code of a Common Voice locale: the locale itself where Whisper has it (``yue``), else its
    base language (``pa-IN`` -> ``pa``, ``zh-CN`` and ``zh-TW`` -> ``zh``, ``sv-SE`` -> ``sv``); a locale
    neither maps to is returned as it is, for the language check to report."""
    for candidate in (locale, locale.split("-")[0]):
        try:
            return language_code(candidate)
        except UserError:
            continue
    return locale


def read_common_voice(source_dir, splits):
    """Entries of the ``splits`` (``train`` or ``train.tsv``...) of a Common Voice release, in that order."""
    entries, problems = [], []
    for split in splits:
        name = split if split.endswith(".tsv") else f"{split}.tsv"
        path = os.path.join(source_dir, name)
        if not os.path.isfile(path):
            present = sorted(n for n in os.listdir(source_dir) if n.endswith(".tsv"))
            raise OptionError("split", split, f"no {name} in {source_dir} (it has: {', '.join(present) or 'no .tsv'})")
        lines = [(number, line) for number, line in read_lines(path) if line.strip()]
        if not lines:
            raise UserError(f"{path}: empty (a Common Voice .tsv starts with a header line)")
        columns = lines[0][1].split("\t")
        missing = [c for c in ("path", "sentence") if c not in columns]
        if missing:
            raise UserError(f"{path}: no {' or '.join(missing)} column in the header line (it has: "
                            f"{', '.join(columns)}); is it a Common Voice .tsv?")
        for number, line in lines[1:]:
            where = f"{name} line {number}"
            fields = line.split("\t")
            if len(fields) != len(columns):
                problems.append(("malformed line", None, f"{where}: {len(fields)} tab-separated fields where the "
                                                         f"header has {len(columns)}"))
                continue
            row = dict(zip(columns, fields))
            clip = row["path"].strip()
            if not clip:
                problems.append(("missing audio", None, f"{where}: no clip path given"))
                continue
            locale = _cell(row.get("locale"))
            entries.append(Entry(os.path.splitext(os.path.basename(clip))[0], where, row["sentence"].strip(),
                                 f"{CV_CLIPS}/{clip}", source_dir,
                                 speaker=_cell(row["client_id"]) if "client_id" in row else None,
                                 language=common_voice_language(locale) if locale else None))
    return entries, problems


# ---------------------------------------------------------------------------------------------
# Hugging Face audiofolder
# ---------------------------------------------------------------------------------------------
def _csv_rows(path, problems):
    """``(columns, [(line number, row dict)])`` of a CSV file (quoted fields as the csv module reads them)."""
    lines = read_lines(path)
    reader = csv.reader(line + "\n" for _, line in lines)
    columns, rows, start = None, [], 1
    for fields in reader:
        number, start = start, reader.line_num + 1
        if not fields:
            continue
        if columns is None:
            columns = [c.strip() for c in fields]
        elif len(fields) != len(columns):
            problems.append(("malformed line", None, f"{os.path.basename(path)} line {number}: {len(fields)} "
                                                     f"comma-separated fields where the header has {len(columns)}"))
        else:
            rows.append((number, dict(zip(columns, fields))))
    return columns or [], rows


def _jsonl_rows(path, problems):
    """``(columns, [(line number, row dict)])`` of a JSON-lines file; columns in order of first appearance."""
    columns, rows = {}, []
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            problems.append(("malformed line", None, f"{os.path.basename(path)} line {number}: not a JSON object"))
            continue
        columns.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(columns), rows


def read_audiofolder(source_dir, text_column=None):
    """Entries of an audiofolder's ``metadata.csv`` or ``metadata.jsonl``, in its order."""
    present = [n for n in AUDIOFOLDER_METADATA if os.path.isfile(os.path.join(source_dir, n))]
    if not present:
        raise UserError(f"{source_dir}: no {' or '.join(AUDIOFOLDER_METADATA)} (an audiofolder lists its files there)")
    if len(present) > 1:
        raise UserError(f"{source_dir} has both {' and '.join(present)}: keep one")
    name = present[0]
    path = os.path.join(source_dir, name)
    problems = []
    columns, rows = (_csv_rows if name.endswith(".csv") else _jsonl_rows)(path, problems)
    if "file_name" not in columns:
        raise UserError(f"{path}: no file_name column (it has: {', '.join(columns) or 'nothing'})")
    if text_column is None:
        candidates = [c for c in AUDIOFOLDER_TEXT_COLUMNS if c in columns]
        if len(candidates) != 1:
            found = f"it has {' and '.join(candidates)}" if candidates else f"its columns are {', '.join(columns)}"
            raise UserError(f"{path}: cannot tell which column holds the transcription ({found}); name it with "
                            f"--text_column")
        text_column = candidates[0]
    elif text_column not in columns:
        raise OptionError("text_column", text_column, f"no such column in {path} (it has: {', '.join(columns)})")
    entries = []
    for number, row in rows:
        file_name = _cell(row.get("file_name"))
        where = f"{name} line {number}"
        if not file_name:
            problems.append(("missing audio", None, f"{where}: no file_name given"))
            continue
        entries.append(Entry(_cell(row.get("id")) or os.path.splitext(file_name)[0], where, _cell(row.get(text_column)),
                             file_name, source_dir,
                             speaker=_cell(row.get("speaker_id")) if "speaker_id" in columns else None,
                             language=_cell(row.get("language")) or None))
    return entries, problems


# ---------------------------------------------------------------------------------------------
# NeMo
# ---------------------------------------------------------------------------------------------
def _manifests(source_dir, manifests, kinds, what):
    """``[(name as shown, path)]``: ``manifests`` (absolute or relative to ``source_dir``), else the folder's
    manifests when their kinds (:func:`manifest_kind`) are one of ``kinds``, e.g. ``("cuts",)``; other sets
    raise :class:`UserError` asking for ``--manifest`` (``what`` says what it takes)."""
    if manifests:
        return [(name, _manifest_path(source_dir, name)) for name in manifests]
    found = [(path, manifest_kind(path)) for path in _candidate_manifests(source_dir)]
    found = sorted(((kind, path) for path, kind in found if _format_of(kind) == _format_of(kinds[0][0])))
    if tuple(kind for kind, _ in found) in kinds:
        return [(os.path.basename(path), path) for _, path in found]
    listed = ", ".join(os.path.basename(path) for _, path in found) or "none"
    raise UserError(f"{source_dir}: cannot tell which manifests to read (found: {listed}): name {what} with "
                    f"--manifest")


def _name_in(source_dir, path):
    """``path`` relative to ``source_dir`` when inside it, else absolute: a file's name that no other file shares."""
    relative = os.path.relpath(path, source_dir)
    return path if relative.startswith(os.pardir) else relative


def read_nemo(source_dir, manifests=None):
    """Entries of NeMo manifests, in order (see the module docstring)."""
    records, problems = [], []
    for name, path in _manifests(source_dir, manifests, [("nemo",)], "the NeMo manifest(s)"):
        base_dir = os.path.dirname(os.path.abspath(path))
        for number, line in read_lines(path):
            if not line.strip():
                continue
            where = f"{name} line {number}"
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                problems.append(("malformed line", None, f"{where}: not a JSON object"))
            elif not _cell(record.get("audio_filepath")):
                problems.append(("missing audio", None, f"{where}: no audio_filepath given"))
            else:
                records.append((where, base_dir, record))
    segments = any("offset" in record for _, _, record in records)
    entries = []
    for where, base_dir, record in records:
        audio = _cell(record["audio_filepath"])
        file_id = os.path.splitext(_name_in(os.path.abspath(source_dir), os.path.join(base_dir, audio)))[0]
        fields = dict(text=_cell(record.get("text")), language=_cell(record.get("lang")) or None)
        if not segments:
            entries.append(Entry(file_id, where, audio=audio, base_dir=base_dir, **fields))
            continue
        offset, duration = record.get("offset", 0), record.get("duration")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (offset, duration)):
            problems.append(("malformed line", None, f"{where}: offset and duration must be numbers (seconds), got "
                                                     f"offset {offset!r} and duration {duration!r}"))
            continue
        start, end = round(offset, 6), round(offset + duration, 6)
        entries.append(Entry(f"{file_id}-{round(start * 1000):07d}-{round(end * 1000):07d}", where, audio=audio,
                             base_dir=base_dir, start=start, end=end, recording_id=file_id, **fields))
    return entries, problems


# ---------------------------------------------------------------------------------------------
# Lhotse
# ---------------------------------------------------------------------------------------------
def _lhotse_audio(recording, where):
    """The one audio file of a Lhotse recording; anything data_prep cannot open as a file raises UserError."""
    sources = recording.sources
    if recording.transforms:
        kind = "transforms (speed, resampling...)"
    elif len(sources) != 1:
        kind = f"{len(sources)} sources (one file per channel)"
    elif sources[0].type != "file":
        kind = f"a source of type {sources[0].type!r}"
    else:
        return sources[0].source
    raise UserError(f"{where}: recording {recording.id} has {kind}; data_prep reads only recordings that are one "
                    f"audio file as it is")


def read_lhotse(source_dir, manifests=None):
    """Entries of a Lhotse CutSet, or of a SupervisionSet over a RecordingSet: one per supervision."""
    lhotse = require("lhotse", "data_prep.py --format lhotse")
    CutSet, RecordingSet, SupervisionSet, load_manifest = (lhotse.CutSet, lhotse.RecordingSet, lhotse.SupervisionSet,
                                                           lhotse.load_manifest)

    loaded = {}
    recordings_name = None
    for name, path in _manifests(source_dir, manifests, [("cuts",), ("recordings", "supervisions")],
                                 "a cuts manifest, or a recordings and a supervisions manifest,"):
        try:
            manifest = load_manifest(path)
        except Exception as exc:  # lhotse raises ValueError, KeyError, TypeError... for what it cannot read
            raise UserError(f"{path}: lhotse cannot read it as a manifest ({type(exc).__name__}: {exc})") from exc
        loaded.setdefault(type(manifest), []).append((name, manifest))
    kinds = {kind: len(items) for kind, items in loaded.items()}
    supervisions = []  # (where, supervision, recording, offset of the supervision's times in the recording)
    if kinds == {CutSet: 1}:
        [(name, cuts)] = loaded[CutSet]
        for number, cut in enumerate(cuts, start=1):
            if getattr(cut, "recording", None) is None:
                raise UserError(f"{name} line {number}: cut {cut.id} is a {type(cut).__name__} without a recording; "
                                f"data_prep reads cuts of one recording")
            supervisions += [(f"{name} line {number}", s, cut.recording, cut.start) for s in cut.supervisions]
    elif kinds == {RecordingSet: 1, SupervisionSet: 1}:
        [(recordings_name, recordings)] = loaded[RecordingSet]
        [(name, segments)] = loaded[SupervisionSet]
        by_id = {recording.id: recording for recording in recordings}
        for number, supervision in enumerate(segments, start=1):
            supervisions.append((f"{name} line {number}", supervision, by_id.get(supervision.recording_id), 0.0))
    else:
        given = ", ".join(f"{name} ({kind.__name__})" for kind, items in loaded.items() for name, _ in items)
        raise OptionError("manifest", " ".join(n for items in loaded.values() for n, _ in items),
                          f"give a Lhotse CutSet manifest, or one RecordingSet and one SupervisionSet manifest "
                          f"(got {given})")
    with_speakers = any(s.speaker for _, s, _, _ in supervisions)
    entries, problems, sources = [], [], {}
    for where, supervision, recording, offset in supervisions:
        if recording is None:
            problems.append(("unknown recording", supervision.id, f"id {supervision.id} ({where}): recording "
                             f"{supervision.recording_id} has no entry in {recordings_name}"))
            continue
        audio = _lhotse_audio(recording, where)
        if sources.setdefault(recording.id, audio) != audio:
            raise UserError(f"{where}: recording {recording.id} is {audio}, but earlier {sources[recording.id]}: "
                            f"recording ids must be unique")
        start = round(offset + supervision.start, 6)
        entries.append(Entry(supervision.id, where, _cell(supervision.text), audio, os.getcwd(),
                             speaker=_cell(supervision.speaker) if with_speakers else None,
                             language=_cell(supervision.language) or None, start=start,
                             end=round(offset + supervision.start + supervision.duration, 6),
                             recording_id=recording.id))
    return entries, problems

