"""The evaluation report page: one self-contained HTML file built from result files.

Input: the ``<model>__<dataset>.json`` / ``.txt`` pairs the evaluators write (figures in the JSON,
per-utterance normalised and raw text in the text file). Output: a single HTML page with inline CSS,
JavaScript and data (no CDN, no server; it works opened from disk) holding

* a summary table per dataset, one column per model;
* every utterance with reference and hypothesis aligned word by word (jiwer's alignment), sortable
  by WER, filterable by text, paginated (so 10,000 utterances stay usable), with an audio player;
* top substitution pairs, most deleted and inserted words, WER by clip duration and by speaker;
* with two or more models on one dataset: the utterances that got better and worse against the first
  model, the WER difference with a paired bootstrap interval, and the difference per duration bucket and
  speaker.

Audio, durations and speakers come from the dataset the result names (a data_prep folder), read when
the page is built; a result whose dataset cannot be opened (a Hub dataset, a moved folder) gets a page
without them, and the page says so. Clips are embedded as Ogg Vorbis until ``max_embedded_audio_mb``
is spent; later ones are linked: to their source file when the dataset names one that exists, else to
a compressed copy written beside the page in ``<page name>_audio/``.

The page's HTML skeleton, CSS and JavaScript are files of the package, in ``report_assets/`` beside this
module; :func:`render_html` fills the title and the data in.
"""
import base64
import collections
import datetime
import glob
import importlib.resources
import io
import json
import logging
import os
import pathlib
import urllib.parse
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

import jiwer
import numpy as np
import soundfile as sf

from ..audio import decode_example_audio
from ..data.schema import AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, SPEAKER_COLUMN, is_saved_dataset
from ..errors import OptionError, UserError
from ..files import atomic_write_text
from .config import DEFAULT_MAX_EMBEDDED_AUDIO_MB

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the duration buckets; Whisper's window is 30 s, longer clips get their own.
DURATION_EDGES = (2.0, 5.0, 10.0, 20.0, 30.0)
TOP_WORDS = 20  # rows in each substitution / deletion / insertion table
TOP_CHANGES = 20  # utterances listed as most improved / most degraded
AUDIO_RATE = 16000
# libsndfile's Vorbis "compression level" (0 best quality .. 1 smallest): 0.8 keeps speech clear at
# about 5 kB/s, and Vorbis encodes about ten times faster than Opus here.
VORBIS_COMPRESSION = 0.8
# A comparison's WER difference comes with a paired bootstrap interval (Bisani and Ney, "Bootstrap estimates for
# confidence intervals in ASR performance evaluation", ICASSP 2004): the utterances are drawn with replacement,
# the same draw for both models, and the middle 95 % of the differences so drawn is the interval. It tells
# whether a difference of a few words on this set is more than which utterances the set happens to hold; it
# says nothing of what another training seed would change. A fixed seed gives the same page from the same
# results; with 10,000 draws the ends moved by under 0.001 between seeds (a 62-utterance comparison of
# whisper-base with a fine-tune, +0.021: +0.0017 to +0.0025 and +0.0429 to +0.0439 over four seeds).
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Resampled values held at once (draws x utterances): about 50 MB of float64 for the three arrays.
BOOTSTRAP_BATCH_VALUES = 2_000_000
# The page's template, CSS and JavaScript: package data beside this module.
ASSETS = "report_assets"

# Alignment chunk codes in the page data (ints keep 10,000 utterances small).
EQUAL, SUBSTITUTE, DELETE, INSERT = 0, 1, 2, 3
_CHUNK_CODES = {"equal": EQUAL, "substitute": SUBSTITUTE, "delete": DELETE, "insert": INSERT}
_NOT_SCORED = "  (empty reference: not scored)"

# The figures of a result JSON shown in the summary table, in this order.
SUMMARY_FIELDS = ("utterances", "scored_utterances", "wer", "cer", "raw_wer", "raw_cer", "substitutions",
                  "deletions", "insertions", "hits", "reference_words", "rtfx", "audio_hours", "wall_seconds",
                  "normalizer", "language", "task", "decoder_prompt", "decoding", "model", "device")


