"""--freeze_decoder and --merge_ratio (weight interpolation with the base model, ``merging``) on the tiny
random Whisper; the ratio search of ``merging.choose_ratio`` on a scripted evaluation."""
import json
import os
import re

import pytest
import torch

from test_retain import Scripted
from test_train import quick_config, summary_of, weights
from whisper_finetune.train import merging
from whisper_finetune import scoring
from whisper_finetune.errors import UserError
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.run import train


@pytest.mark.parametrize("overrides, message", [
    ({"merge_ratio": "0"}, "--merge_ratio 0: give a number above 0 and at most 1, or auto"),
    ({"merge_ratio": "1.5"}, "--merge_ratio 1.5: give a number above 0 and at most 1, or auto"),
    ({"merge_ratio": "half"}, "--merge_ratio half: give a number above 0 and at most 1, or auto"),
    ({"merge_ratio": "auto", "merge_tolerance": -0.1}, "--merge_tolerance -0.1: must not be negative"),
    ({"merge_ratio": "0.5", "lora": True},
     "--merge_ratio 0.5 with --lora: interpolation needs every trained weight whole in one process"),
    ({"freeze_encoder": True, "freeze_decoder": True},
     "--freeze_encoder True and --freeze_decoder True together leave nothing to train"),
    ({"freeze_decoder": True, "lora": True}, "--lora and --freeze_decoder together"),
    ({"freeze_encoder_layers": 3}, "--freeze_encoder_layers 3: give 0 to 2 (the model's encoder layers)"),
    ({"freeze_encoder_layers": -1}, "--freeze_encoder_layers -1: give 0 to 2 (the model's encoder layers)"),
    ({"freeze_encoder_layers": 1, "freeze_encoder": True},
     "--freeze_encoder_layers 1 with --freeze_encoder True: that already freezes every encoder layer"),
    ({"freeze_encoder_layers": 1, "lora": True},
     "--freeze_encoder_layers 1 with --lora True: that already freezes every encoder layer"),
    ({"merge_encoder_ratio": 0.0}, "--merge_encoder_ratio 0.0: give a number above 0 and at most 1"),
    ({"merge_encoder_ratio": 1.5}, "--merge_encoder_ratio 1.5: give a number above 0 and at most 1"),
    ({"merge_encoder_ratio": 0.5, "freeze_encoder": True},
     "--merge_encoder_ratio 0.5 with --freeze_encoder True: a frozen encoder is the base model's already"),
    ({"merge_encoder_ratio": 0.5, "lora": True},
     "--merge_ratio 1 --merge_encoder_ratio 0.5 with --lora: interpolation needs every trained weight whole"),
])
def test_bad_merge_and_freeze_options_are_refused(tiny_model_dir, tiny_dataset_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
    assert not os.path.exists(tmp_path / "out")


class _Line(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.full((2,), float(value)))
        self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)


@pytest.mark.parametrize("metrics, tolerance, ratio, tried", [
    ([0.30, 0.12, 0.05, 0.02], 0.01, 0.5, (0.2, 0.3, 0.4, 0.5)),  # first within 0.01 of the fine-tune's 0.02
    ([0.30, 0.12, 0.05, 0.02], 0.10, 0.3, (0.2, 0.3)),
    ([0.00], 0.0, 0.2, (0.2,)),
    ([0.5] * 8, 0.01, 1.0, merging.MERGE_GRID),  # none qualifies: the fine-tune itself
])
def test_choose_ratio_takes_the_lowest_ratio_within_tolerance(metrics, tolerance, ratio, tried):
    model = _Line(10.0)
    pairs = merging.trainable_deltas(model, {"weight": torch.zeros(2), "frozen": torch.zeros(2)})
    assert list(pairs) == ["weight"]  # frozen parameters are the base model's: nothing to interpolate
    seen = []
    scripted = iter(metrics)

    def evaluate(ratio):
        seen.append(float(model.weight.detach()[0]))  # the model evaluated is at the ratio being tried
        assert float(model.weight.detach()[0]) == pytest.approx(10 * ratio)
        return next(scripted)

    choice = merging.choose_ratio(model, pairs, evaluate, fine_tune_metric=0.02, tolerance=tolerance)
    assert choice.ratio == ratio and tuple(t.ratio for t in choice.trials) == tried
    assert seen == pytest.approx([10 * r for r in tried])
    assert torch.allclose(model.weight, torch.full((2,), 10 * ratio))  # left at the chosen ratio


