"""Datasets: Kaldi-style folders -> validated datasets (data_prep), and loading of every dataset kind.

Every dataset our tools consume is brought to one schema by :func:`standardize`:

* ``audio``: an ``Audio(decode=False)`` column (``{"bytes", "path"}``), decoded by
  :func:`whisper_finetune.audio.decode_example_audio` so no ffmpeg/torchcodec is needed;
* ``sentence``: the transcription;
* ``id``: an utterance id (taken from the dataset, or ``<dataset>-<index>``).

data_prep writes exactly these columns plus ``duration`` (seconds), with the audio re-encoded as
16-bit WAV at the target rate *inside* the dataset, so it survives the source files being moved.
"""
import functools
import itertools
import logging
import os
import shutil
import statistics
import sys
import tempfile
from unittest import mock
from dataclasses import dataclass, field
from typing import Optional

import datasets
from datasets import Audio, Dataset, Features, Value
from datasets.packaged_modules.parquet.parquet import Parquet

from .audio import CHUNK_SECONDS, SAMPLE_RATE, audio_info, encode_wav, load_audio
from .errors import DataValidationError, OptionError, UserError
from .options import option

logger = logging.getLogger(__name__)

AUDIO_COLUMN = "audio"
TEXT_COLUMN = "sentence"
ID_COLUMN = "id"
DURATION_COLUMN = "duration"
# Looked for, in this order, when a dataset's text column is not given.
TEXT_COLUMN_CANDIDATES = ("sentence", "text", "transcription", "transcript", "raw_transcription",
                          "normalized_text", "raw_text")
ID_COLUMN_CANDIDATES = ("id", "utt_id", "utterance_id", "audio_id", "segment_id", "path", "file")
MAX_SECONDS = CHUNK_SECONDS  # longer clips do not fit Whisper's window
# Rows buffered before each Arrow write: bounds data_prep memory (a row holds one encoded clip).
WRITER_BATCH_SIZE = 64


# ---------------------------------------------------------------------------------------------
# data_prep
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataPrepConfig:
    """Options of :func:`prepare_dataset` (one per data_prep.py flag)."""

    source_data_dir: str = option(help="folder holding the `text` and `audio_paths` files")
    output_data_dir: str = option(help="folder to write the dataset to (must not exist unless --overwrite True)")
    sampling_rate: int = option(SAMPLE_RATE, "resample all audio to this rate (Hz)")
    num_proc: int = option(1, "processes decoding audio in parallel")
    skip_invalid: bool = option(False, "drop invalid utterances (and list them) instead of stopping")
    overwrite: bool = option(False, "replace an existing --output_data_dir")
    num_shards: Optional[int] = option(None, "write the dataset in this many Arrow shards (large corpora; training "
                                       "reads them memory-mapped)")
    max_shard_size: Optional[str] = option(None, "or: maximum size of one shard, e.g. 500MB")
    max_duration: float = option(MAX_SECONDS, "longest clip kept, seconds (Whisper's window)", cli=False)


@dataclass(frozen=True)
class Utterance:
    """One validated entry: id, transcription, absolute audio path, duration from the file header."""

    uid: str
    text: str
    path: str
    duration: float


@dataclass
class PrepSummary:
    """What :func:`prepare_dataset` kept and dropped; ``str()`` gives the printed summary."""

    output_dir: str
    kept: int
    durations: list = field(default_factory=list, repr=False)
    dropped: dict = field(default_factory=dict)  # reason -> list of messages

    def __str__(self):
        lines = [f"wrote {self.output_dir}", f"utterances kept: {self.kept}"]
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


