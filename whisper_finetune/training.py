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
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import time

import torch
import torch.distributed as dist
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

from . import checkpoints, hub, modeling, scoring
from .data import load_datasets
from .errors import UserError
from .features import (CONTEXT_FRAMES, FEATURE_COLUMN, LENGTH_COLUMN, DataCollatorSpeechSeq2SeqWithPadding,
                       drop_too_long, featurize, featurize_stream, featurize_windows, full_context_step)
from .files import publish
from .reporting import PLOT_FILE, DatasetScore, TrainSummary, write_reports
from .text import choose_metric, choose_normalizer
from .train_config import RUN_MARKERS, TrainConfig, check_config, dataset_specs, intervals, precision

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_DIR = "adapter"
FINAL_STAGING = ".final-model" + checkpoints.PARTIAL_SUFFIX


class _WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that decodes with explicit language/task, writes kill-safe self-contained
    checkpoints, and counts the time spent evaluating and writing/reloading checkpoints (so
    throughput figures can leave them out)."""

    def __init__(self, *args, decode_kwargs=None, streaming=False, companions=(), full_context_ratio=0.0,
                 short_context_frozen=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.full_context_ratio = full_context_ratio  # dynamic audio context: share of 30 s steps
        self.short_context_frozen = tuple(short_context_frozen)  # parameters a short-context step leaves alone
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
            return super().get_train_dataloader()
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
        loss = super().training_step(model, inputs, *args, **kwargs)
        if short:
            # The decision is per step, the same in every process and every accumulated micro-batch, so
            # dropping these gradients after the (all-reduced) backward keeps the replicas equal; AdamW
            # skips a parameter without a gradient (no momentum step either).
            for parameter in self.short_context_frozen:
                parameter.grad = None
        return loss

    def prediction_step(self, model, inputs, *args, **kwargs):
        inputs, _ = self._short_context(inputs, training=False)
        return super().prediction_step(model, inputs, *args, **kwargs)

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
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **{**self.decode_kwargs, **gen_kwargs})


class _StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader the Trainer can tell the epoch: each pass over the stream is shuffled anew
    (``IterableDataset.set_epoch`` reseeds the shuffle buffer and shard order), also after resuming."""

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


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
    model = WhisperForConditionalGeneration.from_pretrained(config.model_name, attn_implementation="sdpa")
    modeling.set_language_and_task(model, language, config.task)
    if config.dynamic_audio_context:
        modeling.enable_dynamic_audio_context(model)
        # Recorded in config.json, so the saved (plain Whisper) checkpoint says how it was trained.
        model.config.dynamic_audio_context = {"bucket_seconds": config.audio_context.audio_context_bucket_seconds,
                                              "full_context_ratio": config.full_context_ratio,
                                              "short_context_updates": config.short_context_updates}
    # Recorded in config.json, so transcription knows whether the model still predicts timestamps
    # (False: trained on <|notimestamps|> only, so its timestamps are not to be trusted).
    model.config.timestamp_training = {"ratio": config.timestamp_ratio} if config.timestamps else False
    model.config.use_cache = not config.gradient_checkpointing
    if config.freeze_encoder:
        model.freeze_encoder()
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(LORA_TARGETS), bias="none")
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.1f%%)", trainable, total, 100 * trainable / total)
    return model


def _short_context_frozen(model, config):
    """The parameters a short-context step of a dynamic-context run does not update: the decoder's
    (LoRA: its adapters), with ``--short_context_updates encoder``."""
    if not config.dynamic_audio_context or config.short_context_updates == "all":
        return []
    whisper = model.get_base_model() if config.lora else model
    return [parameter for parameter in whisper.model.decoder.parameters() if parameter.requires_grad]


def _training_arguments(config, learning_rate, run_precision, metric):
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
                      [os.path.abspath(s.name) if os.path.exists(s.name) else s.name for s in specs]], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(config.output_dir, ".feature_cache", f"{role}-{digest}.arrow")