@dataclass(frozen=True)
class ResultFile:
    """One evaluator result: the JSON figures and the per-utterance lines of its text file."""

    json_path: str
    figures: dict
    ids: List[str]
    references: List[str]  # normalised (what the WER was computed on)
    hypotheses: List[str]
    raw_references: List[str]
    raw_hypotheses: List[str]
    scored: List[bool]  # False: empty normalised reference, left out of the scores


@dataclass
class WordCount:
    word: str
    count: int


@dataclass
class SubstitutionCount:
    reference: str
    hypothesis: str
    count: int


@dataclass
class GroupWer:
    """WER over a group of utterances (a duration bucket or a speaker)."""

    group: str
    utterances: int
    reference_words: int
    errors: int
    wer: Optional[float]  # None when the group has no scored reference word


@dataclass
class ModelResult:
    """One model on one dataset: its figures and, per dataset utterance (``None`` where it was not
    evaluated), hypothesis, raw hypothesis, alignment chunks ``[code, r0, r1, h0, h1]``, errors and
    reference word count."""

    name: str
    json_path: str
    figures: dict
    hypotheses: List[Optional[str]]
    raw_hypotheses: List[Optional[str]]
    alignments: List[Optional[list]]
    errors: List[Optional[int]]
    reference_words: List[Optional[int]]
    references: Optional[List[Optional[str]]] = None  # only when its normaliser differs from the dataset's
    substitutions: List[SubstitutionCount] = field(default_factory=list)
    deletions: List[WordCount] = field(default_factory=list)
    insertions: List[WordCount] = field(default_factory=list)
    by_duration: List[GroupWer] = field(default_factory=list)
    by_speaker: List[GroupWer] = field(default_factory=list)


@dataclass
class UtteranceChange:
    index: int  # into the dataset's utterance list
    id: str
    errors_before: int
    errors_after: int


@dataclass
class GroupChange:
    group: str
    utterances: int
    wer_before: Optional[float]
    wer_after: Optional[float]
    difference: Optional[float]


@dataclass(frozen=True)
class DifferenceInterval:
    """One model's WER minus another's on the same utterances, with its paired bootstrap interval."""

    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    method: str = "paired bootstrap over utterances, percentile interval"


@dataclass
class Comparison:
    """``after`` against ``before`` (indices into the dataset's models) on the utterances both scored."""

    before: int
    after: int
    common_utterances: int
    wer_before: Optional[float]
    wer_after: Optional[float]
    difference: Optional[DifferenceInterval]  # None below two utterances with reference words
    better: int
    worse: int
    unchanged: int
    most_improved: List[UtteranceChange]
    most_degraded: List[UtteranceChange]
    by_duration: List[GroupChange]
    by_speaker: List[GroupChange]


@dataclass
class DatasetReport:
    """Everything the page shows for one dataset."""

    label: str
    language: Optional[str]
    normalizer: str
    ids: List[str]
    references: List[Optional[str]]
    raw_references: List[Optional[str]]
    scored: List[bool]
    durations: Optional[List[Optional[float]]]
    speakers: Optional[List[Optional[str]]]
    audio: List[Optional[str]]  # per utterance: a data: URI, a relative or file: link, or None
    audio_note: str
    models: List[ModelResult]
    comparisons: List[Comparison]


@dataclass
class Report:
    title: str
    generated: str
    datasets: List[DatasetReport]
    embedded_audio: int = 0  # clips embedded in the page
    linked_audio: int = 0  # clips linked (source file or a copy beside the page)
    embedded_audio_bytes: int = 0


@dataclass(frozen=True)
class ReportSummary:
    """What :func:`write_report` wrote."""

    path: str
    bytes: int
    datasets: int
    models: int
    utterances: int
    embedded_audio: int  # clips embedded in the page
    linked_audio: int  # clips linked (source file or a copy beside the page)
    embedded_audio_bytes: int


