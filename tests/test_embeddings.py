"""Embedding extraction: hidden-state index semantics, pooling over real frames, files, flags."""
import importlib.util
import json
import math
import os
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO_ROOT, run_script
from whisper_finetune import cli
from whisper_finetune.audio import ENCODER_FRAMES, N_SAMPLES, SAMPLE_RATE
from whisper_finetune.embeddings import embed_audio, extract_embeddings, hidden_states, real_frames
from whisper_finetune.embeddings_config import EmbeddingConfig, parse_embedding_name, resolve_targets
from whisper_finetune.errors import UserError
from whisper_finetune.model.loading import decoder_prompt_ids, load_model, load_processor
from whisper_finetune.testing import synthetic_speech

TINY_LAYERS = 2  # build_tiny_whisper's default: 2 encoder and 2 decoder layers, d_model 64
TINY_WIDTH = 64


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(WhisperModel, processor) of the tiny random multilingual model, eager attention for manual layer calls."""
    model = load_model(tiny_model_dir, attn_implementation="eager")
    return model.model, load_processor(tiny_model_dir)


def _features(processor, audios):
    return processor.feature_extractor(audios, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


# ---------------------------------------------------------------------------------------------
# Names and index semantics
# ---------------------------------------------------------------------------------------------
def test_names_parse_negative_indices_and_errors_list_valid_names_and_range():
    assert parse_embedding_name("encoder_hidden_states[-2]", 6, 6).index == 5
    assert parse_embedding_name("decoder_hidden_states[ 0 ]", 6, 6).name == "decoder_hidden_states_0"
    assert parse_embedding_name("encoder_hidden_states[-7]", 6, 6).index == 0
    assert parse_embedding_name("last_hidden_state", 6, 6).index is None
    # -1 and 6 are the same tensor: kept once, under one file name.
    assert [t.name for t in resolve_targets(["encoder_hidden_states[-1]", "encoder_hidden_states[6]"], 6, 6)] == \
        ["encoder_hidden_states_6"]
    with pytest.raises(UserError, match=r"index 7 out of range.*6 encoder layers.*7 entries.*-7 to 6"):
        parse_embedding_name("encoder_hidden_states[7]", 6, 4)
    with pytest.raises(UserError, match=r"decoder_hidden_states\[i\] \(i from -5 to 4\)"):
        parse_embedding_name("decoder_hidden_states[-6]", 6, 4)
    for bad in ("encoder_states[1]", "encoder_hidden_states", "last_hidden_state[0]", "encoder_hidden_states[x]"):
        with pytest.raises(UserError, match="encoder_last_hidden_state, encoder_hidden_states"):
            parse_embedding_name(bad)


def test_encoder_hidden_states_index_semantics(tiny, rng):
    """L+1 entries: 0 = conv+position embeddings, i = output of layer i, L = layer norm of layer L's output."""
    whisper, processor = tiny
    encoder = whisper.encoder
    features = _features(processor, [synthetic_speech(1.5, seed=1)])  # (1, 80, 3000)
    with torch.inference_mode():
        out = encoder(features, output_hidden_states=True, return_dict=True)
        states = out.hidden_states
        assert len(states) == TINY_LAYERS + 1
        embedded = torch.nn.functional.gelu(encoder.conv2(torch.nn.functional.gelu(encoder.conv1(features))))
        embedded = embedded.permute(0, 2, 1) + encoder.embed_positions.weight  # (1, 1500, 64)
        torch.testing.assert_close(states[0], embedded)
        for i in range(1, TINY_LAYERS + 1):
            layer_out = encoder.layers[i - 1](states[i - 1], None)  # transformers 5: a layer returns its output tensor
            if i < TINY_LAYERS:
                torch.testing.assert_close(states[i], layer_out)
        # The last entry is the final layer's output after the layer norm, the very same tensor as
        # encoder_last_hidden_state; the output before the norm (layer_out) is not in the list.
        assert states[-1] is out.last_hidden_state
        torch.testing.assert_close(states[-1], encoder.layer_norm(layer_out))
        assert not any(torch.allclose(s, layer_out, atol=1e-3) for s in states)
    assert states[-1].shape == (1, ENCODER_FRAMES, TINY_WIDTH)


