"""Fine-tuning Whisper with ``Seq2SeqTrainer``: the Trainer assembly behind both training scripts.

:func:`train` takes a checked :class:`~whisper_finetune.train_config.TrainConfig`, featurises the
data once (main process first under ``torchrun``), trains, evaluates WER/CER with generation at each
checkpoint, and leaves in ``output_dir`` the best model by eval WER with its processor and generation
config (language and task set); :mod:`whisper_finetune.reporting` then writes the summary, curve and
model card. Every ``checkpoint-N`` is self-contained (processor and generation config beside the
weights) and kill-safe (:mod:`whisper_finetune.checkpoints`): it is written under a temporary name
and renamed into place when complete, so ``--resume_from_ckpt latest`` always finds a whole one.
With ``streaming`` the training data is read lazily as an interleaved, shuffled ``IterableDataset``
(featurised on the fly, split between ranks) instead of being featurised up front.
"""
import contextlib
import copy
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import time

import torch
import torch.distributed as dist
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration
from transformers.trainer_callback import (EarlyStoppingCallback, ExportableState, ProgressCallback, TrainerCallback,
                                          TrainerState)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, speed_metrics

from . import checkpoints, distillation, hub, merging, modeling, scoring
from .data import LANGUAGE_COLUMN, load_datasets, source_format
from .errors import TrainingDiverged, UserError
from .features import (CONTEXT_FRAMES, FEATURE_COLUMN, INDEX_COLUMN, LENGTH_COLUMN, REPLAY_COLUMN,
                       DataCollatorSpeechSeq2SeqWithPadding, LanguageLabels, drop_too_long, featurize, featurize_stream,
                       featurize_windows, full_context_step)
