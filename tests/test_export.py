"""export_model.py: CTranslate2 / ggml / ONNX writers, the ggml read-back, bad input, and each runtime
loading an export of a fine-tuned model (real tiny.en, marked slow)."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_script

from whisper_finetune.decode import ctranslate2_backend
from whisper_finetune.export import card, ggml, onnx, run, targets
from whisper_finetune.export.config import ExportOptions
from whisper_finetune.errors import OptionError, UserError


def _options(model, output_dir, **kwargs):
    return ExportOptions(model=model, output_dir=str(output_dir), **kwargs)


def _expected_ggml_tensor_count(config):
    # whisper.cpp's model: encoder 7 + 15 per layer, decoder 4 + 24 per layer (src/whisper.cpp tensor map)
    return 7 + 15 * config.encoder_layers + 4 + 24 * config.decoder_layers


# --- bad input: one line, exit 2, nothing written ------------------------------------------------------

def test_unknown_format_and_quantization_name_the_value_and_list_accepted(tiny_model_dir, tmp_path):
    with pytest.raises(OptionError, match="--format tflite: choose one or more of ctranslate2, ggml, onnx"):
        run.export(_options(tiny_model_dir, tmp_path / "out", formats=("tflite",)))
    with pytest.raises(OptionError,
                       match=r"--quantization q4_k: not accepted by --format ggml \(ggml: f16, q8_0, q5_0\)"):
        run.export(_options(tiny_model_dir, tmp_path / "out", formats=("ggml",), quantizations=("q4_k",)))
    # int8 is a CTranslate2 and an ONNX quantisation, not a ggml one
    with pytest.raises(OptionError, match="--quantization int8: not accepted by --format ggml"):
        run.export(_options(tiny_model_dir, tmp_path / "out", formats=("ggml",), quantizations=("int8",)))
    assert os.listdir(tmp_path) == []


def test_plan_targets_routes_each_quantization_to_the_formats_that_accept_it():
    planned = targets.plan_targets(("ctranslate2", "ggml", "onnx"), ("int8", "q8_0"))
    assert [t.name for t in planned] == ["ctranslate2-int8", "ggml-model-q8_0.bin", "onnx-int8"]
    assert [t.enforced for t in planned] == [False, False, False]
    defaults = targets.plan_targets(("ggml", "onnx"), ())
    assert [(t.name, t.enforced) for t in defaults] == [("ggml-model-f16.bin", True), ("onnx-fp32", True)]


def test_folder_that_is_not_a_whisper_model_is_refused(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(OptionError, match="not a Whisper model: its config.json says model_type 'bert'"):
        run.export(_options(str(bert), tmp_path / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OptionError, match="--model .*empty: folder holds no model"):
        run.export(_options(str(empty), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite_and_missing_runtime_is_named(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OptionError, match="--output_dir .*out: already exists: pass --overwrite"):
        run.export(_options(tiny_model_dir, out))
    assert os.listdir(out) == ["keep.txt"]
    monkeypatch.setitem(sys.modules, "pywhispercpp", None)  # import fails as if not installed
    with pytest.raises(UserError, match="needs the optional package pywhispercpp: pip install pywhispercpp"):
        run.export(_options(tiny_model_dir, tmp_path / "new", formats=("ggml",), verify_datasets=(tiny_model_dir,)))
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_shim_reports_bad_input_in_one_line_with_exit_2(tiny_model_dir, tmp_path):
    script = run_script("export_model.py", "--model", tiny_model_dir, "--format", "ctranslate2", "--quantization",
                        "int4", "--output_dir", tmp_path / "out")
    assert script.returncode == 2
    assert script.stderr.strip().splitlines() == [
        "error: --quantization int4: not accepted by --format ctranslate2 "
        "(ctranslate2: float32, float16, int8, int8_float16)"]
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing_behind(tiny_model_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx, "write_onnx", broken)
    with pytest.raises(UserError, match="cannot export .* to onnx-fp32: disk full"):
        run.export(_options(tiny_model_dir, tmp_path / "out", formats=("ggml", "onnx")))
    assert os.listdir(tmp_path) == []


# --- ggml: read back every tensor ------------------------------------------------------------------------

def _check_ggml_round_trip(model_dir, path, quantization):
    from whisper_finetune.model import loading

    model = loading.load_model(model_dir)
    processor = loading.load_processor(model_dir)
    ggml.write_ggml(model, processor, path, quantization)
    read_back = ggml.read_ggml(path)
    config = model.config
    assert read_back.hparams == {"n_vocab": config.vocab_size, "n_audio_ctx": config.max_source_positions,
                                 "n_audio_state": config.d_model, "n_audio_head": config.encoder_attention_heads,
                                 "n_audio_layer": config.encoder_layers, "n_text_ctx": config.max_target_positions,
                                 "n_text_state": config.d_model, "n_text_head": config.decoder_attention_heads,
                                 "n_text_layer": config.decoder_layers, "n_mels": config.num_mel_bins,
                                 "ftype": ggml.GGML_FTYPE[quantization] + (0 if quantization == "f16" else 2000)}
    np.testing.assert_array_equal(read_back.mel_filters,
                                  np.asarray(processor.feature_extractor.mel_filters, np.float32).T)
    vocab = processor.tokenizer.get_vocab()
    eot = vocab["<|endoftext|>"]
    # the byte-level vocabulary up to <|endoftext|> as raw bytes ("\u0120" is the space byte, "\u010a" newline;
    # whisper.cpp names the special tokens past it itself)
    assert len(read_back.tokens) == eot + 1 and read_back.tokens[eot] == b"<|endoftext|>"
    assert read_back.tokens[vocab["\u0120"]] == b" " and read_back.tokens[vocab["\u010a"]] == b"\n"
    # any text, encoded by the tokenizer, is its UTF-8 bytes again when its tokens' bytes are joined (the tiny
    # tokenizer has one token per byte, so this checks the non-ASCII bytes one by one; tiny.en merges many)
    text = " the quick brown fox, naïve café — 東京 ☃\n"
    ids = processor.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 1 and max(ids) < eot
    assert b"".join(read_back.tokens[i] for i in ids) == text.encode("utf-8")
    state = {k: v for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert len(read_back.tensors) == len(state) == _expected_ggml_tensor_count(config)
    for hf_name, tensor in state.items():
        name = ggml.ggml_name(hf_name)
        read = read_back.tensors[name]
        source = tensor.float().numpy()
        assert read.values.size == source.size, name
        values = read.values.reshape(source.shape)
        if read.type == "f32":
            np.testing.assert_array_equal(values, source, err_msg=name)
        elif read.type == "f16":
            np.testing.assert_array_equal(values, source.astype(np.float16).astype(np.float32), err_msg=name)
        else:
            blocks = source.reshape(-1, ggml.GGML_BLOCK)
            # q8_0 rounds to the nearest of 255 steps of max|x|/127; q5_0 has 32 steps of max|x|/16 and clips
            # the most negative code, one step at most
            codes = 127 if read.type == "q8_0" else 16
            step = np.abs(blocks).max(axis=1, keepdims=True) / codes
            # the scale is stored as fp16 (relative error up to 2**-11), which moves the largest code most
            bound = step * ((0.5 if read.type == "q8_0" else 1.0) + codes * 2.0 ** -11) + 1e-7
            assert np.all(np.abs(values.reshape(-1, ggml.GGML_BLOCK) - blocks) <= bound), name
    # whisper.cpp's own type rules: 1-D and positional tensors f32, conv weights f16, matrices quantised
    assert read_back.tensors["encoder.positional_embedding"].type == "f32"
    assert read_back.tensors["encoder.conv1.bias"].shape == (config.d_model, 1)
    assert read_back.tensors["encoder.conv1.weight"].type == "f16"
    assert read_back.tensors["decoder.token_embedding.weight"].type == quantization
    assert read_back.tensors["encoder.blocks.0.attn.key.weight"].shape == (config.d_model, config.d_model)
    return read_back


@pytest.mark.parametrize("quantization", ["f16", "q8_0", "q5_0"])
def test_ggml_file_reads_back_every_tensor_of_the_tiny_model(tiny_model_dir, tmp_path, quantization):
    _check_ggml_round_trip(tiny_model_dir, str(tmp_path / f"ggml-{quantization}.bin"), quantization)


def test_failed_ggml_write_leaves_no_file(tmp_path):
    from whisper_finetune.model import loading
    from whisper_finetune.testing import build_tiny_whisper

    folder = build_tiny_whisper(str(tmp_path / "d48"), d_model=48)  # rows of 48 values: no whole q8_0 blocks
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match="has rows of 48 values, not a multiple of 32"):
        ggml.write_ggml(loading.load_model(folder), loading.load_processor(folder), str(out / "m.bin"), "q8_0")
    assert os.listdir(out) == []  # the header was written already: the partial file is removed


# whisper.cpp derives its special-token ids from n_vocab (<|startoftranscript|> 50258, <|en|> 50259, ...: a
# multilingual vocabulary is 51865 tokens), and sizes its MLP as 4 x d_model.
WHISPER_CPP_VOCAB = 51865


@pytest.fixture(scope="module")
def whisper_cpp_tiny_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random model in the shape whisper.cpp assumes of every Whisper: MLP width 4 x d_model and the
    multilingual vocabulary size (the tokenizer keeps its 1865 tokens; whisper.cpp names the rest itself)."""
    import shutil

    from transformers import WhisperForConditionalGeneration

    from whisper_finetune.model import loading

    folder = str(tmp_path_factory.mktemp("tiny-whisper-cpp"))
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tiny = loading.load_model(folder)
    config = tiny.config
    config.encoder_ffn_dim = config.decoder_ffn_dim = 4 * config.d_model
    config.vocab_size = WHISPER_CPP_VOCAB
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = tiny.generation_config
    model.save_pretrained(folder)
    return folder


