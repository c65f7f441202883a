"""ggml export: our writer of whisper.cpp's legacy ggml layout (header, mel filters, vocabulary, tensors),
and :func:`read_ggml` to read a file back. The q8_0 / q5_0 blocks are quantised (and read back) by the gguf
package, llama.cpp's own Python port of ggml's reference quantisers."""
import logging
import struct
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from ..errors import UserError
from ..files import atomic_file
from ..text import byte_level_alphabet

logger = logging.getLogger(__name__)

# --- ggml layout (whisper.cpp's legacy loader, src/whisper.cpp whisper_model_load) -------------------
GGML_MAGIC = 0x67676D6C  # "ggml" read as a little-endian uint32
GGML_QNT_VERSION = 2  # quantisation format version; whisper.cpp reads ftype // 1000 as this
GGML_QNT_VERSION_FACTOR = 1000
# File-level ftype (enum ggml_ftype) and per-tensor type (enum ggml_type) for each quantisation.
GGML_FTYPE = {"f16": 1, "q8_0": 7, "q5_0": 8}
# The tensor types, as the gguf package (llama.cpp's, the same ggml block layouts) names them; their values
# are enum ggml_type's (f32 0, f16 1, q5_0 6, q8_0 8).
GGML_QUANT_TYPES = {"f32": GGMLQuantizationType.F32, "f16": GGMLQuantizationType.F16,
                    "q5_0": GGMLQuantizationType.Q5_0, "q8_0": GGMLQuantizationType.Q8_0}
GGML_TYPE = {name: int(qtype) for name, qtype in GGML_QUANT_TYPES.items()}
GGML_TYPE_NAMES = {v: k for k, v in GGML_TYPE.items()}
GGML_BLOCK = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]  # values per q8_0 / q5_0 block (QK8_0 = QK5_0 = 32)
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


def ggml_name(hf_name):
    """The whisper.cpp tensor name for a transformers parameter name (``model.`` prefix dropped)."""
    name = hf_name[len("model."):] if hf_name.startswith("model.") else hf_name
    for old, new in _GGML_RENAMES:
        name = name.replace(old, new)
    return name


def encode(kind, values):
    """``values`` stored as ggml type ``kind``, as bytes (little-endian). q8_0 and q5_0 are the gguf package's
    quantisers, byte for byte ggml's reference ones (``quantize_row_q8_0_ref``, ``quantize_row_q5_0_ref``);
    their rows must be a multiple of :data:`GGML_BLOCK` values."""
    if kind == "f32":
        return values.astype("<f4").tobytes()
    if kind == "f16":
        return values.astype("<f2").tobytes()
    return quants.quantize(np.asarray(values, dtype=np.float32), GGML_QUANT_TYPES[kind]).tobytes()


def decode(kind, data, count):
    """float32 values of ``count`` elements stored as ggml type ``kind`` in ``data`` (bytes)."""
    if kind == "f32":
        return np.frombuffer(data, dtype="<f4", count=count).copy()
    if kind == "f16":
        return np.frombuffer(data, dtype="<f2", count=count).astype(np.float32)
    raw = np.frombuffer(data, dtype=np.uint8, count=nbytes(kind, count))
    return quants.dequantize(raw, GGML_QUANT_TYPES[kind])


def nbytes(kind, count):
    """Bytes that ``count`` values take as ggml type ``kind``."""
    block, size = GGML_QUANT_SIZES[GGML_QUANT_TYPES[kind]]
    return count // block * size


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
    byte_of = {char: byte for byte, char in byte_level_alphabet().items()}
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
    """Write ``model`` as a whisper.cpp ggml file at ``path`` (it appears complete or not at all)."""
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
    with atomic_file(path) as f:
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
            f.write(encode(kind, values))
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
        size = nbytes(kind, count)
        values = decode(kind, data[offset:offset + size], count)
        offset += size
        shape = tuple(reversed(dims))
        tensors[name] = GgmlTensor(name, kind, shape, values.reshape(shape))
    return GgmlFile(hparams, filters, tokens, tensors)