from .files import publish
from .reporting import PLOT_FILE, DatasetScore, TrainSummary, write_reports
from .text import choose_metric, choose_normalizer, language_code
from .train_config import (RUN_MARKERS, TrainConfig, check_config, dataset_specs, intervals, merge_ratio, merges,
                           precision)

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_DIR = "adapter"
LABELS_FORMAT = "per-example language"  # in the feature cache's key: what the labels hold (see _cache_path)
FINAL_STAGING = ".final-model" + checkpoints.PARTIAL_SUFFIX
RETAIN_PREFIX = "eval_retain"  # metric keys of the retain sets: eval_retain_wer, eval_retain_cer, eval_retain_loss
# Metric keys of the final model after --merge_ratio (merged_wer, merged_retain_wer...); "merged" -> "eval"
# gives the keys of an ordinary evaluation.
MERGED_PREFIX = "merged"
COMBINED_KEY = "eval_combined"  # eval primary metric + the retain WER's increase over step 0


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A set the trainer decodes and scores: the prefix of its metric keys, its decoding and its scoring."""

    prefix: str  # "eval" (keys eval_wer, eval_cer) or RETAIN_PREFIX
    dataset: object  # featurised datasets.Dataset
    decode_kwargs: dict  # passed to generate (language/task, or a generation config of its own)
    compute_metrics: object  # EvalPrediction -> {"wer", "cer"}, with this set's normaliser


class _WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that decodes with explicit language/task, writes kill-safe self-contained
    checkpoints, and counts the time spent evaluating and writing/reloading checkpoints (so
    throughput figures can leave them out)."""

    def __init__(self, *args, decode_kwargs=None, streaming=False, companions=(), full_context_ratio=0.0,
                 short_context_frozen=(), full_context_frozen=(), retain=None, primary_metric="wer",
                 spec_augment=False, distiller=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.distiller = distiller  # --distill_weight: distillation.Distiller, its term added to training losses
        self.spec_augment = spec_augment  # SpecAugment on inside training steps only (see _spec_augment)
        self.retain = retain  # EvalSet of the retain sets, scored beside the eval set at every evaluation
        self.primary_metric = primary_metric
        if retain is not None:
            self.add_callback(_BaseModelEvaluation(self))
        self._step_learning_rate = None  # the learning rate of the optimizer step in progress
        self.full_context_ratio = full_context_ratio  # dynamic audio context: share of 30 s steps
        self.short_context_frozen = tuple(short_context_frozen)  # parameters a short-context step leaves alone
        self.full_context_frozen = tuple(full_context_frozen)  # and those a 30 s step leaves alone
        self.decode_kwargs = decode_kwargs or {}
        self.streaming = streaming
        self.companions = companions  # objects with save_pretrained() that every checkpoint carries
        self.eval_seconds = 0.0
        self.checkpoint_seconds = 0.0
        self.started = time.perf_counter()  # set again by train() just before training starts
        self._eval_started = None

    @contextlib.contextmanager
    def _timed(self, attribute):
        """Add the seconds spent in the ``with`` block to ``self.<attribute>``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, attribute, getattr(self, attribute) + time.perf_counter() - start)

    def _barrier(self):
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()

    @contextlib.contextmanager
    def _spec_augment(self):
        """``apply_spec_augment`` on for the ``with`` block (a training step's forward and backward) only.

        transformers masks only in training mode, but reads the flag from the model's config, which every
        checkpoint and the final model save: switched on only while a step runs, the saved config.json
        always says False, so no tool that loads the model masks its input.
        """
        if not self.spec_augment:
            yield
            return
        whisper = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        whisper.config.apply_spec_augment = True
        try:
            yield
        finally:
            whisper.config.apply_spec_augment = False

    @contextlib.contextmanager
    def _no_gradients_for(self, parameters):
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

    def _save_checkpoint(self, model, trial):
        """Transformers' checkpoint save, written into ``checkpoint-N.partial`` and renamed when complete.

        The steps are those of ``Trainer._save_checkpoint`` (transformers 4.57): weights, optimizer and
        scheduler, scaler, RNG state, trainer state; then the processor and generation config, so the
        folder is also a loadable model; only then the rename, and after it the rotation of old
        checkpoints, which must see the final name.
        """
        with self._timed("checkpoint_seconds"):
            if self.hp_search_backend is None and trial is None:
                self.store_flos()
            run_dir = self._get_output_dir(trial=trial)
            final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            staged = checkpoints.staging_dir(final)
            if self.args.should_save:
                checkpoints.remove_partials(run_dir)
            self._barrier()
            self.save_model(staged, _internal_call=True)
            if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH) and self.state.best_global_step:
                # Before the trainer state is written, so the checkpoint records its best model; the
                # best may be this very checkpoint, which exists only under its temporary name yet.
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if os.path.exists(best) or best == final:
                    self.state.best_model_checkpoint = best
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(staged)
                self._save_scaler(staged)
                self._save_rng_state(staged)
            if self.args.should_save:
                for callback in [cb for cb in self.callback_handler.callbacks + [self.control]
                                 if isinstance(cb, ExportableState)]:
                    name = type(callback).__name__
                    if isinstance(self.state.stateful_callbacks[name], list):
                        self.state.stateful_callbacks[name].append(callback.state())
                    else:
                        self.state.stateful_callbacks[name] = callback.state()
                self.state.save_to_json(os.path.join(staged, checkpoints.TRAINER_STATE))
                for companion in self.companions:
                    companion.save_pretrained(staged)
            self._barrier()
            if self.args.should_save:
                checkpoints.publish_dir(staged, final)
            self._barrier()
            if self.args.push_to_hub:
                self._push_from_checkpoint(final)
            if self.args.should_save:
                self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)

    def _load_best_model(self, *args, **kwargs):
        with self._timed("checkpoint_seconds"):
            return super()._load_best_model(*args, **kwargs)

    def get_train_dataloader(self):
        if not self.streaming:
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
        return _StreamLoader(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                             collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers,
                             pin_memory=self.args.dataloader_pin_memory)

    def _short_context(self, inputs, training):
        """Cut a dynamic-context batch to its bucket unless this optimizer step keeps 30 s; evaluation
        batches are always cut (the speed of ``--audio_context dynamic``)."""
        frames = inputs.pop(CONTEXT_FRAMES, None)
        if frames is None or (training and full_context_step(self.state.global_step, self.full_context_ratio)):
            return inputs, False
        return {**inputs, FEATURE_COLUMN: inputs[FEATURE_COLUMN][..., :frames]}, True  # (batch, n_mels, frames)

    def training_step(self, model, inputs, *args, **kwargs):
        inputs, short = self._short_context(inputs, training=True)
        self._step_learning_rate = self._get_learning_rate()  # the scheduler steps only after the update
        frozen = self.short_context_frozen if short else self.full_context_frozen
        with self._spec_augment(), self._no_gradients_for(frozen):
            loss = super().training_step(model, inputs, *args, **kwargs)
        if not torch.isfinite(loss).all():
            # At once: the Trainer would otherwise leave a non-finite loss out of its logged mean
            # (logging_nan_inf_filter) and go on training, and checkpointing, the broken weights.
            raise self._diverged(self.state.global_step + 1, self._step_learning_rate, f"the loss is {float(loss)}")
        # The decision is per step, the same in every process and every accumulated micro-batch, so
        # dropping these gradients after the (all-reduced) backward keeps the replicas equal; AdamW
        # skips a parameter without a gradient (no momentum step either).
        for parameter in frozen:
            parameter.grad = None
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.distiller is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Whisper's forward takes no loss kwargs, so its loss is this micro-batch's mean per label token,
        # as is the distillation term: the Trainer scales both alike for gradient accumulation.
        rows = inputs.pop(REPLAY_COLUMN, None)  # --distill_rows replay: (batch,) bool, True on replay rows
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        loss = loss + self.distiller.loss(outputs, inputs, rows)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs, _ = self._short_context(inputs, training=False)
        return super().prediction_step(model, inputs, *args, **kwargs)

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        # Called after each optimizer step, before its logging, evaluation and checkpoint: a non-finite
        # gradient norm means this step's update broke the weights, so none of it may be saved.
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            learning_rate = kwargs.get("learning_rate")
            raise self._diverged(self.state.global_step,
                                 self._step_learning_rate if learning_rate is None else learning_rate,
                                 f"the gradient norm is {float(grad_norm)}")
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def _diverged(self, step, learning_rate, what):
        """The one-line error of a non-finite step, naming the newest complete checkpoint saved before it."""
        good = [folder for number, folder in checkpoints.numbered_checkpoints(self.args.output_dir)
                if number < step and not checkpoints.missing_parts(folder)]
        last = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was saved before it"
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
                # Closed (its line ended) so that the error starts a line of its own.
                callback.training_bar.close()
                callback.training_bar = None
        return TrainingDiverged(f"training diverged at step {step} (learning rate {learning_rate:.3g}): {what}; "
                                f"stopped without saving this state, {last}; try a lower --learning_rate")

    def log(self, logs, *args, **kwargs):
        if self._eval_started is not None and any(key.endswith("_loss") and key != "loss" for key in logs):
            # Time to quality: training time (no evaluations, no checkpoint writing) before this
            # evaluation, counted in this process (a resumed run starts again from 0).
            logs = {**logs, "train_seconds": round(self._eval_started - self.started - self.eval_seconds
                                                   - self.checkpoint_seconds, 1)}
        return super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        self._eval_started = time.perf_counter()
        with self._timed("eval_seconds"):
            if self.retain is None or eval_dataset is not None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix,
                                        **{**self.decode_kwargs, **gen_kwargs})
            # The evaluation of a step with retain sets: each set decoded in its own language and scored
            # with its own normaliser, then one log entry and one on_evaluate with every figure, so the
            # best-model choice and early stopping see eval_wer, eval_retain_wer and eval_combined together.
            # (transformers' dict of eval datasets would log each set apart and rename eval_wer.)
            main = EvalSet("eval", self.eval_dataset, {**self.decode_kwargs, **gen_kwargs}, self.compute_metrics)
            metrics = {**self._score(main, ignore_keys), **self._score(self.retain, ignore_keys)}
            metrics[COMBINED_KEY] = self._combined(metrics)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    def evaluate_set(self, eval_set):
        """Decode and score one set with its own decoding and normaliser (logged, e.g. a final per-dataset score)."""
        self._eval_started = time.perf_counter()
        with self._timed("eval_seconds"):
            metrics = self._score(eval_set, None)
            self.log(metrics)
            return metrics

    def _score(self, eval_set, ignore_keys):
        """The metrics of one set, as ``Seq2SeqTrainer.evaluate`` computes them, without logging them."""
        main_metrics = self.compute_metrics
        self.compute_metrics = eval_set.compute_metrics
        self.gather_function = self.accelerator.gather  # as Seq2SeqTrainer.evaluate: keep every sample
        self._gen_kwargs = dict(eval_set.decode_kwargs)
        start = time.time()
        try:
            output = self.evaluation_loop(self.get_eval_dataloader(eval_set.dataset), description="Evaluation",
                                          prediction_loss_only=None, ignore_keys=ignore_keys,
                                          metric_key_prefix=eval_set.prefix)
        finally:
            self.compute_metrics = main_metrics
        batches = math.ceil(output.num_samples / (self.args.eval_batch_size * self.args.world_size))
        output.metrics.update(speed_metrics(eval_set.prefix, start, num_samples=output.num_samples, num_steps=batches))
        return output.metrics

    def _combined(self, metrics):
        """Eval primary metric + how much the retain WER rose above its step-0 value (the base model's).

        A fall of the retain WER earns nothing: the retain sets guard what the model knew, and a
        checkpoint is not to trade eval accuracy for gains there.
        """
        key = f"{RETAIN_PREFIX}_wer"
        before = next((entry[key] for entry in self.state.log_history if key in entry), metrics[key])
        return metrics[f"eval_{self.primary_metric}"] + max(0.0, metrics[key] - before)


class _StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader the Trainer can tell the epoch: each pass over the stream is shuffled anew
    (``IterableDataset.set_epoch`` reseeds the shuffle buffer and shard order), also after resuming."""

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


class _BaseModelEvaluation(TrainerCallback):
    """One evaluation before the first step (step 0: the base model), so the log, TensorBoard and the curve
    show the retain sets' figures before training; a resumed run has them in its history already."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.trainer.evaluate()


class _EarlyStopping(EarlyStoppingCallback):
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


def _metrics_function(tokenizer, normalizer, metric):
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


def _build_model(config, language):
    model = modeling.load_for_training(config.model_name, language, config.task, config.dynamic_audio_context)
    if config.dynamic_audio_context:
        # Recorded in config.json, so the saved (plain Whisper) checkpoint says how it was trained.
        model.config.dynamic_audio_context = {"bucket_seconds": config.audio_context.audio_context_bucket_seconds,
                                              "full_context_ratio": config.full_context_ratio,
                                              "short_context_updates": config.short_context_updates}
    # Recorded in config.json, so transcription knows whether the model still predicts timestamps
    # (False: trained on <|notimestamps|> only, so its timestamps are not to be trusted).
    model.config.timestamp_training = {"ratio": config.timestamp_ratio} if config.timestamps else False
    model.config.use_cache = not config.gradient_checkpointing
    _set_spec_augment(model, config)
    if config.freeze_encoder:
        model.freeze_encoder()
    if config.freeze_decoder:
        # proj_out shares its weight with the decoder's token embeddings, so it is frozen with them.
        for parameter in model.model.decoder.parameters():
            parameter.requires_grad = False
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(LORA_TARGETS), bias="none")
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.1f%%)", trainable, total, 100 * trainable / total)
    return model


def _distiller(config, language, device):
    """With --distill_weight: the frozen base model whose token distributions each training step is held to."""
    if not config.distill_weight:
        return None
    teacher = distillation.load_teacher(config.model_name, language, config.task, config.dynamic_audio_context,
                                         device)
    logger.info("distillation to the base model: weight %g x KL per label token (temperature %g)%s",
                config.distill_weight, distillation.TEMPERATURE,
                ", on the replay rows only" if config.distill_rows == "replay" else "")
    return distillation.Distiller(teacher, config.distill_weight,
                                  share_encoder=config.freeze_encoder and not config.spec_augment,
                                  replay_only=config.distill_rows == "replay")


def _set_spec_augment(model, config):
    """SpecAugment's settings (--spec_augment, --mask_*) on the model's config, with ``apply_spec_augment``
    False: the trainer turns it on inside training steps only, so evaluation and every saved config.json
    (checkpoints, final model) have it off."""
    if getattr(model.config, "apply_spec_augment", False) and not config.spec_augment:
        logger.info("%s asks for SpecAugment in its config: off without --spec_augment True", config.model_name)
    model.config.apply_spec_augment = False
    if config.spec_augment:
        model.config.update({"mask_time_prob": config.mask_time_prob, "mask_time_length": config.mask_time_length,
                             "mask_feature_prob": config.mask_feature_prob,
                             "mask_feature_length": config.mask_feature_length})
        logger.info("SpecAugment in training steps: time masks of %d frames over %.0f%% of frames, mel-channel "
                    "masks of %d over %.0f%% of channels", config.mask_time_length, 100 * config.mask_time_prob,
                    config.mask_feature_length, 100 * config.mask_feature_prob)


def _mix_replay(config, train_set, processor):
    """The training set with replay examples added: ``replay_ratio`` of the result comes from the replay sets.

    The replay sets are shuffled and cut to the number needed, ``ratio / (1 - ratio)`` times the training
    set (repeated when too small), featurised like the training set, each example with its own language
    token, and concatenated to it. The Trainer's sampler shuffles the whole set every epoch, so every
    batch draws from both at that ratio (on average). Concatenating, rather than a sampler of its own,
    keeps everything the Trainer does with one dataset (exact resumption, length grouping, sharding
    between processes) and the feature cache; the cost is that the replay examples are drawn once per
    run (by --seed), so a replay set larger than needed is only partly used.
    """
    from datasets import concatenate_datasets

    needed = max(1, round(len(train_set) * config.replay_ratio / (1 - config.replay_ratio)))
    replay_language = language_code(config.replay_language)
    replay, counts = _prepare_split(config, "replay", dataset_specs(config, "replay"), needed, processor,
                                    replay_language)
    copies = math.ceil(needed / len(replay))
    if copies > 1:
        logger.info("replay data: %d example(s) for the %d needed: each is used %d times at most", len(replay),
                    needed, copies)
        replay = concatenate_datasets([replay] * copies)
    replay = replay.select(range(needed))
    counts.update(mixed_in=needed, repeated=copies > 1)
    logger.info("replay: %d example(s) mixed into %d training example(s) (ratio %g)", needed, len(train_set),
                config.replay_ratio)
    if config.distill_weight and config.distill_rows == "replay":  # the distillation term needs to tell them apart
        train_set = train_set.add_column(REPLAY_COLUMN, [0] * len(train_set))
        replay = replay.add_column(REPLAY_COLUMN, [1] * len(replay))
    return concatenate_datasets([train_set, replay]).with_format("numpy"), counts


def _on_the_fly_features(config, processor):
    """With --augment, what the collator featurises training rows with (fresh augmentation each epoch);
    without it ``None``, and no augmentation object is made (features were computed once)."""
    if not config.augment:
        return None
    from .augment import OnTheFlyFeatures, WaveformAugmenter

    augmenter = WaveformAugmenter(config.sampling_rate, tuple(config.augment_snr_db), config.noise_dir)
    logger.info("augmenting the training audio each epoch: speed 0.9/1.0/1.1, %s at %g-%g dB SNR, gain",
                f"noise from {config.noise_dir}" if config.noise_dir else "coloured noise", *config.augment_snr_db)
    return OnTheFlyFeatures(processor.feature_extractor, augmenter, config.sampling_rate, config.seed)


def _numbered(dataset):
    """``dataset`` with each row's number (``example_index``), which seeds its augmentation (--augment)."""
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset)))).with_format("numpy")


