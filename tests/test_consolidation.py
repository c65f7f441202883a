"""--ewc_weight: elastic weight consolidation to the base model (whisper_finetune.train.consolidation)."""
import logging
import math
import re

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from test_distillation import record_training_losses
from test_train import quick_config, summary_of
from whisper_finetune.data.features import FEATURE_COLUMN, LABEL_COLUMN, LENGTH_COLUMN, SAMPLES_COLUMN
from whisper_finetune.errors import UserError
from whisper_finetune.model import loading
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.consolidation import Consolidation, FisherEstimate, fisher_diagonal
from whisper_finetune.train.run import train


def _frozen_encoder_model(model_dir):
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    model.freeze_encoder()
    return model


def _rows(model_dir, audio=False):
    """Two replay rows as the training data holds them: labels with the start token, features or audio."""
    processor = loading.load_processor(model_dir)
    tokens = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"])
    generator = np.random.default_rng(3)
    rows = []
    for words in ([11, 12, 13, 14], [15, 16]):
        clip = (0.1 * generator.standard_normal(16000)).astype(np.float32)
        row = {LABEL_COLUMN: np.array(tokens + words + [processor.tokenizer.eos_token_id]), LENGTH_COLUMN: 1.0}
        if audio:
            row[SAMPLES_COLUMN] = clip
        else:
            row[FEATURE_COLUMN] = processor.feature_extractor(clip, sampling_rate=16000).input_features[0]
        rows.append(row)
    return rows, processor.feature_extractor


def test_the_fisher_is_the_squared_gradient_of_each_clips_log_likelihood_per_label_token(tiny_model_dir):
    model = _frozen_encoder_model(tiny_model_dir)
    rows, extractor = _rows(tiny_model_dir)
    fisher, estimate = fisher_diagonal(model, rows, extractor, "cpu")

    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert set(fisher) == set(trained) and not any(name.startswith("model.encoder") for name in fisher)
    by_hand = {name: torch.zeros_like(p) for name, p in trained.items()}
    tokens = 0
    for row in rows:
        labels = torch.tensor(row[LABEL_COLUMN][1:])[None]  # (1, tokens): the start token is the model's to add
        model.zero_grad()
        (model(input_features=torch.tensor(row[FEATURE_COLUMN])[None], labels=labels).loss * labels.shape[1]).backward()
        for name, p in trained.items():
            by_hand[name] += p.grad ** 2
        tokens += labels.shape[1]
    for name in trained:
        assert torch.allclose(fisher[name], by_hand[name] / tokens, rtol=1e-4, atol=1e-12), name
    assert tokens == (3 + 4 + 1) + (3 + 2 + 1)  # <|en|><|transcribe|><|notimestamps|>, words, <|endoftext|>
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    assert dataclass_without_seconds(estimate) == (2, tokens, sum(p.numel() for p in trained.values()))


def dataclass_without_seconds(estimate: FisherEstimate):
    return estimate.clips, estimate.label_tokens, estimate.parameters


def test_rows_kept_as_audio_give_the_fisher_of_their_clean_features(tiny_model_dir):
    # --augment keeps the replay rows' audio; the Fisher is computed on it unaugmented
    model = _frozen_encoder_model(tiny_model_dir)
    as_features, extractor = _rows(tiny_model_dir)
    as_audio, _ = _rows(tiny_model_dir, audio=True)
    from_features, _ = fisher_diagonal(model, as_features, extractor, "cpu")
    from_audio, _ = fisher_diagonal(model, as_audio, extractor, "cpu")
    for name in from_features:
        assert torch.allclose(from_audio[name], from_features[name], rtol=1e-4, atol=1e-12), name


