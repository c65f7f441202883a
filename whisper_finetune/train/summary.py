"""What a training run reports: the typed summary, ``training_summary.json``, the curve PNG and the model card.

:class:`TrainSummary` is what :func:`whisper_finetune.train.run.train` returns; the same values, with
every option of the run, are written to ``training_summary.json``, drawn in ``training_curve.png``
and rendered into the model card (``README.md``), so the folder always describes the model in it.
"""
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..files import atomic_write_text
from .model_card import write_model_card

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
PLOT_FILE = "training_curve.png"
RETAIN_PREFIX = "eval_retain"  # metric keys of the retain sets: eval_retain_wer, eval_retain_cer, eval_retain_loss


@dataclass(frozen=True)
class DatasetScore:
    """The final (best) model on one evaluation dataset on its own."""

    dataset: str
    samples: int
    wer: float
    cer: float


@dataclass(frozen=True)
class TrainSummary:
    """Options and results of one training run (``training_summary.json`` holds the same fields), built once."""

    output_dir: str
    global_step: int
    epochs: float
    train_samples: Optional[int]  # None when streamed (size unknown)
    eval_samples: int
    train_hours: Optional[float]
    eval_hours: float
    filtering: dict  # per role: utterances kept and dropped, by reason
    wall_seconds: float
    eval_seconds: float
    checkpoint_seconds: float
    samples_trained: int
    samples_per_second: float
    train_samples_per_second_excluding_eval: float
    train_loss: Optional[float]  # mean over the run's steps, from the logged losses
    best_wer: Optional[float]
    best_cer: Optional[float]
    best_step: Optional[int]
    best_checkpoint: Optional[str]
    normalizer: str
    primary_metric: str  # the metric that chose best_checkpoint: cer for languages without spaces between words
    language: Optional[str]
    precision: str
    learning_rate: float
    world_size: int
    peak_gpu_gb: Optional[float]
    resumed_from: Optional[str]
    config: dict  # every option of the run
    eval_per_dataset: list = field(default_factory=list)  # DatasetScore per dataset when several
    is_main_process: bool = True
    hub_url: Optional[str] = None  # the model repository, with --push_to_hub
    # What chose best_checkpoint (--metric_for_best_model): wer (the primary metric), retain_wer or combined.
    best_model_metric: str = "wer"
    early_stopped_at: Optional[int] = None  # the step --early_stopping_patience stopped the run at
    # Retain sets (--retain_datasets): step 0 (before: the base model) and the final model (after); change is
    # after - before, so a positive change is what the fine-tune lost. None without retain sets.
    retain_samples: Optional[int] = None
    retain_hours: Optional[float] = None
    retain_language: Optional[str] = None  # None: no language token (.en) or each clip's detected
    retain_normalizer: Optional[str] = None
    retain_wer_before: Optional[float] = None
    retain_cer_before: Optional[float] = None
    retain_wer_after: Optional[float] = None
    retain_cer_after: Optional[float] = None
    retain_wer_change: Optional[float] = None
    retain_cer_change: Optional[float] = None
    retain_per_dataset: list = field(default_factory=list)  # DatasetScore of the final model per retain dataset
    # --merge_ratio below 1: merging.MergeChoice as a dict (ratio, requested, tolerance, fine_tune_metric,
    # trials) plus eval_wer/eval_cer of the final (merged) model and the merge's seconds (its decoding is not in
    # eval_seconds, which stays that of training); retain_*_after are then the merged model's.
    merge: Optional[dict] = None
    eval_wer_before: Optional[float] = None  # the base model on the eval sets (step 0, runs with retain sets)
    eval_cer_before: Optional[float] = None
    # data_prep folder -> the corpus format it was made from (kaldi, common_voice...; data.source_format)
    source_formats: dict = field(default_factory=dict)
    # role -> examples skipped because their audio could not be decoded (--max_bad_examples; {} when none)
    skipped_bad_audio: dict = field(default_factory=dict)
    # --replay_audio: labelling.ReplayAudio as a dict (sources, the labelled dataset, the cache, the labelling
    # settings: model, language, num_beams, max_new_tokens; clips, seconds, decoded, cached, empty, looped,
    # languages)
    replay_audio: Optional[dict] = None
    # --ewc_weight: weight, fisher (consolidation.FisherEstimate as a dict: clips, label_tokens, parameters,
    # seconds) and final_estimated_kl (the final model's 1/2 sum F (theta - theta0)^2)
    consolidation: Optional[dict] = None

    def to_dict(self):
        return asdict(self)


