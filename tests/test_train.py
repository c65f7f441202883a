"""Fine-tuning (train/*.py, whisper_finetune.train.run) on the tiny random Whisper."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, run_script, write_corpus
from whisper_finetune.model import loading
from whisper_finetune.errors import UserError
from whisper_finetune.data.features import DataCollatorSpeechSeq2SeqWithPadding, clean_text, featurize
from whisper_finetune.train.summary import PLOT_FILE, SUMMARY_FILE, TrainSummary
from whisper_finetune.train import checks as train_checks
from whisper_finetune.train.config import TrainConfig
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.checkpoints import RateOptions, check_resumed_rates
from whisper_finetune.train.run import train

CUSTOM = "train/fine-tune_on_custom_dataset.py"
HF = "train/fine-tune_on_hf_dataset.py"
QUICK = ("--train_batchsize", 2, "--eval_batchsize", 4, "--max_eval_samples", 4, "--generation_max_new_tokens", 4,
         "--logging_steps", 1, "--report_to", "none")


def quick_config(model, data, out, **overrides):
    values = dict(model_name=model, train_datasets=(data,), eval_datasets=(data,), output_dir=str(out),
                  train_batchsize=2, eval_batchsize=4, max_eval_samples=4, generation_max_new_tokens=4,
                  logging_steps=1, num_steps=4, eval_steps=2, report_to="none", language="hi")
    values.update(overrides)
    return TrainConfig(**values)


def summary_of(out):
    """The run's summary as written to training_summary.json (it loads back into the typed summary)."""
    with open(os.path.join(out, SUMMARY_FILE), encoding="utf-8") as f:
        return TrainSummary(**json.load(f))


def losses(out):
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        return {e["step"]: e["loss"] for e in json.load(f)["log_history"] if "loss" in e}


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# --------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("multilingual", [True, False])
def test_labels_start_with_the_prefix_and_collator_masks_padding(tiny_model_dir, tiny_en_model_dir, tiny_dataset_dir,
                                                                 multilingual):
    from whisper_finetune.data.loading import load_datasets
    from whisper_finetune.data.schema import DatasetSpec
    from whisper_finetune.train.model_setup import configure_tokenizer

    model_dir = tiny_model_dir if multilingual else tiny_en_model_dir
    processor = loading.load_processor(model_dir)
    configure_tokenizer(processor.tokenizer, "hi" if multilingual else None, "transcribe", not multilingual)
    dataset = load_datasets([DatasetSpec(tiny_dataset_dir)], custom=True)[0].select(range(3))
    features = featurize(dataset, processor, 16000)
    tok = processor.tokenizer
    expected = ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>", "<|notimestamps|>"] if multilingual \
        else ["<|startoftranscript|>", "<|notimestamps|>"]
    labels = features[0]["labels"]
    assert tok.convert_ids_to_tokens(labels[:len(expected)]) == expected
    assert tok.decode(labels, skip_special_tokens=True) == dataset[0]["sentence"]
    assert labels[-1] == tok.eos_token_id
    assert features.features["input_features"].dtype == "float16"  # stored compactly

    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    batch = DataCollatorSpeechSeq2SeqWithPadding(sot)(list(features.with_format("numpy")))
    assert batch["input_features"].shape == (3, 80, 3000) and batch["input_features"].dtype == torch.float32
    lengths = [len(features[i]["labels"]) for i in range(3)]
    assert batch["labels"].shape == (3, max(lengths) - 1)  # start token stripped
    for row, n in zip(batch["labels"], lengths):
        assert (row[n - 1:] == -100).all() and (row[:n - 1] != -100).all()
    assert tok.convert_ids_to_tokens(int(batch["labels"][0, 0])) == expected[1]


def test_clean_text_options():
    assert clean_text("Hello, World!") == "Hello, World!"
    assert clean_text("Hello, World!", lowercase=True, remove_punctuation=True) == "hello world"
    assert clean_text("नमस्ते। दुनिया", remove_punctuation=True) == "नमस्ते दुनिया"  # vowel signs kept