# ---------------------------------------------------------------------------------------------
# Reading result files
# ---------------------------------------------------------------------------------------------
def find_result_files(paths: Sequence[str]) -> List[str]:
    """Result JSON files named by ``paths``: each a result ``.json`` file or a folder holding some.

    Folders contribute every ``*.json`` with a matching ``.txt`` (sorted by name); order is kept
    otherwise, so the first path given is the baseline of comparisons.
    """
    found = []
    for path in paths:
        if os.path.isdir(path):
            in_folder = [p for p in sorted(glob.glob(os.path.join(path, "*.json")))
                         if os.path.isfile(p[:-len(".json")] + ".txt")]
            if not in_folder:
                raise UserError(f"{path}: no result files (<model>__<dataset>.json with its .txt) in this folder")
            found.extend(in_folder)
        elif os.path.isfile(path) and path.endswith(".json"):
            found.append(path)
        else:
            raise UserError(f"{path}: not a result folder or a result .json file")
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    return unique


def read_result(json_path: str) -> ResultFile:
    """Read a result JSON and its text file (same stem); errors name the file."""
    txt_path = json_path[:-len(".json")] + ".txt"
    try:
        with open(json_path, encoding="utf-8") as f:
            figures = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{json_path}: cannot read the result file ({exc})") from exc
    if not isinstance(figures, dict) or "wer" not in figures or "dataset" not in figures:
        raise UserError(f"{json_path}: not an evaluation result (no wer/dataset fields)")
    if not os.path.isfile(txt_path):
        raise UserError(f"{json_path}: its per-utterance file {txt_path} is missing")
    ids, refs, hyps, raw_refs, raw_hyps, scored = [], [], [], [], [], []
    prefixes = {"REF: ": refs, "HYP: ": hyps, "RAW_REF: ": raw_refs, "RAW_HYP: ": raw_hyps}
    with open(txt_path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ID: "):
                unscored = line.endswith(_NOT_SCORED)
                ids.append(line[4:-len(_NOT_SCORED)] if unscored else line[4:])
                scored.append(not unscored)
                continue
            for prefix, target in prefixes.items():
                if line.startswith(prefix) and ids:
                    target.append(line[len(prefix):])
                    break
    if not ids or not all(len(column) == len(ids) for column in prefixes.values()):
        raise UserError(f"{txt_path}: not a complete result file (expected ID/REF/HYP/RAW_REF/RAW_HYP per utterance)")
    return ResultFile(os.path.abspath(json_path), figures, ids, refs, hyps, raw_refs, raw_hyps, scored)


# ---------------------------------------------------------------------------------------------
# Alignment and statistics
# ---------------------------------------------------------------------------------------------
def align_pairs(references: Sequence[str], hypotheses: Sequence[str]):
    """Word alignment of each pair as ``[code, r0, r1, h0, h1]`` chunks (jiwer), and S+D+I per pair."""
    chunks = [[] for _ in references]
    errors = [0] * len(references)
    todo = [i for i, (r, h) in enumerate(zip(references, hypotheses)) if r.split() or h.split()]
    if todo:
        output = jiwer.process_words([references[i] for i in todo], [hypotheses[i] for i in todo])
        for i, alignment in zip(todo, output.alignments):
            chunks[i] = [[_CHUNK_CODES[c.type], c.ref_start_idx, c.ref_end_idx, c.hyp_start_idx, c.hyp_end_idx]
                         for c in alignment]
            errors[i] = sum(max(c[2] - c[1], c[4] - c[3]) for c in chunks[i] if c[0] != EQUAL)
    return chunks, errors


def word_statistics(references, hypotheses, alignments, top=TOP_WORDS):
    """Most frequent substitution pairs, deleted words and inserted words over aligned utterances."""
    subs, dels, ins = collections.Counter(), collections.Counter(), collections.Counter()
    for ref, hyp, chunks in zip(references, hypotheses, alignments):
        if chunks is None:
            continue
        ref_words, hyp_words = ref.split(), hyp.split()
        for code, r0, r1, h0, h1 in chunks:
            if code == SUBSTITUTE:
                subs.update(zip(ref_words[r0:r1], hyp_words[h0:h1]))
            elif code == DELETE:
                dels.update(ref_words[r0:r1])
            elif code == INSERT:
                ins.update(hyp_words[h0:h1])
    return ([SubstitutionCount(r, h, n) for (r, h), n in subs.most_common(top)],
            [WordCount(w, n) for w, n in dels.most_common(top)],
            [WordCount(w, n) for w, n in ins.most_common(top)])


def duration_bucket(seconds):
    """The label of the duration bucket ``seconds`` falls in (``None`` stays ``None``)."""
    if seconds is None:
        return None
    low = 0.0
    for high in DURATION_EDGES:
        if seconds <= high:
            return f"{low:g}–{high:g} s"
        low = high
    return f"> {DURATION_EDGES[-1]:g} s"


def bucket_order():
    """Every duration bucket label, shortest first."""
    labels, low = [], 0.0
    for high in DURATION_EDGES:
        labels.append(f"{low:g}–{high:g} s")
        low = high
    return labels + [f"> {DURATION_EDGES[-1]:g} s"]


def group_wer(groups, errors, ref_words, scored, order=None) -> List[GroupWer]:
    """WER per group label (``groups[i]``; ``None`` leaves utterance ``i`` out) over scored utterances."""
    totals = collections.OrderedDict((g, [0, 0, 0]) for g in (order or []))
    for g, e, n, s in zip(groups, errors, ref_words, scored):
        if g is None or e is None or not s:
            continue
        total = totals.setdefault(g, [0, 0, 0])
        total[0] += 1
        total[1] += n
        total[2] += e
    rows = [GroupWer(g, u, n, e, e / n if n else None) for g, (u, n, e) in totals.items() if u]
    return rows if order else sorted(rows, key=lambda r: r.group)


def wer_difference_interval(errors_before: Sequence[int], errors_after: Sequence[int],
                            reference_words: Sequence[int]) -> Optional[DifferenceInterval]:
    """WER after minus WER before over these utterances (one entry each), with its paired bootstrap interval.

    ``None`` for fewer than two utterances or no reference words: there is nothing to resample.
    """
    if len(reference_words) < 2 or not sum(reference_words):
        return None
    from scipy import stats  # a second to import: only pages with a comparison need it

    before, after, words = (np.asarray(v, dtype=np.float64) for v in (errors_before, errors_after, reference_words))

    def difference(b, a, w, axis=-1):  # each (draws, utterances) -> (draws,)
        return (a.sum(axis=axis) - b.sum(axis=axis)) / w.sum(axis=axis)

    result = stats.bootstrap((before, after, words), difference, paired=True, vectorized=True,
                             method="percentile", confidence_level=BOOTSTRAP_CONFIDENCE,
                             n_resamples=BOOTSTRAP_RESAMPLES, batch=max(1, BOOTSTRAP_BATCH_VALUES // len(words)),
                             rng=np.random.default_rng(BOOTSTRAP_SEED))
    low, high = result.confidence_interval
    return DifferenceInterval(float(difference(before, after, words)), float(low), float(high),
                              BOOTSTRAP_CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)


def compare(before: ModelResult, after: ModelResult, index_before, index_after, ids, scored, buckets, speakers):
    """How ``after`` differs from ``before`` on the utterances both scored (per utterance and per group)."""
    common = [i for i in range(len(ids)) if scored[i] and before.errors[i] is not None and after.errors[i] is not None]
    changes = [UtteranceChange(i, ids[i], before.errors[i], after.errors[i]) for i in common]
    better = sorted((c for c in changes if c.errors_after < c.errors_before),
                    key=lambda c: (c.errors_after - c.errors_before, c.index))
    worse = sorted((c for c in changes if c.errors_after > c.errors_before),
                   key=lambda c: (c.errors_before - c.errors_after, c.index))
    words = sum(before.reference_words[i] for i in common)

    def wer(model, subset):
        n = sum(model.reference_words[i] for i in subset)
        return sum(model.errors[i] for i in subset) / n if n else None

    def by_group(labels, order=None):
        grouped = collections.OrderedDict((g, []) for g in (order or []))
        for i in common:
            if labels[i] is not None:
                grouped.setdefault(labels[i], []).append(i)
        rows = []
        for g, subset in grouped.items():
            if not subset:
                continue
            a, b = wer(before, subset), wer(after, subset)
            rows.append(GroupChange(g, len(subset), a, b, None if a is None or b is None else b - a))
        return rows if order else sorted(rows, key=lambda r: r.group)

    interval = wer_difference_interval([before.errors[i] for i in common], [after.errors[i] for i in common],
                                       [before.reference_words[i] for i in common])
    return Comparison(index_before, index_after, len(common), wer(before, common) if words else None,
                      wer(after, common) if words else None, interval, len(better), len(worse),
                      len(common) - len(better) - len(worse), better[:TOP_CHANGES], worse[:TOP_CHANGES],
                      by_group(buckets, bucket_order()) if any(b is not None for b in buckets) else [],
                      by_group(speakers) if speakers else [])


# ---------------------------------------------------------------------------------------------
# Audio, durations and speakers from the dataset
# ---------------------------------------------------------------------------------------------
@dataclass
class _AudioBudget:
    remaining: int  # bytes of data: URIs still allowed in the page
    embedded: int = 0
    linked: int = 0
    embedded_bytes: int = 0


def encode_clip(audio: np.ndarray, sampling_rate=AUDIO_RATE) -> bytes:
    """Ogg Vorbis bytes for a mono float array (what the page embeds or writes beside itself)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sampling_rate, format="OGG", subtype="VORBIS",
             compression_level=VORBIS_COMPRESSION)
    return buffer.getvalue()


def _open_dataset(label):
    """The raw dataset (all columns, audio undecoded) behind a result's dataset label, or a reason why not."""
    import datasets
    from datasets import Audio

    if not os.path.isdir(label):
        return None, f"audio, durations and speakers are not shown: the dataset folder {label} is not on this machine"
    if not is_saved_dataset(label):
        return None, f"audio, durations and speakers are not shown: {label} is not a data_prep dataset"
    dataset = datasets.load_from_disk(label)
    if isinstance(dataset, datasets.DatasetDict) or AUDIO_COLUMN not in dataset.column_names:
        return None, f"audio, durations and speakers are not shown: {label} is not a single-split data_prep dataset"
    return dataset.cast_column(AUDIO_COLUMN, Audio(decode=False)), ""


def _clip_link(value, label, clip, link_dir, page_dir, name):
    """A link for a clip over the budget: its source file when that exists, else a copy beside the page."""
    path = value.get("path") if isinstance(value, dict) else value
    if path:
        candidate = path if os.path.isabs(path) else os.path.join(label, path)
        if os.path.isfile(candidate):
            return pathlib.Path(os.path.abspath(candidate)).as_uri()
    os.makedirs(link_dir, exist_ok=True)
    target = os.path.join(link_dir, name)
    with open(target, "wb") as f:
        f.write(encode_clip(clip))
    return urllib.parse.quote(os.path.relpath(target, page_dir).replace(os.sep, "/"))


def dataset_extras(label, ids, budget: _AudioBudget, link_dir, page_dir, prefix):
    """Per utterance: durations, speakers (``None`` without a speaker column), audio sources, and a note."""
    dataset, note = _open_dataset(label)
    if dataset is None:
        return None, None, [None] * len(ids), note
    if ID_COLUMN not in dataset.column_names:
        return None, None, [None] * len(ids), f"audio, durations and speakers are not shown: {label} has no id column"
    row_of = {str(uid): row for row, uid in enumerate(dataset[ID_COLUMN])}
    rows = [row_of.get(uid) for uid in ids]
    missing = sum(r is None for r in rows)
    durations_column = dataset[DURATION_COLUMN] if DURATION_COLUMN in dataset.column_names else None
    speakers = None
    if SPEAKER_COLUMN in dataset.column_names:
        column = dataset[SPEAKER_COLUMN]
        speakers = [None if r is None or column[r] is None else str(column[r]) for r in rows]
    durations, audio = [None] * len(ids), [None] * len(ids)
    for i, row in enumerate(rows):
        if row is None:
            continue
        value = dataset[row][AUDIO_COLUMN]
        clip = decode_example_audio(value, AUDIO_RATE)
        durations[i] = round(float(durations_column[row]) if durations_column else len(clip) / AUDIO_RATE, 3)
        encoded = encode_clip(clip)
        uri = "data:audio/ogg;base64," + base64.b64encode(encoded).decode("ascii")
        if len(uri) <= budget.remaining:
            budget.remaining -= len(uri)
            budget.embedded += 1
            budget.embedded_bytes += len(uri)
            audio[i] = uri
        else:
            budget.remaining = 0  # keep clips in order: once one is linked, all later ones are
            safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in ids[i])
            audio[i] = _clip_link(value, label, clip, link_dir, page_dir, f"{prefix}_{i:06d}_{safe}.ogg")
            budget.linked += 1
    note = "" if not missing else f"{missing} utterance id(s) of the results are not in {label}: no audio for them"
    return durations, speakers, audio, note


# ---------------------------------------------------------------------------------------------
# Building the report
# ---------------------------------------------------------------------------------------------
def model_names(results: Sequence[ResultFile]):
    """Column names: the model folder's name, made unique with the result folder when two share it."""
    base = [os.path.basename(os.path.normpath(str(r.figures.get("model") or "model"))) for r in results]
    names = []
    for name, result in zip(base, results):
        if base.count(name) > 1:
            name = f"{name} ({os.path.basename(os.path.dirname(result.json_path))})"
        names.append(name)
    counts = collections.Counter(names)
    seen = collections.Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if counts[name] == 1 else f"{name} #{seen[name]}")
    return unique


