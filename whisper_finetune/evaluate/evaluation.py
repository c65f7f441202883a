"""Backend-agnostic evaluation: load datasets, featurise in DataLoader workers, decode length-sorted
batches with any :class:`~whisper_finetune.decode.options.Decoder`, score and write result files.

The PyTorch, CTranslate2 and JAX evaluators (HF or custom data) all run :func:`evaluate`; they
differ only in their :class:`EvalConfig`.

A long evaluation survives a kill: each decoded batch's hypotheses are appended to a progress file beside
the result files (:class:`Progress`), and a rerun decodes only the utterances missing from it, provided it
was made by the same model, decoding options and dataset (else it starts over and says why). The result
files are the same as an uninterrupted run's, timings aside. Audio that cannot be decoded is skipped and
counted up to ``--max_bad_examples`` (:mod:`whisper_finetune.data.bad_audio`); DataLoader workers die
with the script (:func:`whisper_finetune.signals.die_with_parent`).
"""
import hashlib
import io
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from ..model import loading
from .. import files, scoring
from ..audio import SAMPLE_RATE
from ..data.loading import load_datasets, source_format
from ..data.schema import AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, TEXT_COLUMN
from ..data.bad_audio import too_many, try_decode
from ..decode.backends import make_decoder
from ..errors import UserError
from ..signals import die_with_parent
from ..text import choose_metric, choose_normalizer
from .config import EvalConfig, check_values

logger = logging.getLogger(__name__)

PROGRESS_SUFFIX = ".progress.jsonl"  # beside <stem>.txt/.json while the dataset is being decoded


@dataclass
class EvalResult:
    """One model on one dataset: what was run and how it scored (the result JSON file's content)."""

    model: str
    processor: str
    dataset: str
    language: Optional[str]
    task: str
    decoder_prompt: Optional[str]
    decoding: dict
    device: str
    audio_hours: float
    wall_seconds: float
    rtfx: float
    utterances_per_second: float
    model_load_seconds: float
    compile_seconds: float
    primary_metric: str  # "cer" for languages written without spaces between words, else "wer"
    score: float  # the primary metric's value
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    raw_wer: float
    raw_cer: float
    normalizer: str
    utterances: int
    scored_utterances: int
    empty_references: int
    reference_words: int
    txt_path: str
    json_path: str
    source_format: Optional[str] = None  # the corpus format of a data_prep folder (kaldi, common_voice...)
    skipped_bad_audio: int = 0  # utterances left out because their audio could not be decoded (--max_bad_examples)
    skipped_examples: list = field(default_factory=list)  # their ids

    def to_dict(self):
        return asdict(self)


def audio_durations(dataset, unreadable=None):
    """Seconds of audio per row: the ``duration`` column when present, else read from the audio headers.

    ``unreadable``: a dict to receive ``{row: why}`` for headers that cannot be read (their duration is 0);
    without it such a row raises :class:`UserError` naming the file.
    """
    if DURATION_COLUMN in dataset.column_names:
        return np.asarray(dataset[DURATION_COLUMN], dtype=np.float64)
    durations = []
    for row, value in enumerate(dataset[AUDIO_COLUMN]):
        if isinstance(value, dict) and value.get("array") is not None:
            durations.append(len(value["array"]) / value["sampling_rate"])
            continue
        source = io.BytesIO(value["bytes"]) if isinstance(value, dict) and value.get("bytes") else \
            (value["path"] if isinstance(value, dict) else value)
        try:
            info = sf.info(source)
        except Exception as exc:  # libsndfile raises several types
            why = f"cannot read audio {value.get('path') if isinstance(value, dict) else value}: {exc}"
            if unreadable is None:
                raise UserError(why) from exc
            unreadable[row] = why
            durations.append(0.0)
            continue
        durations.append(info.frames / info.samplerate)
    return np.asarray(durations, dtype=np.float64)