@pytest.mark.parametrize("overrides, message", [
    ({"model_name": "/no/such/model"}, "--model_name /no/such/model"),
    ({"train_datasets": ("/no/such/data",)}, "/no/such/data: no such dataset folder"),
    ({"language": "Klingon"}, "unknown language 'Klingon'"),
    ({"train_strategy": "forever"}, "--train_strategy forever: choose one of steps, epoch"),
    ({"save_steps": 3}, "--save_steps 3: must be a multiple of --eval_steps 2"),
    ({"short_context_updates": "decoder"}, "--short_context_updates decoder: choose one of encoder, split, all"),
    ({"primary_metric": "bleu"}, "--primary_metric bleu: choose one of wer, cer"),
    ({"dynamic_audio_context": True, "freeze_encoder": True},  # the default, split
     "--freeze_encoder True with --dynamic_audio_context True leaves its short-context steps nothing to train "
     "(--short_context_updates split); add --short_context_updates all"),
    ({"dynamic_audio_context": True, "freeze_encoder": True, "short_context_updates": "encoder"},
     "nothing to train (--short_context_updates encoder); add --short_context_updates all"),
    ({"dynamic_audio_context": True, "freeze_decoder": True, "short_context_updates": "split"},
     "--freeze_decoder True with --short_context_updates split leaves its 30 s steps nothing to train"),
    ({"resume_from_ckpt": "/no/such/checkpoint-2"}, "--resume_from_ckpt /no/such/checkpoint-2: no such folder"),
    ({"encoder_lr_ratio": 1.5}, "--encoder_lr_ratio 1.5: give a number above 0 and at most 1 (1: one rate for both)"),
    ({"encoder_lr_ratio": 0.1, "freeze_encoder": True},
     "--encoder_lr_ratio 0.1 with --freeze_encoder: the encoder is not trained; leave --encoder_lr_ratio out"),
    ({"encoder_lr_ratio": 0.1, "freeze_decoder": True}, "--encoder_lr_ratio 0.1 with --freeze_decoder: the encoder "
     "is all it trains; lower --learning_rate instead; leave --encoder_lr_ratio out"),
    ({"layer_lr_decay": 0.0}, "--layer_lr_decay 0.0: give a number above 0 and at most 1 (1: one rate for every layer)"),
    ({"layer_lr_decay": 0.8, "deepspeed": "ds.json"}, "--layer_lr_decay 0.8 with --deepspeed: DeepSpeed builds the "
     "optimizer from its own config; leave --layer_lr_decay out"),
    ({"custom": False, "train_dataset_splits": ("train", "test")}, "--train_datasets (1), --train_dataset_splits (2)"),
])
def test_bad_options_are_refused_before_any_work(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
    assert not os.path.exists(tmp_path / "out")


def test_english_only_model_refuses_other_languages(tiny_en_model_dir, tiny_dataset_dir, tmp_path):
    with pytest.raises(UserError, match="English-only"):
        check_config(quick_config(tiny_en_model_dir, tiny_dataset_dir, tmp_path / "o", language="Hindi"))
    check_config(quick_config(tiny_en_model_dir, tiny_dataset_dir, tmp_path / "o", language="English"))


def test_empty_dataset_after_filtering_is_an_error(tiny_model_dir, tmp_path):
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    source = write_corpus(str(tmp_path / "src"), n=2, sentences=["word " * 100])  # 500 byte tokens > 448
    data = str(tmp_path / "long")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=data))
    with pytest.raises(UserError, match="no utterance left after dropping clips over 30 s and labels over 448"):
        train(quick_config(tiny_model_dir, data, tmp_path / "out"))