def test_the_term_is_zero_at_the_base_model_and_pulls_each_weight_by_weight_x_fisher_x_move(tiny_model_dir):
    model = _frozen_encoder_model(tiny_model_dir)
    held = dict(model.named_parameters())
    names = ["model.decoder.layers.0.fc1.weight", "model.decoder.layers.1.self_attn.k_proj.weight"]
    generator = torch.Generator().manual_seed(4)
    fisher = {name: torch.rand(held[name].shape, generator=generator) for name in names}
    term = Consolidation(model, fisher, 3.0, FisherEstimate(1, 1, 1, 0.0))
    assert float(term.loss().detach()) == 0.0
    moves = {name: 0.01 * torch.randn(held[name].shape, generator=generator) for name in names}
    with torch.no_grad():
        for name in names:
            held[name].add_(moves[name])
        held["model.decoder.layers.0.fc2.weight"].add_(1.0)  # a weight without a Fisher: not held
    expected = 3.0 / 2 * sum(float((fisher[n] * moves[n] ** 2).sum()) for n in names)
    loss = term.loss()
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4) and expected > 1e-3
    loss.backward()
    for name in names:
        assert torch.allclose(held[name].grad, 3.0 * fisher[name] * moves[name], rtol=1e-4, atol=1e-9)
    assert held["model.decoder.layers.0.fc2.weight"].grad is None


def test_a_run_pays_the_term_at_each_step_and_records_its_fisher(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                monkeypatch, caplog):
    from test_replay_augment import prepared

    replay, _ = prepared(tmp_path, "replay")
    seen = record_training_losses(monkeypatch, lambda trainer, outputs, inputs: trainer.parts.consolidation.loss())
    out = tmp_path / "held"
    with caplog.at_level(logging.INFO, logger="whisper_finetune.train"):
        summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, replay_datasets=(replay,),
                                     replay_language="en", replay_ratio=0.5, ewc_weight=50.0, num_steps=3,
                                     eval_steps=3, learning_rate=1e-2, freeze_encoder=True))
    assert len(seen) == 3
    assert seen[0][2] == 0.0  # step 1: the fine-tune is still the base model
    assert all(term > 1e-6 for _, _, term in seen[1:])
    assert all(total == pytest.approx(cross_entropy + term, rel=1e-5) for total, cross_entropy, term in seen)
    recorded = summary_of(out).consolidation
    assert recorded["weight"] == 50.0 and recorded["fisher"]["clips"] == 4  # the replay set's four clips, once each
    assert recorded["final_estimated_kl"] > 0 and summary.consolidation == recorded
    assert re.search(r"elastic weight consolidation: weight 50; Fisher of \d+ trained weights on 4 replay clip\(s\)",
                     caplog.text)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Elastic weight consolidation: each training step added 50 / 2 x sum F (weight - base weight)^2" in card


def test_a_heavier_weight_keeps_the_fine_tune_nearer_the_base_model(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from test_replay_augment import prepared

    replay, _ = prepared(tmp_path, "replay")
    distance = {}
    for weight in (1e-6, 1e4):
        summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / f"w{weight:g}",
                                     replay_datasets=(replay,), replay_language="en", replay_ratio=0.5,
                                     ewc_weight=weight, num_steps=6, eval_steps=6, learning_rate=1e-2,
                                     freeze_encoder=True))
        distance[weight] = summary.consolidation["final_estimated_kl"]
    assert distance[1e4] < distance[1e-6] / 4


@pytest.mark.parametrize("overrides, message", [
    ({"ewc_weight": -0.5}, "--ewc_weight -0.5: must be 0 (off) or more"),
    ({"ewc_weight": math.nan}, "--ewc_weight nan: must be 0 (off) or more"),
    ({"ewc_weight": 2.0}, "--ewc_weight 2 weighs the weights by the replayed speech: it needs --replay_datasets or "
                          "--replay_audio"),
    ({"ewc_weight": 2.0, "lora": True, "replay": True},
     "--ewc_weight 2 with --lora True: LoRA leaves the base weights as they are, so there is nothing for it to hold; "
     "pick one"),
])
def test_bad_ewc_settings_are_refused_in_one_line(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides, message):
    from test_replay_augment import prepared

    overrides = dict(overrides)
    if overrides.pop("replay", False):
        overrides.update(replay_datasets=(prepared(tmp_path, "replay")[0],), replay_language="en")
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
