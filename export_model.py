"""Export a fine-tuned Whisper to CTranslate2 (faster-whisper), ggml (whisper.cpp) and ONNX, checked for parity.

--model takes our output folder, a checkpoint-N, a LoRA adapter folder (merged into its base first) or
a Hub id. Every export is written inside --output_dir, which appears complete or not at all:
ctranslate2-<q>/ (faster_whisper.WhisperModel loads it as is), ggml-model-<q>.bin (whisper.cpp),
onnx-<q>/ (encoder_model.onnx + decoder_model.onnx with past key values, for onnxruntime, and the
config/tokenizer/preprocessor files), README.md (model card), export_report.json.

--quantization values go to every chosen format that accepts them; a format given none gets its
unquantised default (ctranslate2 float32, ggml f16, onnx fp32). Accepted:
  ctranslate2: float32, float16, int8, int8_float16
  ggml:        f16, q8_0, q5_0 (no f32: whisper.cpp's CPU backend aborts on float32 conv weights)
  onnx:        fp32, int8 (onnxruntime dynamic quantisation of the weights)

With --verify_datasets each export is decoded by its own runtime (faster-whisper, pywhispercpp,
onnxruntime; greedy, no timestamps) beside the PyTorch evaluator; the table (WER, CER, share of
transcripts identical to PyTorch's, RTFx, size) is printed and written to export_report.json and the
model cards. Exit status 1 when an unquantised export (float32/float16, f16, fp32) differs from
PyTorch's WER by more than 0.005 on a set of at least 50 utterances; 2 for bad input.

examples:
  python3 export_model.py --model op_dir --format ctranslate2 ggml onnx --output_dir exports/op_dir \\
    --verify_datasets data/espeak_en_eval
  python3 export_model.py --model op_dir_hi_lora/adapter --format ggml --quantization f16 q8_0 \\
    --output_dir exports/hi_lora --verify_datasets data/espeak_hi_eval --verify_language hi
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli, options  # noqa: E402
from whisper_finetune.export.config import ExportOptions, check_values  # noqa: E402


def main(argv=None):
    config, script = options.parse(ExportOptions, __doc__, argv)
    check_values(config)  # before any import of the libraries: a bad value is refused at once
    cli.setup_logging(script.verbose)
    from whisper_finetune.export.parity import format_table
    from whisper_finetune.export.run import export

    result = export(config)
    for name, path in result.exports.items():
        print(f"{name}: {path} ({result.sizes[name] / 1e6:.1f} MB)")
    if result.rows:
        print(format_table(result.rows))
        print(f"report: {result.report_path}")
    for failure in result.failures:
        print(f"parity FAILED: {failure}", file=sys.stderr)
    return 0 if result.parity_ok else 1


if __name__ == "__main__":
    cli.run(main)
