"""Evaluators (custom and HF data): flags, result files, WER equality, bad input, real-model checks."""
import importlib.util
import json
import os
import re
import shutil
import unicodedata

import jiwer
import numpy as np
import pytest
from datasets import Audio, Dataset, DatasetDict

from conftest import REPO_ROOT, SENTENCES, run_script
from whisper_finetune.evaluate import evaluation
from whisper_finetune.decode.options import DecodingOptions
from whisper_finetune.evaluate.config import EvalConfig
from whisper_finetune.errors import UserError
from whisper_finetune.scoring import read_result_pairs

CUSTOM = "evaluate/evaluate_on_custom_dataset.py"
HF = "evaluate/evaluate_on_hf_dataset.py"


def _script(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _results(output_dir):
    files = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []
    return [f for f in files if not f.startswith(".") and f != "report.html"]  # the page: tests/test_report.py


def _header_value(txt_path, key):
    with open(txt_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith(f"{key}: "):
                return float(line.split()[1])
    raise AssertionError(f"no {key} in {txt_path}")


class FixedDecoder:
    """Answers with one fixed sentence per batch slot and records the order batches arrive in."""

    compile_seconds = 0.0
    prompt_ids = None

    def __init__(self, options, texts):
        self.options, self.texts, self.calls = options, texts, []

    def decode(self, features):
        assert isinstance(features, np.ndarray) and features.dtype == np.float32
        self.calls.append(features.shape)
        start = sum(shape[0] for shape in self.calls[:-1])
        return [self.texts[(start + i) % len(self.texts)] for i in range(features.shape[0])]


def test_custom_evaluator_writes_result_files(tiny_model_dir, tiny_dataset_dir, tmp_path, capsys):
    out = str(tmp_path / "preds")
    code = _script(CUSTOM)(["--is_public_repo", "True", "--hf_model", tiny_model_dir, "--language", "Hindi",
                            "--eval_datasets", tiny_dataset_dir, "--device", "-1", "--batch_size", "3",
                            "--max_new_tokens", "4", "--num_workers", "0", "--output_dir", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dataset" in printed and "wer" in printed and "unicode" in printed  # summary table
    files = _results(out)
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".txt")
    txt = os.path.join(out, files[1])
    with open(os.path.join(out, files[0]), encoding="utf-8") as f:
        result = json.load(f)
    for key in ("wer", "cer", "raw_wer", "raw_cer", "substitutions", "deletions", "insertions", "utterances",
                "audio_hours", "wall_seconds", "rtfx", "normalizer", "empty_references"):
        assert key in result, key
    assert result["utterances"] == 8 and result["normalizer"] == "unicode" and result["language"] == "hi"
    assert result["decoder_prompt"] == "<|startoftranscript|><|hi|><|transcribe|><|notimestamps|>"
    assert result["decoding"]["batch_size"] == 3 and result["decoding"]["backend"] == "pytorch"
    assert result["audio_hours"] == pytest.approx(sum(1.0 + 0.1 * i for i in range(8)) / 3600, rel=1e-3)
    text = open(txt, encoding="utf-8").read()
    assert text.count("\nID: utt") == 8 and "WER: " in text.split("\nID:")[0]
    assert _header_value(txt, "WER") == pytest.approx(result["wer"], abs=1e-4)


def test_wer_in_file_equals_jiwer_on_its_lines_and_order_is_kept(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                   monkeypatch):
    made = []

    def fake_make_decoder(prepared, device):
        made.append(FixedDecoder(prepared.options, ["the cat sat on a mat", "a dog ran", "birds sing in the morning"]))
        return made[-1]

    monkeypatch.setattr(evaluation, "make_decoder", fake_make_decoder)
    config = EvalConfig(eval_datasets=(tiny_dataset_dir,),
                                   output_dir=str(tmp_path), hf_model=tiny_model_dir, custom=True, language="en",
                                   num_workers=1, decoding=DecodingOptions(batch_size=3))
    [result] = evaluation.evaluate(config)
    assert [shape[0] for shape in made[0].calls] == [3, 3, 2]
    assert made[0].calls[0][1:] == (80, 3000)
    refs, hyps = read_result_pairs(result.txt_path)
    assert len(refs) == 8 and result.normalizer == "english"
    assert 0 < result.wer < 1
    assert jiwer.wer(refs, hyps) == pytest.approx(result.wer, abs=1e-12)
    assert _header_value(result.txt_path, "WER") == pytest.approx(jiwer.wer(refs, hyps), abs=5e-5)
    # longest first: utt0007 (1.7 s) got the decoder's first answer
    text = open(result.txt_path, encoding="utf-8").read()
    assert re.search(r"ID: utt0007\nREF: [^\n]*\nHYP: the cat sat on a mat\n", text)
    assert re.search(r"ID: utt0000\nREF: the cat sat on the mat\nHYP: a dog ran\n", text)


def _hf_dataset(folder, n=5, empty_at=None):
    from whisper_finetune.testing import synthetic_speech
    from whisper_finetune.audio import encode_wav

    rows = {"audio": [{"bytes": encode_wav(synthetic_speech(1.0 + 0.2 * i, seed=i), 16000), "path": f"{i}.wav"}
                      for i in range(n)],
            "transcription": ["" if i == empty_at else SENTENCES[i] for i in range(n)],
            "speaker": [f"s{i}" for i in range(n)]}
    split = Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=16000))
    DatasetDict({"test": split}).save_to_disk(folder)
    return folder


def test_hf_evaluator_detects_text_column_and_counts_empty_references(tiny_model_dir, tmp_path):
    data = _hf_dataset(str(tmp_path / "hf"), n=5, empty_at=1)
    out = str(tmp_path / "preds")
    main = _script(HF)
    assert main(["--hf_model", tiny_model_dir, "--language", "ta", "--dataset", data, "--split", "test",
                 "--max_samples", "4", "--max_new_tokens", "3", "--normalizer", "basic", "--num_workers", "0",
                 "--output_dir", out]) == 0
    [json_file, txt_file] = _results(out)
    assert "hf_test" in txt_file
    result = json.load(open(os.path.join(out, json_file), encoding="utf-8"))
    assert result["utterances"] == 4 and result["empty_references"] == 1 and result["scored_utterances"] == 3
    assert result["normalizer"] == "basic" and "<|ta|>" in result["decoder_prompt"]
    assert "(empty reference: not scored)" in open(os.path.join(out, txt_file), encoding="utf-8").read()
    with pytest.raises(UserError, match="no text column 'words'; columns are: .*transcription"):
        main(["--hf_model", tiny_model_dir, "--dataset", data, "--split", "test", "--text_column", "words",
              "--output_dir", str(tmp_path / "p2")])
    with pytest.raises(UserError, match="no split 'validation'"):
        main(["--hf_model", tiny_model_dir, "--dataset", data, "--split", "validation", "--output_dir",
              str(tmp_path / "p3")])
    assert not os.path.exists(str(tmp_path / "p2")) and not os.path.exists(str(tmp_path / "p3"))


def test_bare_trainer_checkpoint_and_temp_ckpt_folder(tiny_model_dir, tiny_dataset_dir, tmp_path):
    run = tmp_path / "op_dir_epoch"
    ckpt = run / "checkpoint-394"
    os.makedirs(ckpt)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_model_dir, name), ckpt)
    before = sorted(os.listdir(ckpt))
    main = _script(CUSTOM)
    args = ["--is_public_repo", "false", "--ckpt_dir", str(ckpt), "--language", "gu", "--eval_datasets",
            tiny_dataset_dir, "--max_samples", "2", "--max_new_tokens", "2", "--num_workers", "0"]
    with pytest.raises(UserError, match="--temp_ckpt_folder"):
        main(args + ["--output_dir", str(tmp_path / "p0")])
    assert main(args + ["--temp_ckpt_folder", tiny_model_dir, "--output_dir", str(tmp_path / "p1")]) == 0
    for name in os.listdir(tiny_model_dir):  # processor files in the parent folder
        if name.endswith((".json", ".txt")) and not os.path.exists(run / name):
            shutil.copy(os.path.join(tiny_model_dir, name), run)
    assert main(args + ["--temp_ckpt_folder", "temp", "--output_dir", str(tmp_path / "p2")]) == 0
    assert any("op_dir_epoch_checkpoint-394" in f for f in _results(str(tmp_path / "p2")))
    assert sorted(os.listdir(ckpt)) == before


