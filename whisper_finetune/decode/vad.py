"""Voice activity detection with Silero VAD: non-speech is removed before decoding, times are mapped back.

Whisper invents text in long silences, music and noise (the "Thank you." of an empty window). Silero
VAD (the ``silero-vad`` package, its ONNX model run by onnxruntime) finds the speech; the speech spans
are joined into one shorter recording, which is decoded as usual, and every segment and word time is
then mapped back to the original audio by :class:`TimeMap`.

Only long pauses are removed: a silence shorter than ``MIN_SILENCE_MS`` stays inside its span, and each
span keeps ``SPEECH_PAD_MS`` of audio on both sides, so words keep their edges and sentences keep a
pause between them (Whisper uses pauses to end its segments). faster-whisper's defaults are similar
(2 s, 400 ms); ours remove more of the non-speech that hallucinations come from.
"""
import bisect
import functools
import logging
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..audio import SAMPLE_RATE
from ..extras import require

logger = logging.getLogger(__name__)

THRESHOLD = 0.5  # Silero's speech probability threshold (its default)
MIN_SPEECH_MS = 250  # shorter speech is dropped as noise (Silero's default)
MIN_SILENCE_MS = 1000  # silences shorter than this stay inside the speech span
SPEECH_PAD_MS = 200  # audio kept on each side of a span
# Whisper ends a segment where the next speech starts; once the spans are joined that is just past the
# junction (the next span's padding, then its speech). An end up to this far past a junction (a start this
# far before one) belongs to the span before (after) it, so that no cue stretches over the removed audio.
JUNCTION_SLACK = 2 * SPEECH_PAD_MS / 1000


@dataclass(frozen=True)
class TimeMap:
    """Where the kept spans of the original audio lie once joined: a piecewise map from the joined speech's
    time to the original's.

    ``spans``: ``(start, end)`` seconds in the original audio, ascending and not overlapping; in the joined
    speech span ``k`` starts where span ``k - 1`` ends. ``slack``: see :data:`JUNCTION_SLACK`.
    """

    spans: Tuple[Tuple[float, float], ...]
    slack: float = 0.0

    @functools.cached_property
    def offsets(self):
        """Start of each span in the joined speech (seconds)."""
        starts, total = [], 0.0
        for start, end in self.spans:
            starts.append(total)
            total += end - start
        return starts

    @property
    def speech_seconds(self):
        """Length of the joined speech."""
        return sum(end - start for start, end in self.spans)

    def to_original(self, seconds, side="start", snap=True):
        """The original time of ``seconds`` in the joined speech.

        A time exactly at the junction of two spans is the start of the later span for ``side="start"``
        (a segment or word starting there) and the end of the earlier one for ``side="end"``; with ``snap``
        so is a start less than ``slack`` before a junction, and an end less than ``slack`` after one, where
        the spans were apart in the original. Times before 0 or past the joined speech are held to the
        first start or last end.
        """
        if not self.spans:
            raise ValueError("an empty TimeMap maps no time")
        offsets, spans = self.offsets, self.spans
        find = bisect.bisect_right if side == "start" else bisect.bisect_left
        k = min(max(find(offsets, seconds) - 1, 0), len(spans) - 1)
        slack = self.slack if snap else 0.0
        if side == "end" and k > 0 and seconds - offsets[k] < slack and spans[k][0] > spans[k - 1][1]:
            return spans[k - 1][1]
        if (side == "start" and k + 1 < len(spans) and offsets[k + 1] - seconds < slack
                and spans[k + 1][0] > spans[k][1]):
            return spans[k + 1][0]
        start, end = spans[k]
        return min(max(start + seconds - offsets[k], start), end)


@functools.lru_cache(maxsize=1)
def _model():
    silero_vad = require("silero_vad", "--vad True")

    # The ONNX model (onnxruntime): the TorchScript one warns that torch.jit is deprecated.
    return silero_vad.load_silero_vad(onnx=True)


def speech_spans(audio, sampling_rate=SAMPLE_RATE):
    """Speech in ``audio`` (mono float32 at 16 kHz) as ``[(start_sample, end_sample), ...]``, padded,
    ascending and not overlapping; ``[]`` when there is none."""
    silero_vad = require("silero_vad", "--vad True")
    import torch

    found = silero_vad.get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), _model(), threshold=THRESHOLD,
        sampling_rate=sampling_rate, min_speech_duration_ms=MIN_SPEECH_MS, min_silence_duration_ms=MIN_SILENCE_MS,
        speech_pad_ms=SPEECH_PAD_MS)
    return [(int(s["start"]), int(s["end"])) for s in found]


def remove_non_speech(audio, sampling_rate=SAMPLE_RATE):
    """``(speech, time_map)``: the speech spans of ``audio`` joined, and the map of their times back to
    ``audio``'s. Without speech: an empty array and a map with no spans."""
    spans = speech_spans(audio, sampling_rate)
    speech = np.concatenate([audio[a:b] for a, b in spans]) if spans else np.zeros(0, dtype=np.float32)
    time_map = TimeMap(tuple((a / sampling_rate, b / sampling_rate) for a, b in spans), JUNCTION_SLACK)
    logger.info("voice activity detection: %.1f s of speech in %d span(s) of %.1f s of audio",
                len(speech) / sampling_rate, len(spans), len(audio) / sampling_rate)
    return speech, time_map
