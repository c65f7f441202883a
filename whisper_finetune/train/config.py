"""The options of both training scripts, declared once, and the checks of their values alone.

:class:`TrainConfig` is the single declaration of each training flag (type, default, help); the
scripts' parsers and the documentation's flag tables are generated from it (:mod:`whisper_finetune.options`).
:func:`check_values` refuses values and combinations no run could use; :mod:`.checks` checks the rest
(datasets, model, output folder) before any long work. This module imports neither torch, transformers nor
datasets, so a script's ``-h``, a mistyped flag and a bad value answer at once.
"""
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..audio import AudioContext
from ..data.bad_audio import max_bad_examples_option
from ..data.schema import check_dataset_folder
from ..errors import OptionError, UserError
from ..model.sources import check_trainable_model
from ..options import option
from ..text import METRICS

STRATEGIES = ("steps", "epoch")
AUTO = "auto"  # --merge_ratio auto: the ratio chosen by evaluations at the end of the run
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TASKS = ("transcribe", "translate")
# What each kind of step of --dynamic_audio_context trains. "encoder": short-context steps the encoder,
# 30 s steps everything; "split": short steps the encoder, 30 s steps the decoder (no encoder backward at
# 30 s: 1.8x the samples/s of "encoder"); "all": everything at every step. Measured figures:
# docs/studies/dynamic-context.md.
SHORT_CONTEXT_UPDATES = ("encoder", "split", "all")
# Flags only the HF script has (it reads Hub datasets by config/split/column, and streams).
HF_ONLY = ("train_dataset_configs", "train_dataset_splits", "train_dataset_text_columns", "eval_dataset_configs",
           "eval_dataset_splits", "eval_dataset_text_columns", "audio_column", "streaming",
           "interleave_probabilities", "shuffle_buffer_size", "retain_dataset_configs", "retain_dataset_splits",
           "retain_dataset_text_columns", "replay_dataset_configs", "replay_dataset_splits",
           "replay_dataset_text_columns")
# What --metric_for_best_model may select on: the eval set's primary metric (wer stands for it, so with
# --primary_metric cer it is CER), the retain sets' WER, or eval + the retain WER's increase over step 0.
BEST_MODEL_METRICS = ("wer", "retain_wer", "combined")
# Which training rows --distill_weight holds to the base model: every row, or the replayed rows
# (--replay_datasets, --replay_audio) alone (the training rows then learn freely; the replayed speech is
# kept as the base model heard it).
DISTILL_ROWS = ("all", "replay")
DATASETS_HELP = "(HF script: Hub ids or local dataset folders; custom script: data_prep output folders)"


