"""Export a Whisper model to CTranslate2 (faster-whisper), ggml (whisper.cpp) and ONNX, and check parity.

One call of :func:`export` turns a model (our output folder, a ``checkpoint-N``, a LoRA adapter folder
or a Hub id) into one or more runtime formats inside ``output_dir``:

* ``ctranslate2-<quantization>/``: CTranslate2's own converter (shared with ``--backend ctranslate2``
  through :func:`whisper_finetune.decode.ctranslate2_backend.convert_to_ct2`) plus ``tokenizer.json`` and
  ``preprocessor_config.json``, so ``faster_whisper.WhisperModel(folder)`` loads it offline as is;
* ``ggml-model-<quantization>.bin``: our own writer of whisper.cpp's legacy ggml layout (header,
  mel filters, vocabulary, tensors), with :func:`read_ggml` to read it back;
* ``onnx-<quantization>/``: encoder and decoder (with past key values) through Optimum's exporter,
  plus the processor files, loadable with ``optimum.onnxruntime.ORTModelForSpeechSeq2Seq``.

With verification datasets, every export is decoded by its own runtime (faster-whisper, pywhispercpp,
onnxruntime) beside our PyTorch evaluator, scored with the project's scoring, and the table is written
to ``export_report.json`` and the model cards. The whole output folder is built in a temporary folder
beside the destination and renamed into place at the end.
"""
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..model import loading
from .. import scoring
from ..data.loading import AUDIO_COLUMN, ID_COLUMN, TEXT_COLUMN, DatasetSpec, is_saved_dataset, load_datasets
from ..errors import OptionError, UserError
from ..files import atomic_write_text
from ..options import option
from ..text import NORMALIZERS
from ..decode import ctranslate2_backend
from ..decode.options import DecodingOptions

logger = logging.getLogger(__name__)

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
# The parity rule: an unquantised export may differ from PyTorch by at most this WER on a set
# of at least this many utterances (smaller sets are reported, not enforced: one word moves WER a lot).
PARITY_MAX_WER_DELTA = 0.005
PARITY_MIN_UTTERANCES = 50
RUNTIME_PACKAGES = {"ctranslate2": ("faster_whisper", "faster-whisper"), "ggml": ("pywhispercpp", "pywhispercpp"),
                    "onnx": ("optimum.onnxruntime", "optimum-onnx onnxruntime")}
EXPORT_PACKAGES = {"onnx": ("optimum.exporters.onnx", "optimum-onnx")}
REPORT_FILE = "export_report.json"
CARD_FILE = "README.md"
CT2_COPY_FILES = ("tokenizer.json", "preprocessor_config.json", "generation_config.json")
WINDOW_SECONDS = 30  # Whisper's input window
ONNX_MERGED_DECODER = "decoder_model_merged.onnx"
ONNX_SEPARATE_DECODERS = ("decoder_model.onnx", "decoder_with_past_model.onnx")