def test_saved_language_is_the_default(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from transformers import GenerationConfig

    folder = str(tmp_path / "finetuned")
    shutil.copytree(tiny_model_dir, folder)
    config = GenerationConfig.from_pretrained(folder)
    config.language, config.task = "te", "transcribe"
    config.save_pretrained(folder)
    [result] = evaluation.evaluate(EvalConfig(
        eval_datasets=(tiny_dataset_dir,), output_dir=str(tmp_path / "out"),
        hf_model=folder, custom=True, max_samples=1, num_workers=0,
        decoding=DecodingOptions(max_new_tokens=2)))
    assert result.language == "te" and "<|te|>" in result.decoder_prompt and result.normalizer == "unicode"


def test_ctranslate2_backend_from_the_script(tiny_model_dir, tiny_dataset_dir, tmp_path):
    folder = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, folder)
    out = str(tmp_path / "preds")
    assert _script(CUSTOM)(["--hf_model", folder, "--language", "hi", "--eval_datasets", tiny_dataset_dir,
                            "--backend", "ctranslate2", "--compute_type", "int8", "--max_new_tokens", "3",
                            "--num_workers", "0", "--output_dir", out]) == 0
    [json_file, _] = _results(out)
    assert json_file.endswith("__ctranslate2-int8.json")
    result = json.load(open(os.path.join(out, json_file), encoding="utf-8"))
    assert result["decoding"]["compute_type"] == "int8" and "<|hi|>" in result["decoder_prompt"]
    assert os.path.isdir(folder + ".ct2")


