"""Decoding backends: explicit language/task prompt, option checks, CTranslate2 conversion cache and agreement."""
import os
import shutil

import pytest
from conftest import prepared_for

from whisper_finetune.model import loading
from whisper_finetune.decode.options import DecodingOptions, validate_options
from whisper_finetune.decode.backends import make_decoder
from whisper_finetune.errors import UserError
from whisper_finetune.testing import synthetic_speech
from whisper_finetune.decode import ctranslate2_backend


def _features(processor, n=3):
    audio = [synthetic_speech(1.0 + 0.5 * i, seed=i) for i in range(n)]
    return processor.feature_extractor(audio, sampling_rate=16000, return_tensors="np").input_features


def _capture_decoder_prompts(decoder):
    """Record the decoder input ids of the first forward step of each generate call."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:  # the prompt step (later steps feed one token)
            seen.append(ids.tolist())

    decoder.model.model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


@pytest.mark.parametrize("language,task", [("hi", "transcribe"), ("ta", "translate")])
def test_pytorch_prompt_holds_requested_language(tiny_model_dir, language, task):
    processor = loading.load_processor(tiny_model_dir)
    decoder = make_decoder(prepared_for(tiny_model_dir, language=language, task=task,
                                                                                 max_new_tokens=4), "cpu")
    expected = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", f"<|{language}|>", f"<|{task}|>", "<|notimestamps|>"])
    assert list(decoder.prompt_ids) == expected
    seen = _capture_decoder_prompts(decoder)
    texts = decoder.decode(_features(processor))
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert seen and all(row[:4] == expected for row in seen[0])
    # the checkpoint's forced_decoder_ids (language slot None) must not win over the request
    assert decoder.model.generation_config.forced_decoder_ids is None
    assert decoder.model.generation_config.language == language


def test_english_only_prompt_has_no_language_token(tiny_en_model_dir):
    processor = loading.load_processor(tiny_en_model_dir)
    decoder = make_decoder(prepared_for(tiny_en_model_dir, max_new_tokens=3), "cpu")
    assert decoder.prepared.prompt_text == "<|startoftranscript|><|notimestamps|>"
    seen = _capture_decoder_prompts(decoder)
    decoder.decode(_features(processor, 1))
    assert seen[0][0][:2] == list(decoder.prompt_ids)


@pytest.mark.parametrize("options,flag", [
    (DecodingOptions(backend="onnx"), "--backend onnx"),
    (DecodingOptions(task="summarise"), "--task summarise"),
    (DecodingOptions(num_beams=0), "--num_beams 0"),
    (DecodingOptions(batch_size=0), "--batch_size 0"),
    (DecodingOptions(max_new_tokens=0), "--max_new_tokens 0"),
    (DecodingOptions(compute_type="int8"), "--compute_type int8"),
    (DecodingOptions(backend="ctranslate2", compute_type="float64"), "--compute_type float64"),
])
def test_bad_options_name_the_flag(options, flag):
    with pytest.raises(UserError, match=flag):
        validate_options(options)


def _ct2_copy(tiny_model_dir, tmp_path):
    folder = str(tmp_path / "model")
    shutil.copytree(tiny_model_dir, folder)
    return folder


def test_ct2_agrees_with_pytorch_and_prompt_is_explicit(sharp_model_dir, tmp_path):
    folder = _ct2_copy(sharp_model_dir, tmp_path)
    processor = loading.load_processor(folder)
    options = DecodingOptions(language="hi", max_new_tokens=8)
    features = _features(processor, 4)
    torch_texts = make_decoder(prepared_for(folder, options.language, options), "cpu").decode(features)
    ct2 = make_decoder(prepared_for(folder, language="hi", max_new_tokens=8, backend="ctranslate2", compute_type="float32"),
                       "cpu")
    assert ct2.model_dir == folder + ".ct2"  # beside the checkpoint, never inside it
    assert "<|hi|>" in ct2.prepared.prompt_text
    assert ct2.decode(features) == torch_texts
    assert all(len(t) > 0 for t in torch_texts)
    assert len(set(torch_texts)) > 1  # the model tells inputs apart, so agreement is not vacuous


def test_ct2_conversion_cached_and_refreshed(tiny_model_dir, tmp_path):
    folder = _ct2_copy(tiny_model_dir, tmp_path)
    before = sorted(os.listdir(folder))
    out = ctranslate2_backend.convert_to_ct2(folder)
    stamp = os.path.join(out, ctranslate2_backend.CT2_STAMP_FILE)
    first = os.stat(stamp).st_mtime_ns
    assert ctranslate2_backend.convert_to_ct2(folder) == out and os.stat(stamp).st_mtime_ns == first  # reused
    weights = os.path.join(folder, "model.safetensors")
    os.utime(weights, ns=(first + 10**9, first + 10**9))  # checkpoint re-saved
    ctranslate2_backend.convert_to_ct2(folder)
    assert os.stat(stamp).st_mtime_ns != first
    assert sorted(os.listdir(folder)) == before  # the user's checkpoint is untouched


def test_ct2_cache_in_home_when_parent_not_writable(monkeypatch, tmp_path):
    monkeypatch.setattr(ctranslate2_backend.os, "access", lambda path, mode: False)
    path = ctranslate2_backend.ct2_cache_dir(str(tmp_path))
    assert path.startswith(ctranslate2_backend.CT2_CACHE_ROOT)
    assert ctranslate2_backend.ct2_cache_dir("openai/whisper-tiny").startswith(ctranslate2_backend.CT2_CACHE_ROOT)


@pytest.mark.slow
@pytest.mark.real_model
def test_whisper_base_decodes_hindi_with_hi_token(real_multilingual_model_dir, shared_data_dir):
    from whisper_finetune.audio import load_audio
    from whisper_finetune.data.kaldi import read_kaldi_file

    processor = loading.load_processor(real_multilingual_model_dir)
    source = os.path.join(shared_data_dir, "espeak_hi", "eval")
    paths = [os.path.join(source, p) for _, _, p in read_kaldi_file(os.path.join(source, "audio_paths"))[:2]]
    features = processor.feature_extractor([load_audio(p) for p in paths], sampling_rate=16000,
                                           return_tensors="np").input_features
    decoder = make_decoder(prepared_for(real_multilingual_model_dir, language="hi", max_new_tokens=40), "cpu")
    seen = _capture_decoder_prompts(decoder)
    texts = decoder.decode(features)
    hi = processor.tokenizer.convert_tokens_to_ids("<|hi|>")
    assert all(row[1] == hi for row in seen[0])
    assert all(texts)