def _load_in_whisper_cpp(path, read_back, capfd, **params):
    """whisper.cpp's own loader (pywhispercpp) on a written file, greedy, no timestamps. It must accept every
    tensor and report the file's hyperparameters and tensor bytes. pywhispercpp raises nothing when whisper.cpp
    refuses a file (and transcribing with it would crash), so whisper.cpp's log (its stderr, read through
    ``capfd``) is read: a missing tensor ("not all tensors loaded from model file - expected 89, got 88"), an
    unknown one or one of the wrong size is an ERROR line there."""
    from pywhispercpp.model import Model

    capfd.readouterr()
    model = Model(path, redirect_whispercpp_logs_to=False, language="en", no_timestamps=True, single_segment=True,
                  print_progress=False, no_context=True, temperature=0.0, temperature_inc=0.0,
                  greedy={"best_of": 1}, **params)
    log = capfd.readouterr().err
    assert "ERROR" not in log and "failed to load" not in log, log[-2000:]
    reported = {key: int(value) for key, value in re.findall(r"whisper_model_load: (\w+)\s*= (-?\d+)", log)}
    ftype = read_back.hparams["ftype"]
    expected = {**read_back.hparams, "ftype": ftype % 1000, "qntvr": ftype // 1000}
    assert {key: reported.get(key) for key in expected} == expected
    tensor_bytes = sum(ggml.nbytes(t.type, t.values.size) for t in read_back.tensors.values())
    reported_mb = float(re.search(r"model size\s*=\s*([\d.]+) MB", log).group(1))  # printed to 0.01 MB
    assert abs(reported_mb - tensor_bytes / 1e6) <= 0.006
    return model


def test_ggml_exports_load_and_run_in_whisper_cpp(whisper_cpp_tiny_dir, tmp_path, capfd):
    from whisper_finetune.export import runtimes
    from whisper_finetune.testing import synthetic_speech

    result = run.export(_options(whisper_cpp_tiny_dir, tmp_path / "out", formats=("ggml",),
                                 quantizations=("f16", "q8_0", "q5_0")))
    clip = synthetic_speech(1.0)
    for name, path in result.exports.items():
        read_back = ggml.read_ggml(path)
        assert read_back.hparams["n_vocab"] == WHISPER_CPP_VOCAB
        cpp = _load_in_whisper_cpp(path, read_back, capfd, max_tokens=8)
        segments = cpp.transcribe(clip)
        del cpp
        # random weights: text made of tokens past the tiny vocabulary, "[_extra_token_N]" in whisper.cpp
        assert len(segments) == 1 and segments[0].text.strip(), name
    # the parity check's own runtime, on the q8_0 file: one text per clip, the same for the same clip
    runtime = runtimes.open_runtime(targets.ExportTarget("ggml", "q8_0"), result.exports["ggml-model-q8_0.bin"],
                                    "en", False, 1, 8)
    assert runtime.name == "whisper.cpp"
    texts = runtime.transcribe([clip, clip])
    del runtime
    assert len(texts) == 2 and texts[0] and texts[0] == texts[1]


def test_lora_adapter_folder_is_merged_before_export(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from whisper_finetune.model import loading

    base = loading.load_model(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (adapter = no change); make the adapter matter
            torch.nn.init.normal_(param, std=0.5)
    adapter = str(tmp_path / "adapter")
    peft_model.save_pretrained(adapter)
    result = run.export(_options(adapter, tmp_path / "out", formats=("ggml",), quantizations=("f16",)))
    merged = loading.load_model(adapter).state_dict()
    read_back = ggml.read_ggml(result.exports["ggml-model-f16.bin"])
    query = read_back.tensors["encoder.blocks.0.attn.query.weight"].values
    np.testing.assert_array_equal(query, merged["model.encoder.layers.0.self_attn.q_proj.weight"].numpy()
                                  .astype(np.float16).astype(np.float32))
    original = loading.load_model(tiny_model_dir).state_dict()["model.encoder.layers.0.self_attn.q_proj.weight"]
    assert not np.allclose(query, original.numpy(), atol=1e-2)  # the adapter's update is in the file
    with open(os.path.join(result.output_dir, card.CARD_FILE)) as f:
        assert f"a LoRA adapter merged into `{tiny_model_dir}` first" in f.read()


# ggml's block structs (ggml-common.h), spelled out here to read the quantiser's output independently of it:
# block_q8_0 {ggml_half d; int8_t qs[32]}; block_q5_0 {ggml_half d; uint8_t qh[4]; uint8_t qs[16]}
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
Q5_0_BLOCK = np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (16,))])