@dataclass(frozen=True)
class TrainConfig:
    """Options of :func:`whisper_finetune.train.run.train`: one field per flag of the training scripts."""

    model_name: str = option(help="Whisper model to fine-tune: a Hub id or a local folder", group="model")
    train_datasets: Tuple[str, ...] = option(help=f"training datasets {DATASETS_HELP}; concatenated and shuffled",
                                             group="data")
    eval_datasets: Tuple[str, ...] = option(help=f"evaluation datasets {DATASETS_HELP}; concatenated; the best "
                                            "checkpoint is chosen on them", group="data")
    output_dir: str = option(help="folder for checkpoints, logs, the plot, the summary and the final model")
    custom: bool = option(True, "data_prep folders (custom script) or HF datasets (HF script)", cli=False)
    train_dataset_configs: Optional[Tuple[str, ...]] = option(
        None, "one config per --train_datasets entry (e.g. hi); omit when the datasets have none", group="data")
    train_dataset_splits: Optional[Tuple[str, ...]] = option(
        None, "one split per --train_datasets entry", group="data", default_text="train")
    train_dataset_text_columns: Optional[Tuple[str, ...]] = option(
        None, "one transcription column per --train_datasets entry", group="data",
        default_text="the first of sentence, text, transcription, ... that exists")
    eval_dataset_configs: Optional[Tuple[str, ...]] = option(
        None, "one config per --eval_datasets entry", group="data")
    eval_dataset_splits: Optional[Tuple[str, ...]] = option(
        None, "one split per --eval_datasets entry", group="data", default_text="test")
    eval_dataset_text_columns: Optional[Tuple[str, ...]] = option(
        None, "one transcription column per --eval_datasets entry", group="data",
        default_text="the first of sentence, text, transcription, ... that exists")
    retain_datasets: Optional[Tuple[str, ...]] = option(
        None, f"retain sets {DATASETS_HELP}: speech the model handled before training, concatenated; decoded and "
        "scored (eval_retain_wer, eval_retain_cer) before training (step 0) and at every evaluation, so the run "
        "shows what it lost", group="retain", default_text="none")
    retain_dataset_configs: Optional[Tuple[str, ...]] = option(
        None, "one config per --retain_datasets entry", group="retain")
    retain_dataset_splits: Optional[Tuple[str, ...]] = option(
        None, "one split per --retain_datasets entry", group="retain", default_text="test")
    retain_dataset_text_columns: Optional[Tuple[str, ...]] = option(
        None, "one transcription column per --retain_datasets entry", group="retain",
        default_text="the first of sentence, text, transcription, ... that exists")
    retain_language: Optional[str] = option(
        None, "language the retain sets are decoded in, a name or code (e.g. en); English-only (.en) models take "
        "none", group="retain",
        default_text="the base model's own behaviour: its saved language, else each clip's language detected")
    metric_for_best_model: str = option(
        "wer", "what chooses the checkpoint kept as the final model: wer: the eval sets' primary metric "
        "(--primary_metric); retain_wer: the retain sets' WER; combined: eval primary metric + the increase of the "
        "retain WER over step 0 (eval_combined)", choices=BEST_MODEL_METRICS, group="retain")
    early_stopping_patience: Optional[int] = option(
        None, "stop after N evaluations in a row without a better --metric_for_best_model", group="retain",
        default_text="off")
    distill_weight: float = option(
        0.0, "hold the fine-tune to the base model: add WEIGHT x the KL divergence from the base model's next-token "
        "distributions to the fine-tune's (temperature 2, per label token, on each training batch; learning "
        "without forgetting) to the loss. Costs one forward pass of the base model per step", group="retain",
        default_text="0 (off)")
    distill_rows: str = option(
        "all", "with --distill_weight: the training rows the term applies to: all, or replay (the replayed "
        "rows alone, of --replay_datasets and --replay_audio: the base model runs on those rows only, and the "
        "training data is learned without the pull back)", choices=DISTILL_ROWS, group="retain")
    ewc_weight: float = option(
        0.0, "hold the weights the replayed speech needs (elastic weight consolidation): before training, the "
        "base model's diagonal Fisher information on the replay clips (--replay_datasets, --replay_audio; up to "
        "256, one forward and backward pass each) weighs each trained weight, and each step adds WEIGHT / 2 x "
        "sum F (weight - base weight)^2 to the loss: to second order, WEIGHT x the KL divergence per label token "
        "from the base model on every replay clip. Holds a copy of the trained weights and their Fisher",
        group="retain", default_text="0 (off)")
    merge_ratio: str = option(
        "1", "the final model is base + RATIO x (fine-tune - base) (WiSE-FT weight interpolation): below 1 it keeps "
        "more of what the base model knew, at some cost on the eval sets; auto: the lowest of 0.2, 0.3 ... 0.9 whose "
        "eval primary metric is within --merge_tolerance of the fine-tune's (one evaluation per ratio tried)",
        group="retain", default_text="1 (the fine-tune itself)")
    merge_tolerance: float = option(0.01, "with --merge_ratio auto: how much higher (absolute) the eval primary "
                                    "metric may be than the fine-tune's", group="retain")
    merge_encoder_ratio: Optional[float] = option(
        None, "the encoder's own interpolation ratio (above 0, at most 1); --merge_ratio is then the decoder's "
        "(auto: searched with the encoder at this one). Teaching a new language: the decoder needs most of its "
        "fine-tune, the encoder less, and the encoder's move is what costs the base model's languages most. With "
        "--dynamic_audio_context: 0.5 (--merge_ratio left at 1) stops its repetition loops on real speech",
        group="retain", default_text="--merge_ratio's")
    audio_column: str = option("audio", "name of the audio column in the HF datasets", group="data")
    language: Optional[str] = option(None, "language of the speech, a name (Hindi) or code (hi); written into the "
                                     "saved generation config. English-only (.en) models take none (or English)",
                                     group="model")
    task: str = option("transcribe", "task token for multilingual models", choices=TASKS, group="model")
    primary_metric: Optional[str] = option(None, "the metric that picks the best checkpoint and is reported first",
                                           choices=METRICS, group="model",
                                           default_text="cer for zh, ja, th, lo, my, yue, km, bo (no spaces "
                                                        "between words), wer otherwise")
    dynamic_audio_context: bool = option(False, "train on each batch's own length instead of 30 s of padding: the "
                                         "encoder runs on the longest clip rounded up to a bucket, batches are "
                                         "grouped by length (much faster on short clips)", group="model")
    audio_context: AudioContext = AudioContext()
    full_context_ratio: float = option(0.25, "with --dynamic_audio_context: the share of optimizer steps kept at "
                                       "30 s, so the model still works in tools that pad to 30 s", group="model")
    short_context_updates: str = option("split", "with --dynamic_audio_context: what each kind of step updates; "
                                        "encoder: short-context steps the encoder, 30 s steps everything (the "
                                        "decoder learns only at 30 s); split: short steps the encoder, 30 s steps "
                                        "the decoder (fastest: no encoder backward at 30 s); all: everything at "
                                        "every step (see the documentation's page on short clips)",
                                        choices=SHORT_CONTEXT_UPDATES, group="model")
    timestamps: bool = option(False, "train Whisper's timestamp tokens too, so the model keeps predicting segment "
                              "times (subtitles, long-form transcription): rows cut from one recording (data_prep "
                              "of a Kaldi segments file, or recording_id/start/end columns) are packed into 30 s "
                              "windows labelled <|start|> text <|end|> per segment; other rows become one-segment "
                              "windows", group="model")
    timestamp_ratio: float = option(0.5, "with --timestamps: the share of windows labelled with timestamps; the "
                                    "rest train <|notimestamps|>, so both decoding modes keep working",
                                    group="model")
    replay_datasets: Optional[Tuple[str, ...]] = option(
        None, f"replay sets {DATASETS_HELP}: speech the model should keep (e.g. English while it learns Hindi), "
        "mixed into the training batches; each example is labelled with its own language token",
        group="replay", default_text="none")
    replay_dataset_configs: Optional[Tuple[str, ...]] = option(
        None, "one config per --replay_datasets entry", group="replay")
    replay_dataset_splits: Optional[Tuple[str, ...]] = option(
        None, "one split per --replay_datasets entry", group="replay", default_text="train")
    replay_dataset_text_columns: Optional[Tuple[str, ...]] = option(
        None, "one transcription column per --replay_datasets entry", group="replay",
        default_text="the first of sentence, text, transcription, ... that exists")
    replay_audio: Optional[Tuple[str, ...]] = option(
        None, "speech the model should keep that has no transcripts: folders of audio files (searched recursively; "
        "files over 30 s cut into equal parts) or data_prep folders (their text ignored). The base model labels "
        "each clip once (beam 5; the language of --replay_language, else each clip's detected one), cached in "
        "OUTPUT_DIR/replay_audio/labels.jsonl for later runs, and the clips are replayed like --replay_datasets "
        "(with them, or alone); use --distill_rows replay to hold the fine-tune to the base model on them",
        group="replay", default_text="none")
    replay_language: Optional[str] = option(
        None, "language of the replay examples that have no language column of their own, a name or code (e.g. "
        "en); with --replay_audio, the language its clips are labelled in; English-only (.en) models take none",
        group="replay", default_text="each example's language column (required without one); --replay_audio: "
        "each clip's detected language")
    replay_ratio: float = option(0.2, "with --replay_datasets or --replay_audio: the share of training examples drawn "
                                 "from the replay sets (a replay set too small for it is repeated)", group="replay")
    spec_augment: bool = option(False, "SpecAugment while training (transformers' own for Whisper): zero random "
                                "stretches of time frames and mel channels of the log-mel input; never applied "
                                "in evaluation, and off in the saved config.json", group="augmentation")
    mask_time_prob: float = option(0.05, "with --spec_augment: the share of time frames masked", group="augmentation")
    mask_time_length: int = option(10, "with --spec_augment: frames per time mask (10 ms each)",
                                   group="augmentation")
    mask_feature_prob: float = option(0.0, "with --spec_augment: the share of mel channels masked",
                                      group="augmentation")
    mask_feature_length: int = option(10, "with --spec_augment: mel channels per channel mask", group="augmentation")
    augment: bool = option(False, "augment the training audio, drawn anew for each example in each epoch: speed "
                           "0.9/1.0/1.1, additive noise at a random SNR, gain -6..+6 dB (audiomentations); the "
                           "log-mel features are then computed as batches are made instead of once",
                           group="augmentation")
    noise_dir: Optional[str] = option(None, "with --augment: a folder of noise recordings (wav, flac, mp3, ogg...; "
                                      "searched recursively) mixed into the training audio", group="augmentation",
                                      default_text="coloured noise (white to brown or violet)")
    augment_snr_db: Tuple[float, ...] = option((10.0, 30.0), "with --augment: the range (min max, dB) the "
                                               "signal-to-noise ratio of the added noise is drawn from",
                                               group="augmentation")
    augment_pitch_semitones: float = option(0.0, "with --augment: shift the pitch of half the clips by up to this "
                                            "many semitones up or down (drawn uniformly; tempo kept; audiomentations' "
                                            "PitchShift with signalsmith-stretch), on top of the speed perturbation: "
                                            "other voices than the training set's; 0: off", group="augmentation")
    sampling_rate: int = option(16000, "resample all audio to this rate (Hz)", group="data")
    num_proc: int = option(1, "processes computing log-mel features (once, before training)", group="data")
    train_strategy: str = option("steps", "train for --num_steps or --num_epochs", choices=STRATEGIES,
                                 group="schedule")
    num_steps: int = option(1000, "optimizer steps with --train_strategy steps", group="schedule")
    num_epochs: float = option(1.0, "epochs with --train_strategy epoch", group="schedule")
    learning_rate: Optional[float] = option(None, "peak learning rate", group="schedule",
                                            default_text="pre-training maximum / 40 for the model's size, e.g. "
                                                         "tiny 3.75e-5, base 2.5e-5")
    encoder_lr_ratio: float = option(1.0, "the encoder's learning rate as a share of --learning_rate (e.g. 0.1; "
                                     "the decoder keeps the whole rate): the decoder has a new language's writing "
                                     "to learn, and the encoder's move is what costs the base model's languages "
                                     "most; 1: one rate for both", group="schedule")
    layer_lr_decay: float = option(1.0, "layer-wise learning rates: in the encoder and in the decoder, each layer "
                                   "trains at this share of the rate of the layer above it (the top layer at its "
                                   "half's rate, the embeddings below the bottom layer at the bottom layer's x this "
                                   "share), so the lower layers, which hold what every language shares, move least "
                                   "(e.g. 0.8 on the 6 layers of base, 0.965 on the 32 of large: the bottom layer at "
                                   "a third of the top's rate); 1: one rate for every layer", group="schedule")
    warmup: int = option(0, "linear warm-up steps, then linear decay to zero", group="schedule")
    lr_scheduler_type: str = option("linear", "transformers scheduler name (linear, cosine, constant...)",
                                    group="schedule")
    weight_decay: float = option(0.0, "AdamW weight decay", group="schedule")
    max_grad_norm: float = option(1.0, "gradient clipping norm", group="schedule")
    train_batchsize: int = option(16, "training batch size per process", group="schedule")
    eval_batchsize: int = option(8, "evaluation batch size per process", group="schedule")
    gradient_accumulation_steps: int = option(1, "batches accumulated per optimizer step", group="schedule")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory, "
                                          "about 30% slower)", group="model")
    freeze_encoder: bool = option(False, "train the decoder only", group="model")
    freeze_encoder_layers: int = option(0, "freeze the encoder's convolutions, positions and its first N layers "
                                        "(counted from the input) and train the layers above them and the decoder: "
                                        "the low layers keep the base model's acoustics for every speaker and "
                                        "language, and their backward pass is not run (whisper-base has 6 layers, "
                                        "small 12, large 32); 0: train them all", group="model")
    freeze_decoder: bool = option(False, "train the encoder only (the decoder, its embeddings and output layer "
                                  "stay the base model's: its language model is kept)", group="model")
    mixed_precision: str = option("auto", "auto: bf16 on GPUs that support it, else fp16; fp32 on CPU. bf16 also "
                                  "runs on a CPU (autocast), and is refused on one without bfloat16 instructions, "
                                  "where it runs many times slower than fp32; fp16 needs a GPU. Overrides "
                                  "ACCELERATE_MIXED_PRECISION (accelerate launch's)", choices=PRECISIONS, group="model")
    eval_steps: Optional[int] = option(None, "evaluate (WER/CER with generation) every N steps with "
                                       "--train_strategy steps; epoch strategy: every epoch", group="schedule",
                                       default_text="num_steps/5, at most 1000")
    save_steps: Optional[int] = option(None, "save a checkpoint every N steps (a multiple of --eval_steps)",
                                       group="schedule", default_text="--eval_steps")
    save_total_limit: Optional[int] = option(None, "keep at most N checkpoints (the best one is always kept)",
                                             group="schedule")
    logging_steps: int = option(10, "log training loss every N steps (TensorBoard, plot)", group="schedule")
    generation_max_new_tokens: int = option(128, "token limit when decoding for evaluation", group="schedule")
    max_train_samples: Optional[int] = option(None, "use only the first N (shuffled) training utterances",
                                              group="data", default_text="all")
    max_eval_samples: Optional[int] = option(None, "use only the first N (shuffled) evaluation utterances (and "
                                             "as many of the retain sets')",
                                             group="data", default_text="all")
    seed: int = option(42, "seed for shuffling, initialisation and data order", group="schedule")
    lowercase: bool = option(False, "lower-case training and evaluation transcripts", group="data")
    remove_punctuation: bool = option(False, "remove punctuation from the transcripts", group="data")
    lora: bool = option(False, "train LoRA adapters (peft) on the attention q/k/v/out projections instead of all "
                        "weights", group="model")
    lora_r: int = option(32, "LoRA rank", group="model")
    lora_alpha: int = option(64, "LoRA alpha (scaling = alpha / r)", group="model")
    lora_dropout: float = option(0.05, "dropout on the LoRA path", group="model")
    resume_from_ckpt: Optional[str] = option(None, "None: start fresh; a checkpoint-N folder: resume it exactly; "
                                             "latest: the newest complete checkpoint in --output_dir (a fresh "
                                             "start when there is none)")
    overwrite_output_dir: bool = option(False, "replace an earlier run in --output_dir")
    deepspeed: Optional[str] = option(None, "DeepSpeed config file, passed to the Trainer (needs pip install "
                                      "deepspeed)", group="scale")
    fsdp: str = option("", "FSDP options passed to the Trainer, e.g. 'full_shard auto_wrap'", group="scale")
    fsdp_config: Optional[str] = option(None, "FSDP config JSON passed to the Trainer (e.g. configs/fsdp_config.json)",
                                        group="scale")
    num_workers: int = option(0, "data-loader worker processes", group="data")
    max_bad_examples: int = max_bad_examples_option()
    report_to: str = option("tensorboard", "Trainer logging integration (tensorboard, none...)")
    streaming: bool = option(False, "read the training datasets as streams (IterableDataset: never downloaded "
                             "whole, featurised on the fly); needs --train_strategy steps", group="scale")
    interleave_probabilities: Optional[Tuple[float, ...]] = option(
        None, "with --streaming: one sampling weight per --train_datasets entry", group="scale",
        default_text="proportional to size when known, else equal")
    shuffle_buffer_size: int = option(1000, "with --streaming: examples held in the shuffle buffer", group="scale")
    push_to_hub: bool = option(False, "after training, upload the final model, processor, generation config and "
                               "model card (README.md) to --hub_model_id (needs a Hugging Face login)", group="scale")
    hub_model_id: Optional[str] = option(None, "Hub repository for --push_to_hub, e.g. your-name/whisper-small-hi",
                                         group="scale")
    hub_private_repo: bool = option(False, "create the Hub repository as private", group="scale")