def test_decoder_hidden_states_index_semantics(tiny):
    whisper, processor = tiny
    decoder = whisper.decoder
    prompt = torch.tensor([decoder_prompt_ids(processor.tokenizer, "hi")])  # (1, 4)
    features = _features(processor, [synthetic_speech(1.0, seed=2)])
    with torch.inference_mode():
        out = whisper(features, decoder_input_ids=prompt, output_hidden_states=True, use_cache=False,
                      return_dict=True)
        states = out.decoder_hidden_states
        assert len(states) == TINY_LAYERS + 1 and states[0].shape == (1, 4, TINY_WIDTH)
        torch.testing.assert_close(states[0], decoder.embed_tokens(prompt) + decoder.embed_positions.weight[:4])
        causal = torch.full((4, 4), torch.finfo(torch.float32).min).triu(1)[None, None]  # (1, 1, 4, 4)
        layer_out = None
        for i in range(1, TINY_LAYERS + 1):
            layer_out = decoder.layers[i - 1](states[i - 1], attention_mask=causal,
                                              encoder_hidden_states=out.encoder_last_hidden_state,
                                              use_cache=False)
            if i < TINY_LAYERS:
                torch.testing.assert_close(states[i], layer_out)
        assert states[-1] is out.last_hidden_state
        torch.testing.assert_close(states[-1], decoder.layer_norm(layer_out))


def test_hidden_states_selects_requested_tensors_and_skips_the_decoder_when_unneeded(tiny):
    whisper, processor = tiny
    features = _features(processor, [synthetic_speech(1.0)])
    targets = resolve_targets(["encoder_last_hidden_state", "encoder_hidden_states[-1]", "encoder_hidden_states[0]"],
                              TINY_LAYERS, TINY_LAYERS)
    with torch.inference_mode():
        got = hidden_states(whisper, features, targets)  # no decoder prompt needed
    assert torch.equal(got["encoder_last_hidden_state"], got["encoder_hidden_states_2"])
    assert not torch.allclose(got["encoder_hidden_states_0"], got["encoder_hidden_states_2"])
    with pytest.raises(ValueError, match="decoder_input_ids"):
        hidden_states(whisper, features, resolve_targets(["last_hidden_state"], TINY_LAYERS, TINY_LAYERS))


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------
def test_real_frames_are_20ms_each_capped_at_the_window():
    assert real_frames(SAMPLE_RATE) == 50
    assert real_frames(SAMPLE_RATE + 1) == 51
    assert real_frames(1) == 1
    assert real_frames(N_SAMPLES) == ENCODER_FRAMES and real_frames(2 * N_SAMPLES) == ENCODER_FRAMES