# --------------------------------------------------------------------------------------------- scripts
@pytest.mark.slow  # tens of seconds: the second tier
def test_custom_script_steps_saves_a_self_contained_model(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from transformers import GenerationConfig, pipeline

    out = str(tmp_path / "op_dir_steps")
    proc = run_script(CUSTOM, "--model_name", tiny_model_dir, "--language", "Hindi", "--train_datasets",
                      tiny_dataset_dir, tiny_dataset_dir, "--eval_datasets", tiny_dataset_dir, "--train_strategy",
                      "steps", "--num_steps", 4, "--eval_steps", 2, "--save_total_limit", 1, "--resume_from_ckpt",
                      "None", "--output_dir", out, *QUICK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision: fp32 (CPU)" in proc.stderr
    assert "kept 16, dropped 0 clip(s) over 30 s and 0 label(s) over 448 tokens" in proc.stderr
    assert "best eval WER:" in proc.stdout
    summary = summary_of(out)
    assert summary.global_step == 4 and summary.train_samples == 16 and summary.eval_samples == 4
    assert summary.samples_trained == 8 and summary.samples_per_second > 0
    assert summary.learning_rate == loading.default_learning_rate(
        loading.load_model(tiny_model_dir).config, tiny_model_dir)
    assert os.path.getsize(os.path.join(out, PLOT_FILE)) > 1000
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        evals = [e for e in json.load(f)["log_history"] if "eval_wer" in e]
    # time to quality: each evaluation records the training time before it, evaluations left out
    assert [e["step"] for e in evals] == [2, 4]
    assert 0 < evals[0]["train_seconds"] < evals[1]["train_seconds"]
    assert evals[1]["train_seconds"] < summary.wall_seconds - summary.eval_seconds + 0.1
    # the save limit keeps the best checkpoint (and the last one when they differ)
    checkpoints = sorted(glob.glob(os.path.join(out, "checkpoint-*")))
    assert summary.best_checkpoint in checkpoints and len(checkpoints) <= 2
    for folder in [out] + checkpoints:
        generation = GenerationConfig.from_pretrained(folder)
        assert (generation.language, generation.task) == ("hi", "transcribe"), folder
        assert os.path.exists(os.path.join(folder, "preprocessor_config.json"))
        assert os.path.exists(os.path.join(folder, "tokenizer_config.json"))
    best = weights(summary.best_checkpoint)
    final = weights(out)
    assert all(torch.equal(best[k], final[k]) for k in final)
    asr = pipeline("automatic-speech-recognition", model=out)
    result = asr(np.zeros(16000, dtype=np.float32), generate_kwargs={"max_new_tokens": 3})
    assert isinstance(result["text"], str)
    assert asr.model.generation_config.language == "hi"

    again = run_script(CUSTOM, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir,
                       "--eval_datasets", tiny_dataset_dir, "--output_dir", out, "--language", "hi")
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "holds an earlier run" in again.stderr
    assert "--overwrite_output_dir True" in again.stderr


@pytest.mark.slow  # tens of seconds: the second tier
def test_hf_script_epoch_strategy_with_local_datasets(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = str(tmp_path / "op_dir_epoch")
    bad = run_script(HF, "--model_name", tiny_model_dir, "--language", "hi", "--train_datasets", tiny_dataset_dir,
                     "--train_dataset_text_columns", "transcription", "--eval_datasets", tiny_dataset_dir,
                     "--output_dir", out)
    assert bad.returncode == 2 and "no text column 'transcription'; columns are: id, audio, sentence" in bad.stderr
    assert not os.path.exists(os.path.join(out, SUMMARY_FILE))
    mismatched = run_script(HF, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir,
                            "--train_dataset_splits", "train", "validation", "--eval_datasets", tiny_dataset_dir,
                            "--output_dir", out)
    assert mismatched.returncode == 2 and "--train_datasets (1), --train_dataset_splits (2)" in mismatched.stderr

    from datasets import load_from_disk

    parquet_dir = tmp_path / "parquet"  # a folder load_dataset reads: one parquet file -> split "train"
    os.makedirs(parquet_dir)
    load_from_disk(tiny_dataset_dir).rename_column("sentence", "transcription").to_parquet(
        str(parquet_dir / "data.parquet"))
    proc = run_script(HF, "--model_name", tiny_model_dir, "--language", "hi", "--train_datasets", tiny_dataset_dir,
                      "--train_dataset_splits", "train", "--train_dataset_text_columns", "sentence",
                      "--eval_datasets", parquet_dir, "--eval_dataset_splits", "train",
                      "--eval_dataset_text_columns", "transcription", "--train_strategy",
                      "epoch", "--num_epochs", 2, "--train_batchsize", 4, "--eval_batchsize", 4, "--max_eval_samples",
                      2, "--generation_max_new_tokens", 4, "--lowercase", "True", "--output_dir", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(out)
    assert summary.global_step == 4 and summary.epochs == 2.0
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "checkpoint-*"))) == \
        ["checkpoint-2", "checkpoint-4"]
    assert summary.best_step in (2, 4)
    assert glob.glob(os.path.join(out, "runs", "*", "events.out.tfevents.*"))  # TensorBoard


def test_resume_reaches_the_same_step_and_losses(tiny_model_dir, tiny_dataset_dir, tmp_path):
    full = tmp_path / "full"
    train(quick_config(tiny_model_dir, tiny_dataset_dir, full, learning_rate=1e-3))
    resumed = tmp_path / "resumed"
    os.makedirs(resumed)
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, resumed, learning_rate=1e-3,
                                 resume_from_ckpt="latest"))
    assert summary.global_step == 4 and summary.resumed_from.endswith("checkpoint-2")
    full_losses, resumed_losses = losses(full), losses(resumed)
    assert set(resumed_losses) == {1, 2, 3, 4}  # steps 1-2 come from the checkpoint's history
    for step in (3, 4):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-4)
    final_full, final_resumed = weights(full / "checkpoint-4"), weights(resumed / "checkpoint-4")
    assert all(torch.allclose(final_full[k], final_resumed[k], atol=1e-5) for k in final_full)
    # other learning-rate shares than the checkpoint's are refused before anything loads (torch would stop on the
    # optimizer's group count, or keep the saved rates without a word)
    with pytest.raises(UserError, match=re.escape(
            f"--resume_from_ckpt {resumed / 'checkpoint-4'}: it was trained with --encoder_lr_ratio 1 --layer_lr_decay "
            f"1, this run gives --encoder_lr_ratio 0.1 --layer_lr_decay 1; its optimizer keeps a rate per group, so "
            f"resume with its values")):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, resumed, resume_from_ckpt="latest",
                                  encoder_lr_ratio=0.1))