def intervals(config: TrainConfig):
    """(eval_steps, save_steps): by default about five evaluations per run, at most every 1000 steps."""
    eval_steps = config.eval_steps or max(1, min(1000, math.ceil(config.num_steps / 5)))
    return eval_steps, config.save_steps or eval_steps


def requested_ratio(value) -> Optional[float]:
    """--merge_ratio as a number, or None for auto."""
    return None if value == AUTO else float(value)


def merges(value, encoder_ratio) -> bool:
    """Whether the final model is interpolated with the base model (a ratio below 1 anywhere)."""
    return requested_ratio(value) != 1 or encoder_ratio not in (None, 1)


def check_values(config: TrainConfig):
    """Refuse, with one line, a value no run could use, a combination of flags that contradicts itself, or a model
    or dataset folder that is not there: every check that needs neither the libraries nor the model's or the data's
    contents (those are checked by :func:`.checks.check_config`, which runs this first). Cheap: the scripts run it
    before importing torch."""
    _check_choices_and_ranges(config)
    _check_streaming(config)
    _check_paths(config)


def _check_paths(config: TrainConfig):
    """The model and the data_prep folders are there (a Hub id is taken as given: only loading can tell)."""
    check_trainable_model(config.model_name, "model_name")
    if config.custom:
        for role in ("train", "eval", "retain", "replay"):
            for name in getattr(config, f"{role}_datasets") or ():
                check_dataset_folder(name)


