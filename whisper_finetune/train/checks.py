"""Every check made before any long training work, and what it establishes.

:func:`check_config` validates every option of :class:`~.config.TrainConfig` (values, with
:func:`.config.check_values`; datasets, model, resume point, output folder) so that a bad run fails in seconds
with one line, not after featurising the data.
"""
import glob
import importlib.util
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import GenerationConfig, WhisperConfig

from . import checkpoints, labelling
from .. import hub
from ..model import loading
from ..data.loading import check_parallel_lists, load_custom_dataset
from ..data.schema import LANGUAGE_COLUMN, DatasetSpec
from ..errors import OptionError, UserError
from ..data.augment import MAX_PITCH_SEMITONES
from .summary import SUMMARY_FILE
from ..text import language_code
from .config import TrainConfig, check_values, replays

# --mixed_precision bf16 on a CPU is fast only where the CPU has bfloat16 instructions (AVX-512 BF16, AMX);
# elsewhere torch falls back to slow generic kernels. Measured 2026-12-07, torch 2.13.0:
# on a 2-core AVX2 EPYC a linear layer's forward and backward took 48x as long under bf16 autocast as in fp32,
# and a step of the Hindi recipe of docs/recipes/new-language.md (whisper-base, with --dynamic_audio_context)
# about 40x (254 and 244 s for its first two steps; 6.4 s a step over steps 2-10 in fp32); on an EPYC with
# AVX-512 BF16, bf16 made its steps 1.4x faster. torch tells those CPUs apart only through private functions,
# so the check times a small matmul's forward and backward in both precisions; a CPU on which bf16 is this
# many times slower is refused (the timing gave 20-48x on the AVX2 EPYC, by load; where bf16 is native it is
# about 1 or less).
CPU_BF16_MAX_SLOWDOWN = 3.0
# Files that mark an earlier run in --output_dir.
RUN_MARKERS = ("trainer_state.json", SUMMARY_FILE, "config.json", "model.safetensors",
               "adapter_config.json")


@dataclass(frozen=True)
class CheckedRun:
    """What :func:`check_config` established: the model's configs and where training starts."""

    model_config: WhisperConfig
    generation_config: GenerationConfig
    resume: Optional[str]  # a complete checkpoint folder, or None for a fresh start
    # The language code the retain sets are labelled and decoded in; None: no language token (English-only
    # models) or, for multilingual ones, each clip's language detected as the stock model would.
    retain_language: Optional[str] = None


def dataset_specs(config: TrainConfig, role):
    """The :class:`DatasetSpec` of each ``train``/``eval``/``retain`` dataset (parallel lists checked)."""
    names = getattr(config, f"{role}_datasets")
    lists = {f"{role}_dataset_{kind}": getattr(config, f"{role}_dataset_{kind}")
             for kind in ("configs", "splits", "text_columns")}
    check_parallel_lists(role, **{f"{role}_datasets": names}, **lists)
    n = len(names)
    configs, splits, columns = (list(values) if values else [None] * n for values in lists.values())
    default_split = None if config.custom else "train" if role in ("train", "replay") else "test"
    return [DatasetSpec(name, cfg, split or default_split, column, config.audio_column)
            for name, cfg, split, column in zip(names, configs, splits, columns)]


def cpu_bf16_slowdown(size=256, repeats=3):
    """How many times as long a (size x size) linear layer's forward and backward takes under CPU bf16 autocast
    as in fp32 (best of ``repeats`` each, after a warm-up run): about 1 or less on CPUs with bfloat16
    instructions, tens where torch falls back to generic kernels. Takes well under a second either way."""
    layer = torch.nn.Linear(size, size)
    inputs = torch.randn(size, size, requires_grad=True)  # (rows, features)

    def best_seconds(bf16):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                layer(inputs).float().sum().backward()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best_seconds(True) / best_seconds(False)


def precision(choice):
    """The (name, bf16, fp16) to train with: bf16 on GPUs that support it, else fp16; fp32 on CPU.
    bf16 on a CPU is refused where :func:`cpu_bf16_slowdown` finds it over CPU_BF16_MAX_SLOWDOWN times slower."""
    if choice == "auto":
        if torch.cuda.is_available():
            choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            choice = "fp32"
    if choice == "fp16" and not torch.cuda.is_available():
        raise OptionError("mixed_precision", choice,
                          "needs a GPU; use fp32 on CPU (or bf16, on a CPU with bfloat16 instructions)")
    if choice == "bf16" and not torch.cuda.is_available():
        slowdown = cpu_bf16_slowdown()
        if slowdown > CPU_BF16_MAX_SLOWDOWN:
            raise OptionError("mixed_precision", choice,
                              f"this CPU runs bfloat16 {slowdown:.0f}x slower than fp32 (it has no bfloat16 "
                              "instructions: timed on a small layer's forward and backward); use fp32 or auto")
    return choice, choice == "bf16", choice == "fp16"