def read_kaldi_file(path):
    """Read a ``<id> <value>`` file; returns ``[(line_number, id, value)]`` (blank lines skipped).

    Raises :class:`UserError` for a missing file or invalid UTF-8, naming the line.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (the source folder needs 'text' and 'audio_paths')")
    entries = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}, line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                f"save the file as UTF-8") from exc
            line = line.rstrip("\r\n").lstrip("\ufeff")
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            entries.append((number, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return entries


def validate_corpus(source_dir, max_duration=MAX_SECONDS):
    """Check a Kaldi-style folder; returns ``(utterances, problems)``.

    ``problems`` is a list of ``(reason, uid, message)``; each message names the utterance id and the
    line number. Utterances with a problem are not in ``utterances``.
    """
    text_file = os.path.join(source_dir, "text")
    paths_file = os.path.join(source_dir, "audio_paths")
    texts = read_kaldi_file(text_file)
    paths = read_kaldi_file(paths_file)
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
    path_lines = check_duplicates(paths, "audio_paths")
    for uid, number in text_lines.items():
        if uid not in path_lines:
            problems.append(("id missing from audio_paths", uid, f"text line {number}: id {uid} has no entry in audio_paths"))
            bad.add(uid)
    for uid, number in path_lines.items():
        if uid not in text_lines:
            problems.append(("id missing from text", uid, f"audio_paths line {number}: id {uid} has no entry in text"))
            bad.add(uid)

    common_text = [uid for _, uid, _ in texts if uid in path_lines and uid not in bad]
    common_paths = [uid for _, uid, _ in paths if uid in text_lines and uid not in bad]
    if common_text != common_paths:
        for a, b in zip(common_text, common_paths):
            if a != b:
                problems.append(("ids out of order", a, f"text line {text_lines[a]}: id {a}, but the matching "
                                 f"audio_paths line {path_lines[b]} has id {b}; both files must list ids in the same order"))
                break

    text_by_id = {uid: value for _, uid, value in texts}
    utterances = []
    for number, uid, value in paths:
        if uid in bad or uid not in text_by_id:
            continue
        where = f"id {uid} (text line {text_lines[uid]}, audio_paths line {number})"
        if not text_by_id[uid]:
            problems.append(("empty transcription", uid, f"{where}: empty transcription"))
            continue
        if not value:
            problems.append(("missing audio", uid, f"{where}: no audio path given"))
            continue
        path = os.path.expanduser(value)
        path = path if os.path.isabs(path) else os.path.join(source_dir, path)
        if not os.path.isfile(path):
            problems.append(("missing audio", uid, f"{where}: audio file {value} not found"))
            continue
        try:
            duration, _, _ = audio_info(path)
        except UserError:
            problems.append(("unreadable audio", uid, f"{where}: audio file {value} is not readable audio"))
            continue
        if duration <= 0:
            problems.append(("empty audio", uid, f"{where}: audio file {value} holds no samples"))
        elif duration > max_duration:
            problems.append(("longer than 30 s", uid, f"{where}: {duration:.1f} s is longer than Whisper's "
                             f"{max_duration:g} s window"))
        else:
            utterances.append(Utterance(uid, text_by_id[uid], os.path.abspath(path), duration))
    return utterances, problems


def _prep_features(sampling_rate):
    return Features({ID_COLUMN: Value("string"), AUDIO_COLUMN: Audio(sampling_rate=sampling_rate),
                     TEXT_COLUMN: Value("string"), DURATION_COLUMN: Value("float32")})


def _generate_rows(shards, sampling_rate):
    """Decode one shard of utterances at a time; only one clip is in memory per worker."""
    for shard in shards:
        for utt in shard:
            audio = load_audio(utt.path, sampling_rate)
            yield {ID_COLUMN: utt.uid, AUDIO_COLUMN: {"bytes": encode_wav(audio, sampling_rate), "path": f"{utt.uid}.wav"},
                   TEXT_COLUMN: utt.text, DURATION_COLUMN: len(audio) / sampling_rate}


def prepare_dataset(config: DataPrepConfig) -> PrepSummary:
    """Validate a Kaldi-style folder and write it as a dataset that ``load_from_disk`` opens.

    Invalid utterances raise :class:`DataValidationError` (all problems listed), or are dropped with
    ``skip_invalid``. The output is built in a temporary sibling folder and renamed into place only
    when complete, so a failure or Ctrl-C never leaves a half-written ``output_data_dir``.
    """
    out = os.path.abspath(config.output_data_dir)
    if not os.path.isdir(config.source_data_dir):
        raise OptionError("source_data_dir", config.source_data_dir, "no such folder")
    if os.path.exists(out) and not config.overwrite:
        raise UserError(f"--output_data_dir {config.output_data_dir} already exists; pass --overwrite to replace it")
    if config.sampling_rate <= 0:
        raise OptionError("sampling_rate", config.sampling_rate, "must be a positive number of Hz")

    utterances, problems = validate_corpus(config.source_data_dir, config.max_duration)
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
        num_proc = max(1, min(config.num_proc, len(utterances)))
        # Contiguous shards, one per process: from_generator concatenates them in order, so the
        # dataset keeps the corpus order.
        bounds = [round(i * len(utterances) / num_proc) for i in range(num_proc + 1)]
        shards = [utterances[a:b] for a, b in zip(bounds, bounds[1:])]
        dataset = Dataset.from_generator(
            _generate_rows, features=_prep_features(config.sampling_rate),
            gen_kwargs={"shards": shards, "sampling_rate": config.sampling_rate},
            num_proc=num_proc if num_proc > 1 else None, cache_dir=os.path.join(work, "cache"),
            split="train", writer_batch_size=WRITER_BATCH_SIZE)
        staged = os.path.join(work, "dataset")
        # save_to_disk copies in batches of datasets.config.DEFAULT_MAX_BATCH_SIZE rows (1000): with a
        # whole clip per row that is up to ~1 GB; copy in small batches so memory stays flat.
        with mock.patch.object(datasets.config, "DEFAULT_MAX_BATCH_SIZE", WRITER_BATCH_SIZE):
            dataset.save_to_disk(staged, num_shards=config.num_shards, max_shard_size=config.max_shard_size)
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
    return PrepSummary(out, len(durations), durations, dropped)


# ---------------------------------------------------------------------------------------------
# Loading datasets (custom and Hugging Face) into the common schema
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to read: a Hub id or local folder, with config, split and column names."""

    name: str
    config: Optional[str] = None
    split: str = "train"
    text_column: Optional[str] = None
    audio_column: str = AUDIO_COLUMN

    @property
    def label(self):
        """A short human-readable name: ``name[/config][/split]``."""
        parts = [self.name.rstrip("/")] + [p for p in (self.config, self.split) if p]
        return "/".join(parts)


