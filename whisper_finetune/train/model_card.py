"""The model card (``README.md``) written into every final model folder by :func:`whisper_finetune.train.run.train`.

It is built only from the training summary (the options and results of the run), so the card
always describes the model beside it: base model, language, datasets (with the corpus format a data_prep
folder was made from), hours, training arguments, the eval WER/CER with the normaliser used, the training
curve, and how to use the model.
"""
import os

from ..data.augment import describe
from ..files import atomic_write_text

CARD_FILE = "README.md"
# What a dynamic-context run's steps updated (--short_context_updates), as the card says it.
STEP_UPDATES = {"encoder": " (the others updated the encoder only)",
                "split": " (those updated the decoder only, the others the encoder only)", "all": ""}
# Training arguments shown in the card (the full set is in training_summary.json).
SHOWN_ARGUMENTS = ("train_strategy", "num_steps", "num_epochs", "learning_rate", "encoder_lr_ratio",
                   "layer_lr_decay", "warmup", "lr_scheduler_type", "train_batchsize", "gradient_accumulation_steps",
                   "mixed_precision", "freeze_encoder", "freeze_encoder_layers", "freeze_decoder",
                   "lora", "gradient_checkpointing", "streaming", "shuffle_buffer_size", "interleave_probabilities",
                   "lowercase", "remove_punctuation", "seed", "dynamic_audio_context", "full_context_ratio",
                   "short_context_updates", "metric_for_best_model", "early_stopping_patience")


def _dataset_rows(summary, role):
    config = summary["config"]
    names = config[f"{role}_datasets"]
    n = len(names)
    configs = config.get(f"{role}_dataset_configs") or [None] * n
    splits = config.get(f"{role}_dataset_splits") or [None] * n
    formats = summary.get("source_formats") or {}  # data_prep folders: the corpus format they were made from
    return [f"| {role} | `{name}` | {formats.get(name, '-')} | {cfg or '-'} | {split or '-'} |"
            for name, cfg, split in zip(names, configs, splits)]


def _hours(value):
    return "unknown (streamed)" if value is None else f"{value:.3f}"


def render_model_card(summary, hub_model_id=None):
    """The model card text (Markdown with YAML metadata) for a run's ``summary`` dict."""
    config = summary["config"]
    language = summary["language"]
    model_ref = hub_model_id or summary["output_dir"]
    lines = ["---", f"base_model: {config['model_name']}", "library_name: transformers",
             "pipeline_tag: automatic-speech-recognition", "tags: [whisper, whisper-finetune]"]
    if language:
        lines.append(f"language: [{language}]")
    lines += ["---", "", f"# {os.path.basename(summary['output_dir'].rstrip('/'))}", "",
              f"Fine-tuned from `{config['model_name']}` for {config['task']} "
              f"(language: {language or 'English (English-only model)'}) with whisper_finetune.", "",
              "## Data", "", "| role | dataset | source format | config | split |", "| --- | --- | --- | --- | --- |",
              *_dataset_rows(summary, "train"), *_dataset_rows(summary, "eval"),
              *(_dataset_rows(summary, "retain") if config.get("retain_datasets") else []),
              *(_dataset_rows(summary, "replay") if config.get("replay_datasets") else []), "",
              f"Training audio: {_hours(summary.get('train_hours'))} h; evaluation audio: "
              f"{_hours(summary.get('eval_hours'))} h (after dropping clips over 30 s and labels over 448 tokens).",
              "", "## Evaluation", ""]
    if summary.get("best_wer") is not None:
        eval_sets = ", ".join(f"`{n}`" for n in config["eval_datasets"])
        lines += ["| eval data | WER | CER | normaliser | step |", "| --- | --- | --- | --- | --- |",
                  f"| {eval_sets} (combined, {summary['eval_samples']} utterances) | {summary['best_wer']:.4f} | "
                  f"{summary['best_cer']:.4f} | {summary['normalizer']} | {summary['best_step']} |",
                  *(f"| `{row['dataset']}` ({row['samples']} utterances) | {row['wer']:.4f} | {row['cer']:.4f} | "
                    f"{summary['normalizer']} | {'final model' if summary.get('merge') else summary['best_step']} |"
                    for row in summary.get("eval_per_dataset", [])),
                  "",
                  "WER/CER are computed with jiwer after the normaliser named above, decoding with `generate`. "
                  + _chosen_by(summary, language), "", *_merge_lines(summary)]
    else:
        lines += ["No evaluation was recorded.", ""]
    lines += _retain_section(summary)
    lines += _replay_and_augmentation(config, summary.get("replay_audio"), summary.get("consolidation"))
    if config.get("dynamic_audio_context"):
        bucket = config["audio_context"]["audio_context_bucket_seconds"]
        lines += [f"Trained with a dynamic audio context: the encoder ran on each batch's own length rounded up "
                  f"to {bucket:g} s, with {config['full_context_ratio']:.0%} of optimizer steps at the full 30 s window"
                  + STEP_UPDATES[config.get("short_context_updates", "encoder")] + ". "
                  "It is a plain Whisper checkpoint: every tool loads it and pads to 30 s; with "
                  "whisper_finetune, `--audio_context dynamic` decodes short clips faster.", ""]
    metric = summary.get("primary_metric", "wer").upper()
    lines += [f"![training loss and eval {metric}](training_curve.png)", "", "## Training arguments", "",
              "| argument | value |", "| --- | --- |"]
    lines += [f"| {key} | {config.get(key)} |" for key in SHOWN_ARGUMENTS if key in config]
    lines += [f"| effective learning rate | {summary['learning_rate']:.3g} |",
              f"| processes (world size) | {summary['world_size']} |",
              f"| precision | {summary['precision']} |",
              f"| optimizer steps | {summary['global_step']} |", "",
              "All options are in `training_summary.json` in the training output folder.", "",
              "## Usage", "", "```python", "from transformers import pipeline", "",
              f'asr = pipeline("automatic-speech-recognition", model="{model_ref}")',
              'print(asr("audio.wav")["text"])', "```", "", "With this repository's scripts:", "", "```bash",
              f"python3 transcribe_audio.py --hf_model {model_ref} --path_to_audio audio.wav",
              f"python3 evaluate/evaluate_on_custom_dataset.py --hf_model {model_ref} --eval_datasets DATA_PREP_FOLDER "
              "--output_dir results",
              "```", ""]
    return "\n".join(lines)