def _context_frozen(model, config):
    """The trainable parameters each kind of step of a dynamic-context run leaves alone (LoRA: adapters):
    ``(short-context steps', 30 s steps')``. ``encoder``: the decoder on short steps; ``split``: the
    decoder on short steps and the encoder on 30 s steps; ``all``: none."""
    if not config.dynamic_audio_context:
        return [], []
    whisper = model.get_base_model() if config.lora else model
    decoder = [parameter for parameter in whisper.model.decoder.parameters() if parameter.requires_grad]
    encoder = [parameter for parameter in whisper.model.encoder.parameters() if parameter.requires_grad]
    return {"all": ([], []), "encoder": (decoder, []), "split": (decoder, encoder)}[config.short_context_updates]


# The value accelerate's ACCELERATE_MIXED_PRECISION takes for each --mixed_precision we resolve.
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def _pin_accelerate_precision(run_precision):
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


def _training_arguments(config, learning_rate, run_precision, metric):
    _pin_accelerate_precision(run_precision)
    eval_steps, save_steps = intervals(config)
    by_steps = config.train_strategy == "steps"
    return Seq2SeqTrainingArguments(
        output_dir=config.output_dir, per_device_train_batch_size=config.train_batchsize,
        per_device_eval_batch_size=config.eval_batchsize,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=learning_rate,
        warmup_steps=config.warmup, lr_scheduler_type=config.lr_scheduler_type, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_steps=config.num_steps if by_steps else -1, num_train_epochs=config.num_epochs,
        eval_strategy=config.train_strategy, save_strategy=config.train_strategy,
        eval_steps=eval_steps if by_steps else None, save_steps=save_steps if by_steps else None,
        save_total_limit=config.save_total_limit, load_best_model_at_end=True, metric_for_best_model=metric,
        greater_is_better=False, logging_steps=config.logging_steps, logging_first_step=True,
        predict_with_generate=True, gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=run_precision[1], fp16=run_precision[2], seed=config.seed, data_seed=config.seed,
        # bf16 on a CPU is torch.autocast on the CPU, which the Trainer only allows with use_cpu
        use_cpu=run_precision[1] and not torch.cuda.is_available(),
        dataloader_num_workers=config.num_workers, remove_unused_columns=False, label_names=["labels"],
        # Batches of similar length fill their audio-context bucket (dynamic context only).
        group_by_length=config.dynamic_audio_context, length_column_name=LENGTH_COLUMN,
        report_to=[] if config.report_to in ("", "none") else [config.report_to],
        deepspeed=config.deepspeed, fsdp=config.fsdp or "", fsdp_config=config.fsdp_config,
        ddp_find_unused_parameters=False,
        save_safetensors=True, disable_tqdm=False, dataloader_pin_memory=torch.cuda.is_available())