@pytest.mark.parametrize("saved, run, refused", [
    (None, RateOptions(), False),  # a checkpoint from before the file: one rate throughout
    (None, RateOptions(layer_lr_decay=0.8), True),
    (RateOptions(0.1, 0.8), RateOptions(0.1, 0.8), False),
    (RateOptions(0.1, 0.8), RateOptions(0.1, 0.9), True),
    (RateOptions(0.1, 1.0), RateOptions(), True),
])
def test_a_checkpoint_resumes_only_with_its_learning_rate_shares(tmp_path, saved, run, refused):
    if saved is not None:
        saved.save_pretrained(str(tmp_path))
    if refused:
        with pytest.raises(UserError, match=re.escape(f"it was trained with {(saved or RateOptions()).flags()}, "
                                                      f"this run gives {run.flags()}")):
            check_resumed_rates(str(tmp_path), run)
    else:
        check_resumed_rates(str(tmp_path), run)


def test_freeze_encoder_accumulation_and_checkpointing(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "frozen"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, freeze_encoder=True, num_steps=2,
                                 eval_steps=2, gradient_accumulation_steps=2, gradient_checkpointing=True,
                                 learning_rate=1e-2))
    assert summary.global_step == 2 and summary.samples_trained == 8
    before, after = weights(tiny_model_dir), weights(out)
    encoder = [k for k in after if k.startswith("model.encoder.")]
    decoder = [k for k in after if k.startswith("model.decoder.layers.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_freeze_encoder_layers_trains_only_the_layers_above(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "lower"
    train(quick_config(tiny_model_dir, tiny_dataset_dir, out, freeze_encoder_layers=1, num_steps=2, eval_steps=2,
                       learning_rate=1e-2))
    before, after = weights(tiny_model_dir), weights(out)
    frozen = [k for k in after if k.startswith(("model.encoder.conv", "model.encoder.layers.0."))]
    trained = [k for k in after if k.startswith(("model.encoder.layers.1.", "model.decoder.layers."))]
    assert len(frozen) > 4 and all(torch.equal(before[k], after[k]) for k in frozen)
    # every weight matrix above the frozen layers moved (biases initialised to zero may stay)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("proj.weight"))
    config = json.loads((out / "training_summary.json").read_text())["config"]
    assert config["freeze_encoder_layers"] == 1


@pytest.mark.parametrize("lora", [False, True])
def test_encoder_lr_ratio_moves_the_encoder_by_its_share(tiny_model_dir, tiny_dataset_dir, tmp_path, lora):
    # Adam's update is about the learning rate whatever the gradient's size (the first is +-lr exactly), so
    # over two steps a weight moves at most a few times its rate: the encoder's at 1e-2 x 0.01, the decoder's
    # at 1e-2. LoRA's change of a weight is the product of its two adapters, so its bound is looser.
    lr, ratio, out = 1e-2, 0.01, tmp_path / "rates"
    extra = {"lora": True, "lora_r": 4, "lora_alpha": 8} if lora else {}
    train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2, learning_rate=lr,
                       encoder_lr_ratio=ratio, **extra))
    before, after = weights(tiny_model_dir), weights(out)

    def largest_move(prefix):
        return max(float((after[k] - before[k]).abs().max()) for k in after
                   if k.startswith(prefix) and k.endswith("proj.weight"))

    encoder, decoder = largest_move("model.encoder.layers."), largest_move("model.decoder.layers.")
    assert 0 < encoder and encoder * 20 < decoder
    if not lora:
        assert encoder <= 3 * 2 * lr * ratio and decoder >= lr / 2
    config = json.loads((out / "training_summary.json").read_text())["config"]
    assert config["encoder_lr_ratio"] == ratio