def is_saved_dataset(path):
    """True when ``path`` is a ``save_to_disk`` folder (data_prep output)."""
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, "dataset_info.json"))
                                    or os.path.exists(os.path.join(path, "dataset_dict.json")))


def load_custom_dataset(path):
    """Open a data_prep output folder; errors say when the folder is not one."""
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such dataset folder (make one with custom_data/data_prep.py)")
    if not is_saved_dataset(path):
        raise UserError(f"{path}: not a data_prep dataset (no dataset_info.json); make one with custom_data/data_prep.py")
    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise UserError(f"{path}: holds several splits ({', '.join(dataset)}); pass one split's folder")
    missing = [c for c in (AUDIO_COLUMN, TEXT_COLUMN) if c not in dataset.column_names]
    if missing:
        raise UserError(f"{path}: not a data_prep dataset: no column(s) {', '.join(missing)} "
                        f"(it has {', '.join(dataset.column_names)})")
    return dataset


def load_hf_dataset(spec: DatasetSpec, streaming=False, num_proc=None):
    """Load a Hugging Face dataset split: a Hub id, a local folder ``load_dataset`` reads, or a saved dataset."""
    try:
        if is_saved_dataset(spec.name):
            loaded = datasets.load_from_disk(spec.name)
            if isinstance(loaded, datasets.DatasetDict):
                if spec.split not in loaded:
                    raise UserError(f"{spec.name}: no split {spec.split!r} (it has {', '.join(loaded)})")
                loaded = loaded[spec.split]
            if not streaming:
                return loaded
            # One stream shard per Arrow file (data_prep --num_shards), so ranks/workers can split by file.
            return loaded.to_iterable_dataset(num_shards=max(1, len(loaded.cache_files)))
        if streaming:
            return _load_stream(spec)
        return datasets.load_dataset(spec.name, spec.config, split=spec.split, num_proc=num_proc)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load dataset {spec.label}: {message}") from exc


def _load_stream(spec: DatasetSpec):
    """``load_dataset(..., streaming=True)``, except that parquet files are read without threads.

    datasets 3.6 reads parquet with ``ParquetFileFragment.to_batches`` (pyarrow's threaded scanner):
    despite ``batch_readahead=0`` it decodes the rest of the file in the background whenever the
    consumer is slower than the disk (training always is), up to pyarrow's backpressure limit, so
    a stream's memory grew with the size of its parquet files. Read without threads, one record
    batch (a row group) is read when it is asked for.
    """
    builder = datasets.load_dataset_builder(spec.name, spec.config, _require_default_config_name=spec.config is None)
    # The replacement copies datasets 3.x's reader; later versions have scan options of their own.
    if isinstance(builder, Parquet) and datasets.__version__.startswith("3."):
        builder._generate_tables = functools.partial(_unthreaded_parquet_tables, builder)
    return builder.as_streaming_dataset(split=spec.split)