def _prepare_split(config, role, specs, max_samples, processor):
    from datasets import concatenate_datasets

    windows = role == "train" and config.timestamps  # evaluation stays <|notimestamps|>: comparable WER
    parts = load_datasets(specs, custom=config.custom, num_proc=config.num_proc, keep_segments=windows)
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    dataset = dataset.shuffle(seed=config.seed)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    label = f"{role} data ({', '.join(s.label for s in specs)})"
    cache = _cache_path(config, role, specs, max_samples, config.model_name)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    if windows:
        dataset, window_counts = featurize_windows(
            dataset, processor, config.sampling_rate, config.timestamp_ratio, config.lowercase,
            config.remove_punctuation, cache_file_name=cache, fingerprint=os.path.basename(cache)[:-len(".arrow")],
            desc=f"featurising {role} windows")
    else:
        dataset = featurize(dataset, processor, config.sampling_rate, config.num_proc, config.lowercase,
                            config.remove_punctuation, cache_file_name=cache, desc=f"featurising {role} data")
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
        generation_config.save_pretrained(staged)
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
    args = _training_arguments(config, learning_rate, run_precision, metric)
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
    logger.info("process %d of %d (local rank %d)", args.process_index, args.world_size, args.local_process_index)
    with args.main_process_first(desc="dataset preparation"):
        if config.streaming:
            train_set, train_counts = _prepare_stream(config, train_specs, processor, args)
        else:
            train_set, train_counts = _prepare_split(config, "train", train_specs, config.max_train_samples,
                                                     processor)
        eval_set, eval_counts = _prepare_split(config, "eval", eval_specs, config.max_eval_samples, processor)

    model = _build_model(config, language)
    generation_config = (model.get_base_model() if config.lora else model).generation_config
    decode_kwargs = {"max_new_tokens": config.generation_max_new_tokens}
    if not english_only:
        decode_kwargs.update(language=language, task=config.task)
    normalizer = choose_normalizer(language, english_only_model=english_only)
    trainer = _WhisperTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=processor,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(
            model_config.decoder_start_token_id, config.audio_context if config.dynamic_audio_context else None),
        full_context_ratio=config.full_context_ratio,
        short_context_frozen=_short_context_frozen(model, config),
        compute_metrics=_metrics_function(processor.tokenizer, normalizer, metric), decode_kwargs=decode_kwargs,
        streaming=config.streaming, companions=(processor, generation_config))

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
    _save_final(trainer, processor, config, generation_config)

    per_dataset = _evaluate_each(trainer, config, eval_specs, processor, args) if len(eval_specs) > 1 else []
    state = trainer.state
    world = args.world_size
    samples = (state.global_step - _start_step(resume)) * config.train_batchsize * config.gradient_accumulation_steps * world
    train_only = max(elapsed - trainer.eval_seconds, 1e-9)
    best_eval = min((e for e in state.log_history if f"eval_{metric}" in e), key=lambda e: e[f"eval_{metric}"],
                    default={})
    summary = TrainSummary(
        output_dir=os.path.abspath(config.output_dir), global_step=state.global_step, epochs=state.epoch,
        train_samples=None if config.streaming else len(train_set), eval_samples=len(eval_set),
        train_hours=None if config.streaming else _hours(train_set), eval_hours=_hours(eval_set),
        filtering={"train": train_counts, "eval": eval_counts},
        wall_seconds=round(elapsed, 2), eval_seconds=round(trainer.eval_seconds, 2),
        checkpoint_seconds=round(trainer.checkpoint_seconds, 2), samples_trained=samples,
        samples_per_second=round(samples / elapsed, 3),
        train_samples_per_second_excluding_eval=round(samples / train_only, 3),
        train_loss=_mean_logged_loss(state.log_history), best_wer=best_eval.get("eval_wer"), best_cer=best_eval.get("eval_cer"),
        best_step=best_eval.get("step"), best_checkpoint=state.best_model_checkpoint, normalizer=normalizer,
        primary_metric=metric,
        language=language, precision=run_precision[0], learning_rate=learning_rate, world_size=world,
        peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
        resumed_from=resume, config=dataclasses.asdict(config), eval_per_dataset=per_dataset,
        is_main_process=trainer.is_world_process_zero())
    if summary.is_main_process:
        trainer.save_state()
        write_reports(summary, state.log_history, config.hub_model_id)
        if config.push_to_hub:
            summary.hub_url = hub.push_folder(config.output_dir, config.hub_model_id, config.hub_private_repo)
    return summary


def _evaluate_each(trainer, config, specs, processor, args):
    """WER/CER of the final (best) model on each evaluation dataset on its own, for the model card."""
    rows = []
    for spec in specs:
        with args.main_process_first(desc="dataset preparation"):
            dataset, _ = _prepare_split(config, "eval", [spec], config.max_eval_samples, processor)
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="final_eval")
        rows.append(DatasetScore(spec.label, len(dataset), metrics["final_eval_wer"], metrics["final_eval_cer"]))
        logger.info("final model on %s: WER %.4f, CER %.4f", spec.label, rows[-1].wer, rows[-1].cer)
    return rows


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
