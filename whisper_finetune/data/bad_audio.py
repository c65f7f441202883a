"""Bad audio: examples whose audio cannot be decoded (truncated, empty, not audio at all), skipped up to a limit.

A Hub corpus of a million clips may hold one broken mp3; stopping a day-long run there, or never starting
it, helps nobody. With ``--max_bad_examples N`` (declared once, :func:`max_bad_examples_option`, on the
training and evaluation options) such an example is skipped, named in the log with the decoder's
message, and counted; the run stops with a one-line error naming the examples once more than N were
met. The default, 0, keeps the strict behaviour: the first bad example stops the run, named.

Where the counting happens:

* featurised sets (training without ``--streaming``, every evaluation set): a bad row gets a
  placeholder clip and the length :data:`BAD_LENGTH`, and is dropped, named and counted after
  featurising (:func:`drop_bad`), so a cached featurisation gives the same count again;
* a stream is featurised lazily, possibly in DataLoader workers and on several ranks: each bad example
  is appended to ``bad_examples.jsonl`` in the output folder (:class:`BadAudioLog`), which every process
  reads back (:func:`logged_count`), counting each example once (a resumed stream meets them again);
* the evaluators decode in DataLoader workers and hand the failures back with the batch
  (:mod:`whisper_finetune.evaluate.evaluation`).
"""
import json
import logging
import os

import numpy as np

from ..audio import decode_example_audio
from ..errors import UserError
from ..options import option

logger = logging.getLogger(__name__)

BAD_LENGTH = -1.0  # the input_length of a row whose audio could not be decoded
BAD_EXAMPLES_FILE = "bad_examples.jsonl"
NAMES_SHOWN = 5


def max_bad_examples_option():
    """The ``--max_bad_examples`` field (the same flag, help and default on every script that reads audio)."""
    return option(0, "skip up to N examples whose audio cannot be decoded (truncated, empty, not audio), naming "
                  "each in the log and counting them in the summary; one more stops the run (0: the first stops it)",
                  group="data")


def check_limit(limit, flag="max_bad_examples"):
    if limit < 0:
        from ..errors import OptionError

        raise OptionError(flag, limit, "must be 0 or more")


def audio_name(value, example_id=None):
    """How an example is named in messages: its id, else its audio file."""
    if example_id:
        return str(example_id)
    if isinstance(value, dict):
        return str(value.get("path") or "<audio bytes>")
    return str(value)


def try_decode(value, sampling_rate):
    """``(audio, None)`` or ``(None, why)`` for one audio value; a clip with no samples is bad too."""
    try:
        audio = decode_example_audio(value, sampling_rate)
    except UserError as exc:
        return None, str(exc)
    if audio.size == 0:
        return None, "the audio has no samples"
    return audio, None


def too_many(count, limit, names, where):
    """The one-line error for more bad examples than ``limit``."""
    shown = ", ".join(names[:NAMES_SHOWN]) + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN
                                              else "")
    return UserError(f"{where}: {count} example(s) whose audio cannot be decoded ({shown}), more than "
                     f"--max_bad_examples {limit}; fix or remove them, or raise --max_bad_examples")


class BadAudioLog:
    """Appends each skipped example of one role to ``bad_examples.jsonl`` (picklable: DataLoader workers and
    ``datasets.map`` processes append to the same file; lines of a few hundred bytes are written whole with
    ``O_APPEND``)."""

    def __init__(self, folder, role):
        self.path = os.path.join(folder, BAD_EXAMPLES_FILE) if folder else None
        self.role = role

    def record(self, name, why):
        logger.warning("skipped %s example %s: %s", self.role, name, why)
        if self.path is None:
            return
        line = json.dumps({"role": self.role, "example": name, "error": why}, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def logged(folder, role=None):
    """The distinct examples in ``folder``'s ``bad_examples.jsonl`` (of ``role``, else every role), in the order
    first met; a line cut short by a kill is passed over."""
    path = os.path.join(folder, BAD_EXAMPLES_FILE)
    names = {}
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if role is None or entry.get("role") == role:
                names.setdefault((entry.get("role"), entry.get("example")), None)
    return [example for _, example in names]


def logged_count(folder, role=None):
    return len(logged(folder, role))


def decode_batch(values, ids, sampling_rate, limit, log):
    """Decode a batch of audio values: with ``limit`` 0 as before (the first failure raises, naming the example);
    otherwise a failure is recorded in ``log`` and its clip replaced by a tenth of a second of
    silence. Returns ``(audios, bad)``: ``bad[i]`` says whether clip i is a placeholder."""
    if not limit:
        audios = []
        for value, example_id in zip(values, ids):
            try:
                audios.append(decode_example_audio(value, sampling_rate))
            except UserError as exc:
                raise UserError(f"example {audio_name(value, example_id)}: {exc} (--max_bad_examples N skips up to N "
                                f"such examples)") from None
        return audios, [False] * len(values)
    audios, bad = [], []
    for value, example_id in zip(values, ids):
        audio, why = try_decode(value, sampling_rate)
        if audio is None:
            log.record(audio_name(value, example_id), why)
            audio = np.zeros(sampling_rate // 10, np.float32)
        audios.append(audio)
        bad.append(why is not None)
    return audios, bad


def drop_bad(dataset, names, length_column, limit, label):
    """Drop the rows :func:`decode_batch` replaced (length :data:`BAD_LENGTH`); ``names`` name the rows (the
    dataset before featurising). Returns ``(dataset, count)``; more than ``limit``: a one-line error."""
    lengths = np.asarray(dataset[length_column], dtype=np.float64)
    bad = np.flatnonzero(lengths < 0).tolist()
    if not bad:
        return dataset, 0
    bad_names = [str(names[i]) for i in bad]
    if len(bad) > limit:
        raise too_many(len(bad), limit, bad_names, label)
    logger.warning("%s: skipped %d example(s) whose audio cannot be decoded (--max_bad_examples %d): %s", label,
                   len(bad), limit, ", ".join(bad_names))
    keep = sorted(set(range(len(dataset))) - set(bad))
    return dataset.select(keep), len(bad)


class LoggedLimit:
    """Checks, between batches of a stream, that the examples ``bad_examples.jsonl`` holds for ``role`` are not
    more than ``limit`` (the file is read again only when it has grown)."""

    def __init__(self, folder, role, limit):
        self.folder, self.role, self.limit = folder, role, limit
        self.size = 0

    def check(self):
        path = os.path.join(self.folder, BAD_EXAMPLES_FILE)
        size = os.path.getsize(path) if os.path.exists(path) else 0
        if size == self.size:
            return
        self.size = size
        names = logged(self.folder, self.role)
        if len(names) > self.limit:
            raise too_many(len(names), self.limit, names, f"{self.role} data (streamed)")
