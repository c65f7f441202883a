"""Retain sets (scored before training and at every evaluation), the best-model choice between eval and
retain figures, early stopping and the non-finite-step guard, on the tiny random Whisper.

The tiny model's WER is 1.0 everywhere, so the tests that depend on the figures script them: each call
of ``scoring.score`` (one per set and evaluation, eval set first) takes the next scripted WER/CER.
"""
import json
import os
import re
import shutil

import pytest
import torch
from transformers import Trainer, WhisperForConditionalGeneration

from conftest import run_script, write_corpus
from test_train import CUSTOM, QUICK, quick_config, summary_of, weights
from whisper_finetune.train import checkpoints
from whisper_finetune.model import loading
from whisper_finetune import scoring
from whisper_finetune.errors import TrainingDiverged, UserError
from whisper_finetune.train.summary import PLOT_FILE, SUMMARY_FILE, format_summary, plot_history
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.model_setup import retain_decode_kwargs, retain_processor
from whisper_finetune.train.run import train


class Scripted:
    """Stands in for ``scoring.score``: the next scripted (WER, CER) per call, real figures once they run out;
    records the normaliser of every call."""

    def __init__(self, figures):
        self.figures = list(figures)
        self.normalizers = []
        self.real = scoring.score

    def __call__(self, references, hypotheses, normalizer, metric="wer"):
        self.normalizers.append(normalizer)
        result = self.real(references, hypotheses, normalizer, metric)
        if self.figures:
            wer, cer = self.figures.pop(0)
            result = {**result, "wer": wer, "cer": cer}
        return {**result, "score": result[metric]}


def history(out):
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        return json.load(f)["log_history"]


def evaluations(out, key="eval_retain_wer"):
    return {e["step"]: e for e in history(out) if key in e}


@pytest.fixture(scope="module")
def second_dataset_dir(tmp_path_factory):
    """A second, smaller data_prep dataset (4 clips), so a run can have two retain datasets."""
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    root = tmp_path_factory.mktemp("second-data")
    out = str(root / "prepared")
    prepare_dataset(DataPrepConfig(source_data_dir=write_corpus(str(root / "src"), n=4), output_data_dir=out))
    return out


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("overrides, message", [
    ({"metric_for_best_model": "retain_wer"},
     "--metric_for_best_model retain_wer: needs --retain_datasets (without them choose wer)"),
    ({"metric_for_best_model": "combined"},
     "--metric_for_best_model combined: needs --retain_datasets (without them choose wer)"),
    ({"metric_for_best_model": "loss"}, "--metric_for_best_model loss: choose one of wer, retain_wer, combined"),
    ({"early_stopping_patience": 0}, "--early_stopping_patience 0: must be at least 1"),
    ({"retain_language": "en"}, "--retain_language en: needs --retain_datasets"),
    ({"retain_dataset_splits": ("test",)}, "--retain_dataset_splits test: needs --retain_datasets"),
    ({"retain_datasets": ("/no/such/retain",)}, "/no/such/retain: no such dataset folder"),
    ({"retain_datasets": ("DATA",), "retain_language": "Klingon"},
     "--retain_language Klingon: unknown language 'Klingon'"),
    ({"custom": False, "retain_datasets": ("DATA",), "retain_dataset_splits": ("test", "validation")},
     "--retain_datasets (1), --retain_dataset_splits (2)"),
])
def test_bad_retain_options_are_refused_before_any_work(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides,
                                                        message):
    if overrides.get("retain_datasets") == ("DATA",):
        overrides = {**overrides, "retain_datasets": (tiny_dataset_dir,)}
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
    assert not os.path.exists(tmp_path / "out")


