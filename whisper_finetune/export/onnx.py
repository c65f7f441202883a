"""ONNX export: the Whisper encoder and an incremental decoder, written with torch's ONNX exporter
(``torch.onnx.export(..., dynamo=True)``), plus the model's config, generation config, tokenizer and
preprocessor files; int8 by onnxruntime's dynamic quantiser. :class:`.runtimes.OnnxRuntime` decodes it.

The folder (``onnx-<quantization>/``):

* ``encoder_model.onnx``: ``input_features`` (batch, n_mels, frames) float32 log-mel -> ``cross_key`` and
  ``cross_value`` (decoder_layers, batch, heads, frames / 2, head_dim): the encoder output already projected
  to every decoder layer's cross-attention keys and values, which stay the same for the whole decode, so the
  decoder never recomputes them. ``frames`` is dynamic: 3000 (30 s, what every runtime and our evaluator
  feed by default) or fewer (an even count) for a model fine-tuned with ``--dynamic_audio_context``, which
  then uses the first ``frames / 2`` positional embeddings, as ``loading.narrow_positions_for_short_inputs``
  and whisper.cpp's ``audio_ctx`` do.
* ``decoder_model.onnx``: ``input_ids`` (batch, tokens) int64, ``cross_key``, ``cross_value``,
  ``past_key`` and ``past_value`` (decoder_layers, batch, heads, past, head_dim) -> ``logits`` (batch, tokens,
  vocab) and ``present_key`` / ``present_value`` (the past with this call's tokens appended). One decoder
  for every step: the first call gives the whole prompt with a past of length 0, each later one the last
  token with the previous call's present. No If node, so onnxruntime runs it as one plain graph, and the
  int8 quantiser reaches every weight (it skipped the weights inside Optimum's merged decoder's branches).

The two wrappers below call transformers' own modules (the encoder's convolutions and layers, every
decoder layer's projections and layer norms): the attention over the key/value cache is written here,
because transformers' cache objects and mask builders are what changed between versions and broke the
exporters built on them (Optimum). No private torch or transformers API is used.
"""
import logging
import os
import shutil
import warnings

from ..files import atomic_dir

logger = logging.getLogger(__name__)

ENCODER_FILE = "encoder_model.onnx"
DECODER_FILE = "decoder_model.onnx"
ONNX_FILES = (ENCODER_FILE, DECODER_FILE)
# ONNX opset 18: every onnxruntime since 1.14 runs it, and torch's exporter writes it natively
ONNX_OPSET = 18
# files of the source folder that are not the model's weights: config, generation config, tokenizer, processor
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def _torch_modules():
    """The two export wrappers (defined on first use: torch is imported only when exporting)."""
    import torch
    from torch import nn

    def split_heads(x, heads):  # (batch, time, d_model) -> (batch, heads, time, head_dim)
        return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def merge_heads(x):  # (batch, heads, time, head_dim) -> (batch, time, d_model)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)

    def attend(query, key, value, bias=None):
        # query already scaled by head_dim ** -0.5, as transformers' WhisperAttention scales it before the product
        weights = torch.matmul(query, key.transpose(-1, -2))
        if bias is not None:
            weights = weights + bias
        return torch.matmul(torch.softmax(weights, dim=-1), value)

    class EncoderWithCrossKV(nn.Module):
        """Encoder (transformers' modules; positions cut to the input's length), then each decoder layer's
        cross-attention keys and values of its output."""

        def __init__(self, model):
            super().__init__()
            self.encoder = model.model.encoder
            self.cross = nn.ModuleList(layer.encoder_attn for layer in model.model.decoder.layers)
            self.heads = model.config.decoder_attention_heads

        def forward(self, input_features):
            encoder = self.encoder
            x = nn.functional.gelu(encoder.conv1(input_features))
            x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
            x = x + encoder.embed_positions.weight[:x.shape[1]]
            for layer in encoder.layers:
                x = layer(x, None)
            x = encoder.layer_norm(x)
            keys = torch.stack([split_heads(attn.k_proj(x), self.heads) for attn in self.cross])
            values = torch.stack([split_heads(attn.v_proj(x), self.heads) for attn in self.cross])
            return keys, values

    class DecoderWithPast(nn.Module):
        """Decoder steps over a self-attention key/value cache, cross-attention on the encoder's keys and values;
        logits through the model's output projection (tied to the token embedding)."""

        def __init__(self, model):
            super().__init__()
            self.decoder = model.model.decoder
            self.proj_out = model.proj_out
            self.heads = model.config.decoder_attention_heads

        def forward(self, input_ids, cross_key, cross_value, past_key, past_value):
            decoder = self.decoder
            past, steps = past_key.shape[3], input_ids.shape[1]
            x = decoder.embed_tokens(input_ids) + decoder.embed_positions.weight[past:past + steps]
            # causal: token i of this call sees the past and this call's tokens up to itself
            visible = torch.arange(past + steps, device=x.device)[None, :] <= \
                torch.arange(steps, device=x.device)[:, None] + past
            bias = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~visible, torch.finfo(x.dtype).min)
            keys, values = [], []
            for i, layer in enumerate(decoder.layers):
                attn = layer.self_attn
                h = layer.self_attn_layer_norm(x)
                query = split_heads(attn.q_proj(h) * attn.scaling, self.heads)
                key = torch.cat([past_key[i], split_heads(attn.k_proj(h), self.heads)], dim=2)
                value = torch.cat([past_value[i], split_heads(attn.v_proj(h), self.heads)], dim=2)
                keys.append(key)
                values.append(value)
                x = x + attn.out_proj(merge_heads(attend(query, key, value, bias)))
                cross = layer.encoder_attn
                h = layer.encoder_attn_layer_norm(x)
                query = split_heads(cross.q_proj(h) * cross.scaling, self.heads)
                x = x + cross.out_proj(merge_heads(attend(query, cross_key[i], cross_value[i])))
                h = layer.final_layer_norm(x)
                x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            logits = self.proj_out(decoder.layer_norm(x))
            return logits, torch.stack(keys), torch.stack(values)

    return EncoderWithCrossKV, DecoderWithPast