@pytest.mark.parametrize("args,message", [
    (["--is_public_repo", "False", "--ckpt_dir", "/nonexistent/checkpoint-1"], "--ckpt_dir /nonexistent/checkpoint-1: no such folder"),
    (["--is_public_repo", "False", "--hf_model", "MODEL"], "needs --ckpt_dir"),
    (["--is_public_repo", "True", "--ckpt_dir", "MODEL"], "needs --hf_model"),
    (["--hf_model", "MODEL", "--eval_datasets", "REPO"], "not a data_prep dataset"),
    (["--hf_model", "MODEL", "--eval_datasets", "/nonexistent"], "no such dataset folder"),
    (["--hf_model", "MODEL", "--language", "klingon"], "unknown language 'klingon'"),
    (["--hf_model", "MODEL", "--backend", "ctranslate2", "--compute_type", "float64"], "--compute_type float64"),
    (["--hf_model", "MODEL", "--task", "translate", "--max_new_tokens", "0"], "--max_new_tokens 0"),
    (["--hf_model", "MODEL", "--max_samples", "0"], "--max_samples 0"),
])
def test_bad_input_is_one_line_error_and_no_result(tiny_model_dir, tiny_dataset_dir, tmp_path, args, message):
    args = [a.replace("MODEL", tiny_model_dir).replace("REPO", REPO_ROOT) for a in args]
    if "--eval_datasets" not in args:
        args += ["--eval_datasets", tiny_dataset_dir]
    out = str(tmp_path / "preds")
    with pytest.raises(UserError, match=re.escape(message)):
        _script(CUSTOM)(args + ["--output_dir", out])
    assert _results(out) == []


def test_empty_dataset_and_english_only_model(tiny_model_dir, tiny_en_model_dir, tmp_path):
    empty = str(tmp_path / "empty")
    Dataset.from_dict({"id": [], "audio": [], "sentence": []}).save_to_disk(empty)
    main = _script(CUSTOM)
    with pytest.raises(UserError, match="dataset is empty"):
        main(["--hf_model", tiny_model_dir, "--eval_datasets", empty, "--output_dir", str(tmp_path / "p")])
    with pytest.raises(UserError, match="English-only"):
        main(["--hf_model", tiny_en_model_dir, "--language", "hi", "--eval_datasets", empty, "--output_dir",
              str(tmp_path / "p")])
    assert _results(str(tmp_path / "p")) == []