def length_sorted_batches(durations, batch_size, rows=None):
    """Indices (of ``rows``, by default all) grouped into batches, longest first (padding waste is small and OOM
    shows up at once)."""
    durations = np.asarray(durations)
    rows = np.arange(len(durations)) if rows is None else np.asarray(rows, dtype=np.int64)
    order = rows[np.argsort(-durations[rows], kind="stable")]
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class _Featurizer(torch.utils.data.Dataset):
    """Decodes and featurises one batch per item, so DataLoader workers overlap audio work with decoding.

    An item is ``(indices, features, bad)``: ``bad`` maps the rows whose audio could not be decoded to the
    reason (they have no features; the main process counts them against ``--max_bad_examples``)."""

    def __init__(self, dataset, batches, feature_extractor, context_frames=None):
        self.dataset, self.batches, self.feature_extractor = dataset, batches, feature_extractor
        self.context_frames = context_frames  # seconds -> log-mel frames (dynamic audio context), or None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        rows = self.dataset[self.batches[index]]
        indices, audio, bad = [], [], {}
        for row, value in zip(self.batches[index], rows[AUDIO_COLUMN]):
            decoded, why = try_decode(value, SAMPLE_RATE)
            if decoded is None:
                bad[row] = why
            else:
                indices.append(row)
                audio.append(decoded)
        if not audio:
            return indices, None, bad
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        if self.context_frames:
            features = features[:, :, :self.context_frames(max(len(a) for a in audio) / SAMPLE_RATE)]
        return indices, features.astype(np.float32), bad  # (B, n_mels, 3000 or the batch's bucket)


def _as_is(item):
    """Keep the worker's numpy batch as it is (the default would convert it to a torch tensor)."""
    return item


def model_fingerprint(model_path):
    """What identifies the model's weights for a progress file, cheaply: a local folder's file names, sizes and
    modification times; a Hub model's cached snapshot (its commit) when cached, else its id."""
    if os.path.isdir(model_path):
        entries = []
        for name in sorted(os.listdir(model_path)):
            path = os.path.join(model_path, name)
            if os.path.isfile(path):
                stat = os.stat(path)
                entries.append([name, stat.st_size, stat.st_mtime_ns])
        return hashlib.sha1(json.dumps([os.path.abspath(model_path), entries]).encode()).hexdigest()
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_path, "config.json")
    except Exception:  # an id the Hub library cannot parse: the id alone identifies it
        cached = None
    return os.path.dirname(cached) if isinstance(cached, str) else model_path


class Progress:
    """The append-only progress file of one dataset's decoding: a header line (model, decoding options, dataset)
    and one JSON line per decoded batch (``rows``: ``[row, id, hypothesis]``; ``bad``: ``[row, id, why]``).

    :meth:`load` returns what an earlier run with the same header decoded; a different header means the file
    is from another model, other options or another dataset: it is replaced, and the reason logged. A line
    cut short by a kill is cut off before anything is appended.
    """

    def __init__(self, path, header):
        self.path, self.header = path, header

    def load(self, label):
        """``(hypotheses, bad)`` by row from an earlier run's file (empty when there is none or it differs)."""
        hypotheses, bad = {}, {}
        if not os.path.exists(self.path):
            self._start()
            return hypotheses, bad
        with open(self.path, "rb") as f:
            raw = f.read()
        lines, good_bytes = [], 0
        for line in raw.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("cut short")
                lines.append(json.loads(line))
            except ValueError:
                break
            good_bytes += len(line)
        earlier = lines[0].get("header") if lines and isinstance(lines[0], dict) else None
        if earlier != self.header:
            changed = sorted(key for key in set(self.header) | set(earlier or {})
                             if (earlier or {}).get(key) != self.header.get(key))
            logger.warning("%s: decoding from the start: the progress file %s was made with another %s", label,
                           self.path, ", ".join(changed) if earlier else "format (unreadable header)")
            self._start()
            return hypotheses, bad
        if good_bytes < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
        for entry in lines[1:]:
            hypotheses.update({row: text for row, _, text in entry.get("rows", [])})
            bad.update({row: why for row, _, why in entry.get("bad", [])})
        return hypotheses, bad

    def _start(self):
        files.atomic_write_text(self.path, json.dumps({"header": self.header}, ensure_ascii=False) + "\n")

    def append(self, rows, bad, ids):
        """Add one decoded batch (``rows``: ``{row: hypothesis}``; ``bad``: ``{row: why}``), on disk on return."""
        entry = {"rows": [[row, ids[row], text] for row, text in rows.items()],
                 "bad": [[row, ids[row], why] for row, why in bad.items()]}
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        folder = os.path.dirname(os.path.abspath(self.path))
        with files.space_guard(folder, f"the decoding progress {os.path.basename(self.path)}",
                               advice="the progress so far is kept: free some space and rerun the same command"):
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def remove(self):
        if os.path.exists(self.path):
            os.remove(self.path)


