"""--distill_weight: the fine-tune held to the base model's token distributions (whisper_finetune.train.distillation)."""
import logging
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from test_train import quick_config, summary_of
from whisper_finetune.train.distillation import TEMPERATURE, Distiller, load_teacher, token_kl
from whisper_finetune.errors import UserError
from whisper_finetune.train import checks as train_checks
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.run import train


def _by_hand(student, teacher, mask, temperature):
    """token_kl written out one position at a time."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not mask[b, t]:
                continue
            p = F.softmax(teacher[b, t] / temperature, -1)
            q = F.softmax(student[b, t] / temperature, -1)
            total += float((p * (p.log() - q.log())).sum())
            count += 1
    return total / count * temperature ** 2


def record_training_losses(monkeypatch, term):
    """Spy on every training step's loss: a list that fills with ``(loss, cross entropy, term)``, ``term`` the
    figure ``term(trainer, outputs, inputs)`` gives for the step (computed again, without gradients)."""
    from whisper_finetune.train.trainer import WhisperTrainer

    seen = []
    original = WhisperTrainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(self, model, inputs, True, num_items_in_batch)
        if model.training:
            with torch.no_grad():
                seen.append((float(loss.detach()), float(outputs.loss.detach()),
                             float(term(self, outputs, inputs))))
        return (loss, outputs) if return_outputs else loss

    monkeypatch.setattr(WhisperTrainer, "compute_loss", spy)
    return seen


@pytest.mark.parametrize("case, expected", [
    ("same logits", 0.0),
    ("different only where masked", 0.0),
    ("different", "by hand"),
    ("different, temperature 1", "by hand"),
])
def test_token_kl(case, expected):
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 7, generator=generator)  # (batch, tokens, vocabulary)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    student = teacher.clone()
    temperature = 1.0 if "temperature 1" in case else TEMPERATURE
    if case == "different only where masked":
        student[~mask] += torch.randn(3, 7, generator=generator)
    elif case.startswith("different"):
        student += torch.randn(2, 3, 7, generator=generator)
    got = float(token_kl(student, teacher, mask, temperature))
    if expected == "by hand":
        expected = _by_hand(student, teacher, mask, temperature)
        assert expected > 0.01
    assert got == pytest.approx(expected, abs=1e-6)


def test_the_term_is_zero_for_the_base_model_and_grows_as_the_fine_tune_moves(tiny_model_dir):
    teacher = load_teacher(tiny_model_dir, "hi", "transcribe", False, "cpu")
    student = load_teacher(tiny_model_dir, "hi", "transcribe", False, "cpu")
    distiller = Distiller(teacher, weight=3.0)
    generator = torch.Generator().manual_seed(1)
    inputs = {"input_features": torch.randn(2, 80, 3000, generator=generator),
              "labels": torch.tensor([[5, 10, 11, 12, 3], [5, 13, 14, 3, -100]])}  # (batch, tokens)
    with torch.no_grad():
        assert float(distiller.loss(student(**inputs), inputs)) == pytest.approx(0.0, abs=1e-6)
        terms = []
        for scale in (0.01, 0.1):
            for parameter in student.model.decoder.layers[0].fc1.parameters():
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
            outputs = student(**inputs)
            expected = 3.0 * float(token_kl(outputs.logits, teacher(**inputs).logits, inputs["labels"] != -100))
            terms.append(float(distiller.loss(outputs, inputs)))
            assert terms[-1] == pytest.approx(expected, rel=1e-5)
    assert 0 < terms[0] < terms[1]
    # Only the decoder moved, as with --freeze_encoder: the teacher may run its decoder on the student's
    # encoder output and get the same term.
    sharing = Distiller(teacher, weight=3.0, share_encoder=True)
    with torch.no_grad():
        outputs = student(**inputs)
        assert float(sharing.loss(outputs, inputs)) == pytest.approx(terms[1], rel=1e-5)


def test_a_training_step_pays_the_term_and_the_run_records_it(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                             monkeypatch, caplog):
    # The loss each step returns is the model's cross entropy plus the weighted term: step 1 adds nothing
    # (the fine-tune is still the base model), later steps add exactly the Distiller's figure.
    seen = record_training_losses(monkeypatch, lambda trainer, outputs, inputs: trainer.parts.distiller.loss(
        outputs, inputs))
    out = tmp_path / "distilled"
    with caplog.at_level(logging.INFO, logger="whisper_finetune.train"):
        summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, distill_weight=2.0, num_steps=3,
                                     eval_steps=3, learning_rate=1e-2))
    assert summary.global_step == 3 and len(seen) == 3
    assert seen[0][2] == pytest.approx(0.0, abs=1e-6)
    assert all(term > 1e-4 for _, _, term in seen[1:])
    assert all(total == pytest.approx(cross_entropy + term, rel=1e-5) for total, cross_entropy, term in seen)
    assert "distillation to the base model: weight 2 x KL per label token (temperature 2)" in caplog.text
    assert summary_of(out).config["distill_weight"] == 2.0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Distillation: each training step added 2 x the KL divergence from the base model's" in card


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_teacher_runs_at_the_training_precision(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch,
                                                   precision):
    # accelerate's autocast wraps the student's forward only; the teacher's pass must be under it too
    seen = []
    original = Distiller.loss

    def spy(self, outputs, inputs, rows=None):
        handle = self.teacher.register_forward_hook(lambda module, args, output: seen.append(output.logits.dtype))
        try:
            return original(self, outputs, inputs, rows)
        finally:
            handle.remove()

    monkeypatch.setattr(Distiller, "loss", spy)
    monkeypatch.setattr(train_checks, "cpu_bf16_slowdown", lambda: 0.8)  # bf16 runs here whatever the CPU
    train(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", distill_weight=1.0, num_steps=2,
                       eval_steps=2, mixed_precision=precision))
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32] * 2


@pytest.mark.parametrize("weight", [-0.5, math.nan])
def test_a_bad_weight_is_refused(tiny_model_dir, tiny_dataset_dir, tmp_path, weight):
    with pytest.raises(UserError, match=re.escape(f"--distill_weight {weight}: must be 0 (off) or more")):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", distill_weight=weight))
    assert not os.path.exists(tmp_path / "out")


# --------------------------------------------------------------------------------------------- --distill_rows replay
def test_rows_limit_the_term_to_those_rows_and_the_teacher_sees_only_them(tiny_model_dir):
    teacher = load_teacher(tiny_model_dir, "hi", "transcribe", False, "cpu")
    student = load_teacher(tiny_model_dir, "hi", "transcribe", False, "cpu")
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in student.model.decoder.layers[0].fc1.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    inputs = {"input_features": torch.randn(3, 80, 3000, generator=generator),
              "labels": torch.tensor([[5, 10, 11, 12, 3], [5, 13, 14, 3, -100], [5, 15, 3, -100, -100]])}
    batch_sizes = []
    teacher.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(
        kwargs["input_features"].shape[0]), with_kwargs=True)
    distiller = Distiller(teacher, weight=2.0)
    with torch.no_grad():
        outputs = student(**inputs)
        rows = torch.tensor([False, True, True])
        subset = {name: value[rows] for name, value in inputs.items()}
        expected = float(distiller.loss(student(**subset), subset))  # the term of a batch of rows 1 and 2 alone
        batch_sizes.clear()
        got = float(distiller.loss(outputs, inputs, rows))
        assert batch_sizes == [2]  # the teacher ran on the two replay rows only
        assert got == pytest.approx(expected, rel=1e-5) and got > 1e-4
        assert got != pytest.approx(float(distiller.loss(outputs, inputs)), rel=1e-3)  # not the whole batch's
        batch_sizes.clear()
        assert float(distiller.loss(outputs, inputs, torch.tensor([False, False, False]))) == 0.0
        assert batch_sizes == []  # a batch without replay rows costs no teacher pass
        with pytest.raises(RuntimeError, match=re.escape("--distill_rows replay: a training batch came without "
                                                         "its replay-row flags")):
            Distiller(teacher, weight=2.0, replay_only=True).loss(outputs, inputs)


def test_replay_rows_alone_pay_the_term_in_a_run(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch, caplog):
    from test_replay_augment import prepared

    replay, _ = prepared(tmp_path, "replay")
    seen = []
    original = Distiller.loss

    def spy(self, outputs, inputs, rows=None):
        seen.append(None if rows is None else rows.tolist())
        return original(self, outputs, inputs, rows)

    monkeypatch.setattr(Distiller, "loss", spy)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="whisper_finetune.train"):
        train(quick_config(tiny_model_dir, tiny_dataset_dir, out, replay_datasets=(replay,), replay_language="en",
                           replay_ratio=0.5, train_batchsize=16, num_steps=2, eval_steps=2, distill_weight=1.0,
                           distill_rows="replay"))
    # 8 training rows + 8 replay rows, one batch of 16 per step: each step's rows are half replay
    assert len(seen) == 2 and all(len(rows) == 16 and sum(rows) == 8 for rows in seen)
    assert "distillation to the base model: weight 1 x KL per label token (temperature 2), on the replay rows " \
           "only" in caplog.text
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "(temperature 2, per label token on its replay rows)" in card


@pytest.mark.parametrize("overrides", [{"distill_weight": 1.0}, {"replay_datasets": ("somewhere",)}])
def test_distill_rows_replay_needs_a_weight_and_replay_sets(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides):
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", distill_rows="replay", **overrides)
    with pytest.raises(UserError, match="^" + re.escape("--distill_rows replay holds the replayed rows to the base model: "
                                                        "it needs --distill_weight above 0 and --replay_datasets or "
                                                        "--replay_audio") + "$"):
        check_config(config)


def test_an_unknown_distill_rows_lists_the_choices(tiny_model_dir, tiny_dataset_dir, tmp_path):
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", distill_rows="train")
    with pytest.raises(UserError, match=re.escape("--distill_rows train: choose one of all, replay")):
        check_config(config)