def _replay_and_augmentation(config, replay_audio=None, consolidation=None):
    """Lines saying how the training data was mixed (replay) and which augmentation was used."""
    lines = []
    if replay_audio:
        settings = replay_audio["settings"]
        languages = ", ".join(f"{code} {count}" for code, count in replay_audio["languages"].items()) or "none"
        language = f"in `{settings['language']}`" if settings["language"] else "each in its detected language"
        names = ", ".join(f"`{name}`" for name in replay_audio["sources"])
        lines += [f"Replay audio: {replay_audio['clips']} clips ({replay_audio['seconds'] / 60:.1f} min) of "
                  f"untranscribed speech from {names}, labelled by `{settings['model']}` itself "
                  f"(beam {settings['num_beams']}, {language}; clips per language token: {languages}; "
                  f"not replayed: {replay_audio['empty']} without words, {replay_audio.get('looped', 0)} repetition "
                  f"loops); {config['replay_ratio']:.0%} of the "
                  f"training examples were drawn from the replay sets. The labels are in `{replay_audio['cache']}`.",
                  ""]
    if config.get("replay_datasets"):
        language = config.get("replay_language")
        tokens = f"`{language}` unless an example has a language of its own" if language else "each example's own"
        names = ", ".join(f"`{name}`" for name in config["replay_datasets"])
        lines += [f"Replay: {config['replay_ratio']:.0%} of the training examples were drawn from the replay sets "
                  f"({names}), labelled with their language token ({tokens}), so the model keeps that speech.", ""]
    if config.get("distill_weight"):
        rows = " on its replay rows" if config.get("distill_rows") == "replay" else ""
        lines += [f"Distillation: each training step added {config['distill_weight']:g} x the KL divergence from the "
                  f"base model's next-token distributions to the model's (temperature 2, per label token{rows}) to its "
                  "loss, holding it to the base model's answers (learning without forgetting).", ""]
    if consolidation:
        fisher = consolidation["fisher"]
        lines += [f"Elastic weight consolidation: each training step added {consolidation['weight']:g} / 2 x sum F "
                  "(weight - base weight)^2 to its loss, F the base model's diagonal Fisher information on "
                  f"{fisher['clips']} replay clip(s) ({fisher['label_tokens']} label tokens). For the final model, "
                  "1/2 sum F (weight - base weight)^2, an estimate of its KL divergence per token from the base "
                  f"model on those clips, is {consolidation['final_estimated_kl']:.4g}.", ""]
    used = []
    if config.get("spec_augment"):
        used.append(f"SpecAugment in training steps (time masks of {config['mask_time_length']} frames over "
                    f"{config['mask_time_prob']:.0%} of frames, mel-channel masks of {config['mask_feature_length']} "
                    f"over {config['mask_feature_prob']:.0%} of channels; off in evaluation and in config.json)")
    if config.get("augment"):
        waveform = describe(config["augment_snr_db"], config.get("noise_dir"), config.get("augment_pitch_semitones"),
                            quote=lambda name: f"`{name}`")
        used.append(f"waveform augmentation drawn anew each epoch ({waveform}; audiomentations)")
    lines += [f"Augmentation: {'; '.join(used) if used else 'none'}.", ""]
    return lines


