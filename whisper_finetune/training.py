"""Fine-tuning Whisper with ``Seq2SeqTrainer``: one implementation behind both training scripts.

:func:`train` checks every option first (model, language, datasets, output folder, resume point),
featurises the data once (main process first under ``torchrun``), trains, evaluates WER/CER with
generation at each checkpoint, and leaves in ``output_dir`` the best model by eval WER with its
processor and generation config (language and task set), a TensorBoard log, ``training_curve.png``
and ``training_summary.json``, and a model card ``README.md`` (optionally pushed to the Hub). Every
``checkpoint-N`` is self-contained (processor and generation config saved beside the weights).
With ``streaming`` the training data is read lazily as an interleaved, shuffled ``IterableDataset``
(featurised on the fly, split between ranks) instead of being featurised up front.
"""
import contextlib
import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import (GenerationConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback,
                          WhisperConfig, WhisperForConditionalGeneration)
from transformers.trainer_utils import get_last_checkpoint

from . import hub, modeling, scoring
from .data import DatasetSpec, check_parallel_lists, load_datasets
from .errors import UserError
from .features import LENGTH_COLUMN, DataCollatorSpeechSeq2SeqWithPadding, drop_too_long, featurize, featurize_stream
from .model_card import write_model_card
from .text import choose_normalizer

logger = logging.getLogger(__name__)

