"""The model card of an export folder: its source, how it was quantised, how to load it, the parity table."""
import os

from ..model import sources
from .config import PARITY_MAX_WER_DELTA, PARITY_MIN_UTTERANCES
from .parity import format_table

CARD_FILE = "README.md"


def tool_versions():
    """Installed versions of the converters and runtimes (missing optional ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "ctranslate2", "onnx", "onnxscript", "onnxruntime", "faster-whisper",
                    "pywhispercpp", "gguf"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def render_card(source: sources.ModelSource, targets, rows, only=None):
    """The model card of an export folder: its source, how it was quantised, how to load it, the table."""
    shown = [t for t in targets if only is None or t.name == only]
    base = sources.adapter_base(source.model_path) if os.path.isdir(source.model_path) else None
    lines = ["---", "library_name: whisper-finetune", "pipeline_tag: automatic-speech-recognition",
             "tags: [whisper, whisper-finetune, " + ", ".join(sorted({t.format for t in shown})) + "]", "---", "",
             f"# Export of `{source.model_path}`", "",
             f"Exported with whisper_finetune's `export_model.py` from `{source.model_path}`"
             + (f" (a LoRA adapter merged into `{base}` first)" if base else "")
             + f"; processor from `{source.processor_path}`.", "",
             "| export | format | quantisation | held to parity |",
             "| --- | --- | --- | --- |"]
    for t in shown:
        lines.append(f"| `{t.name}` | {t.format} | {t.quantization} | "
                     f"{'yes' if t.enforced else 'no (quantised: reported only)'} |")
    lines += ["", "How each was made: CTranslate2 with its own `TransformersConverter` (weights stored as the "
              "quantisation says; tokenizer.json, preprocessor_config.json and generation_config.json copied); "
              "ggml with whisper_finetune's writer (1-D tensors, positional embeddings and conv biases float32, "
              "conv weights float16, every other matrix in the quantisation, q8_0/q5_0 blocks by gguf's "
              "quantisers); ONNX with torch's exporter (`torch.onnx.export(dynamo=True)`): `encoder_model.onnx` "
              "(log-mel -> every decoder layer's cross-attention keys and values) and `decoder_model.onnx` (one "
              "incremental decoder: tokens, cross keys/values and past keys/values -> logits and the grown past; "
              "past of length 0 on the first step), int8 weights by onnxruntime's dynamic quantiser; config, "
              "generation config, tokenizer and preprocessor files beside them.", "",
              "Tool versions: " + ", ".join(f"{k} {v}" for k, v in tool_versions().items()), ""]
    if rows:
        lines += ["## Parity with PyTorch", "",
                  f"Greedy decoding, no timestamps; WER/CER with whisper_finetune's scoring. An unquantised export "
                  f"fails when its WER differs from PyTorch's by more than {PARITY_MAX_WER_DELTA} on a set of at "
                  f"least {PARITY_MIN_UTTERANCES} utterances.", "",
                  format_table([r for r in rows if only is None or r.export in (only, "pytorch")]), ""]
    else:
        lines += ["Not verified (run with `--verify_datasets` to decode with each runtime and compare).", ""]
    lines += ["## Use", "", "```python",
              "from faster_whisper import WhisperModel                   # ctranslate2-*/",
              "segments, _ = WhisperModel(\"ctranslate2-float32\").transcribe(\"audio.wav\", beam_size=1)",
              "from pywhispercpp.model import Model                      # ggml-model-*.bin",
              "segments = Model(\"ggml-model-f16.bin\").transcribe(\"audio.wav\")",
              "# onnx-*/: two onnxruntime sessions; whisper_finetune's greedy loop over them (or your own):",
              "from whisper_finetune.export.runtimes import OnnxRuntime",
              "texts = OnnxRuntime(\"onnx-fp32\", language=\"en\", english_only=False, batch_size=16,",
              "                    max_new_tokens=128).transcribe([waveform_16k])",
              "```", ""]
    return "\n".join(lines)
