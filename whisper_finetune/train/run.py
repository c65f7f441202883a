"""Fine-tuning Whisper: the one function behind both training scripts.

:func:`train` reads top to bottom: check the options, prepare the data of each role (main process first
under ``torchrun``), build the model and the Trainer (:mod:`.trainer`), fit, merge with the base model
(``--merge_ratio``), save the final model (:mod:`.output`), and report: ``training_summary.json``, the
curve and the model card (:mod:`.summary`), pushed to the Hub with ``--push_to_hub``. Every
``checkpoint-N`` is self-contained and kill-safe, so ``--resume_from_ckpt latest`` always finds a whole one.

The faults a cluster or a disk brings (issue 43): the main process holds ``output_dir``'s lock for the whole
run (:mod:`whisper_finetune.runlock`); free space is checked against the checkpoints the run will keep
before training; a full disk while a checkpoint or the final model is written removes the half-written
folder and stops with :class:`~whisper_finetune.errors.DiskFull`; a SIGTERM or first Ctrl-C saves a
checkpoint after the current step and stops (:mod:`.preemption`).
"""
import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Optional

import torch
from transformers.trainer_callback import TrainerState

from .. import files, hub, runlock
from ..data.bad_audio import logged_count
from ..data.features import DataCollatorSpeechSeq2SeqWithPadding
from ..data.loading import source_format
from ..data.schema import DatasetSpec
from ..errors import UserError
from ..model import loading
from ..text import choose_metric, choose_normalizer, language_code
from . import checkpoints, labelling
from .config import TrainConfig, replays
from .checks import check_config, dataset_specs, precision, rate_options
from .data import hours, mix_replay, numbered, on_the_fly_features, prepare_split, prepare_stream
from .merging import MERGED_PREFIX, merge_summary, merge_with_base
from .model_setup import (build_model, configure_tokenizer, context_frozen, make_consolidation, make_distiller,
                          learning_rate_scales, retain_decode_kwargs, retain_processor)