def _dataset_key(label):
    return os.path.realpath(label) if os.path.exists(label) else label


def build_report(json_paths: Sequence[str], page_path: str, max_embedded_audio_mb=DEFAULT_MAX_EMBEDDED_AUDIO_MB,
                 title="Whisper evaluation report") -> Report:
    """Read result files and build the report's content (results on one dataset are grouped)."""
    if max_embedded_audio_mb < 0:
        raise OptionError("max_embedded_audio_mb", max_embedded_audio_mb, "must be 0 or more")
    if not json_paths:
        raise UserError("no result files to report on")
    groups = collections.OrderedDict()
    for result in (read_result(p) for p in json_paths):
        groups.setdefault(_dataset_key(str(result.figures["dataset"])), []).append(result)
    groups = [list(zip(members, model_names(members))) for members in groups.values()]
    page_dir = os.path.dirname(os.path.abspath(page_path))
    link_dir = os.path.splitext(os.path.abspath(page_path))[0] + "_audio"
    budget = _AudioBudget(int(max_embedded_audio_mb * 1024 * 1024))
    datasets = []
    for number, members in enumerate(groups):
        datasets.append(_dataset_report(members, budget, link_dir, page_dir, f"d{number}"))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Report(title, stamp, datasets, budget.embedded, budget.linked, budget.embedded_bytes)