def _cache_path(config, role, specs, max_samples, processor_name):
    """A feature-cache file named by everything that changes its content (shared by all ranks)."""
    windows = role == "train" and config.timestamps
    key = json.dumps([role, [dataclasses.asdict(s) for s in specs], config.sampling_rate, max_samples, config.seed,
                      config.lowercase, config.remove_punctuation, processor_name, config.language, config.task,
                      *([config.timestamp_ratio] if windows else []),
                      *([config.retain_language] if role == "retain" else []),  # the retain labels' language
                      *([config.replay_language] if role == "replay" else []),  # replay rows' default language
                      # Rows that keep their audio for augmentation (--augment) instead of features; and the
                      # labels' format: each row's own language token (caches written before it had none).
                      _keeps_audio(config, role), LABELS_FORMAT,
                      [os.path.abspath(s.name) if os.path.exists(s.name) else s.name for s in specs]], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(config.output_dir, ".feature_cache", f"{role}-{digest}.arrow")


def _keeps_audio(config, role):
    """Whether ``role``'s rows keep their decoded audio, featurised per batch after augmentation (--augment)."""
    return config.augment and role in ("train", "replay")


def _concatenated(parts):
    """``parts`` as one dataset; when only some have a language column, the others get an empty one (their
    rows take the default language), as concatenation needs the same columns."""
    from datasets import Value, concatenate_datasets

    if any(LANGUAGE_COLUMN in part.column_names for part in parts):
        parts = [part.add_column(LANGUAGE_COLUMN, [None] * len(part), feature=Value("string"))
                 if LANGUAGE_COLUMN not in part.column_names else
                 part if part.features[LANGUAGE_COLUMN] == Value("string") else
                 part.cast_column(LANGUAGE_COLUMN, Value("string")) for part in parts]
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _prepare_split(config, role, specs, max_samples, processor, default_language=None):
    """Load, shuffle, cut to ``max_samples``, featurise (cached) and filter one role's datasets; returns
    ``(dataset, counts)``. Rows with a ``language`` are labelled with their own language token, the
    others with ``default_language`` (``None``: the tokenizer's, i.e. the run's --language)."""
    windows = role == "train" and config.timestamps  # evaluation stays <|notimestamps|>: comparable WER
    parts = load_datasets(specs, custom=config.custom, num_proc=config.num_proc, keep_segments=windows)
    dataset = _concatenated(parts)
    dataset = dataset.shuffle(seed=config.seed)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    label = f"{role} data ({', '.join(s.label for s in specs)})"
    if role not in ("train", "replay") and LANGUAGE_COLUMN in dataset.column_names:
        # Evaluation labels keep the tokenizer's language: they only give the loss (sets are decoded in one
        # language), and an evaluation set's own names need not be Whisper's (FLEURS: "Mandarin Chinese").
        dataset = dataset.remove_columns(LANGUAGE_COLUMN)
    languages = LanguageLabels(processor.tokenizer, default_language, label)
    values = dataset[LANGUAGE_COLUMN] if LANGUAGE_COLUMN in dataset.column_names else [None]
    languages.check(values)  # before featurising: an unknown or (English-only model) non-English language
    if role == "replay" and languages.default is None and not languages.english_only and None in values:
        raise UserError(f"{label}: examples without a language column; give --replay_language, the language of "
                        f"the replay speech (e.g. en)")
    cache = _cache_path(config, role, specs, max_samples, config.model_name)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    if windows:
        dataset, window_counts = featurize_windows(
            dataset, processor, config.sampling_rate, config.timestamp_ratio, config.lowercase,
            config.remove_punctuation, cache_file_name=cache, fingerprint=os.path.basename(cache)[:-len(".arrow")],
            desc=f"featurising {role} windows", languages=languages)
    else:
        keep_audio = _keeps_audio(config, role)
        dataset = featurize(dataset, processor, config.sampling_rate, config.num_proc, config.lowercase,
                            config.remove_punctuation, cache_file_name=cache,
                            desc=f"{'decoding' if keep_audio else 'featurising'} {role} data", languages=languages,
                            keep_audio=keep_audio)
    dataset, counts = drop_too_long(dataset, label)
    if windows:
        counts.update(window_counts)
    if len(dataset) == 0:
        raise UserError(f"{label}: no utterance left after dropping clips over 30 s and labels over 448 tokens")
    return dataset.with_format("numpy"), counts


def _known_size(stream, spec):
    """Number of examples of a streamed split when the dataset's metadata says it, else ``None``."""
    splits = getattr(stream.info, "splits", None) or {}
    split = splits.get(spec.split) if spec.split else None
    return getattr(split, "num_examples", None) or None


def _prepare_stream(config, specs, processor, args):
    """The training data as a lazily read, interleaved, shuffled, featurised ``IterableDataset``.

    Under ``torchrun`` each rank keeps its own part (``split_dataset_by_node``): whole shards when
    the stream has a multiple of world-size shards, else every world-size-th example.
    """
    from datasets import interleave_datasets
    from datasets.distributed import split_dataset_by_node

    parts = load_datasets(specs, custom=False, streaming=True)
    probabilities = config.interleave_probabilities
    if probabilities is None and len(parts) > 1:
        sizes = [_known_size(part, spec) for part, spec in zip(parts, specs)]
        probabilities = sizes if all(sizes) else [1.0] * len(parts)
    if len(parts) > 1:
        total = float(sum(probabilities))
        probabilities = [p / total for p in probabilities]
        logger.info("interleaving %s with probabilities %s", ", ".join(s.label for s in specs),
                    ", ".join(f"{p:.3f}" for p in probabilities))
        # all_exhausted: every dataset is read to its end once per pass (smaller ones are repeated).
        stream = interleave_datasets(parts, probabilities=probabilities, seed=config.seed,
                                     stopping_strategy="all_exhausted")
    else:
        stream = parts[0]
    stream = stream.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer_size)
    if config.max_train_samples is not None:
        stream = stream.take(config.max_train_samples)
    if args.world_size > 1:
        stream = split_dataset_by_node(stream, rank=args.process_index, world_size=args.world_size)
    stream = featurize_stream(stream, processor, config.sampling_rate, config.lowercase, config.remove_punctuation)
    return stream.with_format("numpy"), {"streamed": True, "probabilities": probabilities}