@pytest.mark.parametrize("ratio, decay, shares", [
    # tiny model: two layers a half; (parameter, its share of the learning rate)
    (1.0, 0.5, {"model.decoder.layers.1.fc1.weight": 1, "model.decoder.layers.0.fc1.weight": 0.5,
                "model.decoder.embed_tokens.weight": 0.25, "model.decoder.layer_norm.weight": 1,
                "model.encoder.layers.1.fc1.weight": 1, "model.encoder.conv1.weight": 0.25}),
    (0.1, 0.5, {"model.decoder.layers.1.fc1.weight": 1, "model.decoder.layers.0.fc1.weight": 0.5,
                "model.encoder.layer_norm.weight": 0.1, "model.encoder.layers.1.fc1.weight": 0.1,
                "model.encoder.layers.0.self_attn.q_proj.weight": 0.05, "model.encoder.conv2.weight": 0.025}),
    (0.1, 1.0, {"model.decoder.layers.0.fc1.weight": 1, "model.decoder.embed_tokens.weight": 1,
                "model.encoder.layers.0.fc1.weight": 0.1, "model.encoder.conv1.bias": 0.1}),
])
def test_learning_rate_shares_by_half_and_layer(tiny_model_dir, tiny_dataset_dir, tmp_path, ratio, decay, shares):
    from whisper_finetune.model.loading import load_model
    from whisper_finetune.train.model_setup import learning_rate_scales

    model = load_model(tiny_model_dir)
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path, encoder_lr_ratio=ratio, layer_lr_decay=decay)
    share_of = {id(parameter): share for share, parameters in learning_rate_scales(model, config)
                for parameter in parameters}
    named = dict(model.named_parameters())
    assert {name: share_of.get(id(named[name]), 1) for name in shares} == pytest.approx(shares)


