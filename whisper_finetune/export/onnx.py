"""ONNX export: encoder and decoder (with past key values) through Optimum's exporter, plus the processor
files, loadable with ``optimum.onnxruntime.ORTModelForSpeechSeq2Seq``; int8 by onnxruntime's dynamic
quantiser."""
import logging
import os

from ..files import atomic_dir

ONNX_MERGED_DECODER = "decoder_model_merged.onnx"
ONNX_SEPARATE_DECODERS = ("decoder_model.onnx", "decoder_with_past_model.onnx")


def write_onnx(source_dir, destination, quantization):
    """Optimum's exporter (encoder + decoder with past key values), then dynamic int8 if asked; the folder
    ``destination`` appears complete or not at all."""
    import warnings

    import torch
    from optimum.exporters.onnx import main_export

    with atomic_dir(destination) as work:
        optimum_logger = logging.getLogger("optimum")
        level = optimum_logger.level
        # tracing notes about transformers' shape checks, and optimum's notice that it de-duplicated the tied
        # token embedding: nothing a user can act on
        optimum_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                main_export(source_dir, output=work, task="automatic-speech-recognition-with-past", device="cpu",
                            library_name="transformers", do_validation=False)
        finally:
            optimum_logger.setLevel(level)
        merged = os.path.join(work, ONNX_MERGED_DECODER)
        separate = [os.path.join(work, name) for name in ONNX_SEPARATE_DECODERS]
        if quantization == "fp32" and os.path.exists(merged):
            # the merged decoder holds both branches (first step, and with past key values) with one copy of the
            # weights, and ORTModelForSpeechSeq2Seq prefers it: the two separate decoders would double the size
            for path in separate:
                if os.path.exists(path):
                    os.remove(path)
        if quantization == "int8":
            _quantize_int8(work, merged, separate)
    return destination


def _quantize_int8(folder, merged, separate):
    """Quantise every ONNX file in ``folder`` (a staging folder) to int8 weights, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if all(os.path.exists(path) for path in separate) and os.path.exists(merged):
        # onnxruntime's dynamic quantiser leaves the weights inside the merged decoder's If branches in
        # float32 (measured: 118 MB -> 125 MB for tiny.en), so int8 keeps the two plain decoders instead
        os.remove(merged)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".onnx"):
            full = os.path.join(folder, name)
            quantized = full + ".int8"
            # the quantiser logs every node it skips, and advice on pre-processing, to the root logger
            logging.disable(logging.WARNING)
            try:
                quantize_dynamic(full, quantized, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
            os.replace(quantized, full)  # inside the unpublished folder: a plain rename, nobody reads it yet
