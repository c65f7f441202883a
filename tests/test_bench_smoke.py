"""Smoke tests of the benchmarks (bench/) on the tiny random model and tiny sizes (the real runs are by hand)."""
import json

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script,flags", [
    ("bench/eval_speed.py", ["--model", "--data", "--batch_size", "--max_new_tokens", "--num_beams", "--rows",
                             "--language", "--max_samples", "--num_workers", "--out", "--work_dir", "--device"]),
    ("bench/train_speed.py", ["--model", "--data", "--steps", "--batch_size", "--learning_rate", "--warmup",
                              "--our_args", "--eval_samples", "--systems", "--precision", "--out"]),
    ("bench/streaming_memory.py", ["--clips", "--steps", "--batch_size", "--shuffle_buffer_size", "--repeats",
                                   "--model", "--map_style", "--out"]),
    ("bench/data_prep_speed.py", ["--sizes", "--seconds", "--rate", "--num_proc", "--out"]),
    ("bench/random_model.py", ["--like", "--shape", "--out", "--seed"]),
    ("bench/encoder_time.py", ["--model", "--data", "--batch_size", "--dtype"]),
])
def test_help_lists_every_flag(script, flags):
    result = run_script(script, "-h")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout


def test_eval_speed_rejects_unknown_row_before_work(tiny_model_dir, tiny_dataset_dir, tmp_path):
    result = run_script("bench/eval_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--rows", "pipeline", "faster", "--out", tmp_path / "x.json")
    assert result.returncode == 2
    assert "--rows faster" in result.stderr and "ct2_ref_float32" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_eval_speed_pipeline_and_ctranslate2_reference_agree(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = run_script("bench/eval_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--rows", "pipeline", "ct2_ref_float32", "--max_samples", "3", "--batch_size", "2",
                        "--max_new_tokens", "6", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = {row["row"]: row for row in payload["rows"]}
    assert payload["settings"]["clips"] == 3 and payload["settings"]["decoding"] == "greedy (num_beams=1)"
    assert payload["machine"]["versions"]["ctranslate2"]
    for row in rows.values():
        assert row["error"] == "" and row["utterances"] == 3
        assert row["rtfx"] == pytest.approx(row["audio_s"] / row["wall_s"], rel=0.01)
        assert row["peak_rss_gb"] > 0
    assert rows["pipeline"]["vs_a"] == pytest.approx(1.0)
    # Same greedy decoding of the same weights: the first hypotheses agree word for word.
    assert rows["pipeline"]["examples"] == rows["ct2_ref_float32"]["examples"]
    assert all(rows["pipeline"]["examples"])
    assert "ct2_ref_float32" in result.stdout


def test_train_speed_runs_both_trainers_and_the_dynamic_context(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "train.json"
    result = run_script("bench/train_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--steps", "1", "--batch_size", "2", "--warmup", "0", "--logging_steps", "1",
                        "--eval_samples", "1", "--eval_max_new_tokens", "2", "--precision", "bf16", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    baseline, ours, dynamic = payload["rows"]
    assert "--precision bf16" in baseline["command"] and "--mixed_precision bf16" in ours["command"]
    assert "--dynamic_audio_context" not in ours["command"]
    assert dynamic["command"].startswith(ours["command"].split(" --output_dir ")[0])
    assert dynamic["command"].endswith("--dynamic_audio_context True")
    for row in (baseline, ours, dynamic):
        assert row["error"] == "", row
        assert row["samples_per_s"] == pytest.approx(2 / row["train_s"])
        assert 0 < row["final_loss"] < 100 and row["peak_anon_gb"] > 0
    assert payload["comparison"]["samples_per_s_ratio"] == pytest.approx(ours["samples_per_s"] / baseline["samples_per_s"])
    assert "ours/baseline samples/s" in result.stdout
    assert payload["comparison"]["dynamic_samples_per_s_ratio"] == pytest.approx(
        dynamic["samples_per_s"] / ours["samples_per_s"])
    assert "dynamic/padded samples/s (ours): " in result.stdout


def test_streaming_memory_repeats_each_size_and_summarises(tmp_path):
    out = tmp_path / "stream.json"
    result = run_script("bench/streaming_memory.py", "--clips", "12", "--steps", "2", "--batch_size", "2",
                        "--shuffle_buffer_size", "4", "--repeats", "2", "--map_style", "False", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert [(r["clips"], r["mode"], r["run"], r["steps"]) for r in payload["rows"]] == [
        (12, "streaming", 1, 2), (12, "streaming", 2, 2)]
    (summary,) = [line for line in payload["summary"].splitlines() if line.startswith("12 ")]
    anon = sorted(r["peak_anon_gb"] for r in payload["rows"])
    assert summary.split()[2:6] == ["2", f"{anon[0]:.3f}", f"{sum(anon) / 2:.3f}", f"{anon[1]:.3f}"]


def test_random_model_has_the_shape_and_the_tokenizer_of_like(tiny_model_dir, tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

    result = run_script("bench/random_model.py", "--like", tiny_model_dir, "--shape", "small", "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr[-3000:]
    config = WhisperConfig.from_pretrained(tmp_path / "m")
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins) == (768, 12, 12, 80)
    assert WhisperFeatureExtractor.from_pretrained(tmp_path / "m").feature_size == 80
    assert len(WhisperTokenizer.from_pretrained(tmp_path / "m")) == len(WhisperTokenizer.from_pretrained(tiny_model_dir))
    assert "0.2" in result.stdout  # about 0.24 B parameters
