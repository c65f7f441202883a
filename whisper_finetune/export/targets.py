"""What an export is: a format at one quantisation, the quantisations each format accepts, and its size."""
import os
from dataclasses import dataclass

from ..errors import OptionError

FORMATS = ("ctranslate2", "ggml", "onnx")
QUANTIZATIONS = {
    "ctranslate2": ("float32", "float16", "int8", "int8_float16"),
    # no f32: whisper.cpp then allocates float32 conv weights, and its CPU backend (pywhispercpp 1.5.1)
    # aborts in the conv kernel (GGML_ASSERT src0->type == GGML_TYPE_F16); f16 is whisper.cpp's own default
    "ggml": ("f16", "q8_0", "q5_0"),
    "onnx": ("fp32", "int8"),
}
DEFAULT_QUANTIZATION = {"ctranslate2": "float32", "ggml": "f16", "onnx": "fp32"}
# Float storage (full or half precision) is held to parity; integer quantisation is reported only.
UNQUANTIZED = {"ctranslate2": ("float32", "float16"), "ggml": ("f16",), "onnx": ("fp32",)}


@dataclass(frozen=True)
class ExportTarget:
    """One export to write: a format at one quantisation."""

    format: str
    quantization: str

    @property
    def name(self):
        """The file or folder name inside the output folder."""
        if self.format == "ggml":
            return f"ggml-model-{self.quantization}.bin"
        return f"{self.format}-{self.quantization}"

    @property
    def enforced(self):
        """True when this export is held to PyTorch parity (float storage, no integer quantisation)."""
        return self.quantization in UNQUANTIZED[self.format]


def plan_targets(formats, quantizations):
    """The exports to write: each quantisation goes to every chosen format that accepts it; a format that
    accepts none of them gets its default. Errors name the bad value and list the accepted ones."""
    formats = tuple(dict.fromkeys(formats))
    if not formats:
        raise OptionError("format", "", f"choose at least one of {', '.join(FORMATS)}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise OptionError("format", fmt, f"choose one or more of {', '.join(FORMATS)}")
    for quant in quantizations:
        if not any(quant in QUANTIZATIONS[fmt] for fmt in formats):
            accepted = "; ".join(f"{fmt}: {', '.join(QUANTIZATIONS[fmt])}" for fmt in formats)
            raise OptionError("quantization", quant, f"not accepted by --format {' '.join(formats)} ({accepted})")
    targets = []
    for fmt in formats:
        chosen = [q for q in dict.fromkeys(quantizations) if q in QUANTIZATIONS[fmt]] or [DEFAULT_QUANTIZATION[fmt]]
        targets += [ExportTarget(fmt, q) for q in chosen]
    return tuple(targets)


def size_of(path):
    """Bytes in a file, or in every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
