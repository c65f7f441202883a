"""data_prep: a corpus folder -> a validated dataset, written atomically.

A Kaldi-style folder (``text`` + ``audio_paths``, or Kaldi's ``wav.scp`` + ``segments``; optional
``utt2spk`` and ``languages``) is read by :mod:`whisper_finetune.data.kaldi`; Common Voice, audiofolder,
NeMo and Lhotse corpora by :mod:`whisper_finetune.data.formats`, into entries that
:func:`~whisper_finetune.data.checks.check_entries` checks with the Kaldi reader's own checks. Every format
is then written by the same :func:`prepare_dataset`, which records the source format beside the dataset.

Every entry is checked first and each problem reported with its utterance id and line; the audio is
decoded, resampled and re-encoded as 16-bit WAV *inside* the dataset (so it survives the source files
being moved), a few dozen clips at a time (flat memory), and the dataset appears only when complete.
The columns are those of :mod:`whisper_finetune.data.loading`'s common schema plus ``duration`` (seconds), and
for segments ``recording_id``, ``start`` and ``end`` (seconds in the recording). An optional ``languages``
file (``<id> <code>``) adds a ``language`` column: each listed utterance's Whisper language code, which
training puts into its labels (rows without one take the run's ``--language``).
"""
import contextlib
import json
import logging
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field

import datasets
from datasets import Audio, Dataset, Features, Value

from .. import files
from ..audio import encode_wav, load_audio, load_audio_spans
from ..errors import DataValidationError, OptionError
from .config import DataPrepConfig, check_values
from .formats import check_format_options, detect_format, read_entries
from .loading import PREP_INFO_FILE, RAW_AUDIO
from .schema import (AUDIO_COLUMN, DURATION_COLUMN, END_COLUMN, ID_COLUMN, LANGUAGE_COLUMN, RECORDING_COLUMN,
                     SPEAKER_COLUMN, START_COLUMN, TEXT_COLUMN)
from .checks import by_recording, check_entries
from .kaldi import validate_corpus

logger = logging.getLogger(__name__)

# Rows buffered before each Arrow write: bounds data_prep memory (a row holds one encoded clip).
WRITER_BATCH_SIZE = 64


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


# Rows are generated with the audio column as the plain ``{bytes, path}`` struct (loading.RAW_AUDIO) and
# cast to ``Audio`` afterwards: the cast only relabels the Arrow storage, while writing ``Audio`` rows
# would import torchcodec (and FFmpeg) to "encode" bytes that are already a WAV file.


def prep_features(sampling_rate, with_speaker=False, with_segments=False, with_language=False):
    """The columns of a data_prep dataset as written (audio as the raw ``{bytes, path}`` struct)."""
    columns = {ID_COLUMN: Value("string"), AUDIO_COLUMN: RAW_AUDIO,
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


@contextlib.contextmanager
def small_write_batches():
    """``save_to_disk`` copies a dataset in batches of ``datasets.config.DEFAULT_MAX_BATCH_SIZE`` rows (1000),
    which with a whole clip per row is up to ~1 GB; the documented setting is lowered to
    :data:`WRITER_BATCH_SIZE` for the ``with`` block (and restored), so memory stays flat."""
    saved = datasets.config.DEFAULT_MAX_BATCH_SIZE
    datasets.config.DEFAULT_MAX_BATCH_SIZE = WRITER_BATCH_SIZE
    try:
        yield
    finally:
        datasets.config.DEFAULT_MAX_BATCH_SIZE = saved


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
    check_values(config)
    out = os.path.abspath(config.output_data_dir)

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
        # A full disk: the work folder goes, an earlier output stays. What it needs: the clips as 16-bit audio at
        # the output rate, twice (the generated dataset, then the saved copy, both in the work folder).
        needed = int(2 * 2 * config.sampling_rate * sum(utt.duration for utt in utterances))
        with files.space_guard(parent, os.path.basename(out), partial=work, needed=needed):
            with_speaker = any(utt.speaker is not None for utt in utterances)
            with_language = any(utt.language is not None for utt in utterances)
            with_segments = utterances[0].recording_id is not None
            # Segments travel as whole recordings (tuples of their segments): one worker reads each file once.
            units = by_recording(utterances) if with_segments else utterances
            num_proc = max(1, min(config.num_proc, len(units)))
            # Contiguous shards, one per process: from_generator concatenates them in order, so the
            # dataset keeps the corpus order.
            bounds = [round(i * len(units) / num_proc) for i in range(num_proc + 1)]
            shards = [units[a:b] for a, b in zip(bounds, bounds[1:])]
            dataset = Dataset.from_generator(
                _generate_segment_rows if with_segments else _generate_rows,
                features=prep_features(config.sampling_rate, with_speaker, with_segments, with_language),
                gen_kwargs={"shards": shards, "sampling_rate": config.sampling_rate, "with_speaker": with_speaker,
                            "with_language": with_language},
                num_proc=num_proc if num_proc > 1 else None, cache_dir=os.path.join(work, "cache"),
                split="train", writer_batch_size=WRITER_BATCH_SIZE)
            dataset = dataset.cast_column(AUDIO_COLUMN, Audio(sampling_rate=config.sampling_rate))
            staged = os.path.join(work, "dataset")
            with small_write_batches():
                dataset.save_to_disk(staged, num_shards=config.num_shards, max_shard_size=config.max_shard_size)
            with open(os.path.join(staged, PREP_INFO_FILE), "w", encoding="utf-8") as f:
                json.dump({"source_format": source_format, "source_data_dir": os.path.abspath(config.source_data_dir)},
                          f, indent=2, ensure_ascii=False)
            durations = list(dataset[DURATION_COLUMN])
            del dataset
            files.publish_dir(staged, out)  # an existing one (--overwrite) is renamed aside, then removed
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return PrepSummary(out, len(durations), durations, dropped, source_format)