def _unthreaded_parquet_tables(builder, files):
    """datasets 3.6's ``Parquet._generate_tables`` without threads (see :func:`_load_stream`): the same
    tables, read with ``ParquetFile.iter_batches`` (or, with ``filters``, the fragment scan unthreaded)."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    config = builder.config
    # When streaming, datasets replaces ``open`` in the builder's module by one that also opens remote files.
    open_file = getattr(sys.modules[type(builder).__module__], "open", open)
    filters = pq.filters_to_expression(config.filters) if isinstance(config.filters, list) else config.filters
    for file_idx, file in enumerate(itertools.chain.from_iterable(files)):
        with open_file(file, "rb") as f:
            if filters is None:  # ParquetFile holds less than even an unthreaded fragment scan
                parquet_file = pq.ParquetFile(f)
                if not parquet_file.metadata.num_row_groups:
                    continue
                batches = parquet_file.iter_batches(
                    batch_size=config.batch_size or parquet_file.metadata.row_group(0).num_rows,
                    columns=config.columns, use_threads=False)
            else:
                fragment = ds.ParquetFileFormat().make_fragment(f)
                if not fragment.row_groups:
                    continue
                batches = fragment.to_batches(batch_size=config.batch_size or fragment.row_groups[0].num_rows,
                                              columns=config.columns, filter=filters, batch_readahead=0,
                                              fragment_readahead=0, use_threads=False)
            for batch_idx, record_batch in enumerate(batches):
                yield f"{file_idx}_{batch_idx}", builder._cast_table(pa.Table.from_batches([record_batch]))


def detect_text_column(columns, requested=None, dataset_label="dataset"):
    """Return the text column: ``requested`` if present, else the first of the usual names."""
    columns = list(columns)
    if requested:
        if requested not in columns:
            raise UserError(f"{dataset_label}: no text column {requested!r}; columns are: {', '.join(columns)}")
        return requested
    for candidate in TEXT_COLUMN_CANDIDATES:
        if candidate in columns:
            return candidate
    raise UserError(f"{dataset_label}: cannot tell which column holds the transcription; columns are: "
                    f"{', '.join(columns)}; name it with the text-column flag")


def standardize(dataset, spec: DatasetSpec):
    """Bring a dataset to the common schema (``audio`` undecoded, ``sentence``, ``id``)."""
    columns = list(dataset.column_names or dataset.features or [])
    if spec.audio_column not in columns:
        raise UserError(f"{spec.label}: no audio column {spec.audio_column!r}; columns are: {', '.join(columns)}")
    text_column = detect_text_column(columns, spec.text_column, spec.label)
    id_column = next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)
    if isinstance(dataset.features.get(spec.audio_column) if dataset.features else None, Audio):
        dataset = dataset.cast_column(spec.audio_column, Audio(decode=False))
    renames = {}
    if spec.audio_column != AUDIO_COLUMN:
        renames[spec.audio_column] = AUDIO_COLUMN
    if text_column != TEXT_COLUMN:
        if TEXT_COLUMN in columns:
            dataset = dataset.remove_columns(TEXT_COLUMN)
        renames[text_column] = TEXT_COLUMN
    if renames:
        dataset = dataset.rename_columns(renames)
    if id_column is None or id_column == spec.audio_column:
        prefix = os.path.basename(spec.label.rstrip("/")) or "utt"
        dataset = dataset.map(lambda _, i: {ID_COLUMN: f"{prefix}-{i:06d}"}, with_indices=True,
                              input_columns=[TEXT_COLUMN])
    elif id_column != ID_COLUMN:
        dataset = dataset.map(lambda v: {ID_COLUMN: str(v)}, input_columns=[id_column])
    elif dataset.features and dataset.features[ID_COLUMN] != Value("string"):
        dataset = dataset.cast_column(ID_COLUMN, Value("string"))
    keep = [AUDIO_COLUMN, TEXT_COLUMN, ID_COLUMN] + ([DURATION_COLUMN] if DURATION_COLUMN in columns else [])
    extra = [c for c in (dataset.column_names or []) if c not in keep]
    return dataset.remove_columns(extra) if extra else dataset


def load_datasets(specs, custom=False, streaming=False, num_proc=None):
    """Load each spec into the common schema; ``custom`` reads data_prep folders, else HF datasets."""
    loaded = []
    for spec in specs:
        raw = load_custom_dataset(spec.name) if custom else load_hf_dataset(spec, streaming, num_proc)
        loaded.append(standardize(raw, spec))
    return loaded


def check_parallel_lists(prefix, **lists):
    """Check that per-dataset flag lists have one entry per dataset; error names the lists."""
    given = {name: values for name, values in lists.items() if values is not None}
    lengths = {name: len(values) for name, values in given.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"--{name} ({n})" for name, n in lengths.items())
        raise UserError(f"{prefix}: these lists must have the same length, one entry per dataset: {described}")
