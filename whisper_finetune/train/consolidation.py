"""Elastic weight consolidation to the base model (``--ewc_weight``): hold the weights the old domain needs.

Kirkpatrick et al., *Overcoming catastrophic forgetting in neural networks* (PNAS 2017). Before the first
step, the base model's diagonal Fisher information on the replay clips says how much each trained weight
matters to its answers there; every training step then pays

    weight / 2 x sum_i F_i (theta_i - theta0_i)^2

To second order that sum is the KL divergence per label token between the base model's and the fine-tune's
next-token distributions on those clips: what distillation (``--distill_weight``) measures exactly, but on
the few replay rows of each batch, where this term covers every replay clip at every step, for the cost of
one pass over them before training. Weights the old domain leaves untouched (F near 0: most of a new
language's token rows) stay free; those it leans on are held in proportion. Adam gives the weights whose own
gradients are tiny (vocabulary rows the new labels never use) steps as large as any other's, a drift that
costs the old domain and that this term stops where the Fisher says it matters.

The Fisher is the empirical one: squared gradients of each clip's summed log-likelihood of its label (the
base model's own transcript for ``--replay_audio``, so close to the true Fisher), summed over clips and
divided by their label tokens, which makes it per token, as the KL is.
"""
import dataclasses
import logging
import time

import numpy as np
import torch

from ..data.features import FEATURE_COLUMN, LABEL_COLUMN, SAMPLES_COLUMN, DataCollatorSpeechSeq2SeqWithPadding

logger = logging.getLogger(__name__)

# Replay clips the Fisher is estimated on, at most: one forward and backward pass each before training
# (about a second a clip for whisper-base on a CPU). The diagonal of a few hundred clips' Fisher is
# stable enough to rank weights; more costs minutes and changes little.
FISHER_CLIPS = 256


@dataclasses.dataclass(frozen=True)
class FisherEstimate:
    """What the Fisher was estimated on (recorded in the training summary)."""

    clips: int
    label_tokens: int
    parameters: int  # trained weights it covers
    seconds: float


@dataclasses.dataclass(frozen=True)
class CleanFeatures:
    """The collator's featuriser for rows kept as audio (``--augment``), without the augmentation: the Fisher
    is the clean clip's. ``items`` -> ``(features (batch, n_mels, 3000) float32, seconds of each clip)``."""

    extractor: object  # the processor's WhisperFeatureExtractor

    def __call__(self, items):
        audios = [np.asarray(item[SAMPLES_COLUMN], dtype=np.float32) for item in items]
        mels = self.extractor(audios, sampling_rate=self.extractor.sampling_rate, return_tensors="pt").input_features
        return mels, [len(audio) / self.extractor.sampling_rate for audio in audios]


def fisher_diagonal(model, rows, extractor, device):
    """The base model's diagonal Fisher on ``rows`` (featurised replay rows, at most :data:`FISHER_CLIPS` used):
    ``({parameter name: tensor like it}, FisherEstimate)`` over the parameters that require a gradient."""
    trained = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    fisher = {name: torch.zeros_like(parameter) for name, parameter in trained.items()}
    start, tokens, clips = time.perf_counter(), 0, min(len(rows), FISHER_CLIPS)
    # The training collator, so each clip's label is what a training step sees (the start token stripped).
    collate = DataCollatorSpeechSeq2SeqWithPadding(model.config.decoder_start_token_id,
                                                   waveforms=CleanFeatures(extractor))
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it answers
    for index in range(clips):
        batch = collate([rows[index]])  # one clip: no padding in its labels (1, tokens)
        features, labels = batch[FEATURE_COLUMN].to(device), batch[LABEL_COLUMN].to(device)
        model.zero_grad(set_to_none=True)
        loss = model(input_features=features, labels=labels).loss  # mean over the label's tokens
        (loss * labels.shape[1]).backward()  # the clip's summed log-likelihood
        for name, parameter in trained.items():
            if parameter.grad is not None:
                fisher[name] += parameter.grad.detach() ** 2
        tokens += labels.shape[1]
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for value in fisher.values():
        value /= max(tokens, 1)
    estimate = FisherEstimate(clips, tokens, sum(p.numel() for p in trained.values()),
                              round(time.perf_counter() - start, 2))
    return fisher, estimate


class Consolidation:
    """The term of one training step: ``weight`` / 2 x sum F (theta - theta0)^2 over the trained weights, theta0
    the weights as the fine-tune starts (the base model's). Holds one copy of each trained weight and its
    Fisher (twice the trained weights' memory)."""

    def __init__(self, model, fisher, weight, estimate: FisherEstimate):
        self.weight = weight
        self.estimate = estimate
        # The parameters themselves, not their names: a distributed wrapper renames them, never replaces them.
        self.held = [(parameter, parameter.detach().clone(), fisher[name])
                     for name, parameter in model.named_parameters() if name in fisher]

    def distance(self):
        """1/2 sum F (theta - theta0)^2: the estimated KL per label token from the base model on the replay
        clips (a scalar tensor, with a gradient)."""
        total = 0.0
        for parameter, anchor, fisher in self.held:
            total = total + (fisher * (parameter - anchor) ** 2).sum()
        return total / 2

    def loss(self):
        return self.weight * self.distance()

    def summary(self):
        """What ``training_summary.json`` records: the weight, what the Fisher was estimated on, and
        ``final_estimated_kl``, :meth:`distance` of the model as it is now (the final model, after any merge)."""
        with torch.no_grad():
            distance = float(self.distance())
        return {"weight": self.weight, "fisher": dataclasses.asdict(self.estimate),
                "final_estimated_kl": round(distance, 6)}
