"""Whisper in plain JAX (``jax.numpy`` and ``jax.lax``, no Flax): weights, forward pass, greedy and beam search.

Written from the architecture, for the JAX decoding backend (:mod:`.jax_backend`):

* :func:`load_params` reads any Whisper checkpoint's PyTorch weights through
  :func:`whisper_finetune.model.loading.load_model` (Hub id, folder, trainer checkpoint, LoRA adapter
  merged into its base) into a pytree of arrays; layer weights are stacked along a leading layer axis so
  that encoder and decoder run their layers with ``lax.scan`` (one layer traced, not N: short compiles
  for the large models too). Matrices are kept ``(in, out)``, so a linear layer is ``x @ w + b``.
* :func:`generate` decodes a batch of log-mel windows: the encoder runs once; each decoder layer's
  cross-attention keys and values are computed once from its output; the decoder's self-attention keys
  and values go into a cache preallocated for the whole sequence (prompt + ``max_new_tokens``) and
  written one position per step with ``lax.dynamic_update_slice``, so every step has the same shapes
  and the loop (``lax.while_loop``) compiles once.

Decoding follows transformers' Whisper ``generate`` as :class:`.torch_backend.TorchDecoder` calls it
(short-form, no timestamps), so both give the same tokens: ``suppress_tokens`` are never chosen,
``begin_suppress_tokens`` not as the first generated token, a multilingual model given no language
picks the language token with the highest logit among the language tokens (per row) after
``<|startoftranscript|>``, each row stops at the end token, and ``max_new_tokens`` counts tokens
after the prompt. Beam search follows transformers' vectorised beam search: ``2 * num_beams``
candidates per step, finished hypotheses scored ``sum of log-probabilities / generated_length **
length_penalty``, the same ``early_stopping`` semantics and early-stop heuristic.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import UserError

NEG_INF = -1.0e9  # "impossible" score of transformers' beam search (finite, so sums stay ordered)


@dataclass(frozen=True)
class WhisperShape:
    """The sizes of one Whisper model, from its transformers ``WhisperConfig``."""

    n_mels: int
    d_model: int
    encoder_layers: int
    encoder_heads: int
    decoder_layers: int
    decoder_heads: int
    vocab_size: int
    source_positions: int  # encoder positions: 1500 for 30 s (3000 log-mel frames, conv stride 2)
    target_positions: int  # decoder positions: 448

    @classmethod
    def from_config(cls, config):
        if config.activation_function != "gelu":
            raise UserError(f"the JAX backend runs Whisper's GELU layers; this model uses "
                            f"{config.activation_function!r}: use --backend pytorch")
        return cls(config.num_mel_bins, config.d_model, config.encoder_layers, config.encoder_attention_heads,
                   config.decoder_layers, config.decoder_attention_heads, config.vocab_size,
                   config.max_source_positions, config.max_target_positions)

    @property
    def frames(self):
        """Log-mel frames of one input window (two per encoder position)."""
        return 2 * self.source_positions


@dataclass(frozen=True)
class DecodePlan:
    """What :func:`generate` decodes: all static (hashable), so one plan compiles to one program.

    ``prompt``: the decoder prompt's token ids, ``None`` at a position the model fills itself (the
    language, detected among ``language_ids``). ``max_length``: prompt + ``max_new_tokens``, the
    length of the cache and of the returned rows.
    """

    prompt: Tuple[Optional[int], ...]
    max_length: int
    eos_token_id: int
    suppress_tokens: Tuple[int, ...] = ()
    begin_suppress_tokens: Tuple[int, ...] = ()
    language_ids: Tuple[int, ...] = ()
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: object = False  # True, False or "never", as transformers' GenerationConfig


def _stack(state, template, count):
    """One array ``(count, ...)`` of the per-layer tensors ``template.format(i)`` (a name with ``{}``)."""
    return np.stack([state[template.format(i)] for i in range(count)])


def params_from_state_dict(state, shape: WhisperShape):
    """The parameter pytree from a ``WhisperForConditionalGeneration`` state dict of numpy arrays.

    Linear weights are transposed to ``(in, out)``; per-layer tensors are stacked ``(layers, ...)``.
    """
    missing = [k for k in ("model.encoder.conv1.weight", "model.decoder.embed_tokens.weight") if k not in state]
    if missing:
        raise UserError(f"not a Whisper state dict: no {', '.join(missing)}")

    def layers(prefix, count, cross):
        blocks = [("self_attn", "attn")] + ([("encoder_attn", "cross")] if cross else [])
        out = {}
        for torch_name, name in blocks:
            for proj in ("q", "k", "v", "out"):
                weight = _stack(state, f"{prefix}.layers.{{}}.{torch_name}.{proj}_proj.weight", count)
                out[f"{name}_{proj}_w"] = weight.transpose(0, 2, 1)  # (layers, in, out)
                if proj != "k":  # Whisper's key projections have no bias
                    out[f"{name}_{proj}_b"] = _stack(state, f"{prefix}.layers.{{}}.{torch_name}.{proj}_proj.bias",
                                                     count)  # (layers, out)
            out[f"{name}_ln_w"] = _stack(state, f"{prefix}.layers.{{}}.{torch_name}_layer_norm.weight", count)
            out[f"{name}_ln_b"] = _stack(state, f"{prefix}.layers.{{}}.{torch_name}_layer_norm.bias", count)
        for fc in ("fc1", "fc2"):
            out[f"{fc}_w"] = _stack(state, f"{prefix}.layers.{{}}.{fc}.weight", count).transpose(0, 2, 1)
            out[f"{fc}_b"] = _stack(state, f"{prefix}.layers.{{}}.{fc}.bias", count)
        out["mlp_ln_w"] = _stack(state, f"{prefix}.layers.{{}}.final_layer_norm.weight", count)
        out["mlp_ln_b"] = _stack(state, f"{prefix}.layers.{{}}.final_layer_norm.bias", count)
        return out

    encoder = {
        "conv1_w": state["model.encoder.conv1.weight"],  # (d_model, n_mels, 3)
        "conv1_b": state["model.encoder.conv1.bias"],
        "conv2_w": state["model.encoder.conv2.weight"],  # (d_model, d_model, 3)
        "conv2_b": state["model.encoder.conv2.bias"],
        "positions": state["model.encoder.embed_positions.weight"],  # (source_positions, d_model)
        "ln_w": state["model.encoder.layer_norm.weight"],
        "ln_b": state["model.encoder.layer_norm.bias"],
        "layers": layers("model.encoder", shape.encoder_layers, cross=False),
    }
    decoder = {
        # Also the output projection: Whisper ties proj_out to the token embedding.
        "tokens": state["model.decoder.embed_tokens.weight"],  # (vocab, d_model)
        "positions": state["model.decoder.embed_positions.weight"],  # (target_positions, d_model)
        "ln_w": state["model.decoder.layer_norm.weight"],
        "ln_b": state["model.decoder.layer_norm.bias"],
        "layers": layers("model.decoder", shape.decoder_layers, cross=True),
    }
    return {"encoder": encoder, "decoder": decoder}


def load_params(model_path, dtype=None):
    """``(WhisperShape, params, generation_config)`` of a model (Hub id, folder, checkpoint, LoRA adapter).

    The weights are read by :func:`whisper_finetune.model.loading.load_model` (so LoRA adapters come
    merged) and become ``jnp`` arrays of ``dtype`` (default float32).
    """
    import jax
    import jax.numpy as jnp

    from ..model.loading import load_model

    torch_model = load_model(model_path)
    shape = WhisperShape.from_config(torch_model.config)
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    params = params_from_state_dict(state, shape)
    generation_config = torch_model.generation_config
    del torch_model, state
    dtype = dtype or jnp.float32
    return shape, jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), params), generation_config


# ---------------------------------------------------------------------------------------------- forward pass


def _precision(dtype):
    """Full float32 matrix products in float32 (no TF32 on GPUs, as PyTorch's default), native in bfloat16."""
    import jax
    import jax.numpy as jnp

    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def _linear(x, w, b=None):
    """``x @ w + b``; x: (..., in), w: (in, out), b: (out,) -> (..., out)."""
    import jax.numpy as jnp

    y = jnp.matmul(x, w, precision=_precision(x.dtype))
    return y if b is None else y + b


def _layer_norm(x, w, b, eps=1e-5):
    """LayerNorm over the last axis; statistics in float32 (as PyTorch does for bfloat16), result in x's dtype."""
    import jax.numpy as jnp

    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * (var + eps) ** -0.5).astype(x.dtype) * w + b