def _check_choices_and_ranges(config: TrainConfig):
    for name, choices in (("train_strategy", STRATEGIES), ("mixed_precision", PRECISIONS), ("task", TASKS),
                          ("primary_metric", METRICS + (None,)), ("short_context_updates", SHORT_CONTEXT_UPDATES),
                          ("metric_for_best_model", BEST_MODEL_METRICS), ("distill_rows", DISTILL_ROWS)):
        if getattr(config, name) not in choices:
            accepted = ", ".join(choice for choice in choices if choice is not None)
            raise OptionError(name, getattr(config, name), f"choose one of {accepted}")
    for name in ("train_batchsize", "eval_batchsize", "gradient_accumulation_steps", "num_steps", "sampling_rate",
                 "num_proc", "logging_steps", "generation_max_new_tokens"):
        if getattr(config, name) < 1:
            raise OptionError(name, getattr(config, name), "must be at least 1")
    if config.num_epochs <= 0:
        raise OptionError("num_epochs", config.num_epochs, "must be positive")
    for name in ("eval_steps", "save_steps", "max_train_samples", "max_eval_samples", "save_total_limit",
                 "early_stopping_patience"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise OptionError(name, getattr(config, name), "must be at least 1")
    for name in ("warmup", "num_workers", "max_bad_examples"):
        if getattr(config, name) < 0:
            raise OptionError(name, getattr(config, name), "must not be negative")
    if config.learning_rate is not None and config.learning_rate <= 0:
        raise OptionError("learning_rate", config.learning_rate, "must be positive")
    eval_steps, save_steps = intervals(config)
    if config.train_strategy == "steps" and save_steps % eval_steps:
        raise OptionError("save_steps", save_steps, f"must be a multiple of --eval_steps {eval_steps} (the best "
                          f"checkpoint is chosen at evaluations)")
    if not 0 <= config.timestamp_ratio <= 1:
        raise OptionError("timestamp_ratio", config.timestamp_ratio, "must be between 0 and 1")
    if config.timestamps and config.streaming:
        raise UserError("--timestamps True packs each recording's segments into windows, which a stream cannot; "
                        "use it without --streaming")
    if config.timestamps and config.dynamic_audio_context:
        raise UserError("--timestamps True with --dynamic_audio_context True: timestamp windows fill Whisper's 30 s, "
                        "so there is no padding to cut; pick one")
    if not 0 <= config.full_context_ratio <= 1:
        raise OptionError("full_context_ratio", config.full_context_ratio, "must be between 0 and 1")
    config.audio_context.check()
    if config.dynamic_audio_context and config.streaming:
        raise UserError("--dynamic_audio_context True groups batches by length, which a stream cannot; use it "
                        "without --streaming")
    if config.dynamic_audio_context and config.freeze_encoder and config.short_context_updates != "all":
        raise UserError("--freeze_encoder True with --dynamic_audio_context True leaves its short-context steps "
                        f"nothing to train (--short_context_updates {config.short_context_updates}); add "
                        "--short_context_updates all")
    if config.dynamic_audio_context and config.freeze_decoder and config.short_context_updates == "split":
        raise UserError("--freeze_decoder True with --short_context_updates split leaves its 30 s steps nothing "
                        "to train; use --short_context_updates encoder or all")
    _check_merge(config)
    if not (config.distill_weight >= 0 and math.isfinite(config.distill_weight)):
        raise OptionError("distill_weight", config.distill_weight, "must be 0 (off) or more")
    if config.distill_rows == "replay" and not (config.distill_weight and replays(config)):
        raise UserError("--distill_rows replay holds the replayed rows to the base model: it needs "
                        "--distill_weight above 0 and --replay_datasets or --replay_audio")
    if not (config.ewc_weight >= 0 and math.isfinite(config.ewc_weight)):
        raise OptionError("ewc_weight", config.ewc_weight, "must be 0 (off) or more")
    if config.ewc_weight and not replays(config):
        raise UserError(f"--ewc_weight {config.ewc_weight:g} weighs the weights by the replayed speech: it needs "
                        "--replay_datasets or --replay_audio")
    if config.ewc_weight and config.lora:
        raise UserError(f"--ewc_weight {config.ewc_weight:g} with --lora True: LoRA leaves the base weights as "
                        "they are, so there is nothing for it to hold; pick one")
    if config.lora and (config.freeze_encoder or config.freeze_decoder):
        flag = "--freeze_encoder" if config.freeze_encoder else "--freeze_decoder"
        raise UserError(f"--lora and {flag} together: LoRA already freezes the base model; pick one")
    if config.freeze_encoder_layers and (config.freeze_encoder or config.lora):
        flag = "--freeze_encoder True" if config.freeze_encoder else "--lora True"
        raise UserError(f"--freeze_encoder_layers {config.freeze_encoder_layers} with {flag}: that already "
                        "freezes every encoder layer; pick one")
    if config.freeze_encoder and config.freeze_decoder:
        raise UserError("--freeze_encoder True and --freeze_decoder True together leave nothing to train; pick one")
    _check_rates(config)
    for name in ("deepspeed", "fsdp_config"):
        if getattr(config, name) and not os.path.isfile(getattr(config, name)):
            raise OptionError(name, getattr(config, name), "no such config file")
    if config.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise OptionError("deepspeed", config.deepspeed, "needs the deepspeed package: pip install deepspeed")


def _check_rates(config: TrainConfig):
    ratio = config.encoder_lr_ratio
    if not (0 < ratio <= 1):
        raise OptionError("encoder_lr_ratio", ratio, "give a number above 0 and at most 1 (1: one rate for both)")
    decay = config.layer_lr_decay
    if not (0 < decay <= 1):
        raise OptionError("layer_lr_decay", decay, "give a number above 0 and at most 1 (1: one rate for every layer)")
    if decay != 1 and config.deepspeed:
        raise UserError(f"--layer_lr_decay {decay:g} with --deepspeed: DeepSpeed builds the optimizer from its own "
                        f"config; leave --layer_lr_decay out")
    if ratio == 1:
        return
    for flag, why in (("freeze_encoder", "the encoder is not trained"),
                      ("freeze_decoder", "the encoder is all it trains; lower --learning_rate instead"),
                      ("deepspeed", "DeepSpeed builds the optimizer from its own config")):
        if getattr(config, flag):
            raise UserError(f"--encoder_lr_ratio {ratio:g} with --{flag}: {why}; leave --encoder_lr_ratio out")


def _check_merge(config: TrainConfig):
    try:
        ratio = requested_ratio(config.merge_ratio)
    except ValueError:
        ratio = math.nan  # not a number: refused below, as an out-of-range one is
    if ratio is not None and not 0 < ratio <= 1:
        raise OptionError("merge_ratio", config.merge_ratio, "give a number above 0 and at most 1, or auto")
    encoder = config.merge_encoder_ratio
    if encoder is not None and not 0 < encoder <= 1:
        raise OptionError("merge_encoder_ratio", encoder, "give a number above 0 and at most 1")
    if not merges(config.merge_ratio, config.merge_encoder_ratio):
        return
    if encoder is not None and config.freeze_encoder:
        raise UserError(f"--merge_encoder_ratio {encoder} with --freeze_encoder True: a frozen encoder is the base "
                        "model's already; leave --merge_encoder_ratio out")
    if config.merge_tolerance < 0:
        raise OptionError("merge_tolerance", config.merge_tolerance, "must not be negative")
    for name, flag in (("lora", "--lora"), ("deepspeed", "--deepspeed"), ("fsdp", "--fsdp")):
        if getattr(config, name):
            raise UserError(f"{_merge_flags(config)} with {flag}: interpolation needs every trained "
                            "weight whole in one process; train without it"
                            + (" (or lower --lora_alpha, which scales the adapters)" if name == "lora" else ""))


def _merge_flags(config: TrainConfig):
    flags = f"--merge_ratio {config.merge_ratio}"
    encoder = config.merge_encoder_ratio
    return flags if encoder is None else f"{flags} --merge_encoder_ratio {encoder}"


def _check_streaming(config: TrainConfig):
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
        raise OptionError("shuffle_buffer_size", config.shuffle_buffer_size, "must be at least 1")
    probabilities = config.interleave_probabilities
    if probabilities is not None:
        if len(probabilities) != len(config.train_datasets):
            raise UserError(f"--interleave_probabilities: {len(probabilities)} value(s) for "
                            f"{len(config.train_datasets)} --train_datasets; give one per dataset")
        if any(p < 0 for p in probabilities) or not sum(probabilities) > 0:
            raise UserError("--interleave_probabilities: values must be non-negative with a positive sum")


def replays(config: TrainConfig):
    """True when the run mixes replay rows into training (--replay_datasets, --replay_audio or both)."""
    return bool(config.replay_datasets or config.replay_audio)