def _load_model_config(name):
    """WhisperConfig + GenerationConfig of ``model_name`` (cheap), with a one-line error if unusable (a folder
    without its config.json was refused by :func:`.config.check_values`)."""
    try:
        return WhisperConfig.from_pretrained(name), GenerationConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise OptionError("model_name", name, f"cannot load a Whisper model: {str(exc).splitlines()[0]}") from exc


def earlier_run(output_dir):
    """Names of the files and checkpoints that show an earlier run in ``output_dir``."""
    if not os.path.isdir(output_dir):
        return []
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(output_dir, m))]
    return found + sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "checkpoint-*")))


def _check_replay(config: TrainConfig, generation):
    """Replay options: only with --replay_datasets or --replay_audio; a ratio in (0, 1); a language every replay
    example can be labelled with (checked here for data_prep folders, at loading for Hub datasets); audio in
    every --replay_audio entry."""
    if not 0 < config.replay_ratio < 1:
        raise OptionError("replay_ratio", config.replay_ratio, "must be more than 0 and less than 1")
    # each option, and the flags that give it a use
    uses = {"replay_dataset_configs": ("replay_datasets",), "replay_dataset_splits": ("replay_datasets",),
            "replay_dataset_text_columns": ("replay_datasets",),
            "replay_language": ("replay_datasets", "replay_audio")}
    for name, flags in uses.items():
        value = getattr(config, name)
        if value is not None and not any(getattr(config, flag) for flag in flags):
            raise OptionError(name, " ".join(map(str, value)) if isinstance(value, tuple) else value,
                              "needs " + " or ".join(f"--{flag}" for flag in flags))
    if not replays(config):
        return
    if config.streaming:
        flag = "--replay_datasets" if config.replay_datasets else "--replay_audio"
        raise UserError(f"{flag} with --streaming True: replay is mixed into a featurised training set; "
                        "add the replay sets to --train_datasets with --interleave_probabilities instead")
    for source in config.replay_audio or ():
        labelling.check_source(source)
    try:
        code = language_code(config.replay_language)
    except UserError as exc:
        raise OptionError("replay_language", config.replay_language, str(exc)) from exc
    english_only = loading.is_english_only(generation)
    if english_only and code not in (None, "en"):
        raise OptionError("replay_language", config.replay_language,
                          "the model is English-only (.en) and can be trained on English only; give en or None")
    if not config.replay_datasets:
        return
    dataset_specs(config, "replay")
    if not config.custom:
        return
    for name in config.replay_datasets:  # each a data_prep folder: check_values saw to that
        if code is None and not english_only:
            dataset = load_custom_dataset(name)  # memory-mapped: reading one column is quick
            if LANGUAGE_COLUMN not in dataset.column_names or None in set(dataset[LANGUAGE_COLUMN]):
                raise UserError(f"--replay_datasets {name}: examples without a language (data_prep's languages "
                                f"file); give --replay_language, the language of the replay speech (e.g. en)")


def _check_augmentation(config: TrainConfig, model_config):
    """SpecAugment's and the waveform augmentation's values (see the options' help)."""
    for name in ("mask_time_prob", "mask_feature_prob"):
        if not 0 <= getattr(config, name) <= 1:
            raise OptionError(name, getattr(config, name), "must be between 0 and 1")
    for name in ("mask_time_length", "mask_feature_length"):
        if getattr(config, name) < 1:
            raise OptionError(name, getattr(config, name), "must be at least 1")
    if config.mask_feature_length > model_config.num_mel_bins:
        raise OptionError("mask_feature_length", config.mask_feature_length,
                          f"must be at most the model's {model_config.num_mel_bins} mel channels")
    # transformers cannot place a mask longer than the input: the shortest is a dynamic context's bucket
    frames = config.audio_context.frames(0) if config.dynamic_audio_context else 2 * model_config.max_source_positions
    if config.mask_time_length >= frames:
        raise OptionError("mask_time_length", config.mask_time_length,
                          f"must be less than the {frames} frames of the shortest training input")
    if config.spec_augment and config.mask_time_prob == 0 and config.mask_feature_prob == 0:
        raise UserError("--spec_augment True masks nothing with --mask_time_prob 0 and --mask_feature_prob 0")
    snr = config.augment_snr_db
    if len(snr) != 2:
        raise OptionError("augment_snr_db", " ".join(map(str, snr)), "give two values, min and max (dB), e.g. 10 30")
    if snr[0] > snr[1]:
        raise OptionError("augment_snr_db", " ".join(map(str, snr)), "the first value (min) exceeds the second (max)")
    if config.noise_dir is not None and not config.augment:
        raise OptionError("noise_dir", config.noise_dir, "needs --augment True")
    if not 0 <= config.augment_pitch_semitones <= MAX_PITCH_SEMITONES:
        raise OptionError("augment_pitch_semitones", config.augment_pitch_semitones,
                          f"give 0 (off) to {MAX_PITCH_SEMITONES:g}")
    if config.augment_pitch_semitones and not config.augment:
        raise OptionError("augment_pitch_semitones", config.augment_pitch_semitones, "needs --augment True")
    if not config.augment:
        return
    if config.streaming:
        raise UserError("--augment True with --streaming True: augmentation keeps the decoded training audio; use it "
                        "without --streaming")
    if config.timestamps:
        raise UserError("--augment True with --timestamps True: speed perturbation would move the speech away from "
                        "its timestamp labels; pick one")
    if importlib.util.find_spec("audiomentations") is None:
        raise OptionError("augment", True, "needs the audiomentations package: pip install audiomentations==0.43.1")
    if config.noise_dir is not None:
        from ..data.augment import noise_files

        if not os.path.isdir(config.noise_dir):
            raise OptionError("noise_dir", config.noise_dir, "no such folder")
        if not noise_files(config.noise_dir):
            raise OptionError("noise_dir", config.noise_dir, "holds no audio files (wav, flac, mp3, ogg...)")