STRATEGIES = ("steps", "epoch")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
SUMMARY_FILE = "training_summary.json"
PLOT_FILE = "training_curve.png"
ADAPTER_DIR = "adapter"
# Files that mark an earlier run in --output_dir.
RUN_MARKERS = ("trainer_state.json", SUMMARY_FILE, "config.json", "model.safetensors", "adapter_config.json")


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`train` (one per training-script flag; see ``docs/sections/training.md``)."""

    model_name: str
    train_datasets: tuple
    eval_datasets: tuple
    output_dir: str
    custom: bool = True  # data_prep folders (custom script) or HF datasets (hf script)
    train_dataset_configs: Optional[tuple] = None
    train_dataset_splits: Optional[tuple] = None
    train_dataset_text_columns: Optional[tuple] = None
    eval_dataset_configs: Optional[tuple] = None
    eval_dataset_splits: Optional[tuple] = None
    eval_dataset_text_columns: Optional[tuple] = None
    audio_column: str = "audio"
    language: Optional[str] = None
    task: str = "transcribe"
    sampling_rate: int = 16000
    num_proc: int = 1
    train_strategy: str = "steps"
    num_steps: int = 1000
    num_epochs: float = 1.0
    learning_rate: Optional[float] = None
    warmup: int = 0
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_batchsize: int = 16
    eval_batchsize: int = 8
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    freeze_encoder: bool = False
    mixed_precision: str = "auto"
    eval_steps: Optional[int] = None
    save_steps: Optional[int] = None
    save_total_limit: Optional[int] = None
    logging_steps: int = 10
    generation_max_new_tokens: int = 128
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    seed: int = 42
    lowercase: bool = False
    remove_punctuation: bool = False
    lora: bool = False
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    resume_from_ckpt: Optional[str] = None
    overwrite_output_dir: bool = False
    deepspeed: Optional[str] = None
    fsdp: str = ""
    fsdp_config: Optional[str] = None
    num_workers: int = 0
    report_to: str = "tensorboard"
    streaming: bool = False
    interleave_probabilities: Optional[tuple] = None
    shuffle_buffer_size: int = 1000
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_private_repo: bool = False


# ---------------------------------------------------------------------------------------------
# Checks done before any long work
# ---------------------------------------------------------------------------------------------
def _specs(names, configs, splits, text_columns, audio_column, prefix, custom=False):
    check_parallel_lists(prefix, **{f"{prefix}_datasets": names, f"{prefix}_dataset_configs": configs,
                                    f"{prefix}_dataset_splits": splits, f"{prefix}_dataset_text_columns": text_columns})
    n = len(names)
    configs, splits, text_columns = (list(x) if x else [None] * n for x in (configs, splits, text_columns))
    default_split = None if custom else "train" if prefix == "train" else "test"
    return [DatasetSpec(name, config, split or default_split, column, audio_column)
            for name, config, split, column in zip(names, configs, splits, text_columns)]


def _load_model_config(name):
    """WhisperConfig + GenerationConfig of ``--model_name`` (cheap), with a one-line error if unusable."""
    if os.path.isdir(name):
        if not os.path.exists(os.path.join(name, "config.json")):
            raise UserError(f"--model_name {name}: folder holds no model (no config.json)")
    elif name.startswith((".", "/", "~")) or len(name.split("/")) > 2:
        raise UserError(f"--model_name {name}: no such folder, and not a Hub id (owner/name)")
    try:
        config = WhisperConfig.from_pretrained(name)
        generation = GenerationConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model_name {name}: cannot load a Whisper model: {str(exc).splitlines()[0]}") from exc
    return config, generation


def resolve_resume(config: TrainConfig):
    """The checkpoint to resume from (``None``, a path, or the newest in ``output_dir`` for ``latest``)."""
    resume = config.resume_from_ckpt
    if resume is None or str(resume).lower() == "none":
        return None
    if str(resume).lower() == "latest":
        last = get_last_checkpoint(config.output_dir) if os.path.isdir(config.output_dir) else None
        if last is None:
            raise UserError(f"--resume_from_ckpt latest: no checkpoint-N folder in --output_dir {config.output_dir}")
        return last
    if not os.path.isdir(resume) or not os.path.exists(os.path.join(resume, "trainer_state.json")):
        raise UserError(f"--resume_from_ckpt {resume}: not a training checkpoint (a checkpoint-N folder with "
                        f"trainer_state.json); use None, latest or a checkpoint path")
    return resume


def _earlier_run(output_dir):
    if not os.path.isdir(output_dir):
        return []
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(output_dir, m))]
    return found + sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "checkpoint-*")))


def check_config(config: TrainConfig):
    """Validate every option before any long work; returns ``(model_config, generation_config, resume)``."""
    for flag, choices in (("train_strategy", STRATEGIES), ("mixed_precision", PRECISIONS),
                          ("task", ("transcribe", "translate"))):
        if getattr(config, flag) not in choices:
            raise UserError(f"--{flag} {getattr(config, flag)}: choose one of {', '.join(choices)}")
    for flag in ("train_batchsize", "eval_batchsize", "gradient_accumulation_steps", "num_steps", "sampling_rate",
                 "num_proc", "logging_steps", "generation_max_new_tokens"):
        if getattr(config, flag) < 1:
            raise UserError(f"--{flag} {getattr(config, flag)}: must be at least 1")
    if config.num_epochs <= 0:
        raise UserError(f"--num_epochs {config.num_epochs}: must be positive")
    for flag in ("eval_steps", "save_steps", "max_train_samples", "max_eval_samples", "save_total_limit"):
        if getattr(config, flag) is not None and getattr(config, flag) < 1:
            raise UserError(f"--{flag} {getattr(config, flag)}: must be at least 1")
    if config.warmup < 0 or config.num_workers < 0:
        raise UserError("--warmup and --num_workers must not be negative")
    if config.learning_rate is not None and config.learning_rate <= 0:
        raise UserError(f"--learning_rate {config.learning_rate}: must be positive")
    eval_steps, save_steps = _intervals(config)
    if config.train_strategy == "steps" and save_steps % eval_steps:
        raise UserError(f"--save_steps {save_steps} must be a multiple of --eval_steps {eval_steps} "
                        f"(the best checkpoint is chosen by eval WER)")
    if config.lora and config.freeze_encoder:
        raise UserError("--lora and --freeze_encoder together: LoRA already freezes the base model; pick one")
    if config.deepspeed and not os.path.isfile(config.deepspeed):
        raise UserError(f"--deepspeed {config.deepspeed}: no such config file")
    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise UserError("--deepspeed needs the deepspeed package: pip install deepspeed")
    if config.fsdp_config and not os.path.isfile(config.fsdp_config):
        raise UserError(f"--fsdp_config {config.fsdp_config}: no such config file")
    _check_streaming(config)
    if config.push_to_hub:
        hub.check_push(config.hub_model_id)
    if not config.train_datasets:
        raise UserError("--train_datasets: give at least one dataset")
    if not config.eval_datasets:
        raise UserError("--eval_datasets: give at least one dataset (the best checkpoint is chosen by eval WER)")
    _specs(config.train_datasets, config.train_dataset_configs, config.train_dataset_splits,
           config.train_dataset_text_columns, config.audio_column, "train")
    _specs(config.eval_datasets, config.eval_dataset_configs, config.eval_dataset_splits,
           config.eval_dataset_text_columns, config.audio_column, "eval")
    if config.custom:
        for name in (*config.train_datasets, *config.eval_datasets):
            if not os.path.isdir(name):
                raise UserError(f"{name}: no such dataset folder (make one with custom_data/data_prep.py)")
    model_config, generation = _load_model_config(config.model_name)
    modeling.resolve_language(config.language, generation, config.task)
    resume = resolve_resume(config)
    earlier = _earlier_run(config.output_dir)
    if resume is None and earlier and not config.overwrite_output_dir:
        raise UserError(f"--output_dir {config.output_dir} holds an earlier run ({', '.join(earlier[:4])}); pass "
                        f"--resume_from_ckpt latest to continue it, or --overwrite_output_dir True to replace it")
    return model_config, generation, resume


def _check_streaming(config):
    if not config.streaming:
        if config.interleave_probabilities:
            raise UserError("--interleave_probabilities needs --streaming True")
        return
    if config.custom:
        raise UserError("--streaming: use train/fine-tune_on_hf_dataset.py (it also reads data_prep folders)")
    if config.train_strategy != "steps":
        raise UserError(f"--streaming True needs --train_strategy steps (a stream has no epoch length), "
                        f"not {config.train_strategy}")
    if config.shuffle_buffer_size < 1:
        raise UserError(f"--shuffle_buffer_size {config.shuffle_buffer_size}: must be at least 1")
    probabilities = config.interleave_probabilities
    if probabilities is not None:
        if len(probabilities) != len(config.train_datasets):
            raise UserError(f"--interleave_probabilities: {len(probabilities)} value(s) for "
                            f"{len(config.train_datasets)} --train_datasets; give one per dataset")
        if any(p < 0 for p in probabilities) or not sum(probabilities) > 0:
            raise UserError("--interleave_probabilities: values must be non-negative with a positive sum")


def _intervals(config):
    """(eval_steps, save_steps): by default about five evaluations per run, at most every 1000 steps."""
    eval_steps = config.eval_steps or max(1, min(1000, math.ceil(config.num_steps / 5)))
    return eval_steps, config.save_steps or eval_steps


def _precision(choice):
    """The (name, bf16, fp16) to train with: bf16 on GPUs that support it, else fp16; fp32 on CPU."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if choice == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed_precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return choice, choice == "bf16", choice == "fp16"