def test_quantizers_match_ggml_reference_on_known_blocks():
    assert ggml.GGML_BLOCK == 32 and Q8_0_BLOCK.itemsize == 34 and Q5_0_BLOCK.itemsize == 22
    block = np.linspace(-1.0, 0.5, 32, dtype=np.float32)
    q8 = np.frombuffer(ggml.encode("q8_0", block), dtype=Q8_0_BLOCK)
    assert len(q8) == 1 and q8["d"][0] == np.float16(1.0 / 127)
    assert q8["qs"][0][0] == -127 and q8["qs"][0][-1] == round(0.5 * 127)
    q5 = np.frombuffer(ggml.encode("q5_0", block), dtype=Q5_0_BLOCK)
    assert len(q5) == 1 and q5["d"][0] == np.float16(1.0 / 16)  # the largest magnitude is -1.0: d = -1.0 / -16
    # codes are trunc(x / d + 16.5): -1.0 -> 0 (first low nibble), 0.5 -> 24 = 0b11000 (low nibble 8 in the high
    # half of the last byte, fifth bit as bit 31 of qh)
    assert q5["qs"][0][0] & 0xF == 0 and q5["qs"][0][15] >> 4 == 8 and q5["qh"][0] >> 31 == 1
    decoded = ggml.decode("q5_0", q5.tobytes(), 32)
    assert decoded[0] == -1.0 and decoded[-1] == 0.5  # -1 and 0.5 are exact multiples of 1/16
    np.testing.assert_array_equal(ggml.decode("q8_0", q8.tobytes(), 32), q8["qs"][0] * np.float32(q8["d"][0]))
    # ggml rounds with C's roundf: x / d = 0.49999997 gives 0; floor(x / d + 0.5), which the hand-written
    # quantiser this project had used, gives 1 (the float32 sum rounds up to 1.0)
    edge = np.zeros(32, np.float32)
    edge[0], edge[1], edge[2] = 127.0, np.nextafter(np.float32(0.5), np.float32(0)), -np.nextafter(np.float32(0.5),
                                                                                                   np.float32(0))
    assert list(np.frombuffer(ggml.encode("q8_0", edge), dtype=Q8_0_BLOCK)["qs"][0][:3]) == [127, 0, 0]


