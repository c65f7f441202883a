"""Waveform augmentation for training (``--augment True``): speed, additive noise and gain, drawn afresh for
every example in every epoch, with the log-mel features computed as each batch is made.

Without ``--augment`` nothing here runs: the features are computed once and cached
(:func:`whisper_finetune.data.features.featurize`). With it, the training rows keep their decoded audio
(``featurize(..., keep_audio=True)``) and the collator calls :class:`OnTheFlyFeatures`, which augments
each clip with audiomentations' transforms and featurises the batch:

* speed perturbation 0.9 / 1.0 / 1.1, one third each, as Kaldi's recipes do (Ko et al., 2015): the
  clip is resampled and read at the original rate, so tempo and pitch change together;
* additive noise at a signal-to-noise ratio drawn from ``--augment_snr_db``: a random stretch of a
  random file of ``--noise_dir``, or, without one, coloured noise (white to brown or violet);
* gain of -6 to +6 dB;
* with ``--augment_pitch_semitones X``: half the clips shifted in pitch by a draw from -X..+X semitones,
  tempo kept (audiomentations' PitchShift, signalsmith-stretch: milliseconds a clip, where librosa's phase
  vocoder takes seconds), so one training voice is heard higher and lower than speed perturbation alone
  makes it.

An example's augmentation is drawn from a seed made of ``--seed``, the epoch and the example's row
number, so a rerun or a resumed run sees the same audio, and each epoch different audio.
"""
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..audio import CHUNK_SECONDS
from .features import INDEX_COLUMN, SAMPLES_COLUMN

logger = logging.getLogger(__name__)

SPEEDS = (0.9, 1.1)  # with the untouched clip (1.0): three speeds, one third each
NOISE_PROBABILITY = 0.5  # half the clips stay clean, as the evaluation audio may be
GAIN_DB = (-6.0, 6.0)
GAIN_PROBABILITY = 0.5
PITCH_PROBABILITY = 0.5  # half the clips keep the voice's own pitch
# An octave either way covers a man's voice read as a child's; past it the shifted speech stops sounding
# like anyone's voice.
MAX_PITCH_SEMITONES = 12.0


@contextlib.contextmanager
def seeded(seed):
    """Seed Python's and NumPy's global generators (audiomentations draws from both) for the block, then
    restore them: the augmentation neither depends on nor disturbs the rest of the run's randomness."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def example_seed(seed, epoch, index):
    """The seed of one example's augmentation in one epoch."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


def noise_files(folder):
    """The audio files audiomentations would draw noise from in ``folder`` (searched recursively)."""
    from audiomentations.core.utils import find_audio_files

    return find_audio_files(folder)


def describe(snr_db: Sequence[float], noise_dir: Optional[str] = None, pitch_semitones: Optional[float] = None,
             quote=str) -> str:
    """What :class:`WaveformAugmenter` with these settings does, in a line (the run's log and its model card);
    ``quote`` formats the noise folder's name."""
    low, high = snr_db
    speeds = "/".join(f"{speed:.1f}" for speed in sorted((*SPEEDS, 1.0)))
    pitch = f"pitch shifted by up to {pitch_semitones:g} semitones on half the clips, " if pitch_semitones else ""
    noise = f"noise from {quote(noise_dir)}" if noise_dir else "coloured noise"
    return f"speed {speeds}, {pitch}{noise} at {low:g}-{high:g} dB SNR, gain {GAIN_DB[0]:+g} to {GAIN_DB[1]:+g} dB"


class WaveformAugmenter:
    """Speed, pitch, noise and gain for one mono clip (see the module docstring)."""

    def __init__(self, sampling_rate, snr_db: Tuple[float, float], noise_dir: Optional[str] = None,
                 pitch_semitones: float = 0.0):
        from audiomentations import AddBackgroundNoise, AddColorNoise, Compose, Gain, OneOf, PitchShift, Resample

        self.sampling_rate = sampling_rate
        self.max_samples = CHUNK_SECONDS * sampling_rate
        # Resampled to rate / speed and read at the original rate: 1.1 is shorter (faster), 0.9 longer.
        rates = [round(sampling_rate / speed) for speed in SPEEDS]
        self.speed = OneOf([Resample(min_sample_rate=rate, max_sample_rate=rate, p=1.0) for rate in rates],
                           p=len(SPEEDS) / (len(SPEEDS) + 1))
        low, high = snr_db
        noise = (AddBackgroundNoise(sounds_path=noise_dir, min_snr_db=low, max_snr_db=high, p=NOISE_PROBABILITY)
                 if noise_dir else AddColorNoise(min_snr_db=low, max_snr_db=high, p=NOISE_PROBABILITY))
        self.level = Compose([noise, Gain(min_gain_db=GAIN_DB[0], max_gain_db=GAIN_DB[1], p=GAIN_PROBABILITY)])
        self.pitch = (PitchShift(min_semitones=-pitch_semitones, max_semitones=pitch_semitones,
                                 method="signalsmith_stretch", p=PITCH_PROBABILITY) if pitch_semitones else None)

    def __call__(self, audio, seed):
        """The augmented ``audio`` (float32, ``(samples,)``), the same for the same ``seed``."""
        with seeded(seed):
            faster_or_slower = self.speed(audio, self.sampling_rate)
            # Slowed past Whisper's 30 s window, the end of the speech would be cut from the features but
            # not from the labels: such a clip keeps its own speed.
            if len(faster_or_slower) <= self.max_samples:
                audio = faster_or_slower
            if self.pitch is not None:
                # signalsmith-stretch refuses a read-only buffer (an unsped clip is the dataset's own)
                audio = self.pitch(np.require(audio, np.float32, ["C", "W"]), self.sampling_rate)
            return self.level(audio, self.sampling_rate)


@dataclass
class OnTheFlyFeatures:
    """What the collator calls for rows that hold audio: augment each clip, then compute the batch's log-mel
    features. ``epoch`` is set by the collator's ``set_epoch`` before each epoch's batches are drawn."""

    extractor: object  # the processor's WhisperFeatureExtractor
    augmenter: WaveformAugmenter
    sampling_rate: int
    seed: int
    epoch: int = 0

    def __call__(self, items):
        """``(features (batch, n_mels, 3000) float32, seconds of each augmented clip)``."""
        audios = [self.augmenter(np.asarray(item[SAMPLES_COLUMN], dtype=np.float32),
                                 example_seed(self.seed, self.epoch, int(np.asarray(item[INDEX_COLUMN]))))
                  for item in items]
        # Whisper's extractor expects 16 kHz; other rates are the user's explicit choice (as in featurize).
        mels = self.extractor(audios, sampling_rate=self.extractor.sampling_rate, return_tensors="np").input_features
        return torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32)), \
            [len(audio) / self.sampling_rate for audio in audios]
