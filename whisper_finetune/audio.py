"""Audio loading: any format libsndfile reads (wav, flac, ogg, mp3), down-mixed and resampled.

Whisper's front end (see openai/whisper ``audio.py``) fixes the constants below; everything else in
the package derives its frame arithmetic from them.
"""
import io
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from .errors import UserError
from .options import option

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz: the rate every Whisper model was trained on
CHUNK_SECONDS = 30  # seconds: the fixed input window of the encoder
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one window
HOP_LENGTH = 160  # samples between log-mel frames: 10 ms at 16 kHz
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 log-mel frames in one window
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
ENCODER_STRIDE = 2  # the encoder's second convolution has stride 2
ENCODER_FRAMES = N_FRAMES // ENCODER_STRIDE  # 1500 encoder positions in one window
ENCODER_FRAMES_PER_SECOND = MEL_FRAMES_PER_SECOND // ENCODER_STRIDE  # 50: one frame every 20 ms
DECODER_POSITIONS = 448  # the decoder's learned positions (n_text_ctx): prompt + labels or output must fit


@dataclass(frozen=True)
class AudioContext:
    """How much of Whisper's 30 s window the encoder runs on, when it runs on the clip's own length."""

    audio_context_bucket_seconds: float = option(
        2.0, "with a dynamic audio context: the log-mel input is cut to the longest clip of the batch rounded up "
        "to a multiple of this many seconds (few shapes, so buckets fill and kernels are reused)")

    def frames(self, seconds):
        """Log-mel frames for a batch whose longest clip lasts ``seconds`` (at most the full 3000)."""
        buckets = max(1, math.ceil(seconds / self.audio_context_bucket_seconds - 1e-9))
        frames = int(round(buckets * self.audio_context_bucket_seconds * MEL_FRAMES_PER_SECOND))
        return min(N_FRAMES, frames - frames % ENCODER_STRIDE)  # the encoder's stride-2 convolution halves it

    def check(self):
        if not 0 < self.audio_context_bucket_seconds <= CHUNK_SECONDS:
            raise UserError(f"--audio_context_bucket_seconds {self.audio_context_bucket_seconds}: must be more "
                            f"than 0 and at most {CHUNK_SECONDS:g}")


def load_audio(source, sampling_rate=SAMPLE_RATE):
    """Read ``source`` (a path, raw file bytes, or a file object) as mono float32 at ``sampling_rate``.

    Multi-channel audio is averaged to mono; other rates are resampled with soxr (high quality).
    Raises :class:`UserError` naming the file when libsndfile cannot read it.
    """
    name = source if isinstance(source, (str, os.PathLike)) else "<audio bytes>"
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise UserError(f"cannot read audio {name}: {exc}") from exc
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (samples,)
    return resample(audio, rate, sampling_rate)


def load_audio_spans(path, spans, sampling_rate=SAMPLE_RATE):
    """Yield the ``(start, end)`` spans (seconds) of one file, each mono float32 at ``sampling_rate``.

    The file is opened once and only each span's frames are decoded (a long recording is never held
    whole in memory); spans are cut at the nearest frame and end at the end of the file at most, then
    down-mixed and resampled like :func:`load_audio`. Raises :class:`UserError` naming the file.
    """
    try:
        sound = sf.SoundFile(path)
    except Exception as exc:
        raise UserError(f"cannot read audio {path}: {exc}") from exc
    with sound:
        rate, frames = sound.samplerate, sound.frames
        for start, end in spans:
            first = min(max(round(start * rate), 0), frames)
            last = min(max(round(end * rate), first), frames)
            sound.seek(first)
            data = sound.read(last - first, dtype="float32", always_2d=True)
            audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
            yield resample(audio, rate, sampling_rate)


def resample(audio, orig_rate, target_rate=SAMPLE_RATE):
    """Resample a mono float32 array from ``orig_rate`` to ``target_rate`` (no-op when equal)."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    return soxr.resample(audio, orig_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def audio_info(path):
    """Return ``(duration_seconds, sample_rate, channels)`` from the file header, without decoding."""
    try:
        info = sf.info(path)
    except Exception as exc:
        raise UserError(f"cannot read audio {path}: {exc}") from exc
    return info.frames / info.samplerate, info.samplerate, info.channels


def encode_wav(audio, sampling_rate):
    """Encode a mono float array as 16-bit PCM WAV bytes (how datasets store decoded audio)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def decode_example_audio(value, sampling_rate=SAMPLE_RATE):
    """Decode one value of a datasets ``Audio(decode=False)`` column (or an already-decoded dict).

    Accepts ``{"bytes": ..., "path": ...}``, ``{"array": ..., "sampling_rate": ...}`` or a path.
    """
    if isinstance(value, (str, os.PathLike)):
        return load_audio(value, sampling_rate)
    if value.get("array") is not None:
        return resample(np.asarray(value["array"], dtype=np.float32), value["sampling_rate"], sampling_rate)
    if value.get("bytes"):
        return load_audio(value["bytes"], sampling_rate)
    if value.get("path"):
        return load_audio(value["path"], sampling_rate)
    raise UserError("an audio value holds neither bytes, a path nor an array")
