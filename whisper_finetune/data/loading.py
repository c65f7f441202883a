"""Loading datasets of every kind (data_prep folders, Hub ids, local HF folders, streams) into one schema.

Every dataset our tools consume is brought to one schema by :func:`standardize`:

* ``audio``: an ``Audio(decode=False)`` column (``{"bytes", "path"}``), decoded by
  :func:`whisper_finetune.audio.decode_example_audio` so no ffmpeg/torchcodec is needed;
* ``sentence``: the transcription;
* ``id``: an utterance id (taken from the dataset, or ``<dataset>-<index>``).

data_prep (:mod:`whisper_finetune.data.corpus`) writes exactly these columns plus ``duration`` (seconds),
with the audio re-encoded as 16-bit WAV at the target rate *inside* the dataset, so it survives the
source files being moved.
"""
import json
import logging
import os

import datasets
import fsspec
from datasets import Audio, Value

from ..errors import UserError
from .schema import (AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, ID_COLUMN_CANDIDATES, LANGUAGE_COLUMN, SEGMENT_COLUMNS,
                     TEXT_COLUMN, TEXT_COLUMN_CANDIDATES, DatasetSpec, check_dataset_folder, is_saved_dataset)

logger = logging.getLogger(__name__)

# data_prep writes this beside the dataset: {"source_format": "kaldi" | "common_voice" | ..., "source_data_dir": ...}
PREP_INFO_FILE = "data_prep.json"


# ---------------------------------------------------------------------------------------------
# Loading datasets (custom and Hugging Face) into the common schema
# ---------------------------------------------------------------------------------------------
def source_format(path):
    """The corpus format a data_prep folder was made from (``common_voice``...), or ``None`` for any other
    dataset (a Hub id, a folder data_prep did not write, or one written before data_prep recorded it)."""
    try:
        with open(os.path.join(path, PREP_INFO_FILE), encoding="utf-8") as f:
            return json.load(f).get("source_format")
    except (OSError, ValueError, AttributeError):
        return None


def _empty_saved_dataset(path):
    """The empty dataset saved at ``path`` (its columns, no rows), or None when it has rows or is not one.

    datasets 5 writes no data file for an empty dataset and then fails to load it (an IndexError
    inside ``load_from_disk``); the callers say "the dataset is empty" instead.
    """
    state = os.path.join(path, "state.json")
    if not os.path.isfile(state):
        return None
    with open(state, encoding="utf-8") as f:
        if json.load(f).get("_data_files") != []:
            return None
    features = datasets.DatasetInfo.from_directory(path).features
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)


def load_custom_dataset(path):
    """Open a data_prep output folder; errors say when the folder is not one."""
    check_dataset_folder(path)
    dataset = _empty_saved_dataset(path)
    if dataset is None:
        dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise UserError(f"{path}: holds several splits ({', '.join(dataset)}); pass one split's folder")
    missing = [c for c in (AUDIO_COLUMN, TEXT_COLUMN) if c not in dataset.column_names]
    if missing:
        raise UserError(f"{path}: not a data_prep dataset: no column(s) {', '.join(missing)} "
                        f"(it has {', '.join(dataset.column_names)})")
    return undecoded(dataset)


# An audio column as stored (``{bytes, path}``), without the ``Audio`` type: datasets >= 4 imports
# torchcodec (and FFmpeg) to encode or decode ``Audio`` values, even bytes that are already a file;
# our own code decodes them with soundfile (audio.decode_example_audio).
RAW_AUDIO = {"bytes": Value("binary"), "path": Value("string")}



def undecoded(dataset, column=AUDIO_COLUMN):
    """``dataset`` with its ``Audio`` column left as stored (``{bytes, path}``), for audio.decode_example_audio.

    A dataset keeps the ``Audio`` type with ``decode=False``; a stream, which encodes every example with its
    features, carries :data:`RAW_AUDIO`, since datasets >= 4 encodes ``Audio`` only through torchcodec.
    Any other column type is left as it is.
    """
    if not isinstance(dataset.features.get(column) if dataset.features else None, Audio):
        return dataset
    return dataset.cast_column(column, RAW_AUDIO if isinstance(dataset, datasets.IterableDataset)
                               else Audio(decode=False))