# --- ggml layout (whisper.cpp's legacy loader, src/whisper.cpp whisper_model_load) -------------------
GGML_MAGIC = 0x67676D6C  # "ggml" read as a little-endian uint32
GGML_QNT_VERSION = 2  # quantisation format version; whisper.cpp reads ftype // 1000 as this
GGML_QNT_VERSION_FACTOR = 1000
# File-level ftype (enum ggml_ftype) and per-tensor type (enum ggml_type) for each quantisation.
GGML_FTYPE = {"f16": 1, "q8_0": 7, "q5_0": 8}
GGML_TYPE = {"f32": 0, "f16": 1, "q5_0": 6, "q8_0": 8}
GGML_TYPE_NAMES = {v: k for k, v in GGML_TYPE.items()}
GGML_BLOCK = 32  # values per q8_0 / q5_0 block (QK8_0 = QK5_0 = 32 in ggml)
# Byte layouts of one block: fp16 scale + 32 int8; fp16 scale + 32 high bits + 16 bytes of low nibbles.
Q8_0_DTYPE = np.dtype([("d", "<f2"), ("qs", "i1", (GGML_BLOCK,))])
Q5_0_DTYPE = np.dtype([("d", "<f2"), ("qh", "<u4"), ("qs", "u1", (GGML_BLOCK // 2,))])
# whisper.cpp allocates these as F32 whatever the file type (besides every 1-D tensor).
GGML_F32_TENSORS = ("encoder.positional_embedding", "decoder.positional_embedding", "encoder.conv1.bias",
                    "encoder.conv2.bias")
GGML_CONV_WEIGHTS = ("encoder.conv1.weight", "encoder.conv2.weight")  # F16 unless the file is f32
N_FFT_BINS = 201  # Whisper's STFT: n_fft 400 -> 201 frequency bins per mel filter
# HF module names -> openai-whisper names (the ones whisper.cpp looks tensors up by)
_GGML_RENAMES = (
    ("encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("decoder.embed_positions.weight", "decoder.positional_embedding"),
    ("decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
    ("encoder.layer_norm.", "encoder.ln_post."),
    ("decoder.layer_norm.", "decoder.ln."),
    (".layers.", ".blocks."),
    (".self_attn_layer_norm.", ".attn_ln."),
    (".encoder_attn_layer_norm.", ".cross_attn_ln."),
    (".final_layer_norm.", ".mlp_ln."),
    (".self_attn.", ".attn."),
    (".encoder_attn.", ".cross_attn."),
    (".q_proj.", ".query."),
    (".k_proj.", ".key."),
    (".v_proj.", ".value."),
    (".out_proj.", ".out."),
    (".fc1.", ".mlp.0."),
    (".fc2.", ".mlp.2."),
)


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export` does (one field per ``export_model.py`` flag)."""

    model: str = option(help="model to export: our output folder, a checkpoint-N, a LoRA adapter folder (merged into "
                        "its base model first) or a Hub id")
    output_dir: str = option(help="folder to create with the exports, the model card and export_report.json (built "
                             "in a temporary folder beside it, renamed into place at the end)")
    formats: Tuple[str, ...] = option(("ctranslate2",), f"one or more of {', '.join(FORMATS)}", flag="format",
                                      metavar="FORMAT")
    quantizations: Tuple[str, ...] = option(
        (), "how weights are stored; each value applies to every chosen format that accepts it (accepted values "
        "are listed below)",
        flag="quantization", metavar="Q", default_text="each format's unquantised default")
    overwrite: bool = option(False, "replace --output_dir when it exists (the old one is removed only once the new "
                             "one is complete)")
    verify_datasets: Tuple[str, ...] = option(
        (), "data_prep folders (custom_data/data_prep.py) or Hub dataset ids, decoded by every export's runtime and "
        "by PyTorch", metavar="DATASET", group="parity check", default_text="none: no check")
    verify_split: str = option("test", "split of Hub datasets in --verify_datasets", group="parity check")
    verify_config: Optional[str] = option(None, "configuration of Hub datasets in --verify_datasets",
                                          group="parity check")
    verify_language: Optional[str] = option(None, "language name or code to decode with", group="parity check",
                                            default_text="the model's saved language; English for .en models")
    verify_max_samples: Optional[int] = option(None, "check only the first N utterances of each dataset (quick "
                                               f"runs; parity is enforced on sets of at least "
                                               f"{PARITY_MIN_UTTERANCES})", group="parity check", default_text="all")
    verify_batch_size: int = option(16, "utterances decoded together by PyTorch and onnxruntime (faster-whisper and "
                                    "whisper.cpp take one clip at a time)", group="parity check")
    normalizer: Optional[str] = option(None, "text normaliser for WER/CER (indic: the former name of unicode)",
                                       choices=NORMALIZERS, group="parity check",
                                       default_text="english for English and .en models, unicode otherwise")


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


@dataclass(frozen=True)
class VerifyRow:
    """One line of the parity table: one runtime (or the PyTorch reference) on one dataset."""

    dataset: str
    export: str  # "pytorch" for the reference, else an ExportTarget name
    runtime: str
    utterances: int
    wer: float
    cer: float
    identical: float  # share of utterances whose transcript equals PyTorch's (whitespace collapsed)
    rtfx: float  # seconds of audio per second of decoding
    size_bytes: int
    wer_delta: Optional[float]  # this WER minus PyTorch's
    enforced: bool
    passed: Optional[bool]  # None: not enforced (quantised, or fewer than PARITY_MIN_UTTERANCES)
    results_path: Optional[str]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and measured."""

    output_dir: str
    exports: Dict[str, str]  # ExportTarget name -> final path
    sizes: Dict[str, int]
    rows: Tuple[VerifyRow, ...] = ()
    report_path: Optional[str] = None
    parity_ok: bool = True
    failures: Tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GgmlTensor:
    """A tensor read back from a ggml file: name, ggml type name, torch-order shape, float32 values."""

    name: str
    type: str
    shape: Tuple[int, ...]
    values: np.ndarray


@dataclass(frozen=True)
class GgmlFile:
    """A ggml Whisper file read back by :func:`read_ggml`."""

    hparams: Dict[str, int]
    mel_filters: np.ndarray  # (n_mels, 201)
    tokens: List[bytes]
    tensors: Dict[str, GgmlTensor]


GGML_HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx",
                "n_text_state", "n_text_head", "n_text_layer", "n_mels", "ftype")


# --- checking the request -----------------------------------------------------------------------------

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


def require_package(module, package, purpose):
    """Import ``module`` or raise a one-line error naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{purpose} needs the optional package {package}: pip install {package} "
                        f"({str(exc).splitlines()[0]})") from exc


def resolve_source(model):
    """Check ``--model`` before any long work: modeling's resolution, and a folder must hold a Whisper."""
    if os.path.isdir(model):
        base = loading.adapter_base(model)
        config_path = os.path.join(base if base and os.path.isdir(base) else model, "config.json")
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                model_type = json.load(f).get("model_type")
            if model_type != "whisper":
                raise OptionError("model", model, f"not a Whisper model: its config.json says model_type "
                                  f"{model_type!r}, expected 'whisper'")
    return loading.resolve_model(model, "model")


def check_options(options: ExportOptions):
    """Validate every option and the destination before anything is loaded or written."""
    targets = plan_targets(options.formats, options.quantizations)
    source = resolve_source(options.model)
    out = os.path.abspath(options.output_dir)
    if os.path.exists(out) and not options.overwrite:
        raise OptionError("output_dir", options.output_dir, "already exists: pass --overwrite to replace it, or "
                          "choose another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OptionError("output_dir", options.output_dir, "is a file, not a folder")
    model = os.path.abspath(options.model)
    if model == out or model.startswith(out + os.sep):
        raise OptionError("output_dir", options.output_dir, "would replace the model being exported")
    if options.verify_max_samples is not None and options.verify_max_samples < 1:
        raise OptionError("verify_max_samples", options.verify_max_samples, "must be at least 1")
    if options.verify_batch_size < 1:
        raise OptionError("verify_batch_size", options.verify_batch_size, "must be at least 1")
    for fmt, (module, package) in EXPORT_PACKAGES.items():
        if fmt in options.formats:
            require_package(module, package, f"--format {fmt}")
    if options.verify_datasets:
        for target in targets:
            module, package = RUNTIME_PACKAGES[target.format]
            require_package(module, package, f"--verify_datasets for --format {target.format}")
        _dataset_specs(options)  # a missing dataset folder fails here, before the export is built
    return targets, source


# --- the source weights in one plain folder -------------------------------------------------------------

def materialize(source: loading.ModelSource, folder):
    """Write the model (LoRA merged) and its processor as one plain transformers folder (float32)."""
    model = loading.load_model(source.model_path)
    processor = loading.load_processor(source.processor_path)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        raise UserError(f"--model {source.model_path}: its tokenizer has no fast version (tokenizer.json), which "
                        f"faster-whisper needs")
    return model, processor


# --- CTranslate2 -------------------------------------------------------------------------------------

def write_ctranslate2(source_dir, destination, quantization):
    """CTranslate2 conversion (shared with ``--backend ctranslate2``) with the files faster-whisper reads."""
    ctranslate2_backend.convert_to_ct2(source_dir, cache_dir=destination, quantization=quantization,
                            copy_files=CT2_COPY_FILES)
    stamp = os.path.join(destination, ctranslate2_backend.CT2_STAMP_FILE)
    if os.path.exists(stamp):  # the cache stamp names a temporary path; an export is not a cache
        os.remove(stamp)
    return destination


# --- ggml ----------------------------------------------------------------------------------------------

def ggml_name(hf_name):
    """The whisper.cpp tensor name for a transformers parameter name (``model.`` prefix dropped)."""
    name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
    for old, new in _GGML_RENAMES:
        name = name.replace(old, new)
    return name


def _round_half_away(values):
    """C's roundf (halves away from zero); numpy's round goes to even."""
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def quantize_q8_0(values):
    """ggml's reference q8_0: per block of 32, scale = max|x| / 127, values rounded to int8."""
    blocks = values.astype(np.float32).reshape(-1, GGML_BLOCK)
    scale = np.abs(blocks).max(axis=1) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    out = np.empty(len(blocks), dtype=Q8_0_DTYPE)
    out["d"] = scale.astype(np.float16)
    out["qs"] = _round_half_away(blocks * inverse[:, None]).astype(np.int8)
    return out.tobytes()


def quantize_q5_0(values):
    """ggml's reference q5_0: per block of 32, scale = (value of largest magnitude) / -16, 5-bit codes
    0..31 stored as 16 bytes of low nibbles (x[j] | x[j+16] << 4) and one uint32 of fifth bits."""
    blocks = values.astype(np.float32).reshape(-1, GGML_BLOCK)
    extreme = blocks[np.arange(len(blocks)), np.abs(blocks).argmax(axis=1)]
    scale = extreme / -16.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    codes = np.minimum(31, np.trunc(blocks * inverse[:, None] + 16.5)).astype(np.uint32)  # (n, 32), 0..31
    half = GGML_BLOCK // 2
    out = np.empty(len(blocks), dtype=Q5_0_DTYPE)
    out["d"] = scale.astype(np.float16)
    out["qs"] = ((codes[:, :half] & 0xF) | ((codes[:, half:] & 0xF) << 4)).astype(np.uint8)
    high = (codes >> 4) & 1
    out["qh"] = (high << np.arange(GGML_BLOCK, dtype=np.uint32)).sum(axis=1, dtype=np.uint64).astype(np.uint32)
    return out.tobytes()


def dequantize(kind, data, count):
    """float32 values of ``count`` elements stored as ggml type ``kind`` in ``data`` (bytes)."""
    if kind == "f32":
        return np.frombuffer(data, dtype="<f4", count=count).copy()
    if kind == "f16":
        return np.frombuffer(data, dtype="<f2", count=count).astype(np.float32)
    if kind == "q8_0":
        blocks = np.frombuffer(data, dtype=Q8_0_DTYPE)
        return (blocks["qs"].astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
    if kind == "q5_0":
        blocks = np.frombuffer(data, dtype=Q5_0_DTYPE)
        half = GGML_BLOCK // 2
        low = np.concatenate([blocks["qs"] & 0xF, blocks["qs"] >> 4], axis=1).astype(np.int32)
        high = ((blocks["qh"][:, None] >> np.arange(GGML_BLOCK, dtype=np.uint32)) & 1).astype(np.int32)
        codes = low | (high << 4)
        assert codes.shape[1] == 2 * half
        return ((codes - 16).astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)
    raise ValueError(f"unknown ggml type {kind!r}")


def _encode(kind, values):
    if kind == "f32":
        return values.astype("<f4").tobytes()
    if kind == "f16":
        return values.astype("<f2").tobytes()
    return (quantize_q8_0 if kind == "q8_0" else quantize_q5_0)(values.reshape(-1))


def _nbytes(kind, count):
    if kind in ("f32", "f16"):
        return count * (4 if kind == "f32" else 2)
    return count // GGML_BLOCK * (Q8_0_DTYPE if kind == "q8_0" else Q5_0_DTYPE).itemsize


def ggml_tensor_type(name, n_dims, quantization):
    """The ggml type whisper.cpp allocates for tensor ``name`` in a file of ``quantization`` (conv weights are
    float16 in every file whisper.cpp can run)."""
    if n_dims < 2 or name in GGML_F32_TENSORS:
        return "f32"
    if name in GGML_CONV_WEIGHTS:
        return "f16"
    return quantization


def _vocabulary(processor):
    """Tokens 0..N-1 as bytes, from the byte-level BPE vocabulary (specials past it are named by whisper.cpp)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = processor.tokenizer.get_vocab()
    added = set(processor.tokenizer.get_added_vocab())
    base = sorted((i, t) for t, i in vocab.items() if t not in added or t == "<|endoftext|>")
    tokens = []
    for expected, (index, token) in enumerate(base):
        if index != expected:
            break  # the contiguous byte-level vocabulary ends here
        tokens.append(bytes(byte_of[c] for c in token) if all(c in byte_of for c in token) else token.encode())
    return tokens


def write_ggml(model, processor, path, quantization):
    """Write ``model`` as a whisper.cpp ggml file at ``path`` (through a temporary file beside it)."""
    config = model.config
    if config.encoder_ffn_dim != 4 * config.d_model or config.decoder_ffn_dim != 4 * config.d_model:
        logger.warning("ffn width %d is not 4 x d_model %d: whisper.cpp will not load this file",
                       config.encoder_ffn_dim, config.d_model)
    hparams = [config.vocab_size, config.max_source_positions, config.d_model, config.encoder_attention_heads,
               config.encoder_layers, config.max_target_positions, config.d_model, config.decoder_attention_heads,
               config.decoder_layers, config.num_mel_bins,
               GGML_FTYPE[quantization] + (GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR
                                           if quantization != "f16" else 0)]
    filters = np.asarray(processor.feature_extractor.mel_filters, dtype=np.float32).T  # (n_mels, 201)
    if filters.shape != (config.num_mel_bins, N_FFT_BINS):
        raise UserError(f"mel filters of shape {filters.shape}: expected ({config.num_mel_bins}, {N_FFT_BINS})")
    tokens = _vocabulary(processor)
    state = model.state_dict()
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<I", GGML_MAGIC))
            f.write(struct.pack(f"<{len(hparams)}i", *hparams))
            f.write(struct.pack("<ii", *filters.shape))
            f.write(filters.astype("<f4").tobytes())
            f.write(struct.pack("<i", len(tokens)))
            for token in tokens:
                f.write(struct.pack("<I", len(token)))
                f.write(token)
            for hf_name, tensor in state.items():
                if hf_name == "proj_out.weight":  # tied to the token embedding; whisper.cpp has no such tensor
                    continue
                name = ggml_name(hf_name)
                values = tensor.detach().to("cpu").float().numpy()
                if name in ("encoder.conv1.bias", "encoder.conv2.bias"):
                    values = values.reshape(-1, 1)  # whisper.cpp shapes conv biases as (1, n_state)
                kind = ggml_tensor_type(name, values.ndim, quantization)
                if kind in ("q8_0", "q5_0") and values.shape[-1] % GGML_BLOCK:
                    raise UserError(f"--quantization {quantization}: tensor {name} has rows of {values.shape[-1]} "
                                    f"values, not a multiple of {GGML_BLOCK}; use f16 or f32")
                encoded = name.encode()
                f.write(struct.pack("<iii", values.ndim, len(encoded), GGML_TYPE[kind]))
                f.write(struct.pack(f"<{values.ndim}i", *reversed(values.shape)))  # ggml: fastest dim first
                f.write(encoded)
                f.write(_encode(kind, values))
        from ..files import publish

        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_ggml(path):
    """Read a ggml Whisper file back (header, mel filters, vocabulary, every tensor dequantised)."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0

    def take(fmt):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    (magic,) = take("<I")
    if magic != GGML_MAGIC:
        raise UserError(f"{path}: not a ggml file (magic {magic:#x}, expected {GGML_MAGIC:#x})")
    hparams = dict(zip(GGML_HPARAMS, take(f"<{len(GGML_HPARAMS)}i")))
    n_mel, n_fft = take("<ii")
    filters = np.frombuffer(data, dtype="<f4", count=n_mel * n_fft, offset=offset).reshape(n_mel, n_fft)
    offset += 4 * n_mel * n_fft
    (n_tokens,) = take("<i")
    tokens = []
    for _ in range(n_tokens):
        (length,) = take("<I")
        tokens.append(data[offset:offset + length])
        offset += length
    tensors = {}
    while offset < len(data):
        n_dims, name_length, type_id = take("<iii")
        dims = take(f"<{n_dims}i")
        name = data[offset:offset + name_length].decode()
        offset += name_length
        kind = GGML_TYPE_NAMES[type_id]
        count = int(np.prod(dims))
        size = _nbytes(kind, count)
        values = dequantize(kind, data[offset:offset + size], count)
        offset += size
        shape = tuple(reversed(dims))
        tensors[name] = GgmlTensor(name, kind, shape, values.reshape(shape))
    return GgmlFile(hparams, filters, tokens, tensors)


# --- ONNX ------------------------------------------------------------------------------------------------

def write_onnx(source_dir, destination, quantization):
    """Optimum's exporter (encoder + decoder with past key values), then dynamic int8 if asked."""
    from optimum.exporters.onnx import main_export

    work = destination + ".export"
    import warnings

    import torch

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
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if all(os.path.exists(path) for path in separate) and os.path.exists(merged):
            # onnxruntime's dynamic quantiser leaves the weights inside the merged decoder's If branches in
            # float32 (measured: 118 MB -> 125 MB for tiny.en), so int8 keeps the two plain decoders instead
            os.remove(merged)
        for name in sorted(os.listdir(work)):
            if name.endswith(".onnx"):
                full = os.path.join(work, name)
                quantized = full + ".int8"
                # the quantiser logs every node it skips, and advice on pre-processing, to the root logger
                logging.disable(logging.WARNING)
                try:
                    quantize_dynamic(full, quantized, weight_type=QuantType.QInt8)
                finally:
                    logging.disable(logging.NOTSET)
                os.replace(quantized, full)
    os.replace(work, destination)
    return destination


# --- verification --------------------------------------------------------------------------------------

def size_of(path):
    """Bytes in a file, or in every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def reference_decode(model, dataset_specs, custom, output_dir, language, normalizer, batch_size, max_samples):
    """PyTorch reference: our evaluator (greedy, no timestamps, batched); one ``EvalResult`` per dataset.

    The one place that calls the evaluator, so a change of its interface is mended here.
    """
    from ..evaluate.evaluation import EvalConfig, evaluate

    common = dict(hf_model=model, output_dir=output_dir, language=language, normalizer=normalizer,
                  max_samples=max_samples, num_workers=0,
                  decoding=DecodingOptions(batch_size=batch_size, num_beams=1))
    if custom:
        return evaluate(EvalConfig(eval_datasets=tuple(s.name for s in dataset_specs), custom=True, **common))
    results = []
    for spec in dataset_specs:  # the Hub evaluator takes one dataset per run
        results += evaluate(EvalConfig(dataset=spec.name, config=spec.config, split=spec.split, **common))
    return results


class _FasterWhisperRuntime:
    """faster-whisper on the CTranslate2 export: greedy, no timestamps, no temperature fallback, no VAD.

    Each clip is padded with silence to Whisper's 30 s window first, as transformers and openai-whisper
    do before computing log-mels; faster-whisper on its own pads the log-mel frames with zeros instead,
    a different input for the last frames that changes some transcripts of short clips.
    """

    def __init__(self, folder, language, english_only, max_new_tokens):
        import torch
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every clip's duration at INFO
        # "default": the stored type where the CPU computes it (float32, int8), else the nearest it does
        # (float16 -> float32, int8_float16 -> int8_float32), as CTranslate2 recommends
        self.model = WhisperModel(folder, device="cpu", compute_type="default", cpu_threads=torch.get_num_threads())
        self.language = "en" if english_only else language
        # CTranslate2's Whisper generates at most half of max_length (like openai-whisper's sample_len), and
        # faster-whisper asks for max_length = prompt + max_new_tokens: so prompt + this = 2 x max_new_tokens,
        # as ctranslate2_backend.CT2Decoder does, allows the evaluator's max_new_tokens
        prompt = 2 if english_only else 4  # <|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>
        self.max_new_tokens = 2 * max_new_tokens - prompt

    def transcribe(self, audios):
        from ..audio import SAMPLE_RATE

        window = WINDOW_SECONDS * SAMPLE_RATE
        texts = []
        for audio in audios:
            padded = np.pad(audio, (0, max(0, window - len(audio)))) if len(audio) < window else audio
            segments, _ = self.model.transcribe(
                padded, language=self.language, beam_size=1, best_of=1, temperature=0.0, without_timestamps=True,
                condition_on_previous_text=False, vad_filter=False, max_new_tokens=self.max_new_tokens,
                # no heuristics that drop or re-decode a window (the evaluator has none)
                no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None)
            texts.append("".join(s.text for s in segments).strip())
        return texts


class _WhisperCppRuntime:
    """whisper.cpp (pywhispercpp) on the ggml file: greedy (best_of 1), no timestamps, no temperature
    fallback, no context carried between clips, the language given."""

    def __init__(self, path, language, english_only, max_new_tokens):
        import torch
        from pywhispercpp.model import Model

        # pywhispercpp logs every clip ("Transcribing ...", "Inference time") at INFO
        logging.getLogger("pywhispercpp").setLevel(logging.WARNING)
        self.model = Model(path, redirect_whispercpp_logs_to=None, n_threads=torch.get_num_threads(),
                           language="en" if english_only else language, no_timestamps=True, single_segment=True,
                           print_progress=False, print_realtime=False, no_context=True, temperature=0.0,
                           temperature_inc=0.0, greedy={"best_of": 1}, translate=False, max_tokens=max_new_tokens)

    def transcribe(self, audios):
        return ["".join(s.text for s in self.model.transcribe(audio)).strip() for audio in audios]


class _OnnxRuntime:
    """onnxruntime through Optimum's ``ORTModelForSpeechSeq2Seq.generate``, batched like the reference."""

    def __init__(self, folder, language, english_only, batch_size, max_new_tokens):
        from optimum.onnxruntime import ORTModelForSpeechSeq2Seq
        from transformers import WhisperProcessor

        self.processor = WhisperProcessor.from_pretrained(folder)
        optimum_logger = logging.getLogger("optimum")
        level = optimum_logger.level
        optimum_logger.setLevel(logging.ERROR)  # int8 exports have no merged decoder: optimum says so, then loads
        try:                                     # the two plain decoders, which is what we want
            self.model = ORTModelForSpeechSeq2Seq.from_pretrained(folder)
        finally:
            optimum_logger.setLevel(level)
        self.english_only = english_only
        if english_only and hasattr(self.model.generation_config, "lang_to_id"):
            # transformers runs language detection whenever this attribute exists (as TorchDecoder notes)
            del self.model.generation_config.lang_to_id
        self.language = language
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def transcribe(self, audios):
        from ..audio import SAMPLE_RATE

        texts = []
        kwargs = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "return_timestamps": False}
        if not self.english_only:
            kwargs.update(language=self.language, task="transcribe")
        for start in range(0, len(audios), self.batch_size):
            batch = audios[start:start + self.batch_size]
            features = self.processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE,
                                                        return_tensors="pt").input_features
            tokens = self.model.generate(input_features=features, **kwargs)
            texts += [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]
        return texts


def _runtime_for(target, path, language, english_only, batch_size, max_new_tokens):
    if target.format == "ctranslate2":
        return "faster-whisper", _FasterWhisperRuntime(path, language, english_only, max_new_tokens)
    if target.format == "ggml":
        return "whisper.cpp", _WhisperCppRuntime(path, language, english_only, max_new_tokens)
    return "onnxruntime", _OnnxRuntime(path, language, english_only, batch_size, max_new_tokens)


def _dataset_specs(options: ExportOptions):
    local = [is_saved_dataset(d) for d in options.verify_datasets]
    if any(local) and not all(local):
        raise OptionError("verify_datasets", " ".join(options.verify_datasets), "give either data_prep folders or "
                          "Hub datasets, not both")
    for name, is_local in zip(options.verify_datasets, local):
        if not is_local and (os.path.exists(name) or not loading.looks_like_hub_id(name)):
            raise OptionError("verify_datasets", name, "not a data_prep folder (make one with "
                              "custom_data/data_prep.py) and not a Hub dataset id")
    custom = all(local)
    specs = tuple(DatasetSpec(name=d, split=None) if custom else
                  DatasetSpec(name=d, config=options.verify_config, split=options.verify_split)
                  for d in options.verify_datasets)
    return specs, custom


def verify(options: ExportOptions, source, targets, paths, verify_dir):
    """Decode each dataset with PyTorch and with every export's runtime; score all with the project's
    scoring; returns the table rows and the parity failures."""
    from ..audio import SAMPLE_RATE, decode_example_audio
    from ..text import get_normalizer

    specs, custom = _dataset_specs(options)
    references = reference_decode(options.model, specs, custom, verify_dir, options.verify_language,
                                  options.normalizer, options.verify_batch_size, options.verify_max_samples)
    datasets = load_datasets(specs, custom=custom)
    max_new_tokens = DecodingOptions().max_new_tokens
    same = get_normalizer("none")
    rows, failures, loaded = [], [], []
    # the weights only (an output folder also holds checkpoints and logs)
    model_size = sum(os.path.getsize(os.path.join(options.model, f)) for f in loading.WEIGHT_FILES
                     if os.path.isfile(os.path.join(options.model, f))) if os.path.isdir(options.model) else 0
    for spec, dataset, ref in zip(specs, datasets, references):
        if options.verify_max_samples is not None:
            dataset = dataset.select(range(min(options.verify_max_samples, len(dataset))))
        ref_hyps = _raw_hypotheses(ref.txt_path)
        audios = [decode_example_audio(value, SAMPLE_RATE) for value in dataset[AUDIO_COLUMN]]
        seconds = sum(len(a) for a in audios) / SAMPLE_RATE
        loaded.append((spec, dataset, ref, ref_hyps, audios, seconds))
        rows.append(VerifyRow(dataset=spec.label, export="pytorch", runtime="transformers", utterances=len(dataset),
                              wer=ref.wer, cer=ref.cer, identical=1.0, rtfx=ref.rtfx, size_bytes=model_size,
                              wer_delta=None, enforced=False, passed=None, results_path=ref.txt_path))
    english_only = loading.is_english_only(loading.generation_config_of(source))
    language = references[0].language or "en"  # None: English-only model (no language token)
    for target in targets:
        runtime_name, runtime = _runtime_for(target, paths[target.name], language, english_only,
                                             options.verify_batch_size, max_new_tokens)
        for spec, dataset, ref, ref_hyps, audios, seconds in loaded:
            start = time.perf_counter()
            hyps = runtime.transcribe(audios)
            wall = time.perf_counter() - start
            texts = list(dataset[TEXT_COLUMN])
            scores = scoring.score(texts, hyps, ref.normalizer)
            identical = float(np.mean([same(a) == same(b) for a, b in zip(hyps, ref_hyps)]))
            delta = scores["wer"] - ref.wer
            checked = target.enforced and scores["scored_utterances"] >= PARITY_MIN_UTTERANCES
            passed = (abs(delta) <= PARITY_MAX_WER_DELTA) if checked else None
            metadata = {"model": options.model, "export": target.name, "runtime": runtime_name,
                        "dataset": spec.label, "language": language, "wall_seconds": round(wall, 3),
                        "rtfx": round(seconds / wall, 3), "pytorch_wer": ref.wer}
            stem = scoring.result_stem(source.name, os.path.basename(os.path.normpath(spec.name)), target.name)
            txt_path, _ = scoring.write_results(verify_dir, stem, list(dataset[ID_COLUMN]), texts, hyps, scores,
                                                metadata)
            row = VerifyRow(dataset=spec.label, export=target.name, runtime=runtime_name, utterances=len(dataset),
                            wer=scores["wer"], cer=scores["cer"], identical=identical, rtfx=round(seconds / wall, 3),
                            size_bytes=size_of(paths[target.name]), wer_delta=delta, enforced=target.enforced,
                            passed=passed, results_path=txt_path)
            rows.append(row)
            logger.info("%s on %s: WER %.4f (PyTorch %.4f), identical %.3f, RTFx %.2f", target.name, spec.label,
                        row.wer, ref.wer, identical, row.rtfx)
            if passed is False:
                failures.append(f"{target.name} on {spec.label}: WER {row.wer:.4f} vs PyTorch {ref.wer:.4f} "
                                f"(difference {delta:+.4f}, allowed {PARITY_MAX_WER_DELTA})")
        del runtime  # frees the runtime's threads and memory before the next one loads
    return rows, failures


def _raw_hypotheses(txt_path):
    """The RAW_HYP lines of a result file (the transcripts as decoded), in dataset order."""
    with open(txt_path, encoding="utf-8") as f:
        return [line[len("RAW_HYP: "):].rstrip("\n") for line in f if line.startswith("RAW_HYP: ")]


# --- report and model card -------------------------------------------------------------------------------

def format_table(rows):
    """The parity table as Markdown (also printed by the shim)."""
    lines = ["| dataset | export | runtime | utts | WER | CER | identical | RTFx | size | WER − PyTorch | parity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        size = f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes else "–"
        delta = "–" if r.wer_delta is None else f"{r.wer_delta:+.4f}"
        parity = {True: "pass", False: "FAIL", None: "reported" if r.export != "pytorch" else "reference"}[r.passed]
        lines.append(f"| {os.path.basename(r.dataset.rstrip('/'))} | {r.export} | {r.runtime} | {r.utterances} | "
                     f"{r.wer:.4f} | {r.cer:.4f} | {r.identical:.3f} | {r.rtfx:.1f} | {size} | {delta} | {parity} |")
    return "\n".join(lines)


def _versions():
    """Installed versions of the converters and runtimes (missing optional ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "ctranslate2", "optimum", "optimum-onnx", "onnxruntime", "faster-whisper",
                    "pywhispercpp"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def render_card(options: ExportOptions, source: loading.ModelSource, targets, rows, only=None):
    """The model card of an export folder: its source, how it was quantised, how to load it, the table."""
    shown = [t for t in targets if only is None or t.name == only]
    base = loading.adapter_base(source.model_path) if os.path.isdir(source.model_path) else None
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
              "conv weights float16, every other matrix in the quantisation); ONNX with Optimum's exporter "
              "(fp32: encoder and the merged decoder with past key values; int8: encoder, decoder and decoder "
              "with past, weights quantised by onnxruntime's dynamic quantiser).", "",
              "Tool versions: " + ", ".join(f"{k} {v}" for k, v in _versions().items()), ""]
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
              "from optimum.onnxruntime import ORTModelForSpeechSeq2Seq  # onnx-*/ (with its processor files)",
              "model = ORTModelForSpeechSeq2Seq.from_pretrained(\"onnx-fp32\")", "```", ""]
    return "\n".join(lines)


# --- the whole export ------------------------------------------------------------------------------------

def export(options: ExportOptions) -> ExportResult:
    """Write every requested export into ``options.output_dir`` (atomically), verify them when asked."""
    targets, source = check_options(options)
    out = os.path.abspath(options.output_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-tmp-", dir=parent)
    try:
        build = os.path.join(work, "export")
        os.makedirs(build)
        source_dir = os.path.join(work, "source")
        start = time.perf_counter()
        model, processor = materialize(source, source_dir)
        logger.info("loaded %s in %.1f s", source.model_path, time.perf_counter() - start)
        paths = {}
        for target in targets:
            start = time.perf_counter()
            path = os.path.join(build, target.name)
            try:
                if target.format == "ctranslate2":
                    write_ctranslate2(source_dir, path, target.quantization)
                elif target.format == "ggml":
                    write_ggml(model, processor, path, target.quantization)
                else:
                    write_onnx(source_dir, path, target.quantization)
            except (OSError, ValueError, RuntimeError) as exc:  # converters' own errors, as one line
                raise UserError(f"cannot export {source.model_path} to {target.name}: "
                                f"{str(exc).splitlines()[0]}") from exc
            paths[target.name] = path
            logger.info("wrote %s (%.1f MB) in %.1f s", target.name, size_of(path) / 1e6, time.perf_counter() - start)
        del model
        rows, failures = (), ()
        if options.verify_datasets:
            rows, failures = verify(options, source, targets, paths, os.path.join(build, "verify"))
        sizes = {t.name: size_of(paths[t.name]) for t in targets}
        base = loading.adapter_base(source.model_path) if os.path.isdir(source.model_path) else None
        report = {"model": source.model_path, "processor": source.processor_path, "adapter_base": base,
                  "options": asdict(options), "exports": [{**asdict(t), "name": t.name, "enforced": t.enforced,
                                                           "size_bytes": sizes[t.name]} for t in targets],
                  "parity_rule": {"max_wer_delta": PARITY_MAX_WER_DELTA, "min_utterances": PARITY_MIN_UTTERANCES},
                  "failures": list(failures), "versions": _versions()}
        final_rows = tuple(_relocate(r, build, out) for r in rows)
        report["rows"] = [asdict(r) for r in final_rows]
        atomic_write_text(os.path.join(build, REPORT_FILE), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(build, CARD_FILE), render_card(options, source, targets, final_rows))
        for target in targets:
            if os.path.isdir(paths[target.name]):
                atomic_write_text(os.path.join(paths[target.name], CARD_FILE),
                                  render_card(options, source, targets, final_rows, only=target.name))
        _publish_folder(build, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(output_dir=out, exports={t.name: os.path.join(out, t.name) for t in targets}, sizes=sizes,
                        rows=final_rows, report_path=os.path.join(out, REPORT_FILE), parity_ok=not failures,
                        failures=tuple(failures))


def _relocate(row, build, out):
    """A row whose result path points into the final folder instead of the temporary one."""
    if row.results_path and row.results_path.startswith(build):
        return replace(row, results_path=out + row.results_path[len(build):])
    return row


def _publish_folder(build, out):
    """Move the finished folder into place; an existing one (``--overwrite``) is removed only afterwards."""
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=".export-old-", dir=os.path.dirname(out))
        os.replace(out, os.path.join(old, "previous"))
    os.replace(build, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)