from .output import clear_earlier_run, evaluate_each, save_final
from .summary import RETAIN_PREFIX, TrainSummary, mean_logged_loss, retain_summary, write_reports
from .trainer import (EarlyStopping, EvalSet, TrainerParts, WhisperTrainer, load_best_model, metrics_function,
                      training_arguments)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What the checked options resolve to before anything is loaded."""

    language: Optional[str]  # the Whisper code of --language (None: English-only model)
    english_only: bool
    retain_language: Optional[str]
    learning_rate: float
    precision: tuple  # (name, bf16, fp16)
    metric: str  # the eval sets' primary metric (wer, or cer for languages without spaces)
    normalizer: str  # the eval sets' text normaliser
    retain_normalizer: Optional[str]  # the retain sets' (None without them)
    selection: str  # the Trainer's metric_for_best_model
    args: object  # Seq2SeqTrainingArguments
    resume: Optional[str]  # the checkpoint resumed from
    model_config: object
    processor: object  # labels in the run's language
    retain_processor: object  # labels of the retain sets (None without them)


@dataclasses.dataclass(frozen=True)
class RunData:
    """The featurised sets of each role and what filtering and replay did to them."""

    train: object
    eval: object
    retain: object  # None without retain sets
    counts: dict  # per role: utterances kept and dropped, by reason
    replay_audio: Optional[labelling.ReplayAudio] = None  # what --replay_audio labelled (None without it)
    replay_rows: object = None  # the featurised replay examples, each once (None without replay)


def train(config: TrainConfig) -> TrainSummary:
    """Fine-tune ``config.model_name``; returns the run's :class:`TrainSummary` (also in ``training_summary.json``).

    The main process (rank 0; ``torchrun`` sets ``RANK`` before anything runs) holds ``output_dir``'s lock
    throughout, released however the run ends.
    """
    with runlock.held(config.output_dir, main_process=int(os.environ.get("RANK", "0")) == 0):
        return _train(config)


def _train(config: TrainConfig) -> TrainSummary:
    plan = plan_run(config)
    if plan.args.process_index == 0:
        if plan.resume is None and config.overwrite_output_dir:
            clear_earlier_run(config.output_dir)
        files.remove_partials(config.output_dir)
    data = prepare_data(config, plan)
    model = build_model(config, plan.language)
    generation_config = (model.get_base_model() if config.lora else model).generation_config
    trainer, retain, early_stopping = make_trainer(config, plan, data, model, generation_config)

    checkpoint_bytes = checkpoints.estimate_checkpoint_bytes(model, adapter_only=config.lora)
    final_bytes = checkpoints.estimate_checkpoint_bytes(model) - checkpoints.ADAM_STATE_BYTES * sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    if plan.args.process_index == 0:
        warning = checkpoints.space_warning(config.output_dir, checkpoint_bytes,
                                            checkpoints.planned_checkpoints(plan.args), final_bytes)
        if warning:
            logger.warning(warning)

    trainer.started = time.perf_counter()  # also the clock of each evaluation's train_seconds
    fit(trainer, plan.resume, plan.args.max_steps, checkpoint_bytes)
    elapsed, eval_seconds = time.perf_counter() - trainer.started, trainer.eval_seconds  # the merge is timed apart
    main_eval = EvalSet("eval", data.eval, trainer.parts.decode_kwargs, trainer.compute_metrics)
    merge = merge_with_base(trainer, config, main_eval, retain, plan.metric)
    save_final(trainer, plan.processor, config, generation_config, final_bytes)

    per_dataset = evaluate_each(trainer, config, dataset_specs(config, "eval"), plan.processor, plan.args) \
        if len(config.eval_datasets) > 1 else []
    retain_per_dataset = evaluate_each(trainer, config, dataset_specs(config, "retain"), plan.retain_processor,
                                       plan.args, retain) if len(config.retain_datasets or ()) > 1 else []
    summary = summarise(config, plan, data, trainer, retain, merge, per_dataset, retain_per_dataset,
                        early_stopping, elapsed, eval_seconds)
    if summary.is_main_process:
        trainer.state.save_to_json(os.path.join(config.output_dir, checkpoints.TRAINER_STATE))
        write_reports(summary, trainer.state.log_history, config.hub_model_id)
        if config.push_to_hub:  # the reports are on disk first, so a failed push loses nothing
            summary = dataclasses.replace(summary, hub_url=hub.create_repo(config.hub_model_id,
                                                                           config.hub_private_repo))
            write_reports(summary, trainer.state.log_history, config.hub_model_id)
            hub.upload_folder(config.output_dir, config.hub_model_id)
    return summary


def plan_run(config: TrainConfig) -> RunPlan:
    """Check the options and resolve language, learning rate, precision and metric; load the processors."""
    checked = check_config(config)
    generation = checked.generation_config
    english_only = loading.is_english_only(generation)
    language = loading.resolve_language(config.language, generation, config.task)
    learning_rate = config.learning_rate or loading.default_learning_rate(checked.model_config, config.model_name)
    run_precision = precision(config.mixed_precision)
    metric = choose_metric(language, config.primary_metric)
    # The Trainer's metric_for_best_model (eval_ is prefixed): wer stands for the eval sets' primary metric.
    selection = metric if config.metric_for_best_model == "wer" else config.metric_for_best_model
    args = training_arguments(config, learning_rate, run_precision, selection)
    logger.info("precision: %s (%s); learning rate %.3g%s", run_precision[0],
                "GPU" if torch.cuda.is_available() else "CPU",
                learning_rate, "" if config.learning_rate else " (default for this model size)")
    logger.info("process %d of %d (local rank %d)", args.process_index, args.world_size, args.local_process_index)
    processor = loading.load_processor(config.model_name)
    configure_tokenizer(processor.tokenizer, language, config.task, english_only)
    retain_labels = retain_processor(config.model_name, checked.retain_language, english_only) \
        if config.retain_datasets else None
    normalizer = choose_normalizer(language, english_only_model=english_only)
    retain_normalizer = choose_normalizer(checked.retain_language, english_only_model=english_only) \
        if config.retain_datasets else None
    return RunPlan(language, english_only, checked.retain_language, learning_rate, run_precision, metric, normalizer,
                   retain_normalizer, selection, args, checked.resume, checked.model_config, processor, retain_labels)


def prepare_data(config: TrainConfig, plan: RunPlan) -> RunData:
    """Every role's featurised set, prepared by the main process first (the others then read its cache)."""
    counts, retain_set, labelled, replay_rows = {}, None, None, None
    with plan.args.main_process_first(desc="dataset preparation"):
        if config.streaming:
            train_set, counts["train"] = prepare_stream(config, dataset_specs(config, "train"), plan.processor,
                                                        plan.args)
        else:
            train_set, counts["train"] = prepare_split(config, "train", dataset_specs(config, "train"),
                                                       config.max_train_samples, plan.processor)
            if replays(config):
                specs = dataset_specs(config, "replay") if config.replay_datasets else []
                if config.replay_audio:
                    labelled = label_replay_audio(config, plan)
                    specs += [DatasetSpec(labelled.dataset, split=None)] if labelled.dataset else []
                train_set, counts["replay"], replay_rows = mix_replay(config, train_set, plan.processor, specs)
            if config.augment:
                train_set = numbered(train_set)
        eval_set, counts["eval"] = prepare_split(config, "eval", dataset_specs(config, "eval"),
                                                 config.max_eval_samples, plan.processor)
        if config.retain_datasets:
            retain_set, counts["retain"] = prepare_split(config, "retain", dataset_specs(config, "retain"),
                                                         config.max_eval_samples, plan.retain_processor)
    # The summary's order: train, eval, retain, replay.
    order = ("train", "eval", "retain", "replay")
    return RunData(train_set, eval_set, retain_set, {role: counts[role] for role in order if role in counts},
                   labelled, replay_rows)