def test_script_exit_status_and_boolean_flags(tiny_en_model_dir, tiny_dataset_dir, tmp_path, capsys):
    out = str(tmp_path / "preds")
    bad = run_script(CUSTOM, "--is_public_repo", "False", "--ckpt_dir", str(tmp_path / "missing"),
                     "--eval_datasets", tiny_dataset_dir, "--output_dir", out)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --ckpt_dir")
    assert len([l for l in bad.stderr.splitlines() if l.startswith("error")]) == 1 and "Traceback" not in bad.stderr
    main = _script(CUSTOM)
    assert main(["--is_public_repo", "TRUE", "--hf_model", tiny_en_model_dir, "--language", "English",
                 "--eval_datasets", tiny_dataset_dir, "--max_samples", "2", "--max_new_tokens", "2",
                 "--num_workers", "0", "--output_dir", out]) == 0
    assert "english" in capsys.readouterr().out and len(_results(out)) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--is_public_repo", "maybe", "--eval_datasets", "x", "--output_dir", out])
    assert exit_info.value.code == 2 and "expected True or False" in capsys.readouterr().err


def _flags(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script(script)(["-h"])
    assert exit_info.value.code == 0
    return set(re.findall(r"^\s+(?:-\w, )?(--[a-z_]+)", capsys.readouterr().out, flags=re.M))  # option lines only


def test_pytorch_and_jax_evaluators_accept_the_same_flags(capsys):
    pairs = [(CUSTOM, "evaluate/jax_evaluate_on_custom_dataset.py"), (HF, "evaluate/jax_evaluate_on_hf_dataset.py"),
             ("transcribe_audio.py", "jax_transcribe_audio.py")]
    custom, hf = _flags(CUSTOM, capsys), _flags(HF, capsys)
    assert {"--eval_datasets", "--backend", "--compute_type", "--normalizer", "--temp_ckpt_folder"} <= custom
    assert {"--dataset", "--config", "--split", "--text_column"} <= hf
    assert custom - {"--eval_datasets"} == hf - {"--dataset", "--config", "--split", "--text_column", "--audio_column"}
    for pytorch_script, jax_script in pairs:
        assert _flags(jax_script, capsys) == _flags(pytorch_script, capsys), jax_script


# ------------------------------------------------------------------------------------------------
# Real models (slow): the done-when checks of the evaluation issue
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_model
def test_tiny_en_on_espeak_en_pytorch_and_ctranslate2(real_model_dir, prepared_shared, tmp_path):
    data = prepared_shared("espeak_en/eval")
    common = dict(eval_datasets=(data,), output_dir=str(tmp_path), hf_model=real_model_dir,
                  custom=True, num_workers=1, max_samples=16)  # the full set is the README's hand-run check
    [torch_result] = evaluation.evaluate(EvalConfig(**common, decoding=DecodingOptions()))
    [ct2_result] = evaluation.evaluate(EvalConfig(**common, decoding=DecodingOptions(
        backend="ctranslate2", compute_type="float32")))
    assert torch_result.normalizer == "english" and torch_result.utterances == 16
    assert torch_result.wer < 0.4  # REFERENCE.md: 0.234 greedy on all 80
    assert abs(ct2_result.wer - torch_result.wer) < 0.01
    _, torch_hyps = read_result_pairs(torch_result.txt_path)
    _, ct2_hyps = read_result_pairs(ct2_result.txt_path)
    assert sum(a == b for a, b in zip(torch_hyps, ct2_hyps)) >= 0.9 * len(torch_hyps)


@pytest.mark.slow
@pytest.mark.real_model
def test_whisper_base_hindi_uses_hi_token_and_unicode_normaliser(real_multilingual_model_dir, prepared_shared, tmp_path):
    [result] = evaluation.evaluate(EvalConfig(
        eval_datasets=(prepared_shared("espeak_hi/eval"),), output_dir=str(tmp_path),
        hf_model=real_multilingual_model_dir, custom=True, language="hi", max_samples=8, num_workers=1,
        decoding=DecodingOptions(max_new_tokens=64)))
    assert result.normalizer == "unicode" and result.language == "hi"
    assert "<|hi|>" in result.decoder_prompt
    refs, _ = read_result_pairs(result.txt_path)
    # the normalised references still hold their vowel signs (Unicode category Mc/Mn)
    assert all(any(unicodedata.category(ch).startswith("M") for ch in ref) for ref in refs)
    assert "# normalizer: unicode" in open(result.txt_path, encoding="utf-8").read()


JAPANESE = ["今日はいい天気ですね", "私は東京に住んでいます", "猫が窓の外を見ている", "駅まで歩いて十分です"]


@pytest.mark.parametrize("language, first, second", [("ja", "CER", "WER"), ("es", "WER", "CER"), ("hi", "WER", "CER"),
                                                    ("en", "WER", "CER")])
def test_primary_metric_comes_first_in_result_file_and_summary(tiny_model_dir, tiny_en_model_dir, tmp_path, capsys,
                                                                language, first, second):
    from conftest import write_corpus

    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    sentences = JAPANESE if language == "ja" else SENTENCES
    source = write_corpus(str(tmp_path / "src"), n=4, sentences=sentences)
    data = str(tmp_path / "data")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=data))
    model = tiny_en_model_dir if language == "en" else tiny_model_dir
    out = str(tmp_path / "preds")
    assert _script(CUSTOM)(["--hf_model", model, "--language", language, "--eval_datasets", data,
                            "--max_new_tokens", "3", "--num_workers", "0", "--output_dir", out]) == 0
    printed = capsys.readouterr().out
    [txt] = [f for f in _results(out) if f.endswith(".txt")]
    lines = open(os.path.join(out, txt), encoding="utf-8").read().splitlines()
    metric = first.lower()
    assert f"# primary_metric: {metric}" in "\n".join(lines)
    figures = [line.split(":")[0] for line in lines if line.startswith(("WER:", "CER:"))]
    assert figures == [first, second]
    with open(os.path.join(out, txt[:-4] + ".json"), encoding="utf-8") as f:
        result = json.load(f)
    assert result["primary_metric"] == metric and result["score"] == result[metric]
    header, row = printed.splitlines()[:2]
    assert header.split()[2:5] == ["metric", "score", "wer"] and row.split()[2] == metric
    if language == "ja":
        assert "(not meaningful: words are not spaced" in "\n".join(lines)
        assert row.split()[4].startswith("(") and "wer in parentheses: not meaningful" in printed
    else:
        assert "not meaningful" not in "\n".join(lines) + printed