def _dataset_report(members, budget, link_dir, page_dir, prefix) -> DatasetReport:
    first = members[0][0]
    ids = list(dict.fromkeys(uid for result, _ in members for uid in result.ids))
    index = {uid: i for i, uid in enumerate(ids)}
    refs, raw_refs, scored = [None] * len(ids), [None] * len(ids), [False] * len(ids)
    for result, _ in reversed(members):  # the first model's text wins where several have it
        for j, uid in enumerate(result.ids):
            i = index[uid]
            refs[i], raw_refs[i], scored[i] = result.references[j], result.raw_references[j], result.scored[j]
    label = str(first.figures["dataset"])
    durations, speakers, audio, note = dataset_extras(label, ids, budget, link_dir, page_dir, prefix)
    buckets = [duration_bucket(d) for d in durations] if durations else [None] * len(ids)
    models = []
    for result, name in members:
        rows = [index[uid] for uid in result.ids]
        chunks, errors = align_pairs(result.references, result.hypotheses)
        model = ModelResult(name, result.json_path, {k: result.figures.get(k) for k in SUMMARY_FIELDS},
                            *([None] * len(ids) for _ in range(5)))
        own_refs = [None] * len(ids)
        for j, i in enumerate(rows):
            model.hypotheses[i], model.raw_hypotheses[i] = result.hypotheses[j], result.raw_hypotheses[j]
            model.alignments[i], model.errors[i] = chunks[j], errors[j]
            model.reference_words[i] = len(result.references[j].split())
            own_refs[i] = result.references[j]
        if any(r is not None and r != refs[i] for i, r in enumerate(own_refs)):
            model.references = own_refs
        model_refs = model.references or refs
        model_scored = [scored[i] and model.errors[i] is not None for i in range(len(ids))]
        model.substitutions, model.deletions, model.insertions = word_statistics(
            [model_refs[i] or "" for i in range(len(ids))], [h or "" for h in model.hypotheses],
            [a if s else None for a, s in zip(model.alignments, model_scored)])
        model.by_duration = group_wer(buckets, model.errors, model.reference_words, model_scored, bucket_order()) \
            if durations else []
        model.by_speaker = group_wer(speakers, model.errors, model.reference_words, model_scored) if speakers else []
        models.append(model)
    comparisons = [compare(models[0], models[k], 0, k, ids, scored, buckets, speakers) for k in range(1, len(models))]
    language = first.figures.get("language") or ("en" if first.figures.get("normalizer") == "english" else None)
    return DatasetReport(label, language, str(first.figures.get("normalizer")), ids, refs,
                         raw_refs, scored, durations, speakers, audio, note, models, comparisons)


