"""data_prep: a Kaldi-style folder (``text`` + ``audio_paths``, optional ``utt2spk``) -> a validated dataset.

Every entry is checked first and each problem reported with its utterance id and line; the audio is
decoded, resampled and re-encoded as 16-bit WAV *inside* the dataset (so it survives the source files
being moved), a few dozen clips at a time (flat memory), and the dataset appears only when complete.
The columns are those of :mod:`whisper_finetune.data`'s common schema plus ``duration`` (seconds).
"""
import logging
import os
import shutil
import statistics
import tempfile
from unittest import mock
from dataclasses import dataclass, field
from typing import Optional

import datasets
from datasets import Audio, Dataset, Features, Value

from .audio import SAMPLE_RATE, audio_info, encode_wav, load_audio
from .data import AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, MAX_SECONDS, SPEAKER_COLUMN, TEXT_COLUMN
from .errors import DataValidationError, OptionError, UserError
from .options import option

logger = logging.getLogger(__name__)

# Rows buffered before each Arrow write: bounds data_prep memory (a row holds one encoded clip).
WRITER_BATCH_SIZE = 64


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
    speaker: Optional[str] = None  # from the optional utt2spk file


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

    speakers = _read_speakers(source_dir, text_lines, problems, bad)
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
            utterances.append(Utterance(uid, text_by_id[uid], os.path.abspath(path), duration,
                                        speakers.get(uid) if speakers is not None else None))
    return utterances, problems


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


def _prep_features(sampling_rate, with_speaker=False):
    columns = {ID_COLUMN: Value("string"), AUDIO_COLUMN: Audio(sampling_rate=sampling_rate),
               TEXT_COLUMN: Value("string"), DURATION_COLUMN: Value("float32")}
    return Features({**columns, SPEAKER_COLUMN: Value("string")} if with_speaker else columns)


def _generate_rows(shards, sampling_rate, with_speaker=False):
    """Decode one shard of utterances at a time; only one clip is in memory per worker."""
    for shard in shards:
        for utt in shard:
            audio = load_audio(utt.path, sampling_rate)
            row = {ID_COLUMN: utt.uid, AUDIO_COLUMN: {"bytes": encode_wav(audio, sampling_rate), "path": f"{utt.uid}.wav"},
                   TEXT_COLUMN: utt.text, DURATION_COLUMN: len(audio) / sampling_rate}
            yield {**row, SPEAKER_COLUMN: utt.speaker} if with_speaker else row


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
        with_speaker = any(utt.speaker is not None for utt in utterances)
        # Contiguous shards, one per process: from_generator concatenates them in order, so the
        # dataset keeps the corpus order.
        bounds = [round(i * len(utterances) / num_proc) for i in range(num_proc + 1)]
        shards = [utterances[a:b] for a, b in zip(bounds, bounds[1:])]
        dataset = Dataset.from_generator(
            _generate_rows, features=_prep_features(config.sampling_rate, with_speaker),
            gen_kwargs={"shards": shards, "sampling_rate": config.sampling_rate, "with_speaker": with_speaker},
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