def test_layer_lr_decay_moves_the_lower_layers_less(tiny_model_dir, tiny_dataset_dir, tmp_path):
    # as above: over two Adam steps a weight moves at most a few times its rate. Two layers a half at decay 0.01:
    # the top layers at 1e-2, the bottom ones at 1e-4, the embeddings and convolutions at 1e-6.
    lr, decay, out = 1e-2, 0.01, tmp_path / "layers"
    train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2, learning_rate=lr,
                       layer_lr_decay=decay))
    before, after = weights(tiny_model_dir), weights(out)

    def largest_move(prefix):
        return max(float((after[k] - before[k]).abs().max()) for k in after if k.startswith(prefix))

    for half in ("encoder", "decoder"):
        top, bottom = largest_move(f"model.{half}.layers.1."), largest_move(f"model.{half}.layers.0.")
        assert top >= lr / 2 and 0 < bottom <= 3 * 2 * lr * decay
    below = largest_move("model.encoder.conv"), largest_move("model.decoder.embed_tokens")
    assert all(0 < move <= 3 * 2 * lr * decay ** 2 for move in below)
    card = (out / "README.md").read_text()
    assert "layer_lr_decay" in card and "0.01" in card


def test_bf16_on_cpu_trains_and_times_checkpoints_apart(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_checks, "cpu_bf16_slowdown", lambda: 0.8)  # as on a CPU with bfloat16 instructions
    out = tmp_path / "bf16"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, mixed_precision="bf16", num_steps=2,
                                 eval_steps=2, learning_rate=1e-2))
    assert summary.precision == "bf16" and summary.global_step == 2
    assert summary.peak_gpu_gb is None
    # one checkpoint written at step 2 and reloaded as the best one: timed, and within the loop's time
    assert 0 < summary.checkpoint_seconds < summary.wall_seconds
    before, after = weights(tiny_model_dir), weights(out)
    assert all(w.dtype == torch.float32 for w in after.values())  # mixed precision: weights stay float32
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_bf16_is_refused_on_a_cpu_that_runs_it_slowly(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_checks, "cpu_bf16_slowdown", lambda: 48.3)  # as timed on a 2-core AVX2 EPYC
    out = tmp_path / "bf16"
    with pytest.raises(UserError, match=re.escape(
            "--mixed_precision bf16: this CPU runs bfloat16 48x slower than fp32 (it has no bfloat16 instructions: "
            "timed on a small layer's forward and backward); use fp32 or auto")):
        train(quick_config(tiny_model_dir, tiny_dataset_dir, out, mixed_precision="bf16", num_steps=2))
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a GPU")
def test_fp16_is_refused_on_a_cpu_with_the_precisions_it_takes():
    with pytest.raises(UserError, match=re.escape(
            "--mixed_precision fp16: needs a GPU; use fp32 on CPU (or bf16, on a CPU with bfloat16 instructions)")):
        train_checks.precision("fp16")


def test_the_cpu_bf16_timing_compares_both_precisions(monkeypatch):
    # the ratio is this CPU's own (about 1 with bfloat16 instructions, tens without); what must hold anywhere is
    # that bf16 ran under autocast once per timed pass and the ratio is a finite positive number
    autocasts = []
    real_autocast = torch.autocast

    def spy(device_type, dtype=None, enabled=True):
        autocasts.append((device_type, dtype, enabled))
        return real_autocast(device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", spy)
    slowdown = train_checks.cpu_bf16_slowdown(size=32, repeats=2)
    assert 0 < slowdown < float("inf")
    assert autocasts == [("cpu", torch.bfloat16, True)] * 3 + [("cpu", torch.bfloat16, False)] * 3


@pytest.mark.parametrize("leftover", ["bf16", "fp16"])
def test_precision_left_in_the_environment_does_not_override_fp32(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                 monkeypatch, caplog, leftover):
    # accelerate launch, or an earlier TrainingArguments(bf16=True) in the same process, leaves this
    # variable set; the Trainer's Accelerator reads it whenever bf16/fp16 are off.
    from whisper_finetune.train.trainer import WhisperTrainer

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", leftover)
    seen = []
    original = WhisperTrainer.training_step

    def spy(self, *args, **kwargs):
        seen.append(self.accelerator.mixed_precision)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WhisperTrainer, "training_step", spy)
    with caplog.at_level("WARNING", logger="whisper_finetune.train.trainer"):
        summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "fp32", mixed_precision="fp32",
                                     num_steps=2, eval_steps=2))
    assert summary.precision == "fp32" and seen == ["no", "no"]
    assert f"ACCELERATE_MIXED_PRECISION={leftover} in the environment is overridden by --mixed_precision (fp32)" \
        in caplog.text