# --- CTranslate2 and ONNX on the tiny model ---------------------------------------------------------------

def test_ctranslate2_and_onnx_exports_load_in_their_runtimes_and_are_verified(tiny_model_dir, tiny_dataset_dir,
                                                                                 tmp_path):
    import onnxruntime
    from faster_whisper import WhisperModel

    result = run.export(_options(tiny_model_dir, tmp_path / "out", formats=("ctranslate2", "onnx"),
                                quantizations=("int8_float16", "fp32"), verify_datasets=(tiny_dataset_dir,),
                                verify_language="en", verify_max_samples=4))
    rows = {r.export: r for r in result.rows}
    assert list(rows) == ["pytorch", "ctranslate2-int8_float16", "onnx-fp32"]
    assert all(r.utterances == 4 and r.passed is None for r in rows.values())  # 4 < 50: reported, not enforced
    # same features and greedy search in onnxruntime as in PyTorch: the same transcripts, hence the same WER
    assert rows["onnx-fp32"].identical == 1.0 and rows["onnx-fp32"].wer_delta == 0.0
    assert rows["ctranslate2-int8_float16"].size_bytes < rows["onnx-fp32"].size_bytes
    with open(result.report_path) as f:
        report = json.load(f)
    assert [r["export"] for r in report["rows"]] == list(rows)
    assert all(os.path.exists(r["results_path"]) for r in report["rows"])  # paths into the final folder
    ct2 = result.exports["ctranslate2-int8_float16"]
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json", "README.md"} <= set(os.listdir(ct2))
    assert ctranslate2_backend.CT2_STAMP_FILE not in os.listdir(ct2)
    with open(os.path.join(ct2, "preprocessor_config.json")) as f:
        assert json.load(f)["feature_size"] == 80
    model = WhisperModel(ct2, device="cpu")
    assert model.feature_extractor.mel_filters.shape[0] == 80  # loaded offline: its tokenizer.json was found
    onnx_dir = result.exports["onnx-fp32"]
    assert sorted(n for n in os.listdir(onnx_dir) if n.endswith(".onnx")) == sorted(onnx.ONNX_FILES)
    assert {"config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
            "README.md"} <= set(os.listdir(onnx_dir))
    assert not [n for n in os.listdir(onnx_dir) if n.endswith(".safetensors")]  # the weights are in the graphs
    decoder = onnxruntime.InferenceSession(os.path.join(onnx_dir, onnx.DECODER_FILE))
    assert [i.name for i in decoder.get_inputs()] == ["input_ids", "cross_key", "cross_value", "past_key",
                                                      "past_value"]
    with open(os.path.join(result.output_dir, card.CARD_FILE)) as f:
        card_text = f.read()
    assert f"from `{tiny_model_dir}`" in card_text
    assert "| `ctranslate2-int8_float16` | ctranslate2 | int8_float16 | no" in card_text
    assert "| tiny-dataset | onnx-fp32 | onnxruntime | 4 |" in card_text.replace("prepared", "tiny-dataset")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export-")]