def test_mean_pooling_uses_real_frames_and_matches_a_manual_mean(tiny):
    whisper, processor = tiny
    audio = synthetic_speech(1.37, seed=3)
    targets = resolve_targets(["encoder_last_hidden_state", "encoder_hidden_states[1]"], TINY_LAYERS, TINY_LAYERS)
    real = embed_audio(whisper, processor.feature_extractor, [audio], targets, pool="mean")
    padded = embed_audio(whisper, processor.feature_extractor, [audio], targets, pool="mean", pool_over_padding=True)
    frames = embed_audio(whisper, processor.feature_extractor, [audio], targets, pool="none")
    with torch.inference_mode():
        out = whisper.encoder(_features(processor, [audio]), output_hidden_states=True)
    n = math.ceil(len(audio) / 320)
    assert n == 69
    for name, full in (("encoder_last_hidden_state", out.last_hidden_state[0]),
                       ("encoder_hidden_states_1", out.hidden_states[1][0])):
        assert real[name][0].shape == (TINY_WIDTH,)
        np.testing.assert_allclose(real[name][0], full[:n].mean(0).numpy(), atol=1e-6)
        np.testing.assert_allclose(padded[name][0], full.mean(0).numpy(), atol=1e-6)
        assert np.abs(real[name][0] - padded[name][0]).max() > 1e-2
        assert frames[name][0].shape == (n, TINY_WIDTH)
        np.testing.assert_allclose(frames[name][0], full[:n].numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The whole run: files, manifest, batch size, flags
# ---------------------------------------------------------------------------------------------
def _run(tiny_model_dir, out, **options):
    return extract_embeddings(EmbeddingConfig(model=tiny_model_dir, output_dir=str(out), **options))


def _load(path):
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


def test_batch_size_does_not_change_results(tiny_model_dir, tiny_dataset_dir, tmp_path):
    names = ("encoder_hidden_states[1]", "last_hidden_state")
    one = _run(tiny_model_dir, tmp_path / "b1", eval_datasets=(tiny_dataset_dir,), embeddings=names, pool="none",
               batch_size=1)
    three = _run(tiny_model_dir, tmp_path / "b3", eval_datasets=(tiny_dataset_dir,), embeddings=names, pool="none",
                 batch_size=3)
    for name in ("encoder_hidden_states_1", "last_hidden_state"):
        a, b = _load(one.files[name]), _load(three.files[name])
        assert sorted(a) == sorted(b) and len(a) == 8
        for key in a:
            assert a[key].shape == b[key].shape
            np.testing.assert_allclose(a[key], b[key], atol=1e-4)


def test_script_writes_one_npz_per_embedding_keyed_by_id_and_a_manifest(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "emb"
    names = ["encoder_last_hidden_state", "encoder_hidden_states[-3]", "decoder_hidden_states[-1]"]
    result = run_script("extract_embeddings.py", "--model", tiny_model_dir, "--eval_datasets", tiny_dataset_dir,
                        "--output_dir", out, "--embeddings", *names, "--batch_size", 3)
    assert result.returncode == 0, result.stderr
    dataset = load_from_disk(tiny_dataset_dir)
    manifest = json.load(open(out / "manifest.json", encoding="utf-8"))
    assert sorted(os.listdir(out)) == ["decoder_hidden_states_2.npz", "encoder_hidden_states_0.npz",
                                       "encoder_last_hidden_state.npz", "manifest.json"]
    for entry in manifest["embeddings"]:
        arrays = _load(out / entry["file"])
        assert sorted(arrays) == sorted(dataset["id"])
        assert all(a.shape == (TINY_WIDTH,) and a.dtype == np.float32 for a in arrays.values())
        assert entry["shape_per_item"] == [TINY_WIDTH]
    assert [e["request"] for e in manifest["embeddings"]] == names
    assert manifest["d_model"] == TINY_WIDTH and manifest["encoder_layers"] == TINY_LAYERS
    assert manifest["options"]["batch_size"] == 3 and manifest["options"]["pool"] == "mean"
    assert manifest["decoder_input_ids"] == [load_processor(tiny_model_dir).tokenizer.convert_tokens_to_ids(
        "<|startoftranscript|>")]
    by_key = {item["key"]: item for item in manifest["items"]}
    for uid, duration in zip(dataset["id"], dataset["duration"]):
        assert by_key[uid]["frames"] == math.ceil(round(duration * SAMPLE_RATE) / 320)
    assert (os.stat(out / "manifest.json").st_mode & 0o044) == (0o666 & ~_umask() & 0o044)


def test_rerun_needs_overwrite_which_replaces_the_earlier_files(tiny_model_dir, tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    _run(tiny_model_dir, out, eval_datasets=(tiny_dataset_dir,), embeddings=("encoder_hidden_states[0]",))
    status, err = _cli(capsys, "--model", tiny_model_dir, "--eval_datasets", tiny_dataset_dir, "--output_dir", out)
    assert status == 2 and "already holds embeddings" in err and "--overwrite" in err
    status, err = _cli(capsys, "--model", tiny_model_dir, "--eval_datasets", tiny_dataset_dir, "--output_dir", out,
                       "--overwrite", "True", "--embeddings", "last_hidden_state")
    assert status == 0, err
    assert sorted(os.listdir(out)) == ["last_hidden_state.npz", "manifest.json"]  # the earlier files are gone


def _cli(capsys, *args):
    """Run extract_embeddings.py's ``main`` in this process (as ``cli.run`` does): ``(exit status, stderr)``."""
    spec = importlib.util.spec_from_file_location("extract_embeddings_script",
                                                  os.path.join(REPO_ROOT, "extract_embeddings.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exited:
        cli.run(script.main, [str(a) for a in args])
    return exited.value.code, capsys.readouterr().err


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("args, message", [
    (["--embeddings", "encoder_hidden_states[3]"], r"index 3 out of range.*i from -3 to 2"),
    (["--embeddings", "encoder_layer[1]"], r"unknown embedding; valid names: encoder_last_hidden_state"),
    (["--pool_over_padding", "maybe"], r"expected True or False"),
    (["--language", "hi"], r"--language only sets the forced decoder prompt"),
    (["--decoder_prompt", "forced", "--embeddings", "last_hidden_state"], r"needs --language"),
    (["--batch_size", "0"], r"--batch_size 0"),
])
def test_bad_flags_fail_early_with_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    audio = tmp_path / "a.wav"
    sf.write(audio, synthetic_speech(1.0), SAMPLE_RATE)
    status, err = _cli(capsys, "--model", tiny_model_dir, "--path_to_audio", audio, "--output_dir", tmp_path / "out",
                       *args)
    assert status == 2
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_input_must_be_exactly_one_source(tiny_model_dir, tiny_dataset_dir, tmp_path):
    with pytest.raises(UserError, match="exactly one input"):
        _run(tiny_model_dir, tmp_path / "o")
    with pytest.raises(UserError, match="exactly one input"):
        _run(tiny_model_dir, tmp_path / "o", eval_datasets=(tiny_dataset_dir,), dataset=tiny_dataset_dir)
    with pytest.raises(UserError, match="--path_to_audio nope.wav: no such file"):
        _run(tiny_model_dir, tmp_path / "o", audio_paths=("nope.wav",))
    with pytest.raises(UserError, match="--model .*no such folder, and not a Hub id"):
        _run("./missing-model", tmp_path / "o", eval_datasets=(tiny_dataset_dir,))


def test_bare_trainer_checkpoint_takes_the_processor_from_its_parent(tiny_model_dir, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run_dir)
    checkpoint = run_dir / "checkpoint-3"
    checkpoint.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.move(run_dir / name, checkpoint / name)
    path = tmp_path / "a.wav"
    sf.write(path, synthetic_speech(1.0), SAMPLE_RATE)
    bare = _run(str(checkpoint), tmp_path / "bare", audio_paths=(str(path),))
    full = _run(tiny_model_dir, tmp_path / "full", audio_paths=(str(path),))
    assert bare.manifest["processor"] == str(run_dir) and bare.manifest["model_name"] == "run_checkpoint-3"
    np.testing.assert_array_equal(_load(bare.files["encoder_last_hidden_state"])["a"],
                                  _load(full.files["encoder_last_hidden_state"])["a"])


def test_hf_dataset_input_matches_data_prep_input(tiny_model_dir, tiny_dataset_dir, tmp_path):
    """--dataset reads the same rows through the Hugging Face path (a saved dataset folder here)."""
    custom = _run(tiny_model_dir, tmp_path / "c", eval_datasets=(tiny_dataset_dir,))
    hf = _run(tiny_model_dir, tmp_path / "h", dataset=tiny_dataset_dir, split="train")
    a, b = _load(custom.files["encoder_last_hidden_state"]), _load(hf.files["encoder_last_hidden_state"])
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_long_audio_warns_and_truncates_or_splits_into_windows(tiny_model_dir, tmp_path, caplog):
    path = tmp_path / "long.wav"
    sf.write(path, synthetic_speech(31.0, seed=4), SAMPLE_RATE)
    with caplog.at_level("WARNING"):
        first = _run(tiny_model_dir, tmp_path / "first", audio_paths=(str(path),), pool="none")
    assert any("long.wav" in r.getMessage() and "only the first 30 s" in r.getMessage() for r in caplog.records)
    assert {k: v.shape for k, v in _load(first.files["encoder_last_hidden_state"]).items()} == \
        {"long": (ENCODER_FRAMES, TINY_WIDTH)}
    split = _run(tiny_model_dir, tmp_path / "split", audio_paths=(str(path),), pool="none", split_long=True)
    arrays = _load(split.files["encoder_last_hidden_state"])
    assert {k: v.shape for k, v in arrays.items()} == {"long#0": (ENCODER_FRAMES, TINY_WIDTH),
                                                       "long#1": (50, TINY_WIDTH)}
    np.testing.assert_allclose(arrays["long#0"], _load(first.files["encoder_last_hidden_state"])["long"], atol=1e-5)
    assert [(i["key"], i["start_s"], i["frames"]) for i in split.manifest["items"]] == \
        [("long#0", 0.0, 1500), ("long#1", 30.0, 50)]


def test_forced_prompt_for_a_language_and_for_english_only_models(tiny_model_dir, tiny_en_model_dir, tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, synthetic_speech(1.0), SAMPLE_RATE)
    tokenizer = load_processor(tiny_model_dir).tokenizer
    forced = _run(tiny_model_dir, tmp_path / "f", audio_paths=(str(path),), embeddings=("last_hidden_state",),
                  pool="none", decoder_prompt="forced", language="Hindi")
    expected = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|hi|>", "<|transcribe|>",
                                                "<|notimestamps|>"])
    assert forced.manifest["decoder_input_ids"] == expected
    assert _load(forced.files["last_hidden_state"])["a"].shape == (4, TINY_WIDTH)
    start = _run(tiny_model_dir, tmp_path / "s", audio_paths=(str(path),), embeddings=("last_hidden_state",),
                 pool="none")
    # Causal decoder: the first position sees only <|startoftranscript|> in both prompts.
    np.testing.assert_allclose(_load(start.files["last_hidden_state"])["a"][0],
                               _load(forced.files["last_hidden_state"])["a"][0], atol=1e-5)
    english = _run(tiny_en_model_dir, tmp_path / "e", audio_paths=(str(path),), embeddings=("last_hidden_state",),
                   decoder_prompt="forced")
    en_tokens = load_processor(tiny_en_model_dir).tokenizer.convert_ids_to_tokens(english.manifest["decoder_input_ids"])
    assert en_tokens == ["<|startoftranscript|>", "<|notimestamps|>"]
    with pytest.raises(UserError, match="English-only"):
        _run(tiny_en_model_dir, tmp_path / "x", audio_paths=(str(path),), embeddings=("last_hidden_state",),
             decoder_prompt="forced", language="hi")


# ---------------------------------------------------------------------------------------------
# Real weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.real_model
def test_whisper_base_on_espeak_en_eval(real_multilingual_model_dir, prepared_shared, tmp_path):
    """whisper-base on the first 16 clips of espeak_en/eval (all 80 take ~2 CPU-minutes; see the README)."""
    from datasets import load_from_disk

    subset = str(tmp_path / "subset")
    load_from_disk(prepared_shared("espeak_en/eval")).select(range(16)).save_to_disk(subset)
    result = _run(real_multilingual_model_dir, tmp_path / "base", eval_datasets=(subset,), batch_size=8,
                  embeddings=("encoder_last_hidden_state", "encoder_hidden_states[-2]", "encoder_hidden_states[-1]"))
    manifest = result.manifest
    assert manifest["d_model"] == 512 and manifest["encoder_layers"] == 6 and manifest["num_items"] == 16
    arrays = {name: _load(path) for name, path in result.files.items()}
    assert sorted(arrays) == ["encoder_hidden_states_5", "encoder_hidden_states_6", "encoder_last_hidden_state"]
    for per_id in arrays.values():
        assert len(per_id) == 16 and all(a.shape == (512,) and np.isfinite(a).all() for a in per_id.values())
    for key, last in arrays["encoder_last_hidden_state"].items():
        np.testing.assert_array_equal(arrays["encoder_hidden_states_6"][key], last)
        assert not np.allclose(arrays["encoder_hidden_states_5"][key], last, atol=1e-2)