def test_retain_language_defaults_to_the_base_models_behaviour(tiny_model_dir, tiny_en_model_dir, tiny_dataset_dir,
                                                               tmp_path):
    def checked(model, **overrides):
        return check_config(quick_config(model, tiny_dataset_dir, tmp_path / "out", retain_datasets=(tiny_dataset_dir,),
                                         **overrides)).retain_language

    assert checked(tiny_model_dir) is None  # multilingual, no saved language: detected per clip
    assert checked(tiny_model_dir, retain_language="English") == "en"
    assert checked(tiny_en_model_dir, language=None) is None  # English-only: no language token
    assert checked(tiny_en_model_dir, language=None, retain_language="en") is None
    with pytest.raises(UserError, match=re.escape("--retain_language hi: the model is English-only (.en) and "
                                                  "decodes no other language; give en or None")):
        checked(tiny_en_model_dir, language=None, retain_language="hi")


def test_retain_labels_and_decoding_carry_the_retain_language(tiny_model_dir, tiny_en_model_dir, tiny_dataset_dir,
                                                              tmp_path):
    def prefix(model, language, english_only):
        tokenizer = retain_processor(model, language, english_only).tokenizer
        return tokenizer.convert_ids_to_tokens(tokenizer("the cat").input_ids[:4])

    assert prefix(tiny_model_dir, "en", False) == ["<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                   "<|notimestamps|>"]
    assert prefix(tiny_model_dir, None, False)[:3] == ["<|startoftranscript|>", "<|transcribe|>", "<|notimestamps|>"]
    assert prefix(tiny_en_model_dir, None, True)[:2] == ["<|startoftranscript|>", "<|notimestamps|>"]

    model = loading.load_model(tiny_model_dir)
    loading.set_language_and_task(model, "hi")
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out")
    detected = retain_decode_kwargs(model.generation_config, None, False, config)["generation_config"]
    assert (detected.language, detected.task) == (None, "transcribe")
    assert model.generation_config.language == "hi"  # the trained model's own config is left as it was


# --------------------------------------------------------------------------------------------- runs
def test_retain_sets_are_scored_at_step_0_and_every_evaluation(tiny_model_dir, tiny_dataset_dir, second_dataset_dir,
                                                               tmp_path, monkeypatch):
    """Train Hindi with an English retain group of two datasets: each evaluation decodes the eval set in Hindi
    and the retain sets in English, scores them with their own normalisers, and the figures reach the log,
    TensorBoard, the curve, the summary and the model card; a resumed run does not evaluate step 0 again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    languages = []
    real_generate = WhisperForConditionalGeneration.generate

    def recording_generate(self, *args, **kwargs):
        config = kwargs.get("generation_config") or self.generation_config
        languages.append(kwargs.get("language", config.language))
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", recording_generate)
    # (eval, retain) at steps 0, 2 and 4; the two per-dataset retain scores of the final model are real
    scripted = Scripted([(0.9, 0.8), (0.30, 0.20), (0.5, 0.4), (0.32, 0.25), (0.6, 0.5), (0.40, 0.30)])
    monkeypatch.setattr(scoring, "score", scripted)
    out = tmp_path / "out"
    retain_sets = (tiny_dataset_dir, second_dataset_dir)
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, retain_datasets=retain_sets,
                                 retain_language="en", report_to="tensorboard"))

    assert languages == ["hi", "en"] * 3 + ["en", "en"]
    assert scripted.normalizers == ["unicode", "english"] * 3 + ["english", "english"]
    steps = evaluations(out)
    assert sorted(steps) == [0, 2, 4]
    assert [steps[s]["eval_wer"] for s in (0, 2, 4)] == [0.9, 0.5, 0.6]  # the eval set keeps its keys
    assert [steps[s]["eval_retain_cer"] for s in (0, 2, 4)] == [0.20, 0.25, 0.30]
    assert [steps[s]["eval_combined"] for s in (0, 2, 4)] == pytest.approx([0.9, 0.52, 0.70])
    events = EventAccumulator(str(next((out / "runs").iterdir()))).Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("eval/retain_wer")] == [(0, 0.3), (2, 0.32), (4, 0.4)]

    assert summary.best_step == 2 and summary.best_model_metric == "wer"
    written = summary_of(out)
    assert (written.retain_wer_before, written.retain_wer_after) == (0.30, 0.32)
    assert written.retain_wer_change == pytest.approx(0.02) and written.retain_cer_change == pytest.approx(0.05)
    assert (written.eval_wer_before, written.retain_language, written.retain_normalizer) == (0.9, "en", "english")
    assert written.retain_samples == 4 and written.filtering["retain"] == {
        "kept": 4, "dropped_over_30s": 0, "dropped_labels_over_448_tokens": 0}
    assert [(row["dataset"], row["samples"]) for row in written.retain_per_dataset] == [(tiny_dataset_dir, 4),
                                                                                       (second_dataset_dir, 4)]
    assert "retain WER 0.3000 -> 0.3200 (+0.0200), CER 0.2000 -> 0.2500 (+0.0500)" in format_summary(summary)

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "### Keeping what the model knew" in card
    assert (f"| `{tiny_dataset_dir}`, `{second_dataset_dir}` (combined, 4 utterances) | 0.3000 | 0.3200 | +0.0200 | "
            f"0.2000 | 0.2500 | +0.0500 |") in card
    assert f"| retain | `{second_dataset_dir}` | kaldi | - | - |" in card

    assert os.path.getsize(out / PLOT_FILE) > 1000
    assert plot_history(history(out), str(tmp_path / "curve.png")) == ["training loss", "eval WER", "retain WER"]
    without_retain = [{k: v for k, v in e.items() if not k.startswith("eval_retain")} for e in history(out)]
    assert plot_history(without_retain, str(tmp_path / "plain.png")) == ["training loss", "eval WER"]

    resumed = tmp_path / "resumed"
    os.makedirs(resumed)
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    monkeypatch.setattr(scoring, "score", Scripted([(0.6, 0.5), (0.40, 0.30)]))
    again = train(quick_config(tiny_model_dir, tiny_dataset_dir, resumed, retain_datasets=retain_sets,
                               retain_language="en", resume_from_ckpt="latest"))
    steps = evaluations(resumed)
    assert sorted(steps) == [0, 2, 4]  # step 0 comes from the checkpoint's history, not a second evaluation
    assert steps[4]["eval_combined"] == pytest.approx(0.70)  # measured against the first run's step 0
    assert again.retain_wer_before == 0.30


@pytest.mark.parametrize("choice, best_step", [("wer", 6), ("retain_wer", 2), ("combined", 4)])
def test_metric_for_best_model_chooses_the_final_checkpoint(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch,
                                                            choice, best_step):
    """(eval WER, retain WER) at steps 0, 2, 4, 6: (0.9, 0.30), (0.50, 0.31), (0.30, 0.34), (0.25, 0.60): the eval
    WER is lowest at step 6, the retain WER at step 2, eval WER + retain increase (0.51, 0.34, 0.55) at step 4."""
    scripted = Scripted([(0.9, 0.9), (0.30, 0.1), (0.50, 0.5), (0.31, 0.1), (0.30, 0.3), (0.34, 0.1), (0.25, 0.2),
                         (0.60, 0.1)])
    monkeypatch.setattr(scoring, "score", scripted)
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", num_steps=6,
                                 retain_datasets=(tiny_dataset_dir,), metric_for_best_model=choice))
    assert summary.best_model_metric == choice
    assert summary.best_step == best_step and summary.best_checkpoint.endswith(f"checkpoint-{best_step}")
    kept, final = weights(summary.best_checkpoint), weights(summary.output_dir)
    assert all(torch.equal(kept[k], final[k]) for k in final)
    assert summary.retain_wer_after == {2: 0.31, 4: 0.34, 6: 0.60}[best_step]
    card = open(os.path.join(summary.output_dir, "README.md"), encoding="utf-8").read()
    sentence = {"wer": "The best checkpoint was chosen by WER.",
                "retain_wer": "The best checkpoint was chosen by the retain sets' WER",
                "combined": "The best checkpoint was chosen by eval WER plus the increase of the retain sets' WER"}
    assert sentence[choice] in card


@pytest.mark.parametrize("choice, figures, stopped_at, best_step", [
    # eval WER 0.5, 0.6, 0.7: two evaluations without improvement after step 1
    ("wer", [(0.5, 0.5), (0.6, 0.6), (0.7, 0.7)], 3, 1),
    # (eval, retain) at steps 0-4; the retain WER is best at step 2, then worse twice (the eval WER improving)
    ("retain_wer", [(0.9, 0.9), (0.3, 0.3), (0.8, 0.8), (0.4, 0.4), (0.7, 0.7), (0.35, 0.35), (0.6, 0.6),
                    (0.5, 0.5), (0.5, 0.5), (0.45, 0.45)], 4, 2),
])
def test_early_stopping_after_patience_evaluations_without_improvement(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                       monkeypatch, choice, figures, stopped_at,
                                                                       best_step):
    monkeypatch.setattr(scoring, "score", Scripted(figures))
    retain = {"retain_datasets": (tiny_dataset_dir,)} if choice != "wer" else {}
    out = tmp_path / "out"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=8, eval_steps=1,
                                 early_stopping_patience=2, metric_for_best_model=choice, **retain))
    assert summary.global_step == stopped_at and summary.early_stopped_at == stopped_at
    assert summary.best_step == best_step
    assert sorted(os.path.basename(p) for p in os.listdir(out) if p.startswith("checkpoint-")) == \
        [f"checkpoint-{n}" for n in range(1, stopped_at + 1)]
    assert f"early stopping at step {stopped_at} (--early_stopping_patience 2)" in format_summary(summary)


# --------------------------------------------------------------------------------------------- guard
def test_a_nan_loss_stops_at_once_and_saves_nothing_of_it(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch):
    real_step = Trainer.training_step

    def nan_at_step_3(self, *args, **kwargs):
        loss = real_step(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_at_step_3)
    out = tmp_path / "out"
    checkpoint = os.path.join(str(out), "checkpoint-2")
    with pytest.raises(TrainingDiverged) as raised:
        train(quick_config(tiny_model_dir, tiny_dataset_dir, out, learning_rate=1e-3))
    assert str(raised.value) == ("training diverged at step 3 (learning rate 0.0005): the loss is nan; stopped "
                                 f"without saving this state, the last good checkpoint is {checkpoint}; try a "
                                 "lower --learning_rate")
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint")) == ["checkpoint-2"]
    for written in ("model.safetensors", "config.json", SUMMARY_FILE, "README.md", PLOT_FILE):
        assert not os.path.exists(out / written), written
    assert checkpoints.missing_parts(checkpoint) == []
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_huge_learning_rate_stops_the_script_with_one_line(tiny_model_dir, tiny_dataset_dir, tmp_path):
    """Learning rate 1e4: the first update blows the weights up, and step 2's gradient norm is not finite."""
    out = str(tmp_path / "out")
    proc = run_script(CUSTOM, "--model_name", tiny_model_dir, "--language", "hi", "--train_datasets", tiny_dataset_dir,
                      "--eval_datasets", tiny_dataset_dir, "--num_steps", 4, "--eval_steps", 1, "--learning_rate",
                      "1e4", "--output_dir", out, *QUICK)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().split("\n")[-1]
    checkpoint = os.path.join(out, "checkpoint-1")
    assert last.startswith("error: training diverged at step 2 (learning rate 7.5e+03): the gradient norm is ")
    assert last.endswith(f"; stopped without saving this state, the last good checkpoint is {checkpoint}; try a "
                         "lower --learning_rate")
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint")) == ["checkpoint-1"]
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    assert not os.path.exists(os.path.join(out, SUMMARY_FILE))
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint)
    assert all(torch.isfinite(p).all() for p in model.parameters())