def export_onnx_models(model, folder):
    """Write :data:`ENCODER_FILE` and :data:`DECODER_FILE` for ``model`` (a float32
    ``WhisperForConditionalGeneration``) into ``folder``."""
    import torch
    from torch.export import Dim

    encoder_cls, decoder_cls = _torch_modules()
    config = model.config
    model = model.eval()
    layers, heads = config.decoder_layers, config.decoder_attention_heads
    head_dim = config.d_model // heads
    full_frames = 2 * config.max_source_positions  # conv2 has stride 2
    batch = Dim("batch", min=1, max=1024)
    half_frames = Dim("half_frames", min=2, max=config.max_source_positions)
    encoder_positions = Dim("encoder_positions", min=2, max=config.max_source_positions)
    tokens = Dim("tokens", min=1, max=config.max_target_positions)
    past = Dim("past", min=0, max=config.max_target_positions)
    features = torch.zeros(2, config.num_mel_bins, full_frames)
    # example shapes away from 0 and 1 (which torch.export would specialise on); the graphs are shape-generic.
    # Four distinct tensors: torch.export takes one tensor passed twice as one input used twice
    cross_key, cross_value = (torch.zeros(layers, 2, heads, config.max_source_positions, head_dim) for _ in "kv")
    ids = torch.full((2, 3), config.decoder_start_token_id, dtype=torch.long)
    past_key, past_value = (torch.zeros(layers, 2, heads, 5, head_dim) for _ in "kv")
    # the exporter's and its graph optimiser's notes on their own internals ("torchvision is not installed.
    # Skipping torchvision::nms", "Removed 120 unused nodes", one "Replaced initializer" line per constant):
    # nothing a user can act on
    quiet = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger_.level for logger_ in quiet]
    for logger_ in quiet:
        logger_.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = torch.onnx.export(
                encoder_cls(model), (features,), input_names=["input_features"],
                output_names=["cross_key", "cross_value"], opset_version=ONNX_OPSET, dynamo=True, verbose=False,
                dynamic_shapes={"input_features": {0: batch, 2: 2 * half_frames}})
            encoder.save(os.path.join(folder, ENCODER_FILE))
            decoder = torch.onnx.export(
                decoder_cls(model), (ids, cross_key, cross_value, past_key, past_value),
                input_names=["input_ids", "cross_key", "cross_value", "past_key", "past_value"],
                output_names=["logits", "present_key", "present_value"], opset_version=ONNX_OPSET, dynamo=True,
                verbose=False,
                dynamic_shapes={"input_ids": {0: batch, 1: tokens}, "cross_key": {1: batch, 3: encoder_positions},
                                "cross_value": {1: batch, 3: encoder_positions}, "past_key": {1: batch, 3: past},
                                "past_value": {1: batch, 3: past}})
            decoder.save(os.path.join(folder, DECODER_FILE))
    finally:
        for logger_, level in zip(quiet, levels):
            logger_.setLevel(level)


def copy_processor_files(source_dir, folder):
    """Copy every file of the materialised source folder except its weights: config.json,
    generation_config.json (the prompt and suppressed tokens the runtime decodes with), the tokenizer and
    preprocessor files, so the ONNX folder is self-contained."""
    for name in sorted(os.listdir(source_dir)):
        path = os.path.join(source_dir, name)
        if os.path.isfile(path) and not name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(path, os.path.join(folder, name))


def write_onnx(model, source_dir, destination, quantization):
    """Export ``model`` (the float32 model materialised in ``source_dir``) to ONNX at ``destination`` with the
    processor files, then dynamic int8 if asked; the folder appears complete or not at all."""
    with atomic_dir(destination) as work:
        export_onnx_models(model, work)
        copy_processor_files(source_dir, work)
        if quantization == "int8":
            for name in ONNX_FILES:
                _quantize_int8(os.path.join(work, name))
    return destination


def _quantize_int8(path):
    """Quantise the weights of the ONNX file at ``path`` (inside a staging folder) to int8, in place."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path + ".int8"
    # the quantiser logs every node it skips, and advice on pre-processing, to the root logger
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(path, quantized, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(quantized, path)  # inside the unpublished folder: a plain rename, nobody reads it yet