def _check_replay_and_augmentation(config: TrainConfig, model_config, generation):
    _check_replay(config, generation)
    _check_augmentation(config, model_config)


def check_config(config: TrainConfig) -> CheckedRun:
    """Validate every option before any long work (see the module docstring)."""
    check_values(config)
    if config.push_to_hub:
        hub.check_push(config.hub_model_id)
    for role in ("train", "eval"):
        if not getattr(config, f"{role}_datasets"):
            raise UserError(f"--{role}_datasets: give at least one dataset")
        dataset_specs(config, role)
    _check_retain_datasets(config)
    model_config, generation = _load_model_config(config.model_name)
    loading.resolve_language(config.language, generation, config.task)
    if not 0 <= config.freeze_encoder_layers <= model_config.encoder_layers:
        raise OptionError("freeze_encoder_layers", config.freeze_encoder_layers,
                          f"give 0 to {model_config.encoder_layers} (the model's encoder layers)")
    _check_replay_and_augmentation(config, model_config, generation)
    retain_language = _retain_language(config, generation)
    if config.timestamps and getattr(generation, "no_timestamps_token_id", None) is None:
        raise OptionError("model_name", config.model_name, "its generation config has no no_timestamps_token_id, "
                          "so it cannot be trained (or decode) with --timestamps True")
    resume = checkpoints.resolve_resume(config.resume_from_ckpt, config.output_dir)
    if resume is not None:
        checkpoints.check_resumed_rates(resume, rate_options(config))
    earlier = earlier_run(config.output_dir)
    if resume is None and earlier and not config.overwrite_output_dir and config.resume_from_ckpt is None:
        raise UserError(f"--output_dir {config.output_dir} holds an earlier run ({', '.join(earlier[:4])}); pass "
                        f"--resume_from_ckpt latest to continue it, or --overwrite_output_dir True to replace it")
    return CheckedRun(model_config, generation, resume, retain_language)


def rate_options(config: TrainConfig) -> checkpoints.RateOptions:
    """The run's options that shape its optimizer's groups, as every checkpoint records them."""
    return checkpoints.RateOptions(config.encoder_lr_ratio, config.layer_lr_decay)


def _check_retain_datasets(config: TrainConfig):
    """Retain options make sense only with --retain_datasets; with them, the per-dataset lists must match."""
    if not config.retain_datasets:
        for name in ("retain_dataset_configs", "retain_dataset_splits", "retain_dataset_text_columns",
                     "retain_language"):
            if getattr(config, name) is not None:
                shown = getattr(config, name)
                shown = " ".join(map(str, shown)) if isinstance(shown, tuple) else shown
                raise OptionError(name, shown, "needs --retain_datasets")
        if config.metric_for_best_model != "wer":
            raise OptionError("metric_for_best_model", config.metric_for_best_model,
                              "needs --retain_datasets (without them choose wer)")
        return
    dataset_specs(config, "retain")


def _retain_language(config: TrainConfig, generation) -> Optional[str]:
    """The code the retain sets are labelled and decoded in (see :attr:`CheckedRun.retain_language`)."""
    if not config.retain_datasets:
        return None
    try:
        code = language_code(config.retain_language)
    except UserError as exc:
        raise OptionError("retain_language", config.retain_language, str(exc)) from exc
    if loading.is_english_only(generation):
        if code not in (None, "en"):
            raise OptionError("retain_language", config.retain_language,
                              "the model is English-only (.en) and decodes no other language; give en or None")
        return None
    if code is None:
        # The stock model's behaviour: the language saved in its generation config (a model fine-tuned
        # for one language decodes it), else detection per clip.
        saved = getattr(generation, "language", None)
        code = language_code(saved) if saved else None
    return code