def test_onnx_graphs_compute_pytorch_logits_step_by_step(sharp_model_dir, tmp_path):
    """The exported encoder and decoder against transformers' forward: the prompt with a past of length 0,
    then one token over the returned past; and the encoder on a short (dynamic audio context) input."""
    import onnxruntime

    from whisper_finetune.model import loading

    model = loading.load_model(sharp_model_dir)
    onnx.export_onnx_models(model, str(tmp_path))
    encoder = onnxruntime.InferenceSession(str(tmp_path / onnx.ENCODER_FILE))
    decoder = onnxruntime.InferenceSession(str(tmp_path / onnx.DECODER_FILE))
    config = model.config
    features = np.random.default_rng(0).normal(size=(2, config.num_mel_bins, 3000)).astype(np.float32)
    ids = np.array([[config.decoder_start_token_id, 5, 9, 11], [config.decoder_start_token_id, 7, 3, 2]])
    with torch.no_grad():
        expected = model(input_features=torch.from_numpy(features), decoder_input_ids=torch.from_numpy(ids)).logits
    cross_key, cross_value = encoder.run(None, {"input_features": features})
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    assert cross_key.shape == (layers, 2, heads, 1500, config.d_model // heads)
    empty = np.zeros((layers, 2, heads, 0, config.d_model // heads), np.float32)
    first, past_key, past_value = decoder.run(None, {"input_ids": ids[:, :3], "cross_key": cross_key,
                                                     "cross_value": cross_value, "past_key": empty,
                                                     "past_value": empty})
    assert past_key.shape[3] == 3
    second, past_key, _ = decoder.run(None, {"input_ids": ids[:, 3:], "cross_key": cross_key,
                                             "cross_value": cross_value, "past_key": past_key,
                                             "past_value": past_value})
    assert past_key.shape[3] == 4
    scale = float(expected.abs().max())
    np.testing.assert_allclose(first, expected[:, :3].numpy(), atol=1e-4 * scale)
    np.testing.assert_allclose(second, expected[:, 3:].numpy(), atol=1e-4 * scale)
    assert (first.argmax(-1) == expected[:, :3].numpy().argmax(-1)).all()
    # 10 s of frames: the first 500 positional embeddings, as our PyTorch short-context encoder uses them
    short = features[:, :, :1000]
    loading.narrow_positions_for_short_inputs(model.model.encoder)
    with torch.no_grad():
        hidden = model.model.encoder(torch.from_numpy(short)).last_hidden_state
        attn = model.model.decoder.layers[-1].encoder_attn
        key = attn.k_proj(hidden).view(2, 500, heads, -1).transpose(1, 2).numpy()
    short_key, _ = encoder.run(None, {"input_features": short})
    assert short_key.shape[3] == 500
    np.testing.assert_allclose(short_key[-1], key, atol=1e-4 * float(np.abs(key).max()))


def test_overwrite_replaces_only_when_the_new_export_is_complete(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = run.export(_options(tiny_model_dir, out, formats=("ggml",), overwrite=True))
    assert sorted(os.listdir(out)) == ["README.md", "export_report.json", "ggml-model-f16.bin"]
    assert result.sizes["ggml-model-f16.bin"] == os.path.getsize(out / "ggml-model-f16.bin")


# --- real tiny.en: read back, and each runtime on a fine-tuned model ----------------------------------------

@pytest.mark.slow
@pytest.mark.real_model
def test_ggml_round_trip_on_real_tiny_en(real_model_dir, tmp_path, capfd):
    from whisper_finetune.audio import load_audio
    from whisper_finetune.model import loading

    path = str(tmp_path / "ggml-model-f16.bin")
    read_back = _check_ggml_round_trip(real_model_dir, path, "f16")
    assert len(read_back.tokens) == 50257 and read_back.tokens[50256] == b"<|endoftext|>"  # gpt2 vocabulary + eot
    # whisper.cpp itself: it loads the file, and its transcripts of the sample clips are PyTorch's greedy ones
    # (measured: all 8 identical with f16; 7 with q8_0, 5 with q5_0)
    clips = [load_audio(os.path.join(REPO_ROOT, "sample_data", "audio", f"sample_000{i}.flac")) for i in range(8)]
    processor = loading.load_processor(real_model_dir)
    features = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        tokens = loading.load_model(real_model_dir).generate(features, max_new_tokens=128)
    expected = [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
    cpp = _load_in_whisper_cpp(path, read_back, capfd, n_threads=torch.get_num_threads())
    texts = ["".join(s.text for s in cpp.transcribe(clip)).strip() for clip in clips]
    del cpp
    assert texts == expected


# Four AdamW steps at 1e-4 on the 8 sample clips (one batch) make tiny.en write them word for word (measured:
# stock tiny.en hears "the yellow mask on the field" in sample_0000, "basket on the hill" after the steps).
FT_STEPS = 4
FT_LEARNING_RATE = 1e-4


@pytest.fixture(scope="module")
def finetuned_tiny_en(real_model_dir, tmp_path_factory):
    """tiny.en fine-tuned a few steps on sample_data, saved like our trainer's output; and sample_data prepared."""
    from whisper_finetune.audio import load_audio
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset
    from whisper_finetune.model.loading import load_model, load_processor

    root = tmp_path_factory.mktemp("ft-export")
    data = str(root / "sample_data")
    prepare_dataset(DataPrepConfig(source_data_dir=os.path.join(REPO_ROOT, "sample_data"), output_data_dir=data))
    with open(os.path.join(REPO_ROOT, "sample_data", "text"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split(" ", 1) for line in f if line.strip()]
    processor = load_processor(real_model_dir)
    model = load_model(real_model_dir)
    clips = [load_audio(os.path.join(REPO_ROOT, "sample_data", "audio", f"{uid}.flac")) for uid, _ in rows]
    features = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    start = model.config.decoder_start_token_id
    ids = [processor.tokenizer(text).input_ids for _, text in rows]
    ids = [i[1:] if i[0] == start else i for i in ids]  # the model prepends the start token itself
    labels = torch.full((len(ids), max(map(len, ids))), -100)
    for row, tokens in enumerate(ids):
        labels[row, :len(tokens)] = torch.tensor(tokens)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FT_LEARNING_RATE)
    model.train()
    for _ in range(FT_STEPS):
        model(input_features=features, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = str(root / "ft")
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out, data


@pytest.mark.slow
@pytest.mark.real_model
def test_each_runtime_transcribes_sample_clips_with_the_fine_tuned_words(finetuned_tiny_en, real_model_dir,
                                                                          tmp_path):
    from faster_whisper import WhisperModel
    from pywhispercpp.model import Model
    from transformers import WhisperProcessor

    from whisper_finetune.audio import load_audio
    from whisper_finetune.model.loading import load_model

    model_dir, data = finetuned_tiny_en
    out = tmp_path / "export"
    script = run_script("export_model.py", "--model", model_dir, "--format", "ctranslate2", "ggml", "onnx",
                     "--output_dir", out, "--verify_datasets", data, "--verify_max_samples", 4)
    assert script.returncode == 0, script.stderr[-3000:]
    report = json.loads((out / run.REPORT_FILE).read_text())
    assert [r["export"] for r in report["rows"]] == ["pytorch", "ctranslate2-float32", "ggml-model-f16.bin",
                                                     "onnx-fp32"]
    assert "| sample_data | ggml-model-f16.bin | whisper.cpp | 4 |" in script.stdout

    clips = [load_audio(os.path.join(REPO_ROOT, "sample_data", "audio", f"sample_000{i}.flac")) for i in range(3)]
    processor = WhisperProcessor.from_pretrained(model_dir)
    features = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features

    def torch_texts(path):
        with torch.inference_mode():
            tokens = load_model(path).generate(features, max_new_tokens=64)
        return [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]

    def words(texts):
        return {w for text in texts for w in re.findall(r"[a-z']+", text.lower())}

    tuned, stock = torch_texts(model_dir), torch_texts(real_model_dir)
    tuned_words = words(tuned) - words(stock)
    assert tuned_words, f"the fine-tune changed no words: {tuned}"

    fw = WhisperModel(str(out / "ctranslate2-float32"), device="cpu", compute_type="float32")
    fw_texts = ["".join(s.text for s in fw.transcribe(np.pad(c, (0, 480000 - len(c))), language="en", beam_size=1,
                                                      without_timestamps=True)[0]).strip() for c in clips]
    cpp = Model(str(out / "ggml-model-f16.bin"), redirect_whispercpp_logs_to=None, language="en", no_timestamps=True,
                print_progress=False)
    cpp_texts = ["".join(s.text for s in cpp.transcribe(c)).strip() for c in clips]
    del cpp
    from whisper_finetune.export import runtimes

    ort = runtimes.open_runtime(targets.ExportTarget("onnx", "fp32"), str(out / "onnx-fp32"), "en", True, 8, 64)
    ort_texts = ort.transcribe(clips)
    for name, texts in (("faster-whisper", fw_texts), ("whisper.cpp", cpp_texts), ("onnxruntime", ort_texts)):
        assert tuned_words <= words(texts), f"{name}: {texts} lacks fine-tuned words {tuned_words - words(texts)}"
    assert ort_texts == tuned  # same features, same greedy search: identical text


def test_help_explains_every_flag_and_the_accepted_quantizations(capsys):
    import importlib.util

    from whisper_finetune.options import flags_of

    spec = importlib.util.spec_from_file_location("export_model", os.path.join(REPO_ROOT, "export_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit, match="0"):
        module.main(["-h"])
    text = capsys.readouterr().out
    shown, packed = " ".join(text.split()), "".join(text.split())
    for flag in flags_of(ExportOptions):
        assert re.search(rf"--{flag.name}\b", shown), flag.name
        assert "".join(flag.help.split()[:6]) in packed, flag.name
    for fmt, accepted in targets.QUANTIZATIONS.items():
        assert f"{fmt}: {', '.join(accepted)}" in shown.replace("  ", " ")
