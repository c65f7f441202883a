"""The JAX backend: our plain-JAX Whisper (decode/jax_whisper.py), the JAX evaluators and jax_transcribe_audio.py."""
import json
import os
import re

import numpy as np
import pytest
import soundfile as sf

from conftest import run_script, prepared_for

jax = pytest.importorskip("jax")

from whisper_finetune.decode.options import DecodingOptions  # noqa: E402

from whisper_finetune.decode.torch_backend import TorchDecoder
from whisper_finetune.errors import UserError  # noqa: E402
from whisper_finetune.decode.jax_backend import JaxDecoder  # noqa: E402
from whisper_finetune.decode.jax_whisper import load_params  # noqa: E402
from whisper_finetune.model.loading import load_processor  # noqa: E402
from whisper_finetune.scoring import read_result_pairs  # noqa: E402
from whisper_finetune.testing import synthetic_speech  # noqa: E402

CUSTOM = "evaluate/jax_evaluate_on_custom_dataset.py"
HF = "evaluate/jax_evaluate_on_hf_dataset.py"
TRANSCRIBE = "jax_transcribe_audio.py"
PROMPT_HI = "<|startoftranscript|><|hi|><|transcribe|><|notimestamps|>"


def _features(processor, n, seconds=1.0):
    audio = [synthetic_speech(seconds + 0.3 * i, seed=i) for i in range(n)]
    return processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features  # (n, 80, 3000)