def test_lora_saves_a_merged_model_and_the_adapter(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "lora"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, lora=True, lora_r=4, lora_alpha=8,
                                 num_steps=2, eval_steps=2, learning_rate=1e-2))
    assert summary.global_step == 2
    assert os.path.exists(out / "adapter" / "adapter_config.json")
    assert not os.path.exists(out / "adapter_config.json")
    merged = WhisperForConditionalGeneration.from_pretrained(out)
    assert merged.generation_config.language == "hi"
    base = weights(tiny_model_dir)
    name = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[name], base[name])
    from_adapter = loading.load_model(str(out / "adapter"))  # merges the adapter into its base
    assert torch.allclose(from_adapter.state_dict()[name], merged.state_dict()[name], atol=1e-5)
    assert from_adapter.generation_config.language == "hi"


@pytest.mark.slow
def test_torchrun_two_processes_rank_zero_writes(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = str(tmp_path / "ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               os.path.join(REPO_ROOT, CUSTOM), "--model_name", tiny_model_dir, "--language", "hi", "--train_datasets",
               tiny_dataset_dir, "--eval_datasets", tiny_dataset_dir, "--num_steps", 2, "--eval_steps", 2,
               "--output_dir", out, "--train_batchsize", 2, "--eval_batchsize", 2, "--max_eval_samples", 4,
               "--generation_max_new_tokens", 4, "--num_proc", 2, "--report_to", "tensorboard"]
    proc = subprocess.run(list(map(str, command)), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = summary_of(out)
    assert summary.world_size == 2 and summary.global_step == 2 and summary.samples_trained == 8
    assert os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(os.path.join(out, PLOT_FILE))
    # one writer: a single TensorBoard event file and one "wrote" line for the plot and the model
    assert len(glob.glob(os.path.join(out, "runs", "*", "events.out.tfevents.*"))) == 1
    assert proc.stderr.count("wrote the training curve") == 1
    assert proc.stdout.count("best eval WER:") == 1


@pytest.mark.parametrize("language, best_step", [("ja", 2), ("es", 4)])
def test_best_checkpoint_is_chosen_by_the_primary_metric(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch,
                                                         language, best_step):
    """Evaluations at steps 2 and 4 score (WER 0.5, CER 0.2) then (WER 0.4, CER 0.6): by CER (Japanese, written
    without spaces between words) step 2 is best, by WER (Spanish) step 4."""
    from whisper_finetune import scoring

    scripted = iter([{"wer": 0.5, "cer": 0.2}, {"wer": 0.4, "cer": 0.6}])
    real_score = scoring.score

    def scripted_score(references, hypotheses, normalizer, metric="wer"):
        result = {**real_score(references, hypotheses, normalizer, metric), **next(scripted)}
        return {**result, "score": result[metric]}

    monkeypatch.setattr(scoring, "score", scripted_score)
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", language=language))
    assert summary.primary_metric == ("cer" if language == "ja" else "wer")
    assert summary.best_step == best_step and summary.best_checkpoint.endswith(f"checkpoint-{best_step}")
    card = open(os.path.join(summary.output_dir, "README.md"), encoding="utf-8").read()
    assert f"The best checkpoint was chosen by {summary.primary_metric.upper()}" in card


# --------------------------------------------------------------------------------------------- timestamps
def test_kaldi_segments_train_with_timestamps_end_to_end(tiny_model_dir, tmp_path):
    """data_prep of a Kaldi directory (wav.scp + segments), then --timestamps: each recording's segments
    are packed into one window whose labels carry its segments' times; the overlapping segment that
    data_prep keeps (with a warning) is left out of the windows and counted."""
    from test_data_prep import SEGMENTS, write_kaldi_dir
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset
    from whisper_finetune.data.features import featurize_windows

    good = [s for s in SEGMENTS if s[0] in ("recA-0000", "recA-0120", "recA-0300", "recB-0050", "recB-0426")]
    source, _ = write_kaldi_dir(str(tmp_path / "kaldi"), segments=good)
    data = str(tmp_path / "data")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=data))
    out = tmp_path / "out"
    summary = train(quick_config(tiny_model_dir, data, out, timestamps=True, timestamp_ratio=1.0))
    assert summary.filtering["train"] == {"kept": 2, "dropped_over_30s": 0, "dropped_labels_over_448_tokens": 0,
                                          "windows": 2, "windows_with_timestamps": 2,
                                          "dropped_segments_over_30s": 0, "dropped_overlapping_segments": 1}
    assert summary.eval_samples == 4  # evaluation stays on the utterances, <|notimestamps|>
    with open(out / "config.json", encoding="utf-8") as f:
        assert json.load(f)["timestamp_training"] == {"ratio": 1.0}

    import datasets

    processor = loading.load_processor(tiny_model_dir)
    tokenizer = processor.tokenizer
    tokenizer.set_prefix_tokens(language="hi", task="transcribe", predict_timestamps=False)
    windows, _ = featurize_windows(datasets.load_from_disk(data), processor, 16000, 1.0)
    # recA: 0-1.5 and 3.0-6.005 (1.2-2.8 overlaps and is left out); recB: 0.5-2.0 and 4.26-7.99.
    # Each window may start up to 2 s early (never before the recording): times are relative to it.
    rows = [tokenizer.convert_ids_to_tokens(r["labels"]) for r in windows]
    spans = sorted(([float(t[2:-2]) for t in tokens if re.fullmatch(r"<\|\d+\.\d\d\|>", t)], row["input_length"])
                   for tokens, row in zip(rows, windows))
    assert len(spans) == 2
    for (times, seconds), truth in zip(spans, ([0.0, 1.5, 3.0, 6.005], [0.5, 2.0, 4.26, 7.99])):
        window_start = truth[0] - times[0]
        assert 0.0 <= window_start <= truth[0] + 0.011  # never before the recording
        assert times == pytest.approx([t - window_start for t in truth], abs=0.011)  # 0.02 s steps
        assert seconds == pytest.approx(truth[-1] - window_start, abs=0.011)  # the window ends with the recording
    assert all(tokens[:3] == ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>"] for tokens in rows)
    assert all("<|notimestamps|>" not in tokens and tokens[-1] == "<|endoftext|>" for tokens in rows)


def test_timestamp_ratio_zero_trains_notimestamps_windows_ending_at_their_last_segment(tiny_model_dir, tmp_path):
    from test_data_prep import SEGMENTS, write_kaldi_dir
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset
    from whisper_finetune.data.features import featurize_windows
    import datasets

    good = [s for s in SEGMENTS if s[0] in ("recB-0050", "recB-0426")]
    source, _ = write_kaldi_dir(str(tmp_path / "kaldi"), segments=good)
    data = str(tmp_path / "data")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=data))
    processor = loading.load_processor(tiny_model_dir)
    processor.tokenizer.set_prefix_tokens(language="hi", task="transcribe", predict_timestamps=False)
    windows, counts = featurize_windows(datasets.load_from_disk(data), processor, 16000, 0.0)
    assert counts["windows"] == 1 and counts["windows_with_timestamps"] == 0
    tokens = processor.tokenizer.convert_ids_to_tokens(windows[0]["labels"])
    assert tokens[:4] == ["<|startoftranscript|>", "<|hi|>", "<|transcribe|>", "<|notimestamps|>"]
    assert processor.tokenizer.decode(windows[0]["labels"], skip_special_tokens=True) == \
        "sentence number 1 sentence number 0"  # time order: recB-0050 (0.5 s) is the second line of segments
    # the window starts 0 .. 0.5 s before 0.5 s and ends at the last segment's end, 7.99 s
    assert 7.49 - 1e-3 <= windows[0]["input_length"] <= 7.99 + 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"timestamp_ratio": 1.5}, "--timestamp_ratio 1.5: must be between 0 and 1"),
    ({"timestamps": True, "dynamic_audio_context": True},
     "--timestamps True with --dynamic_audio_context True: timestamp windows fill Whisper's 30 s"),
])
def test_bad_timestamp_options_are_refused(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