def _gelu(x):
    import jax

    return jax.nn.gelu(x, approximate=False)  # exact (erf) GELU, as torch.nn.functional.gelu


def _heads(x, heads):
    """(B, S, D) -> (B, H, S, D / H): the layout attention works in."""
    batch, length, d_model = x.shape
    return x.reshape(batch, length, heads, d_model // heads).transpose(0, 2, 1, 3)


def _attention(q, k, v, mask=None, rows_at_once=0):
    """Scaled dot-product attention, in heads: q (B, H, Q, dh), k/v (B, H, K, dh), mask broadcastable to
    (B, H, Q, K), True where attending is allowed -> (B, Q, H * dh). The softmax runs in float32.

    ``rows_at_once=1`` computes one batch row at a time (``lax.map``): on CPUs the encoder's
    (heads, 1500, 1500) scores of one row stay in cache, about twice as fast as the whole batch's.
    """
    import jax
    import jax.numpy as jnp

    batch, heads, q_len, head_dim = q.shape
    q = q * (head_dim ** -0.5)  # scaled before the product, as Whisper does
    precision = _precision(q.dtype)

    def attend(q, k, v):  # (..., H, Q, dh), (..., H, K, dh) x2 -> (..., H, Q, dh)
        scores = jnp.einsum("...qd,...kd->...qk", q, k, precision=precision).astype(jnp.float32)  # (.., H, Q, K)
        if mask is not None:
            scores = jnp.where(mask if rows_at_once != 1 else mask[0], scores, -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        return jnp.einsum("...qk,...kd->...qd", weights, v, precision=precision)

    if rows_at_once == 1:
        out = jax.lax.map(lambda row: attend(*row), (q, k, v))  # (B, H, Q, dh)
    else:
        out = attend(q, k, v)
    return out.transpose(0, 2, 1, 3).reshape(batch, q_len, heads * head_dim)


def _conv1d(x, w, b, stride):
    """Whisper's kernel-3, padding-1 convolution. x: (B, C_in, T), w: (C_out, C_in, 3) -> (B, C_out, T / stride)."""
    import jax

    y = jax.lax.conv_general_dilated(x, w, window_strides=(stride,), padding=[(1, 1)],
                                     dimension_numbers=("NCH", "OIH", "NCH"), precision=_precision(x.dtype))
    return y + b[None, :, None]


def encode(params, features, shape: WhisperShape, rows_at_once=0):
    """The encoder: features (B, n_mels, 3000) -> (B, 1500, d_model). ``rows_at_once``: see :func:`_attention`."""
    import jax

    p = params["encoder"]
    x = _gelu(_conv1d(features, p["conv1_w"], p["conv1_b"], 1))  # (B, D, 3000)
    x = _gelu(_conv1d(x, p["conv2_w"], p["conv2_b"], 2))  # (B, D, 1500)
    x = x.transpose(0, 2, 1) + p["positions"][None, :x.shape[2]]  # (B, 1500, D)

    def layer(x, w):  # x: (B, S, D); w: one layer's weights
        h = _layer_norm(x, w["attn_ln_w"], w["attn_ln_b"])
        q = _linear(h, w["attn_q_w"], w["attn_q_b"])  # (B, S, D)
        k = _linear(h, w["attn_k_w"])
        v = _linear(h, w["attn_v_w"], w["attn_v_b"])
        heads = [_heads(t, shape.encoder_heads) for t in (q, k, v)]  # 3 x (B, H, S, dh)
        x = x + _linear(_attention(*heads, rows_at_once=rows_at_once), w["attn_out_w"], w["attn_out_b"])
        h = _layer_norm(x, w["mlp_ln_w"], w["mlp_ln_b"])
        x = x + _linear(_gelu(_linear(h, w["fc1_w"], w["fc1_b"])), w["fc2_w"], w["fc2_b"])  # (B, S, D)
        return x, None

    x, _ = jax.lax.scan(layer, x, p["layers"])
    return _layer_norm(x, p["ln_w"], p["ln_b"])


def decoder_layers(params, shape: WhisperShape):
    """The decoder's layers as a list of per-layer weight dicts (sliced once, outside the decoding loop).

    The decoder runs its layers in a Python loop, not ``lax.scan``: each layer's cache and cross-attention
    keys/values are then arrays of their own, used and updated in place, where a scan over stacked
    arrays would copy every layer's slice at every step.
    """
    stacked = params["decoder"]["layers"]
    return [{name: weight[i] for name, weight in stacked.items()} for i in range(shape.decoder_layers)]


def cross_keys_values(layers, encoded, shape: WhisperShape):
    """Every decoder layer's cross-attention keys and values, computed once: encoded (B, S, D) ->
    ``[(keys, values)]`` per layer, each (B, H, S, dh)."""
    heads = shape.decoder_heads
    return [(_heads(_linear(encoded, w["cross_k_w"]), heads), _heads(_linear(encoded, w["cross_v_w"], w["cross_v_b"]),
                                                                        heads)) for w in layers]


def empty_cache(shape: WhisperShape, rows, max_length, dtype):
    """The self-attention cache: ``[(keys, values)]`` per decoder layer, each (rows, H, max_length, dh) zeros."""
    import jax.numpy as jnp

    heads = shape.decoder_heads
    size = (rows, heads, max_length, shape.d_model // heads)
    return [(jnp.zeros(size, dtype),) * 2 for _ in range(shape.decoder_layers)]


def decoder_step(params, layers, tokens, position, cache, cross, shape: WhisperShape):
    """One decoding step for every row: the token at ``position`` -> next-token logits, updated cache.

    layers: :func:`decoder_layers`; tokens: (N,) int; position: scalar int (the same for every row);
    cache: :func:`empty_cache`'s list, filled below ``position``; cross: :func:`cross_keys_values`'s list.
    Returns logits (N, vocab) float32 and the cache with ``position`` written.
    """
    import jax
    import jax.numpy as jnp

    p = params["decoder"]
    x = p["tokens"][tokens] + jax.lax.dynamic_index_in_dim(p["positions"], position, keepdims=False)  # (N, D)
    x = x[:, None, :]  # (N, 1, D): a query of one position
    max_length = cache[0][0].shape[2]
    visible = (jnp.arange(max_length) <= position)[None, None, None, :]  # (1, 1, 1, L): causal, fixed size
    updated = []
    heads = shape.decoder_heads
    for w, (keys, values), (cross_k, cross_v) in zip(layers, cache, cross):  # keys/values: (N, H, L, dh)
        h = _layer_norm(x, w["attn_ln_w"], w["attn_ln_b"])
        q = _heads(_linear(h, w["attn_q_w"], w["attn_q_b"]), heads)  # (N, H, 1, dh)
        at = (0, 0, position, 0)
        keys = jax.lax.dynamic_update_slice(keys, _heads(_linear(h, w["attn_k_w"]), heads), at)
        values = jax.lax.dynamic_update_slice(values, _heads(_linear(h, w["attn_v_w"], w["attn_v_b"]), heads), at)
        updated.append((keys, values))
        x = x + _linear(_attention(q, keys, values, visible), w["attn_out_w"], w["attn_out_b"])  # (N, 1, D)
        h = _layer_norm(x, w["cross_ln_w"], w["cross_ln_b"])
        q = _heads(_linear(h, w["cross_q_w"], w["cross_q_b"]), heads)
        x = x + _linear(_attention(q, cross_k, cross_v), w["cross_out_w"], w["cross_out_b"])
        h = _layer_norm(x, w["mlp_ln_w"], w["mlp_ln_b"])
        x = x + _linear(_gelu(_linear(h, w["fc1_w"], w["fc1_b"])), w["fc2_w"], w["fc2_b"])
    x = _layer_norm(x[:, 0], p["ln_w"], p["ln_b"])  # (N, D)
    # The output projection is the token embedding: contract over d_model without transposing it.
    logits = jnp.einsum("nd,vd->nv", x, p["tokens"], precision=_precision(x.dtype))  # (N, vocab)
    return logits.astype(jnp.float32), updated


# ------------------------------------------------------------------------------------------------- decoding


def _token_mask(ids, vocab_size):
    """(vocab,) bool, True at ``ids`` (ids beyond the vocabulary are ignored, as transformers does)."""
    mask = np.zeros(vocab_size, dtype=bool)
    mask[[i for i in ids if 0 <= i < vocab_size]] = True
    return mask


def _process(scores, position, plan: DecodePlan, vocab_size):
    """transformers' Whisper logits processors for short-form decoding without timestamps: suppress_tokens
    always, begin_suppress_tokens at the first generated position. scores: (N, vocab) float32."""
    import jax.numpy as jnp

    if plan.suppress_tokens:
        scores = jnp.where(_token_mask(plan.suppress_tokens, vocab_size), -jnp.inf, scores)
    if plan.begin_suppress_tokens:
        first = position == len(plan.prompt) - 1  # this step predicts the first token after the prompt
        scores = jnp.where(first & _token_mask(plan.begin_suppress_tokens, vocab_size), -jnp.inf, scores)
    return scores


def _prefill(params, layers, cross, plan: DecodePlan, shape: WhisperShape, dtype):
    """Run the prompt through the decoder up to its last token (exclusive) and fill in a detected language.

    Returns the token buffer (B, max_length) int32 (the prompt, then the end token as filler) and the cache.
    """
    import jax.numpy as jnp

    batch = cross[0][0].shape[0]
    cache = empty_cache(shape, batch, plan.max_length, dtype)  # per layer (B, H, L, dh) keys, values
    prompt = [plan.eos_token_id if t is None else t for t in plan.prompt]
    tokens = jnp.full((batch, plan.max_length), plan.eos_token_id, jnp.int32)
    tokens = tokens.at[:, :len(prompt)].set(jnp.asarray(prompt, jnp.int32))  # (B, L)
    # The prompt is 2 to 4 tokens: its steps are traced one by one (a loop would cost more than it saves).
    for position in range(len(prompt) - 1):
        logits, cache = decoder_step(params, layers, tokens[:, position], position, cache, cross, shape)  # (B, V)
        if plan.prompt[position + 1] is None:
            # transformers' detect_language: the highest logit among the language tokens, per row
            languages = _token_mask(plan.language_ids, shape.vocab_size)
            tokens = tokens.at[:, position + 1].set(jnp.argmax(jnp.where(languages, logits, -jnp.inf), -1))
    return tokens, cache


def _greedy(params, layers, tokens, cache, cross, plan: DecodePlan, shape: WhisperShape):
    """Greedy decoding from the last prompt token; each row stops at the end token. tokens: (B, L)."""
    import jax
    import jax.numpy as jnp

    batch = tokens.shape[0]

    def running(state):
        position, _, done, _ = state
        return (position < plan.max_length - 1) & ~jnp.all(done)

    def step(state):
        position, tokens, done, cache = state
        token = jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False)  # (B,)
        logits, cache = decoder_step(params, layers, token, position, cache, cross, shape)
        chosen = jnp.argmax(_process(logits, position, plan, shape.vocab_size), -1).astype(jnp.int32)  # (B,)
        chosen = jnp.where(done, plan.eos_token_id, chosen)  # finished rows keep the end token as padding
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, chosen, position + 1, axis=1)
        return position + 1, tokens, done | (chosen == plan.eos_token_id), cache

    start = (jnp.int32(len(plan.prompt) - 1), tokens, jnp.zeros(batch, bool), cache)
    return jax.lax.while_loop(running, step, start)[1]  # (B, L)


def _beam_search(params, layers, tokens, cache, cross, plan: DecodePlan, shape: WhisperShape):
    """Beam search from the last prompt token, with transformers' semantics (see the module docstring).

    tokens: (B, L) prompt rows; the cache and cross keys/values are repeated to ``num_beams`` rows each.
    Returns the best finished hypothesis per row, (B, L).
    """
    import jax
    import jax.numpy as jnp

    batch, max_length = tokens.shape
    beams, vocab = plan.num_beams, shape.vocab_size
    candidates = 2 * beams  # enough that num_beams continue even if num_beams of them just ended
    prompt_length = len(plan.prompt)
    penalty, early = plan.length_penalty, plan.early_stopping

    def repeat(a):  # (B, ...) -> (B * beams, ...), the beams of a row adjacent
        return jnp.repeat(a, beams, axis=0)

    cache = jax.tree_util.tree_map(repeat, cache)
    cross = jax.tree_util.tree_map(repeat, cross)
    sequences = jnp.repeat(tokens[:, None], beams, axis=1)  # (B, K, L)
    scores = jnp.full((batch, beams), NEG_INF).at[:, 0].set(0.0)  # only beam 0 is live at first
    gather = jax.vmap(lambda a, i: a[i])  # per row: a (K', ...) indexed by i (K,) -> (K, ...)

    def running(state):
        return state[0]

    def step(state):
        _, position, seqs, scores, best, best_scores, finished, improvable, cache = state
        token = seqs[:, :, position].reshape(-1)  # (B * K,)
        logits, cache = decoder_step(params, layers, token, position, cache, cross, shape)  # (B * K, V)
        log_probs = _process(jax.nn.log_softmax(logits, -1), position, plan, vocab)
        total = (log_probs.reshape(batch, beams, vocab) + scores[:, :, None]).reshape(batch, beams * vocab)
        top_scores, top = jax.lax.top_k(total, candidates)  # (B, 2K)
        parent, chosen = top // vocab, (top % vocab).astype(jnp.int32)  # (B, 2K) beam of origin, token
        top_seqs = gather(seqs, parent).at[:, :, position + 1].set(chosen)  # (B, 2K, L)
        length = position + 2  # tokens in each candidate, prompt included
        ended = (chosen == plan.eos_token_id) | (length >= max_length)  # (B, 2K)

        # The best num_beams candidates that did not end continue; the cache follows their parents.
        live_scores = top_scores + ended * NEG_INF
        keep = jax.lax.top_k(live_scores, beams)[1]  # (B, K)
        seqs, scores = gather(top_seqs, keep), gather(live_scores, keep)
        rows = (gather(parent, keep) + jnp.arange(batch)[:, None] * beams).reshape(-1)  # (B * K,) flat parents
        cache = jax.tree_util.tree_map(lambda a: a[rows], cache)  # each (B * K, H, L, dh)

        # Candidates among the first num_beams that ended join the finished hypotheses, length-penalised.
        just_finished = ended & (jnp.arange(candidates) < beams)[None, :]  # (B, 2K)
        penalised = top_scores / (length - prompt_length) ** penalty
        full = jnp.all(finished, -1, keepdims=True) & (early is True)  # (B, 1)
        penalised = penalised + (full | ~improvable) * NEG_INF + ~just_finished * NEG_INF
        merged_scores = jnp.concatenate([best_scores, penalised], 1)  # (B, 3K)
        pick = jax.lax.top_k(merged_scores, beams)[1]  # (B, K)
        best = gather(jnp.concatenate([best, top_seqs], 1), pick)  # (B, K, L)
        best_scores = gather(merged_scores, pick)
        finished = gather(jnp.concatenate([finished, just_finished], 1), pick)

        # Stop a row once no running beam can beat its worst finished hypothesis (transformers' heuristic).
        hypothetical = (max_length if early == "never" and penalty > 0.0 else length) - prompt_length
        best_running = scores[:, :1] / hypothetical ** penalty  # (B, 1)
        worst = jnp.where(finished, jnp.min(best_scores, 1, keepdims=True), NEG_INF)  # (B, K)
        improvable = improvable & jnp.any(best_running > worst, -1, keepdims=True)  # (B, 1)
        go_on = jnp.any(improvable) & ~(jnp.all(finished) & (early is True)) & ~jnp.all(ended)
        return go_on, position + 1, seqs, scores, best, best_scores, finished, improvable, cache

    state = (jnp.bool_(max_length > prompt_length), jnp.int32(prompt_length - 1), sequences, scores,
             sequences, jnp.full((batch, beams), NEG_INF), jnp.zeros((batch, beams), bool),
             jnp.ones((batch, 1), bool), cache)
    return jax.lax.while_loop(running, step, state)[4][:, 0]  # (B, L)


def generate(params, features, plan: DecodePlan, shape: WhisperShape, rows_at_once=0):
    """Token ids for log-mel ``features`` (B, n_mels, 3000): (B, max_length) int32, prompt included, each
    row ended by the end token and padded with it (a row stopped by ``max_new_tokens`` has none).
    ``rows_at_once``: the encoder's attention, see :func:`_attention` (1 on CPUs)."""
    encoded = encode(params, features, shape, rows_at_once)  # (B, 1500, D)
    layers = decoder_layers(params, shape)
    cross = cross_keys_values(layers, encoded, shape)  # per layer 2 x (B, H, 1500, dh)
    tokens, cache = _prefill(params, layers, cross, plan, shape, features.dtype)
    if plan.num_beams > 1:
        return _beam_search(params, layers, tokens, cache, cross, plan, shape)
    return _greedy(params, layers, tokens, cache, cross, plan, shape)


def plan_for(generation_config, prompt, max_new_tokens, num_beams, shape: WhisperShape):
    """The :class:`DecodePlan` for a model's generation config and an explicit prompt (``None``: detect)."""
    eos = generation_config.eos_token_id
    eos = int(eos[0] if isinstance(eos, (list, tuple)) else eos)
    max_length = min(len(prompt) + max_new_tokens, shape.target_positions)
    languages = tuple((getattr(generation_config, "lang_to_id", None) or {}).values())
    # transformers 5 leaves unset fields None and applies its defaults (1.0, False) at generate time.
    penalty = generation_config.length_penalty
    early = generation_config.early_stopping
    return DecodePlan(prompt=tuple(prompt), max_length=max_length, eos_token_id=eos,
                      suppress_tokens=tuple(generation_config.suppress_tokens or ()),
                      begin_suppress_tokens=tuple(generation_config.begin_suppress_tokens or ()),
                      language_ids=languages, num_beams=num_beams,
                      length_penalty=1.0 if penalty is None else float(penalty),
                      early_stopping=early if early == "never" else bool(early))