# ---------------------------------------------------------------------------------------------
# Trainer pieces
# ---------------------------------------------------------------------------------------------
class _WhisperTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that decodes with explicit language/task and counts the time spent evaluating
    and writing/reloading checkpoints (so throughput figures can leave them out)."""

    def __init__(self, *args, decode_kwargs=None, streaming=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.decode_kwargs = decode_kwargs or {}
        self.streaming = streaming
        self.eval_seconds = 0.0
        self.checkpoint_seconds = 0.0

    @contextlib.contextmanager
    def _timed(self, attribute):
        """Add the seconds spent in the ``with`` block to ``self.<attribute>``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, attribute, getattr(self, attribute) + time.perf_counter() - start)

    def _save_checkpoint(self, *args, **kwargs):
        with self._timed("checkpoint_seconds"):
            return super()._save_checkpoint(*args, **kwargs)

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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        with self._timed("eval_seconds"):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **{**self.decode_kwargs, **gen_kwargs})


class _StreamLoader(torch.utils.data.DataLoader):
    """A DataLoader the Trainer can tell the epoch: each pass over the stream is shuffled anew
    (``IterableDataset.set_epoch`` reseeds the shuffle buffer and shard order), also after resuming."""

    def set_epoch(self, epoch):
        self.dataset.set_epoch(epoch)


class SelfContainedCheckpoints(TrainerCallback):
    """Save the processor and generation config into every ``checkpoint-N`` (rank 0 only)."""

    def __init__(self, processor, generation_config):
        self.processor = processor
        self.generation_config = generation_config

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self.processor.save_pretrained(folder)
                self.generation_config.save_pretrained(folder)
        return control


def _metrics_function(tokenizer, normalizer):
    def compute_metrics(prediction):
        predictions = prediction.predictions
        labels = prediction.label_ids.copy()
        labels[labels == -100] = tokenizer.pad_token_id
        predictions[predictions == -100] = tokenizer.pad_token_id
        hyps = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        refs = tokenizer.batch_decode(labels, skip_special_tokens=True)
        scores = scoring.score(refs, hyps, normalizer)
        return {"wer": scores["wer"], "cer": scores["cer"]}

    return compute_metrics


def _build_model(config, language):
    model = WhisperForConditionalGeneration.from_pretrained(config.model_name, attn_implementation="sdpa")
    modeling.set_language_and_task(model, language, config.task)
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