@dataclass
class Decoded:
    """One dataset's decoding: hypotheses by row (``None`` for a skipped row), the rows skipped with the reason,
    this run's decoding seconds and the seconds of audio decoded."""

    hypotheses: list
    bad: dict
    wall: float
    audio_seconds: float


def decode_dataset(dataset, decoder, feature_extractor, batch_size, num_workers=0, description="decoding",
                   context_frames=None, max_bad=0, progress=None):
    """Decode every row of a standardised dataset; returns a :class:`Decoded`.

    ``progress``: a :class:`Progress` that holds what an earlier run decoded (those rows are not decoded again)
    and receives each batch. Rows whose audio cannot be decoded are skipped and counted; one more than
    ``max_bad`` stops the run with a one-line error naming them (``max_bad`` 0: the first one).
    """
    ids = [str(i) for i in dataset[ID_COLUMN]]
    bad = {}
    durations = audio_durations(dataset, bad)
    done, done_bad = progress.load(description) if progress is not None else ({}, {})
    bad.update(done_bad)

    def check():
        if len(bad) > max_bad:
            rows = sorted(bad)
            if not max_bad:  # the strict default: the first one, as it was reported before --max_bad_examples
                raise UserError(f"{description}: {ids[rows[0]]}: {bad[rows[0]]}")
            raise too_many(len(bad), max_bad, [ids[row] for row in rows], description)

    for row in sorted(set(bad) - set(done_bad)):
        logger.warning("%s: skipped %s: %s", description, ids[row], bad[row])
    check()
    todo = [row for row in range(len(dataset)) if row not in done and row not in bad]
    if done:
        logger.info("%s: %d of %d utterance(s) already decoded (%s); decoding the other %d", description, len(done),
                    len(dataset), progress.path, len(todo))
    batches = length_sorted_batches(durations, batch_size, todo)
    # Once JAX runs in this process (a JAX decoder, or one loaded earlier by the same program) it is
    # multithreaded, and forking it can deadlock: workers then start from a fresh forkserver process.
    fork_unsafe = not getattr(decoder, "fork_safe", True) or "jax" in sys.modules
    context = "forkserver" if num_workers and fork_unsafe else None
    loader = torch.utils.data.DataLoader(_Featurizer(dataset, batches, feature_extractor, context_frames),
                                         batch_size=None,
                                         shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                                         prefetch_factor=2 if num_workers else None, multiprocessing_context=context,
                                         worker_init_fn=die_with_parent if num_workers else None)
    hypotheses = [None] * len(dataset)
    for row, text in done.items():
        hypotheses[row] = text
    start = time.perf_counter()
    with tqdm(total=len(dataset), initial=len(done) + len(bad), desc=description, unit="utt",
              dynamic_ncols=True) as bar:
        for indices, features, skipped in loader:
            for row, why in skipped.items():
                logger.warning("%s: skipped %s: %s", description, ids[row], why)
            bad.update(skipped)
            check()
            decoded = {}
            if indices:
                for index, text in zip(indices, decoder.decode(features)):
                    hypotheses[index] = decoded[index] = text
            if progress is not None:
                progress.append(decoded, skipped, ids)
            bar.update(len(indices) + len(skipped))
    good = [row for row in range(len(dataset)) if row not in bad]
    return Decoded(hypotheses, bad, time.perf_counter() - start, float(durations[good].sum()))


def _load_all(config: EvalConfig):
    """Load and check every dataset before any decoding, so a bad one leaves no partial results."""
    loaded = []
    specs = config.dataset_specs()
    for spec, dataset in zip(specs, load_datasets(specs, custom=config.custom)):
        if config.max_samples is not None:
            dataset = dataset.select(range(min(config.max_samples, len(dataset))))
        if len(dataset) == 0:
            raise UserError(f"{spec.label}: the dataset is empty (no utterances to evaluate)")
        loaded.append((spec, dataset))
    return loaded