def _configure_tokenizer(tokenizer, language, task, english_only):
    """Labels start ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` (English-only: no lang/task)."""
    if english_only:
        tokenizer.language, tokenizer.task = None, None
        tokenizer.set_prefix_tokens(predict_timestamps=False)
    else:
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tokenizer


def _clear_earlier_run(output_dir):
    for marker in RUN_MARKERS + ("generation_config.json", PLOT_FILE, "runs", ".feature_cache", ADAPTER_DIR):
        path = os.path.join(output_dir, marker)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for path in glob.glob(os.path.join(output_dir, "checkpoint-*")):
        shutil.rmtree(path)


def _save_final(trainer, processor, config, generation_config):
    """Best model (already loaded by the Trainer) + processor + generation config into ``output_dir``.

    Written into a staging folder first (every rank takes part in ``save_model``, as FSDP and
    DeepSpeed need), then each file is renamed into ``output_dir``: a kill leaves whole files only.
    A LoRA run also keeps its adapter folder, published as a whole.
    """
    out = config.output_dir
    staged = os.path.join(out, FINAL_STAGING)
    main = trainer.is_world_process_zero()
    model = trainer.model
    if main:
        shutil.rmtree(staged, ignore_errors=True)
    if config.lora:
        if main:
            with checkpoints.atomic_dir(os.path.join(out, ADAPTER_DIR)) as adapter:
                for part in (model, processor, generation_config):
                    part.save_pretrained(adapter)
            merged = model.merge_and_unload()
            merged.generation_config = generation_config
            merged.save_pretrained(staged)
    else:
        trainer.save_model(staged)
    if main:
        processor.save_pretrained(staged)
        modeling.single_eos(generation_config).save_pretrained(staged)
        for name in sorted(os.listdir(staged), key=lambda n: n.endswith((".safetensors", ".bin"))):
            publish(os.path.join(staged, name), os.path.join(out, name))  # weights last
        os.rmdir(staged)