def test_merge_ratio_interpolates_the_best_checkpoint_with_the_base(tiny_model_dir, tiny_dataset_dir, tmp_path):
    # With --freeze_decoder True: the decoder (embeddings and output layer too) is the base model's, in the
    # checkpoint and in the merged model; the encoder moved and is interpolated.
    out = tmp_path / "merged"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2,
                                 learning_rate=1e-2, merge_ratio="0.25", freeze_decoder=True))
    base, tuned, final = weights(tiny_model_dir), weights(out / "checkpoint-2"), weights(out)
    decoder = [k for k in final if k.startswith("model.decoder.")]
    assert decoder and all(torch.equal(base[k], tuned[k]) and torch.equal(base[k], final[k]) for k in decoder)
    moved = [k for k in final if not torch.equal(base[k], tuned[k])]
    assert moved and all(k.startswith("model.encoder.") for k in moved)
    for k in moved:
        assert torch.allclose(final[k], base[k] + 0.25 * (tuned[k] - base[k]), atol=1e-6), k
    assert summary.merge["ratio"] == 0.25 and summary.merge["requested"] == "0.25" and summary.merge["trials"] == []
    assert summary_of(out).merge == summary.merge
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "base + 0.25 x (fine-tune - base) (WiSE-FT), given with --merge_ratio" in card


def test_merge_encoder_ratio_gives_the_encoder_its_own_ratio(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "parts"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2,
                                 learning_rate=1e-2, merge_ratio="0.7", merge_encoder_ratio=0.5))
    base, tuned, final = weights(tiny_model_dir), weights(out / "checkpoint-2"), weights(out)
    moved = [k for k in final if not torch.equal(base[k], tuned[k])]
    parts = {"model.encoder.": 0.5, "model.decoder.": 0.7}
    assert all(any(k.startswith(p) for k in moved) for p in parts)  # both parts moved in training
    for k in moved:
        ratio = 0.5 if k.startswith("model.encoder.") else 0.7
        assert torch.allclose(final[k], base[k] + ratio * (tuned[k] - base[k]), atol=1e-6), k
    assert (summary.merge["ratio"], summary.merge["encoder_ratio"]) == (0.7, 0.5)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert ("base + 0.7 x (fine-tune - base) (WiSE-FT), given with --merge_ratio. The encoder's weights are at "
            "base + 0.5 x (fine-tune - base) instead (--merge_encoder_ratio).") in card


def test_merge_ratio_auto_picks_by_the_eval_sets_and_reports_the_final_model(tiny_model_dir, tiny_dataset_dir,
                                                                            tmp_path, monkeypatch):
    # Scripted WERs, in call order: step 2's evaluation 0.10 (the fine-tune's figure, not decoded again);
    # the merge: ratio 0.2 0.40, 0.3 0.25, 0.4 0.105 (within 0.01 of 0.10: chosen).
    monkeypatch.setattr(scoring, "score", Scripted([(0.10, 0.05), (0.40, 0.30), (0.25, 0.20), (0.105, 0.06)]))
    out = tmp_path / "auto"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2,
                                 learning_rate=1e-2, merge_ratio="auto", merge_tolerance=0.01))
    merge = summary.merge
    assert merge["ratio"] == 0.4 and merge["fine_tune_metric"] == 0.1
    assert [(t["ratio"], t["metric"]) for t in merge["trials"]] == [(0.2, 0.4), (0.3, 0.25), (0.4, 0.105)]
    assert (merge["eval_wer"], merge["eval_cer"]) == (0.105, 0.06)
    assert summary.best_wer == 0.1  # the checkpoint's own figure stays what training measured
    # The merge's decoding is timed apart: training's figures leave it out.
    assert merge["seconds"] > 0 and summary.eval_seconds < summary.wall_seconds
    assert summary.train_samples_per_second_excluding_eval < 10 * summary.samples_per_second
    base, tuned, final = weights(tiny_model_dir), weights(out / "checkpoint-2"), weights(out)
    key = next(k for k in final if not torch.equal(base[k], tuned[k]))
    assert torch.allclose(final[key], base[key] + 0.4 * (tuned[key] - base[key]), atol=1e-6)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "within 0.01 of the fine-tune's (tried: 0.2: 0.4000, 0.3: 0.2500, 0.4: 0.1050)" in card
    assert "scores WER 0.1050 (the checkpoint: 0.1000)" in card