def _training_arguments(config, learning_rate, precision):
    eval_steps, save_steps = _intervals(config)
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
        save_total_limit=config.save_total_limit, load_best_model_at_end=True, metric_for_best_model="wer",
        greater_is_better=False, logging_steps=config.logging_steps, logging_first_step=True,
        predict_with_generate=True, gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=precision[1], fp16=precision[2], seed=config.seed, data_seed=config.seed,
        # bf16 on a CPU is torch.autocast on the CPU, which the Trainer only allows with use_cpu
        use_cpu=precision[1] and not torch.cuda.is_available(),
        dataloader_num_workers=config.num_workers, remove_unused_columns=False, label_names=["labels"],
        report_to=[] if config.report_to in ("", "none") else [config.report_to],
        deepspeed=config.deepspeed, fsdp=config.fsdp or "", fsdp_config=config.fsdp_config,
        ddp_find_unused_parameters=False,
        save_safetensors=True, disable_tqdm=False, dataloader_pin_memory=torch.cuda.is_available())


def _cache_path(config, role, specs, max_samples, processor_name):
    """A feature-cache file named by everything that changes its content (shared by all ranks)."""
    key = json.dumps([role, [dataclasses.asdict(s) for s in specs], config.sampling_rate, max_samples, config.seed,
                      config.lowercase, config.remove_punctuation, processor_name, config.language, config.task,
                      [os.path.abspath(s.name) if os.path.exists(s.name) else s.name for s in specs]], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(config.output_dir, ".feature_cache", f"{role}-{digest}.arrow")


def _prepare_split(config, role, specs, max_samples, processor):
    from datasets import concatenate_datasets

    parts = load_datasets(specs, custom=config.custom, num_proc=config.num_proc)
    dataset = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    dataset = dataset.shuffle(seed=config.seed)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    label = f"{role} data ({', '.join(s.label for s in specs)})"
    cache = _cache_path(config, role, specs, max_samples, config.model_name)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    dataset = featurize(dataset, processor, config.sampling_rate, config.num_proc, config.lowercase,
                        config.remove_punctuation, cache_file_name=cache, desc=f"featurising {role} data")
    dataset, counts = drop_too_long(dataset, label)
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


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
def plot_history(log_history, path):
    """Write a PNG of training loss and eval WER against step (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["step"], e["eval_wer"]) for e in log_history if "eval_wer" in e]
    fig, loss_axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        loss_axis.plot(*zip(*train), color="tab:blue", label="training loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    wer_axis = loss_axis.twinx()
    if evals:
        wer_axis.plot(*zip(*evals), color="tab:red", marker="o", label="eval WER")
    wer_axis.set_ylabel("eval WER (normalised)", color="tab:red")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _save_final(trainer, model, processor, config, generation_config):
    """Best model (already loaded by the Trainer) + processor + generation config into ``output_dir``."""
    out = config.output_dir
    if config.lora:
        if trainer.is_world_process_zero():
            model.save_pretrained(os.path.join(out, ADAPTER_DIR))
            processor.save_pretrained(os.path.join(out, ADAPTER_DIR))
            generation_config.save_pretrained(os.path.join(out, ADAPTER_DIR))
            merged = model.merge_and_unload()
            merged.generation_config = generation_config
            merged.save_pretrained(out)
    else:
        trainer.save_model(out)
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)
        generation_config.save_pretrained(out)


def train(config: TrainConfig) -> dict:
    """Fine-tune ``config.model_name`` and return a summary dict (also written to ``training_summary.json``)."""
    model_config, generation, resume = check_config(config)
    english_only = modeling.is_english_only(generation)
    language = modeling.resolve_language(config.language, generation, config.task)
    learning_rate = config.learning_rate or modeling.default_learning_rate(model_config, config.model_name)
    precision = _precision(config.mixed_precision)
    args = _training_arguments(config, learning_rate, precision)
    logger.info("precision: %s (%s); learning rate %.3g%s", precision[0],
                "GPU" if torch.cuda.is_available() else "CPU",
                learning_rate, "" if config.learning_rate else " (default for this model size)")
    if resume is None and config.overwrite_output_dir and args.process_index == 0:
        _clear_earlier_run(config.output_dir)

    processor = modeling.load_processor(config.model_name)
    _configure_tokenizer(processor.tokenizer, language, config.task, english_only)
    train_specs = _specs(config.train_datasets, config.train_dataset_configs, config.train_dataset_splits,
                         config.train_dataset_text_columns, config.audio_column, "train", config.custom)
    eval_specs = _specs(config.eval_datasets, config.eval_dataset_configs, config.eval_dataset_splits,
                        config.eval_dataset_text_columns, config.audio_column, "eval", config.custom)
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
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(model_config.decoder_start_token_id),
        compute_metrics=_metrics_function(processor.tokenizer, normalizer),
        callbacks=[SelfContainedCheckpoints(processor, generation_config)], decode_kwargs=decode_kwargs,
        streaming=config.streaming)

    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - start
    _save_final(trainer, trainer.model, processor, config, generation_config)

    per_dataset = _evaluate_each(trainer, config, eval_specs, processor, args) if len(eval_specs) > 1 else []
    state = trainer.state
    world = args.world_size
    samples = (state.global_step - _start_step(resume)) * config.train_batchsize * config.gradient_accumulation_steps * world
    train_only = max(elapsed - trainer.eval_seconds, 1e-9)
    best_eval = min((e for e in state.log_history if "eval_wer" in e), key=lambda e: e["eval_wer"], default={})
    summary = {
        "output_dir": os.path.abspath(config.output_dir), "global_step": state.global_step,
        "epochs": state.epoch, "train_samples": None if config.streaming else len(train_set),
        "eval_samples": len(eval_set), "train_hours": None if config.streaming else _hours(train_set),
        "eval_hours": _hours(eval_set),
        "filtering": {"train": train_counts, "eval": eval_counts},
        "wall_seconds": round(elapsed, 2), "eval_seconds": round(trainer.eval_seconds, 2),
        "checkpoint_seconds": round(trainer.checkpoint_seconds, 2),
        "samples_trained": samples, "samples_per_second": round(samples / elapsed, 3),
        "train_samples_per_second_excluding_eval": round(samples / train_only, 3),
        "train_loss": result.training_loss, "best_wer": best_eval.get("eval_wer"),
        "best_cer": best_eval.get("eval_cer"), "best_step": best_eval.get("step"),
        "best_checkpoint": state.best_model_checkpoint, "normalizer": normalizer, "language": language,
        "precision": precision[0], "learning_rate": learning_rate, "world_size": world,
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
        "resumed_from": resume, "eval_per_dataset": per_dataset, "config": dataclasses.asdict(config),
        "is_main_process": trainer.is_world_process_zero(),
    }
    if trainer.is_world_process_zero():
        plot_history(state.log_history, os.path.join(config.output_dir, PLOT_FILE))
        logger.info("wrote the training curve %s and %s", PLOT_FILE, SUMMARY_FILE)
        with open(os.path.join(config.output_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2, ensure_ascii=False, default=str)
            f.write("\n")
        trainer.save_state()
        write_model_card(config.output_dir, summary, config.hub_model_id)
        if config.push_to_hub:
            summary["hub_url"] = hub.push_folder(config.output_dir, config.hub_model_id, config.hub_private_repo)
    return summary


def _evaluate_each(trainer, config, specs, processor, args):
    """WER/CER of the final (best) model on each evaluation dataset on its own, for the model card."""
    rows = []
    for spec in specs:
        with args.main_process_first(desc="dataset preparation"):
            dataset, _ = _prepare_split(config, "eval", [spec], config.max_eval_samples, processor)
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="final_eval")
        rows.append({"dataset": spec.label, "samples": len(dataset), "wer": metrics["final_eval_wer"],
                     "cer": metrics["final_eval_cer"]})
        logger.info("final model on %s: WER %.4f, CER %.4f", spec.label, rows[-1]["wer"], rows[-1]["cer"])
    return rows


def _hours(dataset):
    return round(float(sum(dataset.with_format(None)[LENGTH_COLUMN])) / 3600, 4)


def _start_step(resume):
    if not resume:
        return 0
    with open(os.path.join(resume, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f).get("global_step", 0)


def format_summary(summary):
    """The short end-of-run summary the scripts print."""
    lines = [f"steps: {summary['global_step']} ({summary['epochs']:.2f} epochs, {summary['world_size']} process(es), "
             f"{summary['precision']})",
             f"time: {summary['wall_seconds']:.1f} s (evaluation {summary['eval_seconds']:.1f} s)",
             f"samples/s: {summary['samples_per_second']:.3f} overall, "
             f"{summary['train_samples_per_second_excluding_eval']:.3f} excluding evaluation"]
    if summary["best_wer"] is not None:
        lines.append(f"best eval WER: {summary['best_wer']:.4f} (CER {summary['best_cer']:.4f}, "
                     f"{summary['normalizer']} normaliser) at step {summary['best_step']} "
                     f"({summary['best_checkpoint']})")
    lines.append(f"model, processor and generation config: {summary['output_dir']}")
    return "\n".join(lines)