def train(config: TrainConfig) -> TrainSummary:
    """Fine-tune ``config.model_name``; returns the run's :class:`TrainSummary` (also in ``training_summary.json``)."""
    checked = check_config(config)
    model_config, generation, resume = checked.model_config, checked.generation_config, checked.resume
    english_only = modeling.is_english_only(generation)
    language = modeling.resolve_language(config.language, generation, config.task)
    learning_rate = config.learning_rate or modeling.default_learning_rate(model_config, config.model_name)
    run_precision = precision(config.mixed_precision)
    metric = choose_metric(language, config.primary_metric)
    # The Trainer's metric_for_best_model (eval_ is prefixed): wer stands for the eval sets' primary metric.
    selection = metric if config.metric_for_best_model == "wer" else config.metric_for_best_model
    args = _training_arguments(config, learning_rate, run_precision, selection)
    logger.info("precision: %s (%s); learning rate %.3g%s", run_precision[0],
                "GPU" if torch.cuda.is_available() else "CPU",
                learning_rate, "" if config.learning_rate else " (default for this model size)")
    if args.process_index == 0:
        if resume is None and config.overwrite_output_dir:
            _clear_earlier_run(config.output_dir)
        checkpoints.remove_partials(config.output_dir)

    processor = modeling.load_processor(config.model_name)
    _configure_tokenizer(processor.tokenizer, language, config.task, english_only)
    train_specs, eval_specs = dataset_specs(config, "train"), dataset_specs(config, "eval")
    retain_specs = dataset_specs(config, "retain") if config.retain_datasets else []
    retain_processor = _retain_processor(config.model_name, checked.retain_language, english_only) \
        if retain_specs else None
    logger.info("process %d of %d (local rank %d)", args.process_index, args.world_size, args.local_process_index)
    replay_counts = None
    with args.main_process_first(desc="dataset preparation"):
        if config.streaming:
            train_set, train_counts = _prepare_stream(config, train_specs, processor, args)
        else:
            train_set, train_counts = _prepare_split(config, "train", train_specs, config.max_train_samples,
                                                     processor)
            if config.replay_datasets:
                train_set, replay_counts = _mix_replay(config, train_set, processor)
            if config.augment:
                train_set = _numbered(train_set)
        eval_set, eval_counts = _prepare_split(config, "eval", eval_specs, config.max_eval_samples, processor)
        if retain_specs:
            retain_set, retain_counts = _prepare_split(config, "retain", retain_specs, config.max_eval_samples,
                                                       retain_processor)

    model = _build_model(config, language)
    generation_config = (model.get_base_model() if config.lora else model).generation_config
    decode_kwargs = {"max_new_tokens": config.generation_max_new_tokens}
    if not english_only:
        decode_kwargs.update(language=language, task=config.task)
    normalizer = choose_normalizer(language, english_only_model=english_only)
    retain, retain_normalizer = None, None
    if retain_specs:
        retain_normalizer = choose_normalizer(checked.retain_language, english_only_model=english_only)
        retain = EvalSet(RETAIN_PREFIX, retain_set,
                         _retain_decode_kwargs(generation_config, checked.retain_language, english_only, config),
                         _metrics_function(processor.tokenizer, retain_normalizer, "wer"))
    early_stopping = _EarlyStopping(config.early_stopping_patience) if config.early_stopping_patience else None
    short_context_frozen, full_context_frozen = _context_frozen(model, config)
    trainer = _WhisperTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=processor,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(
            model_config.decoder_start_token_id, config.audio_context if config.dynamic_audio_context else None,
            _on_the_fly_features(config, processor)),
        spec_augment=config.spec_augment,
        full_context_ratio=config.full_context_ratio,
        short_context_frozen=short_context_frozen, full_context_frozen=full_context_frozen,
        compute_metrics=_metrics_function(processor.tokenizer, normalizer, metric), decode_kwargs=decode_kwargs,
        streaming=config.streaming, companions=(processor, generation_config), retain=retain,
        primary_metric=metric, callbacks=[early_stopping] if early_stopping else None,
        distiller=_distiller(config, language, args.device))

    trainer.started = time.perf_counter()  # also the clock of each evaluation's train_seconds
    if resume and args.max_steps > 0 and _start_step(resume) >= args.max_steps:
        # Resumed at the last step (a kill after the last checkpoint, e.g. while the final model was
        # written). transformers 4.57 would train one more step here when the last step falls
        # mid-epoch (found by tests/test_kill.py), so the run is finished from the checkpoint instead.
        logger.info("%s is at the last step (%d): nothing left to train", resume, args.max_steps)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, checkpoints.TRAINER_STATE))
        if trainer.state.best_model_checkpoint:
            trainer._load_best_model()
    else:
        trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - trainer.started
    eval_seconds = trainer.eval_seconds  # those of training; the merge's decoding is timed apart
    main_eval = EvalSet("eval", eval_set, decode_kwargs, trainer.compute_metrics)
    merge = _merge_with_base(trainer, config, main_eval, retain, metric)
    _save_final(trainer, processor, config, generation_config)

    per_dataset = _evaluate_each(trainer, config, eval_specs, processor, args) if len(eval_specs) > 1 else []
    retain_per_dataset = _evaluate_each(trainer, config, retain_specs, retain_processor, args, retain) \
        if len(retain_specs) > 1 else []
    state = trainer.state
    world = args.world_size
    samples = (state.global_step - _start_step(resume)) * config.train_batchsize * config.gradient_accumulation_steps * world
    train_only = max(elapsed - eval_seconds, 1e-9)
    # The entry of the checkpoint kept as the final model; step 0 (the base model) has no checkpoint.
    best_eval = min((e for e in state.log_history if f"eval_{selection}" in e and e.get("step", 0) > 0),
                    key=lambda e: e[f"eval_{selection}"], default={})
    before = next((e for e in state.log_history if e.get("step") == 0 and f"{RETAIN_PREFIX}_wer" in e), {})
    # With --merge_ratio below 1 the final model is not the best checkpoint: its figures are the merge's.
    final = {key.replace(MERGED_PREFIX, "eval"): value for key, value in merge.items()} if merge else best_eval
    retain_fields = _retain_summary(retain, before, final, checked.retain_language, retain_normalizer,
                                    retain_per_dataset)
    summary = TrainSummary(
        output_dir=os.path.abspath(config.output_dir), global_step=state.global_step, epochs=state.epoch,
        train_samples=None if config.streaming else len(train_set), eval_samples=len(eval_set),
        train_hours=None if config.streaming else _hours(train_set), eval_hours=_hours(eval_set),
        filtering={"train": train_counts, "eval": eval_counts, **({"retain": retain_counts} if retain else {}),
                   **({"replay": replay_counts} if replay_counts else {})},
        wall_seconds=round(elapsed, 2), eval_seconds=round(eval_seconds, 2),
        checkpoint_seconds=round(trainer.checkpoint_seconds, 2), samples_trained=samples,
        samples_per_second=round(samples / elapsed, 3),
        train_samples_per_second_excluding_eval=round(samples / train_only, 3),
        train_loss=_mean_logged_loss(state.log_history), best_wer=best_eval.get("eval_wer"), best_cer=best_eval.get("eval_cer"),
        best_step=best_eval.get("step"), best_checkpoint=state.best_model_checkpoint, normalizer=normalizer,
        primary_metric=metric,
        language=language, precision=run_precision[0], learning_rate=learning_rate, world_size=world,
        peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
        resumed_from=resume, config=dataclasses.asdict(config), eval_per_dataset=per_dataset,
        is_main_process=trainer.is_world_process_zero(), best_model_metric=config.metric_for_best_model,
        early_stopped_at=early_stopping.stopped_at if early_stopping else None,
        merge=_merge_summary(merge), **retain_fields,
        source_formats={name: origin for role in ("train", "eval", "retain", "replay")
                        for name in getattr(config, f"{role}_datasets") or () if (origin := source_format(name))})
    if summary.is_main_process:
        trainer.save_state()
        write_reports(summary, state.log_history, config.hub_model_id)
        if config.push_to_hub:
            summary.hub_url = hub.push_folder(config.output_dir, config.hub_model_id, config.hub_private_repo)
    return summary