def test_choose_ratio_with_an_encoder_ratio_searches_the_decoder_only():
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.encoder, model.model.decoder = _Line(10.0), _Line(10.0)
    zeros = {name: torch.zeros(2) for name, _ in model.named_parameters()}
    pairs = merging.trainable_deltas(model, zeros)
    seen = []

    def evaluate(ratio):
        seen.append((float(model.model.encoder.weight.detach()[0]), float(model.model.decoder.weight.detach()[0])))
        return {0.2: 0.3, 0.3: 0.02}[ratio]

    choice = merging.choose_ratio(model, pairs, evaluate, fine_tune_metric=0.02, tolerance=0.0, encoder_ratio=0.6)
    # the encoder stays at 0.6 while the decoder is searched (flat: pytest.approx takes no nested structures)
    assert [weight for pair in seen for weight in pair] == pytest.approx([6.0, 2.0, 6.0, 3.0])
    assert (choice.ratio, choice.encoder_ratio) == (0.3, 0.6)


def test_auto_with_an_encoder_ratio_reports_the_model_it_keeps(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                               monkeypatch):
    # No decoder ratio qualifies, so the decoder stays whole; the encoder is still at 0.5, so the final model is
    # not the checkpoint and its figures are decoded (0.30), not the checkpoint's (0.10). Scripted WERs: step 2's
    # evaluation, the eight ratios tried, the final model.
    monkeypatch.setattr(scoring, "score", Scripted([(0.10, 0.05)] + [(0.50, 0.40)] * 8 + [(0.30, 0.20)]))
    out = tmp_path / "auto_parts"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2,
                                 learning_rate=1e-2, merge_ratio="auto", merge_tolerance=0.0, merge_encoder_ratio=0.5))
    merge = summary.merge
    assert (merge["ratio"], merge["encoder_ratio"], len(merge["trials"])) == (1.0, 0.5, 8)
    assert (merge["eval_wer"], merge["eval_cer"], merge["fine_tune_metric"]) == (0.30, 0.20, 0.1)
    base, tuned, final = weights(tiny_model_dir), weights(out / "checkpoint-2"), weights(out)
    for k in (k for k in final if not torch.equal(base[k], tuned[k])):
        ratio = 0.5 if k.startswith("model.encoder.") else 1.0
        assert torch.allclose(final[k], base[k] + ratio * (tuned[k] - base[k]), atol=1e-6), k


def test_dynamic_context_with_the_encoder_merged_half_way_keeps_the_decoder_whole(tiny_model_dir,
                                                                                    tiny_dataset_dir, tmp_path):
    # The README's recipe against the dynamic fine-tune's loops on real speech: --merge_encoder_ratio 0.5
    # with --merge_ratio left at 1. Of 4 split steps at a 0.25 share, step 2 is at 30 s (the decoder's
    # only update) and 0, 1, 3 are short (the encoder's), so both halves move in training.
    out = tmp_path / "dyn_merged"
    summary = train(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=4, eval_steps=4,
                                 learning_rate=1e-2, dynamic_audio_context=True, merge_encoder_ratio=0.5))
    base, tuned, final = weights(tiny_model_dir), weights(out / "checkpoint-4"), weights(out)
    moved = [k for k in final if not torch.equal(base[k], tuned[k])]
    assert any(k.startswith("model.encoder.") for k in moved) and any(k.startswith("model.decoder.") for k in moved)
    for k in moved:
        if k.startswith("model.encoder."):
            assert torch.allclose(final[k], base[k] + 0.5 * (tuned[k] - base[k]), atol=1e-6), k
        else:
            assert torch.equal(final[k], tuned[k]), k  # the decoder is the fine-tune's own
    assert (summary.merge["ratio"], summary.merge["encoder_ratio"]) == (1.0, 0.5)
    with open(out / "config.json", encoding="utf-8") as f:
        assert json.load(f)["dynamic_audio_context"]["short_context_updates"] == "split"