@pytest.mark.parametrize("streaming", [False, True])
def test_a_dataset_whose_only_loader_is_a_script_gets_one_line_saying_what_to_do(tmp_path, streaming):
    """datasets >= 4 refuses loading scripts (Hub ids such as the old Common Voice repositories); a local
    folder holding only ``NAME/NAME.py`` is refused the same way, offline."""
    from whisper_finetune.data.loading import load_hf_dataset
    from whisper_finetune.data.schema import DatasetSpec

    folder = tmp_path / "common_voice_11_0"
    folder.mkdir()
    (folder / "common_voice_11_0.py").write_text("# a loading script\n")
    with pytest.raises(UserError, match=r"its only loader is a script \(common_voice_11_0\.py\), which datasets "
                                        r">= 4 no longer runs; use a copy of it in parquet .* custom_data/data_prep.py"):
        load_hf_dataset(DatasetSpec(str(folder), None, "test"), streaming=streaming)


def test_script_only_dataset_exits_2_with_one_line(tiny_model_dir, tmp_path):
    folder = tmp_path / "fleurs"
    folder.mkdir()
    (folder / "fleurs.py").write_text("# a loading script\n")
    proc = run_script(HF, "--hf_model", tiny_model_dir, "--dataset", str(folder), "--split", "test",
                      "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot load dataset ")
    assert "its only loader is a script (fleurs.py)" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")