def label_replay_audio(config: TrainConfig, plan: RunPlan) -> labelling.ReplayAudio:
    """--replay_audio's clips labelled by the base model (the cache under ``output_dir`` first); the main process
    labels, the others (run after it) find every label cached."""
    settings = labelling.LabelSettings(config.model_name, language_code(config.replay_language))
    labelled = labelling.replay_audio(config.replay_audio, settings, config.output_dir, plan.args.device)
    logger.info("--replay_audio: %d clip(s) (%.1f min): %d labelled now, %d from %s; not replayed: %d without "
                "words, %d repetition loops", labelled.clips, labelled.seconds / 60, labelled.decoded, labelled.cached,
                labelled.cache, labelled.empty, labelled.looped)
    if labelled.dataset is None and not config.replay_datasets:
        raise UserError(f"--replay_audio: the base model heard no words (or only a repetition loop) in any of its "
                        f"{labelled.clips} clip(s); nothing to replay")
    return labelled


def make_trainer(config: TrainConfig, plan: RunPlan, data: RunData, model, generation_config):
    """The Trainer of the run, with the retain sets' EvalSet and the early-stopping callback (or ``None``)."""
    processor = plan.processor
    decode_kwargs = {"max_new_tokens": config.generation_max_new_tokens}
    if not plan.english_only:
        decode_kwargs.update(language=plan.language, task=config.task)
    retain = None
    if data.retain is not None:
        retain = EvalSet(RETAIN_PREFIX, data.retain,
                         retain_decode_kwargs(generation_config, plan.retain_language, plan.english_only, config),
                         metrics_function(processor.tokenizer, plan.retain_normalizer, "wer"))
    early_stopping = EarlyStopping(config.early_stopping_patience) if config.early_stopping_patience else None
    short_context_frozen, full_context_frozen = context_frozen(model, config)
    parts = TrainerParts(
        decode_kwargs=decode_kwargs, streaming=config.streaming,
        # the feature extractor on its own writes preprocessor_config.json (see loading.save_processor)
        companions=(processor, processor.feature_extractor, generation_config, rate_options(config)),
        full_context_ratio=config.full_context_ratio, short_context_frozen=tuple(short_context_frozen),
        full_context_frozen=tuple(full_context_frozen), retain=retain, primary_metric=plan.metric,
        spec_augment=config.spec_augment, distiller=make_distiller(config, plan.language, plan.args.device),
        consolidation=make_consolidation(config, model, data.replay_rows, processor.feature_extractor,
                                         plan.args.device),
        max_bad_examples=config.max_bad_examples if config.streaming else 0,
        rate_scales=learning_rate_scales(model, config))
    trainer = WhisperTrainer(
        model=model, args=plan.args, train_dataset=data.train, eval_dataset=data.eval, processing_class=processor,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(
            plan.model_config.decoder_start_token_id, config.audio_context if config.dynamic_audio_context else None,
            on_the_fly_features(config, processor)),
        compute_metrics=metrics_function(processor.tokenizer, plan.normalizer, plan.metric),
        callbacks=[early_stopping] if early_stopping else None, parts=parts, output_dir=config.output_dir)
    return trainer, retain, early_stopping


def fit(trainer, resume, max_steps, checkpoint_bytes=None):
    """Train (or resume) to the end; the best checkpoint is then loaded into ``trainer.model``.

    A full disk while a checkpoint is written: the half-written one (in the staging folder) is removed and
    :class:`~whisper_finetune.errors.DiskFull` names the folder, the checkpoint's size and the newest complete
    checkpoint, which resuming takes.
    """
    try:
        with trainer.preemption.armed():
            _fit(trainer, resume, max_steps)
    except Exception as exc:
        output_dir = trainer.output_dir
        if not files.is_disk_full(exc, output_dir):
            raise
        trainer.close_progress_bar()
        staging = trainer.args.output_dir
        writing = [n for n in os.listdir(staging) if n.startswith("checkpoint-")] if os.path.isdir(staging) else []
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        last = checkpoints.latest_complete(output_dir)
        kept = f"{os.path.basename(last)} is complete and kept" if last else "no complete checkpoint was written yet"
        raise files.disk_full(output_dir, writing[0] if writing else "the run's output", checkpoint_bytes,
                              advice=f"{kept}; free some space and rerun the same command with "
                                     f"--resume_from_ckpt latest") from exc