def plot_history(log_history, path, metric="wer"):
    """Write a PNG of training loss and eval WER (or CER, the run's primary metric) against step, with the
    retain sets' WER beside it when the run had them (from step 0, the base model).

    Returns the labels of the lines drawn, in order (the legend's entries).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    scored = [(f"eval_{metric}", f"eval {metric.upper()}", "tab:red"),
              (f"{RETAIN_PREFIX}_wer", "retain WER", "tab:green")]
    fig, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    lines = []
    if train:
        lines += loss_axis.plot(*zip(*train), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    wer_axis = loss_axis.twinx()
    for key, label, color in scored:
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            lines += wer_axis.plot(*zip(*points), color=color, marker="o", label=label)
    retained = any(line.get_label() == "retain WER" for line in lines)
    wer_axis.set_ylabel(f"eval {metric.upper()}" + (" / retain WER" if retained else "") + " (normalised)",
                        color="tab:red")
    if retained:
        wer_axis.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [line.get_label() for line in lines]


def write_reports(summary: TrainSummary, log_history, hub_model_id=None):
    """Curve PNG, ``training_summary.json`` and the model card into ``summary.output_dir`` (rank 0 only)."""
    out = summary.output_dir
    plot_history(log_history, os.path.join(out, PLOT_FILE), summary.primary_metric)
    atomic_write_text(os.path.join(out, SUMMARY_FILE),
                      json.dumps(summary.to_dict(), indent=2, ensure_ascii=False, default=str) + "\n")
    write_model_card(out, summary.to_dict(), hub_model_id)
    logger.info("wrote the training curve %s, %s and the model card", PLOT_FILE, SUMMARY_FILE)


def format_summary(summary: TrainSummary):
    """The short end-of-run summary the scripts print."""
    lines = [f"steps: {summary.global_step} ({summary.epochs:.2f} epochs, {summary.world_size} process(es), "
             f"{summary.precision})",
             f"time: {summary.wall_seconds:.1f} s (evaluation {summary.eval_seconds:.1f} s)",
             f"samples/s: {summary.samples_per_second:.3f} overall, "
             f"{summary.train_samples_per_second_excluding_eval:.3f} excluding evaluation"]
    if summary.best_wer is not None:
        if summary.primary_metric == "cer":
            figures = (f"best eval CER: {summary.best_cer:.4f} (WER {summary.best_wer:.4f}, not meaningful without "
                       f"spaces between words; {summary.normalizer} normaliser)")
        else:
            figures = (f"best eval WER: {summary.best_wer:.4f} (CER {summary.best_cer:.4f}, {summary.normalizer} "
                       f"normaliser)")
        lines.append(f"{figures} at step {summary.best_step} ({summary.best_checkpoint})")
    if summary.retain_wer_after is not None:
        lines.append(f"retain WER {_figure(summary.retain_wer_before)} -> {summary.retain_wer_after:.4f} "
                     f"({_change(summary.retain_wer_change)}), CER {_figure(summary.retain_cer_before)} -> "
                     f"{summary.retain_cer_after:.4f} ({_change(summary.retain_cer_change)}): base model (step 0) "
                     f"-> final model ({summary.retain_normalizer} normaliser)")
    if summary.merge:
        merge = summary.merge
        how = "chosen by the eval sets" if merge["requested"] == "auto" else "--merge_ratio"
        encoder = "" if merge.get("encoder_ratio") is None else f", encoder {merge['encoder_ratio']:g}"
        lines.append(f"final model: base + {merge['ratio']:g} x (fine-tune - base) ({how}{encoder}): eval "
                     f"{summary.primary_metric.upper()} {merge[f'eval_{summary.primary_metric}']:.4f}, the fine-tune's "
                     f"{merge['fine_tune_metric']:.4f}")
    if summary.early_stopped_at is not None:
        lines.append(f"early stopping at step {summary.early_stopped_at} (--early_stopping_patience "
                     f"{summary.config.get('early_stopping_patience')})")
    if summary.skipped_bad_audio:
        lines.append("skipped (audio cannot be decoded): " + ", ".join(
            f"{count} {role}" for role, count in summary.skipped_bad_audio.items()) + " (see bad_examples.jsonl)")
    lines.append(f"model, processor and generation config: {summary.output_dir}")
    return "\n".join(lines)


def _figure(value):
    return "unknown" if value is None else f"{value:.4f}"


def _change(value):
    """A before/after difference with its sign (+ is worse: a higher error rate)."""
    return "change unknown" if value is None else f"{value:+.4f}"


def retain_summary(retain, retain_hours, before, after, language, normalizer, per_dataset):
    """The summary fields of the retain sets: step 0 (the base model), the final model, and the change."""
    if retain is None:
        return {}
    fields = {"retain_samples": len(retain.dataset), "retain_hours": retain_hours,
              "retain_language": language, "retain_normalizer": normalizer,
              "retain_per_dataset": per_dataset}
    for measure in ("wer", "cer"):
        key = f"{RETAIN_PREFIX}_{measure}"
        first, last = before.get(key), after.get(key)
        fields[f"retain_{measure}_before"], fields[f"retain_{measure}_after"] = first, last
        fields[f"retain_{measure}_change"] = None if first is None or last is None else round(last - first, 6)
        fields[f"eval_{measure}_before"] = before.get(f"eval_{measure}")
    return fields


def mean_logged_loss(history):
    """Mean training loss over the whole run, from the logged losses (each the mean of the steps since the
    previous log), so a resumed run reports the same figure as one never interrupted."""
    logged = [(e["step"], e["loss"]) for e in history if "loss" in e]
    if not logged:
        return None
    previous = [0] + [step for step, _ in logged[:-1]]
    return sum((step - prev) * loss for prev, (step, loss) in zip(previous, logged)) / logged[-1][0]