def _merge_with_base(trainer, config, main_eval, retain, metric):
    """--merge_ratio: set the trained weights to base + ratio x (fine-tune - base) (``merging``).

    Returns {} without it (ratio 1), else the final model's metrics (``merged_wer``, ``merged_cer`` and,
    with retain sets, ``merged_retain_wer``...) with the :class:`merging.MergeChoice` under ``"choice"``.
    """
    if not merges(config):
        return {}
    ratio, encoder_ratio = merge_ratio(config), config.merge_encoder_ratio
    started = time.perf_counter()
    model = trainer.model
    base = WhisperForConditionalGeneration.from_pretrained(config.model_name)  # float32, as saved
    pairs = merging.trainable_deltas(model, base.state_dict())
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
        choice = merging.choose_ratio(model, pairs, evaluate, fine_tune, config.merge_tolerance, encoder_ratio)
    else:
        merging.set_ratio(model, pairs, ratio, encoder_ratio)
        evaluate(ratio)
        choice = merging.MergeChoice(ratio, config.merge_ratio, config.merge_tolerance, round(fine_tune, 6),
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


def _merge_summary(merge):
    """The summary's ``merge`` entry: the ratio, how it was chosen, and the final model's eval figures."""
    if not merge:
        return None
    return {**merge["choice"].to_dict(), "eval_wer": merge[f"{MERGED_PREFIX}_wer"],
            "eval_cer": merge[f"{MERGED_PREFIX}_cer"], "seconds": merge["seconds"]}


def _evaluate_each(trainer, config, specs, processor, args, retain=None):
    """WER/CER of the final (best) model on each evaluation dataset on its own, for the model card; with
    ``retain`` (its :class:`EvalSet`) on each retain dataset, decoded and scored as the retain sets are."""
    role = "retain" if retain else "eval"
    prefix = f"final_{role}"
    rows = []
    for spec in specs:
        with args.main_process_first(desc="dataset preparation"):
            dataset, _ = _prepare_split(config, role, [spec], config.max_eval_samples, processor)
        if retain:
            metrics = trainer.evaluate_set(dataclasses.replace(retain, prefix=prefix, dataset=dataset))
        else:
            metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
        rows.append(DatasetScore(spec.label, len(dataset), metrics[f"{prefix}_wer"], metrics[f"{prefix}_cer"]))
        logger.info("final model on %s (%s): WER %.4f, CER %.4f", spec.label, role, rows[-1].wer, rows[-1].cer)
    return rows


def _retain_processor(model_name, language, english_only):
    """A processor whose labels start as the retain sets' own: ``<|startoftranscript|>[<|lang|>]<|transcribe|>
    <|notimestamps|>`` (no language token when it is detected; English-only models: neither token)."""
    processor = modeling.load_processor(model_name)
    if english_only:
        _configure_tokenizer(processor.tokenizer, None, None, True)
    else:
        processor.tokenizer.language = language  # set_prefix_tokens(language=None) would keep a saved one
        processor.tokenizer.set_prefix_tokens(task="transcribe", predict_timestamps=False)
    return processor


def _retain_decode_kwargs(generation_config, language, english_only, config):
    """Generation settings of the retain sets: the trained model's generation config (which says the
    training language) with the retain language in its place, or none, so Whisper detects each clip's."""
    retain_generation = copy.deepcopy(generation_config)
    if not english_only:
        retain_generation.language, retain_generation.task = language, "transcribe"
    return {"generation_config": retain_generation, "max_new_tokens": config.generation_max_new_tokens}


def _retain_summary(retain, before, after, language, normalizer, per_dataset):
    """The summary fields of the retain sets: step 0 (the base model), the final model, and the change."""
    if retain is None:
        return {}
    fields = {"retain_samples": len(retain.dataset), "retain_hours": _hours(retain.dataset),
              "retain_language": language, "retain_normalizer": normalizer,
              "retain_per_dataset": per_dataset}
    for measure in ("wer", "cer"):
        key = f"{RETAIN_PREFIX}_{measure}"
        first, last = before.get(key), after.get(key)
        fields[f"retain_{measure}_before"], fields[f"retain_{measure}_after"] = first, last
        fields[f"retain_{measure}_change"] = None if first is None or last is None else round(last - first, 6)
        fields[f"eval_{measure}_before"] = before.get(f"eval_{measure}")
    return fields


def _mean_logged_loss(history):
    """Mean training loss over the whole run, from the logged losses (each the mean of the steps since the
    previous log), so a resumed run reports the same figure as one never interrupted."""
    logged = [(e["step"], e["loss"]) for e in history if "loss" in e]
    if not logged:
        return None
    previous = [0] + [step for step, _ in logged[:-1]]
    return sum((step - prev) * loss for prev, (step, loss) in zip(previous, logged)) / logged[-1][0]


def _hours(dataset):
    return round(float(sum(dataset.with_format(None)[LENGTH_COLUMN])) / 3600, 4)


def _start_step(resume):
    if not resume:
        return 0
    with open(os.path.join(resume, checkpoints.TRAINER_STATE), encoding="utf-8") as f:
        return json.load(f).get("global_step", 0)
