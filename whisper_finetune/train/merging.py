"""Weight interpolation with the base model (WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot
models", CVPR 2022): the final model is ``base + ratio * (fine-tuned - base)``.

A fine-tune moves every weight towards its training data; on speech it never saw (other speakers,
real recordings) that costs accuracy the base model had. Part of the way back along the straight
line to the base weights, the model keeps most of what it learned and much of what it knew. The
ratio is either given or chosen on the evaluation sets (``auto``): the lowest ratio of
:data:`MERGE_GRID` whose eval metric is within a tolerance of the fine-tune's own. The encoder may take a
ratio of its own (``encoder_ratio``): teaching a new language needs most of the decoder's move (new
tokens, a new language model) but less of the encoder's (the sounds are mostly those the base knew), and
the encoder's move is what costs the base model's own languages most.
"""
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from transformers import WhisperForConditionalGeneration

from .config import AUTO, merges, requested_ratio

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "model.encoder."  # WhisperForConditionalGeneration's encoder parameters; the rest is decoder
# Ratios tried by --merge_ratio auto, lowest (closest to the base model) first; tenths, because one
# evaluation pass per ratio is the cost, and neighbouring tenths differ by less than a small eval set's noise.
MERGE_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Metric keys of the final model after --merge_ratio (merged_wer, merged_retain_wer...); "merged" -> "eval"
# gives the keys of an ordinary evaluation.
MERGED_PREFIX = "merged"


@dataclass(frozen=True)
class MergeTrial:
    ratio: float
    metric: float  # the eval sets' primary metric (WER or CER) of the model at this ratio


@dataclass(frozen=True)
class MergeChoice:
    """The ratio of the final model, how it was chosen, and each ratio tried (``auto``)."""

    ratio: float
    requested: str  # the --merge_ratio given: a number or "auto"
    tolerance: float
    fine_tune_metric: float  # the eval metric at ratio 1 (the fine-tune itself)
    trials: Tuple[MergeTrial, ...] = ()
    encoder_ratio: Optional[float] = None  # the encoder's own ratio; None: ``ratio`` for every weight

    def to_dict(self):
        return {**dataclasses.asdict(self), "trials": [dataclasses.asdict(trial) for trial in self.trials]}


def trainable_deltas(model: torch.nn.Module, base_state: Dict[str, torch.Tensor]):
    """{name: (base, fine-tuned)} copies, on the CPU, of every trained parameter of ``model``.

    Frozen parameters (``--freeze_encoder``/``--freeze_decoder``) are still the base model's and are left out.
    """
    pairs = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name not in base_state:
            raise KeyError(f"{name} is not in the base model: cannot interpolate with it")
        pairs[name] = (base_state[name].detach().to("cpu", torch.float32),
                       parameter.detach().to("cpu", torch.float32).clone())
    return pairs


@torch.no_grad()
def set_ratio(model: torch.nn.Module, pairs, ratio: float, encoder_ratio: Optional[float] = None):
    """Set each trained parameter of ``model`` to ``base + ratio * (fine-tuned - base)`` (in place), with
    ``encoder_ratio`` instead for the encoder's when it is given."""
    for name, parameter in model.named_parameters():
        if name in pairs:
            base, tuned = pairs[name]
            at = encoder_ratio if encoder_ratio is not None and name.startswith(ENCODER_PREFIX) else ratio
            parameter.copy_(torch.lerp(base, tuned, at).to(parameter.dtype))