def _script_main(script):
    """The ``main`` function of a repository script, imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(script)[:-3],
                                                  os.path.join(os.path.dirname(__file__), "..", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _raw_hyps(path):
    with open(path, encoding="utf-8") as f:
        return [line[len("RAW_HYP: "):].rstrip("\n") for line in f if line.startswith("RAW_HYP: ")]


def test_prompt_holds_language_and_task(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    decoder = JaxDecoder(prepared_for(tiny_model_dir, language="hi", batch_size=2, max_new_tokens=4,
                                                                    backend="jax"), -1)
    rows = decoder.generate_tokens(_features(processor, 2))
    prompts = processor.batch_decode([row[:4] for row in rows])
    assert prompts == [PROMPT_HI] * 2


def test_english_only_prompt_has_no_language(tiny_en_model_dir):
    processor = load_processor(tiny_en_model_dir)
    decoder = JaxDecoder(prepared_for(tiny_en_model_dir, batch_size=2, max_new_tokens=4,
                                                                       backend="jax"), -1)
    row = decoder.generate_tokens(_features(processor, 1))[0]
    assert processor.tokenizer.convert_ids_to_tokens(row[:2].tolist()) == ["<|startoftranscript|>",
                                                                           "<|notimestamps|>"]


def test_matches_pytorch_and_last_batch_does_not_recompile(sharp_model_dir):
    processor = load_processor(sharp_model_dir)
    decoder = JaxDecoder(prepared_for(sharp_model_dir, language="hi", batch_size=3, max_new_tokens=12,
                                                                     backend="jax"), -1)
    features = _features(processor, 7)  # batches of 3, 3 and a padded 1
    jax_texts = decoder.decode(features)
    assert decoder.compilations == 1 and decoder.compile_seconds > 0
    assert len(set(jax_texts)) >= 3  # the inputs decode differently, so the comparisons below mean something
    torch_decoder = TorchDecoder(prepared_for(sharp_model_dir, language="hi", max_new_tokens=12))
    assert jax_texts == torch_decoder.decode(features)
    # A padded last batch gives what the same rows give inside a full batch.
    assert decoder.decode(features[6:7]) == jax_texts[6:7]
    assert decoder.decode(features[4:6]) == jax_texts[4:6]
    assert decoder.compilations == 1


def test_half_precision_casts_params_and_decodes(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    options = DecodingOptions(language="hi", batch_size=2, max_new_tokens=12, backend="jax", half_precision=True)
    decoder = JaxDecoder(prepared_for(tiny_model_dir, options.language, options), -1)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(decoder._params)}
    assert dtypes == {np.dtype(jax.numpy.bfloat16)}
    features = _features(processor, 3)
    rows = decoder.generate_tokens(features)
    assert processor.batch_decode([r[:4] for r in rows])[0] == PROMPT_HI
    assert len(decoder.decode(features)) == 3 and decoder.compilations == 1
    # The matrix products themselves run in bfloat16 (not bfloat16 weights upcast to float32).
    features_shape = jax.ShapeDtypeStruct((2, 80, 3000), decoder.dtype, sharding=decoder._features_sharding)
    hlo = decoder._generate.lower(decoder._params, features_shape).as_text()
    products = re.findall(r"dot_general[^\n]*", hlo)
    assert products and all("bf16" in line and "f32>" not in line for line in products)


def test_lora_adapter_is_merged_and_loaded(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from whisper_finetune.model.loading import load_model

    model = get_peft_model(load_model(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a non-zero update, so merging changes the weights
    model.save_pretrained(str(tmp_path))
    _, params, _ = load_params(str(tmp_path))
    merged = load_model(str(tmp_path))
    expected = merged.model.decoder.layers[0].self_attn.q_proj.weight.detach().numpy().T  # ours are (in, out)
    got = np.asarray(params["decoder"]["layers"]["attn_q_w"][0])  # layers stacked on the first axis
    base = load_model(tiny_model_dir).model.decoder.layers[0].self_attn.q_proj.weight.detach().numpy().T
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, base, atol=1e-3)


def test_bad_device_is_a_user_error(tiny_model_dir):
    with pytest.raises(UserError, match=r"--device 3: JAX sees no such accelerator"):
        JaxDecoder(prepared_for(tiny_model_dir, backend="jax"), 3)
    if not [d for d in jax.local_devices() if d.platform != "cpu"]:
        with pytest.raises(UserError, match=r"--device all: JAX sees no GPU or TPU"):
            JaxDecoder(prepared_for(tiny_model_dir, backend="jax"), "all")


def test_hf_evaluator_in_process(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "out"
    assert _script_main(HF)(["--hf_model", tiny_model_dir, "--language", "hi", "--dataset", tiny_dataset_dir,
                        "--batch_size", "3", "--max_new_tokens", "8", "--num_workers", "0",
                        "--output_dir", str(out)]) == 0
    (json_path,) = out.glob("*__jax.json")
    result = json.loads(json_path.read_text())
    assert result["decoding"]["backend"] == "jax" and result["compile_seconds"] > 0
    assert result["decoder_prompt"] == PROMPT_HI
    refs, _ = read_result_pairs(str(json_path).replace(".json", ".txt"))
    hyps = _raw_hyps(str(json_path).replace(".json", ".txt"))
    assert len(refs) == len(hyps) == 8 and all(hyps)


@pytest.mark.slow  # tens of seconds: the second tier
def test_evaluator_with_loader_workers_forks_nothing_after_jax_started(sharp_model_dir, tiny_dataset_dir, tmp_path):
    """JAX is multithreaded once loaded: a fork after that can deadlock (Python warns "os.fork() was called
    ... JAX is multithreaded"). Data-loader workers for a JAX decoder start by forkserver instead."""
    args = ["--hf_model", sharp_model_dir, "--language", "hi", "--eval_datasets", tiny_dataset_dir,
            "--batch_size", "3", "--max_new_tokens", "8", "--device", "-1", "--verbose", "True"]
    with_workers = run_script(CUSTOM, *args, "--num_workers", "2", "--output_dir", tmp_path / "workers", timeout=300)
    assert with_workers.returncode == 0, with_workers.stderr[-3000:]
    assert "os.fork()" not in with_workers.stderr and "multithreaded" not in with_workers.stderr
    (workers_txt,) = (tmp_path / "workers").glob("*__jax.txt")
    hyps = _raw_hyps(str(workers_txt))
    assert len(hyps) == 8 and len(set(hyps)) > 1  # every utterance decoded, each from its own features


@pytest.mark.slow  # tens of seconds: the second tier
def test_custom_evaluator_on_two_host_devices(sharp_model_dir, tiny_dataset_dir, tmp_path):
    """The script as a user runs it, data parallel over 2 CPU devices; same text as 1 device."""
    args = ["--hf_model", sharp_model_dir, "--language", "hi", "--eval_datasets", tiny_dataset_dir,
            "--batch_size", "3", "--max_new_tokens", "8", "--num_workers", "0", "--device", "-1"]
    two = run_script(CUSTOM, *args, "--output_dir", tmp_path / "two", "--verbose",
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert two.returncode == 0, two.stderr
    assert re.search(r"batch size 3 rounded up to 4 \(a multiple of the 2 devices\)", two.stderr)
    assert "for 2 device(s)" in two.stderr
    (two_txt,) = (tmp_path / "two").glob("*__jax.txt")
    from whisper_finetune.data.loading import load_datasets
    from whisper_finetune.data.schema import DatasetSpec
    from whisper_finetune.evaluate.evaluation import decode_dataset

    processor = load_processor(sharp_model_dir)
    one = JaxDecoder(prepared_for(sharp_model_dir, language="hi", batch_size=4, max_new_tokens=8, backend="jax"), -1)
    (dataset,) = load_datasets([DatasetSpec(tiny_dataset_dir)], custom=True)  # as the evaluator loads it
    hyps = decode_dataset(dataset, one, processor.feature_extractor, 3).hypotheses
    assert len(set(hyps)) >= 3 and _raw_hyps(two_txt) == hyps


def test_bad_model_flag_exits_2_without_results(tmp_path, tiny_dataset_dir):
    result = run_script(CUSTOM, "--hf_model", str(tmp_path / "missing"), "--eval_datasets", tiny_dataset_dir,
                        "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --hf_model")
    assert not (tmp_path / "out").exists()


def test_transcribe_long_audio(tiny_model_dir, tmp_path, capsys):
    audio = tmp_path / "long.flac"
    sf.write(audio, synthetic_speech(65.0, seed=3), 16000)  # 3 windows with 5 s overlap
    out = tmp_path / "long.json"
    assert _script_main(TRANSCRIBE)(["--hf_model", tiny_model_dir, "--path_to_audio", str(audio), "--language", "hi",
                        "--batch_size", "2", "--max_new_tokens", "6", "--half_precision", "True",
                        "--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    written = json.loads(out.read_text())
    assert printed == written["text"] and printed
    assert written["duration"] == 65.0 and written["segments"][-1]["end"] == 65.0
    assert written["decoding"]["backend"] == "jax" and written["decoding"]["half_precision"] is True


def test_beam_search(sharp_model_dir):
    processor = load_processor(sharp_model_dir)
    options = DecodingOptions(language="hi", batch_size=2, max_new_tokens=8, num_beams=2, backend="jax")
    decoder = JaxDecoder(prepared_for(sharp_model_dir, options.language, options), -1)
    features = _features(processor, 3)
    rows = decoder.generate_tokens(features)
    assert len(rows) == 3 and decoder.compilations == 1
    assert processor.batch_decode([rows[0][:4]]) == [PROMPT_HI]
    torch_decoder = TorchDecoder(prepared_for(sharp_model_dir, language="hi", max_new_tokens=8,
                                                                             num_beams=2))
    assert decoder.decode(features) == torch_decoder.decode(features)


@pytest.mark.slow
@pytest.mark.real_model
def test_real_tiny_en_matches_pytorch(real_model_dir, prepared_shared, tmp_path):
    """fp32 JAX vs the PyTorch evaluator on espeak_en/eval: WER within 0.5 points, >= 95% identical texts.

    The first 32 of the 80 clips (two full batches: one compiled shape) keep the test short; the full set is
    measured in docs/jax.md.
    """
    from whisper_finetune.evaluate.config import EvalConfig
    from whisper_finetune.evaluate.evaluation import evaluate

    data = prepared_shared("espeak_en/eval")
    results = {}
    for backend in ("pytorch", "jax"):
        config = EvalConfig(eval_datasets=(data,), output_dir=str(tmp_path), hf_model=real_model_dir, custom=True,
                            max_samples=32, num_workers=1, decoding=DecodingOptions(backend=backend, batch_size=16),
                            result_marker=backend)
        (results[backend],) = evaluate(config)
    assert abs(results["jax"].wer - results["pytorch"].wer) <= 0.005
    assert results["jax"].wer < 0.3
    torch_hyps, jax_hyps = _raw_hyps(results["pytorch"].txt_path), _raw_hyps(results["jax"].txt_path)
    assert len(jax_hyps) == 32
    assert sum(a == b for a, b in zip(torch_hyps, jax_hyps)) >= 0.95 * len(jax_hyps)


@pytest.mark.slow
@pytest.mark.real_model
def test_real_long_form(real_model_dir, shared_data_dir, tmp_path, capsys):
    """The whole 80 s of long_en.flac through jax_transcribe_audio.py: WER < 0.4, segments to the end."""
    import jiwer

    from whisper_finetune.text import get_normalizer

    out = tmp_path / "long.json"
    assert _script_main(TRANSCRIBE)(["--hf_model", real_model_dir, "--path_to_audio",
                                     os.path.join(shared_data_dir, "longform", "long_en.flac"), "--batch_size", "4",
                                     "--output", str(out)]) == 0
    text = capsys.readouterr().out.strip()
    reference = open(os.path.join(shared_data_dir, "longform", "long_en.txt"), encoding="utf-8").read()
    english = get_normalizer("english")
    assert jiwer.wer(english(reference), english(text)) < 0.4
    assert json.loads(out.read_text())["segments"][-1]["end"] > 75


@pytest.fixture(scope="module")
def large_v3_like_dir(tiny_model_dir, tmp_path_factory):
    """A random model of large-v3's kind at small size: 128 mel bins, more encoder than decoder layers,
    4 heads; matrices drawn at std 0.2 so that different inputs decode to different tokens."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor)

    folder = str(tmp_path_factory.mktemp("large-v3-like"))
    config = WhisperConfig.from_pretrained(tiny_model_dir)
    config.update({"num_mel_bins": 128, "d_model": 64, "encoder_layers": 3, "decoder_layers": 2,
                   "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 256,
                   "decoder_ffn_dim": 256})
    torch.manual_seed(1)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.2)
    model.generation_config = GenerationConfig.from_pretrained(tiny_model_dir)
    model.save_pretrained(folder)
    features = WhisperFeatureExtractor(feature_size=128)
    tokenizer = load_processor(tiny_model_dir).tokenizer
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    features.save_pretrained(folder)  # preprocessor_config.json, which resolve_model looks for
    return folder


def test_128_mel_model_matches_pytorch(large_v3_like_dir):
    processor = load_processor(large_v3_like_dir)
    decoder = JaxDecoder(prepared_for(large_v3_like_dir, language="hi", batch_size=4, max_new_tokens=10,
                                      backend="jax"), -1)
    assert decoder.shape.n_mels == 128 and decoder.shape.encoder_layers == 3 and decoder.shape.decoder_layers == 2
    features = _features(processor, 6)  # (6, 128, 3000)
    assert features.shape[1] == 128
    jax_texts = decoder.decode(features)
    assert len(set(jax_texts)) >= 3  # the inputs decode differently, so the comparison means something
    assert jax_texts == TorchDecoder(prepared_for(large_v3_like_dir, language="hi", max_new_tokens=10)).decode(features)


def test_detected_language_matches_pytorch(sharp_model_dir):
    """No --language on a multilingual model: the language token is picked per row, among the language tokens."""
    processor = load_processor(sharp_model_dir)
    decoder = JaxDecoder(prepared_for(sharp_model_dir, batch_size=4, max_new_tokens=8, backend="jax"), -1)
    features = _features(processor, 4)
    from transformers import GenerationConfig

    languages = set(GenerationConfig.from_pretrained(sharp_model_dir).lang_to_id.values())
    assert all(int(row[1]) in languages for row in decoder.generate_tokens(features))
    assert decoder.decode(features) == TorchDecoder(prepared_for(sharp_model_dir, max_new_tokens=8)).decode(features)


def test_half_precision_text_mostly_matches_float32(sharp_model_dir):
    processor = load_processor(sharp_model_dir)
    features = _features(processor, 8)
    texts = {}
    for half in (False, True):
        options = DecodingOptions(language="hi", batch_size=4, max_new_tokens=8, backend="jax", half_precision=half)
        texts[half] = JaxDecoder(prepared_for(sharp_model_dir, options.language, options), -1).decode(features)
    assert len(set(texts[False])) >= 3
    assert sum(a == b for a, b in zip(texts[False], texts[True])) >= 5  # 6 of 8 on a 2-core AMD EPYC
