"""The Trainer: transformers' ``Seq2SeqTrainer`` with explicit decoding, retain sets and kill-safe checkpoints.

Everything here goes through the Trainer's public methods and callbacks, so an upgrade of transformers
cannot silently change it: checkpoints are written by the Trainer into a staging folder and published by
:class:`StagedCheckpoints` (``on_save``); a diverging step is stopped by :class:`DivergenceGuard`
(``on_pre_optimizer_step``, before the broken update is applied); a SIGTERM or first Ctrl-C saves a
checkpoint after the step and stops (:class:`.preemption.Preemption`, ``on_step_end``); the retain sets are
scored with ``predict``. The one private name of transformers the package uses is ``Trainer._load_best_model``
(:func:`load_best_model`; ``tests/test_trainer_api.py`` fails if its signature changes).

One Trainer log line is filtered (:class:`TiedOutputNotice`): transformers 5 reports Whisper's output
projection as missing whenever it reloads a checkpoint, although that weight is the token embedding
(tied, so never saved on its own) and is loaded with it.
"""
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import shutil
import socket
import time

import torch
import torch.distributed as dist
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
from transformers.trainer_callback import EarlyStoppingCallback, ProgressCallback, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .. import files, scoring
from ..data.bad_audio import LoggedLimit
from ..data.features import CONTEXT_FRAMES, FEATURE_COLUMN, LENGTH_COLUMN, REPLAY_COLUMN, full_context_step
from ..errors import TrainingDiverged
from . import checkpoints
from .config import TrainConfig, intervals
from .preemption import Preemption
from .summary import RETAIN_PREFIX

logger = logging.getLogger(__name__)

COMBINED_KEY = "eval_combined"  # eval primary metric + the retain WER's increase over step 0
# Where the Trainer writes each checkpoint before StagedCheckpoints renames it into output_dir; a
# ``.partial`` name, so a kill leaves nothing that looks like a checkpoint and the next run removes it.
STAGING_NAME = "staging"
# The value accelerate's ACCELERATE_MIXED_PRECISION takes for each --mixed_precision we resolve.
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A set the trainer decodes and scores: the prefix of its metric keys, its decoding and its scoring."""

    prefix: str  # "eval" (keys eval_wer, eval_cer) or RETAIN_PREFIX
    dataset: object  # featurised datasets.Dataset
    decode_kwargs: dict  # passed to generate (language/task, or a generation config of its own)
    compute_metrics: object  # EvalPrediction -> {"wer", "cer"}, with this set's normaliser


@dataclasses.dataclass(frozen=True)
class TrainerParts:
    """What the Trainer needs beyond transformers' own arguments (one object instead of a dozen keywords)."""

    decode_kwargs: dict  # generate() settings of the eval sets (max_new_tokens, language, task)
    streaming: bool = False
    companions: tuple = ()  # objects with save_pretrained() that every checkpoint carries
    full_context_ratio: float = 0.0  # dynamic audio context: the share of 30 s steps
    short_context_frozen: tuple = ()  # parameters a short-context step leaves alone
    full_context_frozen: tuple = ()  # and those a 30 s step leaves alone
    retain: object = None  # EvalSet of the retain sets, scored beside the eval set at every evaluation
    primary_metric: str = "wer"
    spec_augment: bool = False
    distiller: object = None  # distillation.Distiller: its term is added to training losses
    consolidation: object = None  # consolidation.Consolidation (--ewc_weight): its term too
    max_bad_examples: int = 0  # undecodable examples a stream may skip (counted in output_dir's bad_examples.jsonl)
    rate_scales: tuple = ()  # ((share of the learning rate, parameters), ...) where the share is not 1


class TiedOutputNotice(logging.Filter):
    """Drops the Trainer's "missing keys ... ['proj_out.weight']" warning: ``proj_out`` is tied to
    ``model.decoder.embed_tokens`` (one tensor), which the checkpoint does hold. Any other missing key
    is still reported."""

    MESSAGE = "There were missing keys in the checkpoint model loaded: ['proj_out.weight']."

    def filter(self, record):
        return record.getMessage() != self.MESSAGE


TIED_OUTPUT_NOTICE = TiedOutputNotice()
logging.getLogger("transformers.trainer").addFilter(TIED_OUTPUT_NOTICE)


class WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that decodes with explicit language/task, scores retain sets beside the eval set,
    and counts the time spent evaluating and writing checkpoints (so throughput can leave them out)."""

    def __init__(self, *args, parts: TrainerParts, output_dir, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1 and self.args.device.type == "cpu":
            allow_indexed_cpu_locations()
        self.parts = parts
        self.output_dir = output_dir  # the run's folder (args.output_dir is where checkpoints are staged)
        self.eval_seconds = 0.0
        self.started = time.perf_counter()  # set again just before training starts
        self.eval_started = None
        self.timer = CheckpointTimer()
        self.add_callback(self.timer)
        self.add_callback(StagedCheckpoints(output_dir, parts.companions, self.timer))
        # After StagedCheckpoints: its on_save runs once the checkpoint is published.
        self.preemption = Preemption(self.close_progress_bar)
        self.add_callback(self.preemption)
        self.add_callback(DivergenceGuard(self))
        if parts.streaming and parts.max_bad_examples:
            self.add_callback(StreamBadAudio(output_dir, parts.max_bad_examples))
        if parts.retain is not None:
            self.add_callback(BaseModelEvaluation(self))

    @property
    def checkpoint_seconds(self):
        return self.timer.seconds

    @contextlib.contextmanager
    def timed_evaluation(self):
        """Count the ``with`` block's seconds as evaluation time."""
        self.eval_started = start = time.perf_counter()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def spec_augment(self):
        """``apply_spec_augment`` on for the ``with`` block (a training step's forward and backward) only.

        transformers masks only in training mode, but reads the flag from the model's config, which every
        checkpoint and the final model save: switched on only while a step runs, the saved config.json
        always says False, so no tool that loads the model masks its input.
        """
        if not self.parts.spec_augment:
            yield
            return
        whisper = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        whisper.config.apply_spec_augment = True
        try:
            yield
        finally:
            whisper.config.apply_spec_augment = False

    @contextlib.contextmanager
    def no_gradients_for(self, parameters):
        """``parameters`` out of autograd for the ``with`` block (a dynamic-context step's forward and backward).

        A short-context step that leaves the decoder alone: the gradient still flows through it to the
        encoder, but the decoder's own weight gradients are never computed, the output layer's (51864 x 384
        on tiny.en, tied to the token embeddings) above all. A 30 s step that leaves the encoder alone
        (``split``): nothing below the decoder needs a gradient, so the encoder's backward, most of a 30 s
        step's time on a CPU, is not run at all. One process only: DDP, DeepSpeed and FSDP expect the
        same parameters to need gradients at every step, so there the gradients are computed and dropped
        after the backward instead (``training_step``); the update is the same.
        """
        if not parameters or self.args.world_size > 1 or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            yield
            return
        for parameter in parameters:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in parameters:
                parameter.requires_grad_(True)

    def get_train_dataloader(self):
        if not self.parts.streaming:
            loader = super().get_train_dataloader()
            # The collator featurises augmented audio (--augment) afresh each epoch: the Trainer tells the
            # loader each epoch's number (also when resuming), and the loader now tells the collator too.
            # Workers start at each epoch's iter(), after this, so they see it as well.
            set_loader_epoch = getattr(loader, "set_epoch", None)
            if set_loader_epoch is not None and hasattr(self.data_collator, "set_epoch"):
                def set_epoch(epoch):
                    set_loader_epoch(epoch)
                    self.data_collator.set_epoch(epoch)

                loader.set_epoch = set_epoch
            return loader
        # The stream is already split by rank (split_dataset_by_node); accelerate's own sharding or
        # batch dispatching would split it a second time, so a plain DataLoader is used.
        return StreamLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                            collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory)

    def short_context(self, inputs, training):
        """Cut a dynamic-context batch to its bucket unless this optimizer step keeps 30 s; evaluation
        batches are always cut (the speed of ``--audio_context dynamic``)."""
        frames = inputs.pop(CONTEXT_FRAMES, None)
        if frames is None or (training and full_context_step(self.state.global_step, self.parts.full_context_ratio)):
            return inputs, False
        return {**inputs, FEATURE_COLUMN: inputs[FEATURE_COLUMN][..., :frames]}, True  # (batch, n_mels, frames)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, each of its parameter groups (weight decay or none) split by the share of
        the rate its parameters train at (``--encoder_lr_ratio``, ``--layer_lr_decay``). The whole rate's groups
        come first (every share is at most 1: :func:`.config.check_values`), so the rate the Trainer logs, its
        first group's, is the run's. Split before the scheduler exists, which takes each group's rate as its peak."""
        fresh = self.optimizer is None  # split once: the Trainer hands back the optimizer it already has
        optimizer = super().create_optimizer(model)
        if not fresh or not self.parts.rate_scales:
            return optimizer
        share_of = {id(parameter): share for share, parameters in self.parts.rate_scales for parameter in parameters}
        groups = {}  # share -> its groups
        for group in optimizer.param_groups:
            settings = {key: value for key, value in group.items() if key != "params"}
            by_share = {}
            for parameter in group["params"]:
                by_share.setdefault(share_of.get(id(parameter), 1.0), []).append(parameter)
            for share, parameters in by_share.items():
                groups.setdefault(share, []).append({**settings, "params": parameters, "lr": settings["lr"] * share})
        shares = sorted(groups, reverse=True)
        optimizer.param_groups.clear()
        for share in shares:
            for group in groups[share]:
                optimizer.add_param_group(group)
        logger.info("learning rates as shares of %g: %s", self.args.learning_rate,
                    ", ".join(f"{share:.3g} ({sum(len(g['params']) for g in groups[share])} tensors)"
                              for share in shares))
        return optimizer

    def current_learning_rate(self):
        """The learning rate of the optimizer step in progress (the scheduler steps only after the update)."""
        return self.lr_scheduler.get_last_lr()[0] if self.lr_scheduler is not None else self.args.learning_rate

    def training_step(self, model, inputs, *args, **kwargs):
        inputs, short = self.short_context(inputs, training=True)
        frozen = self.parts.short_context_frozen if short else self.parts.full_context_frozen
        with self.spec_augment(), self.no_gradients_for(frozen):
            loss = super().training_step(model, inputs, *args, **kwargs)
        if not torch.isfinite(loss).all():
            # At once: the Trainer would otherwise leave a non-finite loss out of its logged mean
            # (logging_nan_inf_filter) and go on training, and checkpointing, the broken weights.
            raise self.diverged(self.state.global_step + 1, f"the loss is {float(loss)}")
        # The decision is per step, the same in every process and every accumulated micro-batch, so
        # dropping these gradients after the (all-reduced) backward keeps the replicas equal; AdamW
        # skips a parameter without a gradient (no momentum step either).
        for parameter in frozen:
            parameter.grad = None
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        distiller, consolidation = self.parts.distiller, self.parts.consolidation
        if (distiller is None and consolidation is None) or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Whisper's forward takes no loss kwargs, so its loss is this micro-batch's mean per label token,
        # as are the terms added here: the Trainer scales them all alike for gradient accumulation (the
        # consolidation term, the same in every micro-batch, so counts once per optimizer step).
        rows = inputs.pop(REPLAY_COLUMN, None)  # --distill_rows replay: (batch,) bool, True on replay rows
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if distiller is not None:
            # accelerate puts autocast around the model's forward only, so without this the teacher ran in fp32
            # under --mixed_precision bf16. (The term's log-softmax and KL are fp32 either way: token_kl casts.)
            with self.accelerator.autocast():
                loss = loss + distiller.loss(outputs, inputs, rows)
        if consolidation is not None:
            loss = loss + consolidation.loss()
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs, _ = self.short_context(inputs, training=False)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def diverged(self, step, what):
        """The one-line error of a non-finite step, naming the newest complete checkpoint saved before it."""
        good = [folder for number, folder in checkpoints.numbered_checkpoints(self.output_dir)
                if number < step and not checkpoints.missing_parts(folder)]
        last = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was saved before it"
        self.close_progress_bar()
        return TrainingDiverged(f"training diverged at step {step} (learning rate {self.current_learning_rate():.3g}): "
                                f"{what}; stopped without saving this state, {last}; try a lower --learning_rate")

    def close_progress_bar(self):
        """End the training progress bar's line, so that an error or a stop message starts a line of its own
        (the bar would otherwise be redrawn after it when the interpreter exits)."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                callback.training_bar.close()
                callback.training_bar = None

    def log(self, logs, *args, **kwargs):
        if self.eval_started is not None and any(key.endswith("_loss") and key != "loss" for key in logs):
            # Time to quality: training time (no evaluations, no checkpoint writing) before this
            # evaluation, counted in this process (a resumed run starts again from 0).
            logs = {**logs, "train_seconds": round(self.eval_started - self.started - self.eval_seconds
                                                   - self.checkpoint_seconds, 1)}
        return super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        with self.timed_evaluation():
            decode_kwargs = {**self.parts.decode_kwargs, **gen_kwargs}
            if self.parts.retain is None or eval_dataset is not None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **decode_kwargs)
            # The evaluation of a step with retain sets: each set decoded in its own language and scored
            # with its own normaliser, then one log entry and one on_evaluate with every figure, so the
            # best-model choice and early stopping see eval_wer, eval_retain_wer and eval_combined together.
            # (transformers' dict of eval datasets would log each set apart and rename eval_wer.)
            main = EvalSet("eval", self.eval_dataset, decode_kwargs, self.compute_metrics)
            metrics = {**self.score(main, ignore_keys), **self.score(self.parts.retain, ignore_keys)}
            metrics[COMBINED_KEY] = self.combined(metrics)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    def evaluate_set(self, eval_set):
        """Decode and score one set with its own decoding and normaliser (logged, e.g. a final per-dataset score)."""
        with self.timed_evaluation():
            metrics = self.score(eval_set, None)
            self.log(metrics)
            return metrics

    def score(self, eval_set, ignore_keys):
        """The metrics of one set, without logging them (``predict`` with the set's own scoring)."""
        main_metrics = self.compute_metrics
        self.compute_metrics = eval_set.compute_metrics
        try:
            output = self.predict(eval_set.dataset, ignore_keys=ignore_keys, metric_key_prefix=eval_set.prefix,
                                  **eval_set.decode_kwargs)
        finally:
            self.compute_metrics = main_metrics
        return output.metrics

    def combined(self, metrics):
        """Eval primary metric + how much the retain WER rose above its step-0 value (the base model's).

        A fall of the retain WER earns nothing: the retain sets guard what the model knew, and a
        checkpoint is not to trade eval accuracy for gains there.
        """
        key = f"{RETAIN_PREFIX}_wer"
        before = next((entry[key] for entry in self.state.log_history if key in entry), metrics[key])
        return metrics[f"eval_{self.parts.primary_metric}"] + max(0.0, metrics[key] - before)


def load_best_model(trainer):
    """Load the best checkpoint into ``trainer.model`` as the Trainer does at the end of training.

    Needed only for a run resumed at its last step (then ``train`` is not called, see
    :func:`whisper_finetune.train.run.train`); the one private Trainer name the package uses, because
    loading a checkpoint into a (possibly sharded, DeepSpeed or LoRA) model is the Trainer's own business.
    """
    started = time.perf_counter()
    trainer._load_best_model()
    trainer.timer.seconds += time.perf_counter() - started


class StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader the Trainer can tell the epoch: each pass over the stream is shuffled anew
    (``IterableDataset.set_epoch`` reseeds the shuffle buffer and shard order), also after resuming."""

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


class StreamBadAudio(TrainerCallback):
    """``--max_bad_examples`` on a stream: after each step the examples skipped so far (by whichever process or
    DataLoader worker met them, all recorded in ``bad_examples.jsonl``) are counted in this process, so going
    over the limit is a one-line error rather than a worker's traceback."""

    def __init__(self, output_dir, limit):
        self.limit = LoggedLimit(output_dir, "train", limit)

    def on_step_end(self, args, state, control, **kwargs):
        self.limit.check()


class CheckpointTimer(TrainerCallback):
    """Seconds spent writing checkpoints and reloading the best one: the time from the last event before a
    save to ``on_save``, and before the end-of-training metrics are logged (the best model's reload)."""

    def __init__(self):
        self.seconds = 0.0
        self.last_event = time.perf_counter()

    def mark(self):
        self.last_event = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.mark()

    def on_evaluate(self, args, state, control, **kwargs):
        self.mark()

    def on_save(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self.last_event
        self.mark()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_runtime" in logs:  # the end-of-training entry, logged after the best model's reload
            self.seconds += time.perf_counter() - self.last_event
        self.mark()


class StagedCheckpoints(TrainerCallback):
    """Publish each checkpoint the Trainer wrote into the staging folder as ``output_dir/checkpoint-N``.

    The Trainer writes weights, optimizer, scheduler, RNG and trainer state into
    ``output_dir/staging.partial/checkpoint-N`` (its ``output_dir`` argument); at ``on_save`` the
    folder also gets the processor and generation config (so it is a loadable model), its trainer state
    records the published path of the best checkpoint, and it is renamed into place. A kill at any
    moment leaves either the previous complete checkpoints or the new one too. The rotation
    (``--save_total_limit``) is then made on the published folders, keeping the best.
    """

    def __init__(self, output_dir, companions, timer):
        self.output_dir = output_dir
        self.companions = companions
        self.timer = timer

    def barrier(self, args):
        if args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()

    def published(self, step):
        return os.path.join(self.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}") if step else None

    def on_save(self, args, state, control, **kwargs):
        staged = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        final = self.published(state.global_step)
        state.best_model_checkpoint = self.published(state.best_global_step)
        self.barrier(args)
        if args.should_save:
            for companion in self.companions:
                companion.save_pretrained(staged)
            state.save_to_json(os.path.join(staged, checkpoints.TRAINER_STATE))
            files.publish_dir(staged, final)
            self.rotate(args.save_total_limit, state.best_model_checkpoint)
        self.barrier(args)

    def on_train_end(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        # As the Trainer does with --save_total_limit 1: the last checkpoint goes once training is over,
        # unless it is the best.
        if args.save_total_limit == 1 and state.best_model_checkpoint:
            self.rotate(0, state.best_model_checkpoint)

    def rotate(self, limit, best):
        """Keep the newest ``limit`` checkpoints (``None``: all) and the best."""
        if limit is None:
            return
        for number, folder in checkpoints.numbered_checkpoints(self.output_dir)[limit:]:
            if folder != best:
                shutil.rmtree(folder)
                logger.info("deleted %s (--save_total_limit %d)", folder, limit)


class DivergenceGuard(TrainerCallback):
    """Stop before an optimizer step whose gradients are not finite: its update would break the weights.

    Checked after clipping, on the gradients every process holds (all-reduced by DDP; clipped by one
    global norm under FSDP). Under fp16 a gradient overflow is the loss scaler's to handle (it skips the
    step), and DeepSpeed keeps gradients of its own: there the non-finite loss check alone applies.
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.fp16 or self.trainer.is_deepspeed_enabled or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads:
            norm = float(torch.nn.utils.get_total_norm(grads))
            if not math.isfinite(norm):
                raise self.trainer.diverged(state.global_step + 1, f"the gradient norm is {norm}")


class BaseModelEvaluation(TrainerCallback):
    """One evaluation before the first step (step 0: the base model), so the log, TensorBoard and the curve
    show the retain sets' figures before training; a resumed run has them in its history already."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.trainer.evaluate()


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping on ``metric_for_best_model``, which records the step it stopped at and
    passes over evaluations without that metric (the final model's per-dataset scores), which it would
    answer with a warning."""

    stopped_at = None

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        key = f"eval_{args.metric_for_best_model}"
        if key not in metrics:
            return
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if control.should_training_stop and self.stopped_at is None:
            self.stopped_at = state.global_step
            logger.info("early stopping at step %d: %s did not improve in %d evaluation(s)", state.global_step,
                        key, self.early_stopping_patience)


def metrics_function(tokenizer, normalizer, metric):
    """``EvalPrediction -> {"wer", "cer"}``: decoded token ids scored with ``normalizer``."""
    def compute_metrics(prediction):
        predictions = prediction.predictions
        labels = prediction.label_ids.copy()
        labels[labels == -100] = tokenizer.pad_token_id
        predictions[predictions == -100] = tokenizer.pad_token_id
        hyps = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = scoring.score(refs, hyps, normalizer, metric)
        return {"wer": scores["wer"], "cer": scores["cer"]}

    return compute_metrics


USER_TENSORBOARD_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")


_INDEXED_CPU_REGISTERED = []


def allow_indexed_cpu_locations():
    """Let ``torch.load`` restore onto ``cpu:N``: resuming a multi-process CPU run (``torchrun`` without GPUs).

    The Trainer loads the optimizer state with ``map_location=args.device`` under several processes, and
    that device is ``cpu:N`` for CPU processes, which torch's own CPU deserializer refuses ("don't know how
    to restore data location ... cpu:0"); registered once through torch's public
    ``serialization.register_package``, a CPU storage is restored as it is.
    """
    if _INDEXED_CPU_REGISTERED:
        return

    def tag(storage):
        return None  # saving is torch's business, unchanged

    def restore(storage, location):
        return storage.cpu() if location.startswith("cpu:") else None

    torch.serialization.register_package(30, tag, restore)
    _INDEXED_CPU_REGISTERED.append(True)


def pin_accelerate_precision(run_precision):
    """Make ``--mixed_precision`` the only say on precision.

    With ``bf16``/``fp16`` off, ``TrainingArguments`` and ``Accelerator`` take the precision from the
    environment variable ``ACCELERATE_MIXED_PRECISION``, which ``accelerate launch`` and any earlier
    ``TrainingArguments(bf16=True)`` in the same process leave behind: an fp32 run would then train
    under bf16 autocast while its summary said fp32 (on CPUs without bf16 matrix units also about ten
    times slower). The variable is set to the resolved precision, and a different value is named in the log.
    """
    wanted = ACCELERATE_PRECISION[run_precision[0]]
    found = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if found not in (None, wanted):
        logger.warning("ACCELERATE_MIXED_PRECISION=%s in the environment is overridden by --mixed_precision (%s)",
                       found, run_precision[0])
    os.environ["ACCELERATE_MIXED_PRECISION"] = wanted


def training_arguments(config: TrainConfig, learning_rate, run_precision, metric):
    """transformers' arguments of the run; checkpoints are staged in ``output_dir/staging.partial``."""
    pin_accelerate_precision(run_precision)
    eval_steps, save_steps = intervals(config)
    by_steps = config.train_strategy == "steps"
    # TensorBoard logs go where the Trainer would put them by default (output_dir/runs/DATE_HOST) of the
    # user's folder, not of the staging folder that is the Trainer's output_dir. transformers 5 reads the
    # folder from this variable only; one the user set before the process started is kept.
    run_name = datetime.datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
    os.environ["TENSORBOARD_LOGGING_DIR"] = (USER_TENSORBOARD_DIR
                                             or os.path.join(config.output_dir, "runs", run_name))
    return Seq2SeqTrainingArguments(
        output_dir=files.staging_dir(os.path.join(config.output_dir, STAGING_NAME)),
        per_device_train_batch_size=config.train_batchsize, per_device_eval_batch_size=config.eval_batchsize,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=learning_rate,
        warmup_steps=config.warmup, lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_steps=config.num_steps if by_steps else -1, num_train_epochs=config.num_epochs,
        eval_strategy=config.train_strategy, save_strategy=config.train_strategy,
        eval_steps=eval_steps if by_steps else None, save_steps=save_steps if by_steps else None,
        # The rotation is StagedCheckpoints' (on the published folders); the Trainer sees one at a time.
        save_total_limit=config.save_total_limit, load_best_model_at_end=True, metric_for_best_model=metric,
        greater_is_better=False, logging_steps=config.logging_steps, logging_first_step=True,
        predict_with_generate=True, gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=run_precision[1], fp16=run_precision[2], seed=config.seed, data_seed=config.seed,
        # bf16 on a CPU is torch.autocast on the CPU, which the Trainer only allows with use_cpu; several
        # processes without CUDA (torchrun on CPUs) form a gloo group only with use_cpu (accelerate >= 1.12)
        use_cpu=not torch.cuda.is_available() and (run_precision[1] or int(os.environ.get("WORLD_SIZE", "1")) > 1),
        dataloader_num_workers=config.num_workers, remove_unused_columns=False, label_names=["labels"],
        # Batches of similar length fill their audio-context bucket (dynamic context only).
        train_sampling_strategy="group_by_length" if config.dynamic_audio_context else "random",
        length_column_name=LENGTH_COLUMN,
        report_to=[] if config.report_to in ("", "none") else [config.report_to],
        deepspeed=config.deepspeed, fsdp=config.fsdp or "", fsdp_config=config.fsdp_config,
        ddp_find_unused_parameters=False,
        disable_tqdm=False, dataloader_pin_memory=torch.cuda.is_available())