def _chosen_by(summary, language):
    """The sentence saying what chose the checkpoint (``--metric_for_best_model``)."""
    choice = summary.get("best_model_metric", "wer")
    if choice == "retain_wer":
        return "The best checkpoint was chosen by the retain sets' WER (see below)."
    metric = "CER" if summary.get("primary_metric") == "cer" else "WER"
    if choice == "combined":
        return (f"The best checkpoint was chosen by eval {metric} plus the increase of the retain sets' WER over "
                "the base model's (see below).")
    if metric == "CER":
        return (f"The best checkpoint was chosen by CER: {language} is written without spaces between words, "
                "so its WER measures spacing rather than recognition and is not meaningful.")
    return "The best checkpoint was chosen by WER."


def _merge_lines(summary):
    """The final model's interpolation with the base model (--merge_ratio), when it had one."""
    merge = summary.get("merge")
    if not merge:
        return []
    metric = summary.get("primary_metric", "wer")
    tried = ", ".join(f"{trial['ratio']:g}: {trial['metric']:.4f}" for trial in merge["trials"])
    how = (f"the lowest ratio whose eval {metric.upper()} was within {merge['tolerance']:g} of the fine-tune's "
           f"(tried: {tried})"
           if merge["requested"] == "auto" else "given with --merge_ratio")
    encoder = merge.get("encoder_ratio")
    encoder = "" if encoder is None else \
        f" The encoder's weights are at base + {encoder:g} x (fine-tune - base) instead (--merge_encoder_ratio)."
    return [f"**Final model:** the weights of the checkpoint above interpolated with the base model's, base + "
            f"{merge['ratio']:g} x (fine-tune - base) (WiSE-FT), {how}.{encoder} On the eval data it scores "
            f"{metric.upper()} {merge[f'eval_{metric}']:.4f} (the checkpoint: {merge['fine_tune_metric']:.4f})"
            + ("; the per-dataset rows are the final model's." if summary.get("eval_per_dataset") else "."), ""]


def _retain_section(summary):
    """What the fine-tune kept: the retain sets' WER/CER for the base model (step 0) and this model."""
    if summary.get("retain_wer_after") is None:
        return []
    config = summary["config"]

    def cells(measure):
        before, after = summary.get(f"retain_{measure}_before"), summary[f"retain_{measure}_after"]
        change = summary.get(f"retain_{measure}_change")
        return (f"{'-' if before is None else f'{before:.4f}'} | {after:.4f} | "
                f"{'-' if change is None else f'{change:+.4f}'}")

    language = summary.get("retain_language")
    language = f"`{language}`" if language else "as the base model decodes (an English-only model: no language " \
        "token; else each clip's language detected)"
    names = ", ".join(f"`{n}`" for n in config["retain_datasets"])
    return ["### Keeping what the model knew", "",
            f"Retain sets hold speech the base model handled before fine-tuning. They were decoded (language: "
            f"{language}) and scored with the {summary['retain_normalizer']} normaliser before training (step 0: "
            f"the base model) and at every evaluation; \"after\" is this model. Change = after - before: positive "
            f"is what the fine-tune lost.", "",
            "| retain data | WER before | WER after | WER change | CER before | CER after | CER change |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {names} (combined, {summary['retain_samples']} utterances) | {cells('wer')} | {cells('cer')} |",
            *(f"| `{row['dataset']}` ({row['samples']} utterances) | - | {row['wer']:.4f} | - | - | "
              f"{row['cer']:.4f} | - |" for row in summary.get("retain_per_dataset", [])), ""]


def write_model_card(folder, summary, hub_model_id=None):
    """Write ``README.md`` into ``folder``; returns its path."""
    path = os.path.join(folder, CARD_FILE)
    atomic_write_text(path, render_model_card(summary, hub_model_id))  # a full disk leaves no half-written card
    return path