# What datasets >= 4 raises for a repository or folder whose only loader is a Python script.
SCRIPT_REFUSED = "Dataset scripts are no longer supported"


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
    except RuntimeError as exc:
        if SCRIPT_REFUSED not in str(exc):
            raise
        raise UserError(f"cannot load dataset {spec.label}: its only loader is a script "
                        f"({str(exc).rsplit(' ', 1)[-1]}), which datasets >= 4 no longer runs; use a copy of it "
                        "in parquet (on the Hub or in a local folder), or download its files and prepare them "
                        "with custom_data/data_prep.py (--format common_voice for a Common Voice release)") from exc
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load dataset {spec.label}: {message}") from exc


def _load_stream(spec: DatasetSpec):
    """``load_dataset(..., streaming=True)``, except that parquet is read one row group at a time, without threads.

    ``datasets`` reads streamed parquet through pyarrow's threaded scanner, which decodes the rest of
    the file in the background whenever the consumer is slower than the disk (training always is), so
    a stream's memory grew with the size of its parquet files. A parquet dataset (a Hub repository or
    a local folder of parquet files) is streamed here from its data files with
    ``ParquetFile.iter_batches(use_threads=False)``: one record batch (a row group) is read when it is
    asked for. One stream shard per file, so ranks and workers split by file.
    """
    builder = datasets.load_dataset_builder(spec.name, spec.config)
    files = (builder.config.data_files or {}).get(spec.split) if builder.name == "parquet" else None
    if not files:
        return datasets.load_dataset(spec.name, spec.config, split=spec.split, streaming=True)
    import pyarrow.parquet as pq

    with fsspec.open(files[0], "rb") as f:
        features = builder.info.features or datasets.Features.from_arrow_schema(pq.read_schema(f))
    features = datasets.Features({name: RAW_AUDIO if isinstance(feature, Audio) else feature
                                  for name, feature in features.items()})  # see RAW_AUDIO
    return datasets.IterableDataset.from_generator(parquet_rows, features=features, gen_kwargs={"files": list(files)})


def parquet_rows(files):
    """The rows of ``files`` (local paths or fsspec URLs such as ``hf://``), one row group in memory at a time."""
    import pyarrow.parquet as pq

    for file in files:
        with fsspec.open(file, "rb") as f:
            parquet_file = pq.ParquetFile(f)
            if not parquet_file.metadata.num_row_groups:
                continue
            for batch in parquet_file.iter_batches(batch_size=parquet_file.metadata.row_group(0).num_rows,
                                                   use_threads=False):
                yield from batch.to_pylist()


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


def standardize(dataset, spec: DatasetSpec, keep_segments=False):
    """Bring a dataset to the common schema (``audio`` undecoded, ``sentence``, ``id``, and ``duration`` and
    ``language`` where the dataset has them); ``keep_segments`` also keeps the segment columns
    (``recording_id``, ``start``, ``end``) of datasets that have all three."""
    columns = list(dataset.column_names or dataset.features or [])
    if spec.audio_column not in columns:
        raise UserError(f"{spec.label}: no audio column {spec.audio_column!r}; columns are: {', '.join(columns)}")
    text_column = detect_text_column(columns, spec.text_column, spec.label)
    id_column = next((c for c in ID_COLUMN_CANDIDATES if c in columns), None)
    dataset = undecoded(dataset, spec.audio_column)
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
    keep = [AUDIO_COLUMN, TEXT_COLUMN, ID_COLUMN] + [c for c in (DURATION_COLUMN, LANGUAGE_COLUMN) if c in columns]
    if keep_segments and all(c in columns for c in SEGMENT_COLUMNS):
        keep += list(SEGMENT_COLUMNS)
    extra = [c for c in (dataset.column_names or []) if c not in keep]
    return dataset.remove_columns(extra) if extra else dataset


def load_datasets(specs, custom=False, streaming=False, num_proc=None, keep_segments=False):
    """Load each spec into the common schema; ``custom`` reads data_prep folders, else HF datasets."""
    loaded = []
    for spec in specs:
        raw = load_custom_dataset(spec.name) if custom else load_hf_dataset(spec, streaming, num_proc)
        loaded.append(standardize(raw, spec, keep_segments))
    return loaded


def check_parallel_lists(prefix, **lists):
    """Check that per-dataset flag lists have one entry per dataset; error names the lists."""
    given = {name: values for name, values in lists.items() if values is not None}
    lengths = {name: len(values) for name, values in given.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"--{name} ({n})" for name, n in lengths.items())
        raise UserError(f"{prefix}: these lists must have the same length, one entry per dataset: {described}")