def _fit(trainer, resume, max_steps):
    if resume and max_steps > 0 and start_step(resume) >= max_steps:
        # Resumed at the last step (a kill after the last checkpoint, e.g. while the final model was
        # written). transformers 4.57 would train one more step here when the last step falls
        # mid-epoch (found by tests/test_kill.py), so the run is finished from the checkpoint instead.
        logger.info("%s is at the last step (%d): nothing left to train", resume, max_steps)
        trainer.state = TrainerState.load_from_json(os.path.join(resume, checkpoints.TRAINER_STATE))
        if trainer.state.best_model_checkpoint:
            load_best_model(trainer)
    else:
        trainer.train(resume_from_checkpoint=resume)
    # Every rank lists the staging folder as transformers' train() ends (its checkpoint sort), so the first rank
    # out must not remove it before the others are out too.
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the staging folder: every checkpoint is out


def summarise(config, plan, data, trainer, retain, merge, per_dataset, retain_per_dataset, early_stopping,
              elapsed, eval_seconds) -> TrainSummary:
    """The run's summary, built once from the Trainer's history and the figures measured after training."""
    state = trainer.state
    world = plan.args.world_size
    samples = (state.global_step - start_step(plan.resume)) * config.train_batchsize * \
        config.gradient_accumulation_steps * world
    train_only = max(elapsed - eval_seconds, 1e-9)
    # The entry of the checkpoint kept as the final model; step 0 (the base model) has no checkpoint.
    best_eval = min((e for e in state.log_history if f"eval_{plan.selection}" in e and e.get("step", 0) > 0),
                    key=lambda e: e[f"eval_{plan.selection}"], default={})
    before = next((e for e in state.log_history if e.get("step") == 0 and f"{RETAIN_PREFIX}_wer" in e), {})
    # With --merge_ratio below 1 the final model is not the best checkpoint: its figures are the merge's.
    final = {key.replace(MERGED_PREFIX, "eval"): value for key, value in merge.items()} if merge else best_eval
    skipped = {role: counts["skipped_bad_audio"] for role, counts in data.counts.items()
               if isinstance(counts, dict) and counts.get("skipped_bad_audio")}
    if config.streaming and config.max_bad_examples and logged_count(config.output_dir, "train"):
        skipped["train"] = logged_count(config.output_dir, "train")  # every process's, counted once each
    retain_fields = retain_summary(
        retain, hours(retain.dataset) if retain else None, before, final, plan.retain_language,
        plan.retain_normalizer,
        retain_per_dataset)
    return TrainSummary(
        output_dir=os.path.abspath(config.output_dir), global_step=state.global_step, epochs=state.epoch,
        train_samples=None if config.streaming else len(data.train), eval_samples=len(data.eval),
        train_hours=None if config.streaming else hours(data.train), eval_hours=hours(data.eval),
        filtering=data.counts, wall_seconds=round(elapsed, 2), eval_seconds=round(eval_seconds, 2),
        checkpoint_seconds=round(trainer.checkpoint_seconds, 2), samples_trained=samples,
        samples_per_second=round(samples / elapsed, 3),
        train_samples_per_second_excluding_eval=round(samples / train_only, 3),
        train_loss=mean_logged_loss(state.log_history), best_wer=best_eval.get("eval_wer"),
        best_cer=best_eval.get("eval_cer"), best_step=best_eval.get("step"),
        best_checkpoint=state.best_model_checkpoint,
        normalizer=plan.normalizer,
        primary_metric=plan.metric, language=plan.language, precision=plan.precision[0],
        learning_rate=plan.learning_rate, world_size=world,
        peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
        resumed_from=plan.resume, config=dataclasses.asdict(config), eval_per_dataset=per_dataset,
        is_main_process=trainer.is_world_process_zero(),
        best_model_metric=config.metric_for_best_model,
        early_stopped_at=early_stopping.stopped_at if early_stopping else None,
        merge=merge_summary(merge), skipped_bad_audio=skipped, **retain_fields,
        replay_audio=json.loads(json.dumps(dataclasses.asdict(data.replay_audio))) if data.replay_audio else None,
        consolidation=trainer.parts.consolidation.summary() if trainer.parts.consolidation else None,
        source_formats={name: origin for role in ("train", "eval", "retain", "replay")
                        for name in getattr(config, f"{role}_datasets") or () if (origin := source_format(name))})


def start_step(resume):
    """The step a checkpoint was saved at (0 without one)."""
    if not resume:
        return 0
    with open(os.path.join(resume, checkpoints.TRAINER_STATE), encoding="utf-8") as f:
        return json.load(f).get("global_step", 0)