def page_asset(name: str) -> str:
    """The text of one file of the page (``page.html``, ``report.css``, ``report.js``), shipped with the
    package in ``report_assets/``."""
    return (importlib.resources.files(__package__) / ASSETS / name).read_text(encoding="utf-8")


def render_html(report: Report) -> str:
    """The page: the report's data as JSON inside one HTML file with inline CSS and JavaScript."""
    # "<" escaped so no text in the data can close the script element.
    data = json.dumps(asdict(report), ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = report.title.replace("&", "&amp;").replace("<", "&lt;")
    return (page_asset("page.html").replace("__TITLE__", title).replace("__CSS__", page_asset("report.css"))
            .replace("__JS__", page_asset("report.js")).replace("__DATA__", data))


def write_report(json_paths: Sequence[str], output_path: str, max_embedded_audio_mb=DEFAULT_MAX_EMBEDDED_AUDIO_MB,
                 title="Whisper evaluation report") -> ReportSummary:
    """Build the report page for ``json_paths`` and write it (atomically) to ``output_path``."""
    report = build_report(json_paths, output_path, max_embedded_audio_mb, title)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    html = render_html(report)
    atomic_write_text(output_path, html)
    summary = ReportSummary(output_path, len(html.encode("utf-8")), len(report.datasets),
                            len({m.json_path for d in report.datasets for m in d.models}),
                            sum(len(d.ids) for d in report.datasets), report.embedded_audio, report.linked_audio,
                            report.embedded_audio_bytes)
    logger.info("report: %s (%.1f MB; %d utterances; %d clips embedded, %d linked)", output_path,
                summary.bytes / 1e6, summary.utterances, summary.embedded_audio, summary.linked_audio)
    return summary