def choose_ratio(model, pairs, evaluate: Callable[[float], float], fine_tune_metric: float,
                 tolerance: float, encoder_ratio: Optional[float] = None) -> MergeChoice:
    """The lowest ratio of :data:`MERGE_GRID` whose ``evaluate(ratio)`` metric (``model`` is at that ratio
    when it is called) is at most ``fine_tune_metric +
    tolerance``; 1.0 (the fine-tune) when none is. ``model`` is left at the chosen ratio. With
    ``encoder_ratio`` the encoder stays at it and the search is the decoder's.

    Ratios are tried lowest first and the search stops at the first that qualifies: the eval metric
    falls (almost always) as the ratio grows, and the lowest qualifying ratio keeps the most of the base.
    """
    trials = []
    for ratio in MERGE_GRID:
        set_ratio(model, pairs, ratio, encoder_ratio)
        metric = evaluate(ratio)
        trials.append(MergeTrial(ratio, round(metric, 6)))
        logger.info("merge ratio %.1f: eval metric %.4f (fine-tune %.4f, tolerance %.4f)", ratio, metric,
                    fine_tune_metric, tolerance)
        if metric <= fine_tune_metric + tolerance:
            return MergeChoice(ratio, AUTO, tolerance, fine_tune_metric, tuple(trials), encoder_ratio)
    set_ratio(model, pairs, 1.0, encoder_ratio)
    logger.info("merge ratio auto: no ratio below 1 is within %.4f of the fine-tune: the fine-tune%s is kept",
                tolerance, "" if encoder_ratio is None else f"'s decoder (the encoder at {encoder_ratio:g})")
    return MergeChoice(1.0, AUTO, tolerance, fine_tune_metric, tuple(trials), encoder_ratio)


def merge_with_base(trainer, config, main_eval, retain, metric):
    """--merge_ratio: set the trained weights to base + ratio x (fine-tune - base) (``merging``).

    Returns {} without it (ratio 1), else the final model's metrics (``merged_wer``, ``merged_cer`` and,
    with retain sets, ``merged_retain_wer``...) with the :class:`MergeChoice` under ``"choice"``.
    """
    if not merges(config.merge_ratio, config.merge_encoder_ratio):
        return {}
    ratio, encoder_ratio = requested_ratio(config.merge_ratio), config.merge_encoder_ratio
    started = time.perf_counter()
    model = trainer.model
    base = WhisperForConditionalGeneration.from_pretrained(config.model_name)  # float32, as saved
    pairs = trainable_deltas(model, base.state_dict())
    del base
    measured = {}  # {ratio: figures} of the model as each evaluation left it

    def decode():
        return trainer.evaluate_set(dataclasses.replace(main_eval, prefix=MERGED_PREFIX))

    def evaluate(at_ratio):
        measured[at_ratio] = decode()
        return measured[at_ratio][f"{MERGED_PREFIX}_{metric}"]

    # The best checkpoint's own figures, from its evaluation during training (the same sets and decoding),
    # else (a run resumed after its last evaluation) decoded again.
    best = next((entry for entry in trainer.state.log_history if entry.get("step") == trainer.state.best_global_step
                 and f"eval_{metric}" in entry), None)
    checkpoint = decode() if best is None else \
        {f"{MERGED_PREFIX}_{name}": best[f"eval_{name}"] for name in ("wer", "cer")}
    fine_tune = checkpoint[f"{MERGED_PREFIX}_{metric}"]
    if ratio is None:
        choice = choose_ratio(model, pairs, evaluate, fine_tune, config.merge_tolerance, encoder_ratio)
    else:
        set_ratio(model, pairs, ratio, encoder_ratio)
        evaluate(ratio)
        choice = MergeChoice(ratio, config.merge_ratio, config.merge_tolerance, round(fine_tune, 6),
                                     encoder_ratio=encoder_ratio)
    if choice.ratio not in measured:
        # auto found no ratio below 1: the checkpoint itself, unless the encoder has a ratio of its own (then
        # this model, decoder whole and encoder interpolated, was never decoded)
        measured[choice.ratio] = checkpoint if encoder_ratio in (None, 1) else decode()
    final = dict(measured[choice.ratio])
    if retain is not None:
        final.update(trainer.evaluate_set(dataclasses.replace(retain, prefix=f"{MERGED_PREFIX}_retain")))
    logger.info("final model: base + %.2f x (fine-tune - base)%s; eval %s %.4f (fine-tune %.4f)", choice.ratio,
                "" if encoder_ratio is None else f" (encoder: {encoder_ratio:g})", metric,
                final[f"{MERGED_PREFIX}_{metric}"], fine_tune)
    return {**final, "choice": choice, "seconds": round(time.perf_counter() - started, 2)}


def merge_summary(merge):
    """The summary's ``merge`` entry: the ratio, how it was chosen, and the final model's eval figures."""
    if not merge:
        return None
    return {**merge["choice"].to_dict(), "eval_wer": merge[f"{MERGED_PREFIX}_wer"],
            "eval_cer": merge[f"{MERGED_PREFIX}_cer"], "seconds": merge["seconds"]}