def result_names(specs):
    """Dataset names for result files: local folders by their base name (the full path when two
    datasets of one run share a base name), Hub datasets by id; then config and split."""
    def name(spec, full):
        base = spec.name if full or not os.path.exists(spec.name) else os.path.basename(os.path.normpath(spec.name))
        return "/".join([base] + [p for p in (spec.config, spec.split) if p])

    short = [name(spec, False) for spec in specs]
    return short if len(set(short)) == len(short) else [name(spec, True) for spec in specs]


def evaluate(config: EvalConfig) -> list:
    """Evaluate one model on each dataset; writes ``<model>__<dataset>[__marker].txt/.json`` per dataset.

    Returns one :class:`EvalResult` per dataset.
    """
    check_values(config)
    device = loading.decoding_device(config.device, config.decoding.backend)
    prepared = loading.prepare_model(config, config.decoding)
    normalizer = choose_normalizer(prepared.options.language, config.normalizer, prepared.english_only)
    metric = choose_metric(prepared.options.language, config.primary_metric)
    loaded = _load_all(config)
    options = prepared.options
    start = time.perf_counter()
    decoder = make_decoder(prepared, device)
    load_seconds = time.perf_counter() - start
    marker = config.result_marker or (None if options.backend == "pytorch" else f"{options.backend}-{options.compute_type}")
    results = []
    for (spec, dataset), name in zip(loaded, result_names([spec for spec, _ in loaded])):
        stem = scoring.result_stem(prepared.source.name, name, marker)
        os.makedirs(config.output_dir, exist_ok=True)
        progress = Progress(os.path.join(config.output_dir, stem + PROGRESS_SUFFIX),
                            {"model": model_fingerprint(prepared.source.model_path), "decoding": asdict(options),
                             "dataset": spec.label, "rows": len(dataset),
                             "ids": hashlib.sha1("\n".join(map(str, dataset[ID_COLUMN])).encode()).hexdigest()})
        decoded = decode_dataset(dataset, decoder, prepared.processor.feature_extractor, options.batch_size,
                                 config.num_workers, spec.label, options.context_frames, config.max_bad_examples,
                                 progress)
        wall, audio_seconds = decoded.wall, decoded.audio_seconds
        kept = [row for row in range(len(dataset)) if row not in decoded.bad]
        all_ids, all_references = list(dataset[ID_COLUMN]), list(dataset[TEXT_COLUMN])
        ids = [all_ids[row] for row in kept]
        references = [all_references[row] for row in kept]
        hypotheses = [decoded.hypotheses[row] for row in kept]
        scores = scoring.score(references, hypotheses, normalizer, metric)
        origin = source_format(spec.name)  # the corpus format of a data_prep folder; None for other datasets
        skipped = [str(all_ids[row]) for row in sorted(decoded.bad)]
        metadata = {
            "model": prepared.source.model_path, "processor": prepared.source.processor_path, "dataset": spec.label,
            **({"source_format": origin} if origin else {}),
            "language": options.language, "task": options.task,
            "decoder_prompt": prepared.prompt_text,
            "decoding": asdict(options), "device": str(device),
            "audio_hours": round(audio_seconds / 3600, 6), "wall_seconds": round(wall, 3),
            "rtfx": round(audio_seconds / max(wall, 1e-9), 3),
            "utterances_per_second": round(len(dataset) / max(wall, 1e-9), 3),
            "model_load_seconds": round(load_seconds, 3), "compile_seconds": round(decoder.compile_seconds, 3),
            "skipped_bad_audio": len(skipped), **({"skipped_examples": skipped} if skipped else {}),
        }
        txt_path, json_path = scoring.write_results(config.output_dir, stem, ids, references, hypotheses, scores,
                                                    metadata)
        progress.remove()  # the result files hold it all now
        logger.info("%s: %s %.4f (normalizer %s), RTFx %.2f -> %s", spec.label, metric.upper(), scores["score"],
                    normalizer, metadata["rtfx"], txt_path)
        figures = {k: v for k, v in scores.items() if k not in ("normalized_references", "normalized_hypotheses",
                                                                  "scored")}
        results.append(EvalResult(**metadata, **figures, txt_path=txt_path, json_path=json_path))

    # The report page beside the result files (issue 22; whisper_finetune/evaluate/report.py).
    from .report import write_report
    write_report([r.json_path for r in results], os.path.join(config.output_dir, "report.html"))
    return results
