"""The whole model on one page: Gemma 2 (and Gemma 3) and T5Gemma forward passes in NumPy.

Start here. This file is the math of SPEC.md sections 1 and 2 and nothing else: no
validation, no backward, no caches, no dispatch. Parameters are the flat dict of Hugging
Face keys that `build_model`, `load_hf` and the checkpoints use, and the logits are
`build_model(config, params).forward(batch)`'s (tests/test_reference.py checks it). The
package splits the same math into the graded layers of `nn/` (each with its backward)
and the model assembly of `models/`; read those next.

Gemma 3 is `gemma2_forward` with its config: each query and key head RMS-normalised
before RoPE (cfg.qk_norm), a RoPE base (and linear scaling) per layer type (cfg.rope_base).

Shapes: B batch, T tokens (S encoder tokens), D width, H query heads, K key/value heads,
Dh head size, F MLP width, V vocabulary.
"""

import numpy as np

from .config import SLIDING


def rms_norm(x, w, eps):
    # x (..., D) -> (..., D); the stored weight is an offset: scale (1 + w)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps)) * (1 + w)


def gelu_tanh(u):
    c = u.dtype.type(np.sqrt(2 / np.pi))
    return 0.5 * u * (1 + np.tanh(c * (u + u.dtype.type(0.044715) * u ** 3)))


def softcap(x, cap):
    return x if cap is None else cap * np.tanh(x / cap)


def positions(mask, T):
    # (B, T) 0/1 -> (B, T): real tokens count 0, 1, 2, ...; padding repeats its neighbour's
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0) if mask is not None \
        else np.broadcast_to(np.arange(T), (1, T))


def rope(x, pos, base):
    # x (B, N, T, Dh), pos (B|1, T), base (theta, factor): rotate each (x_i, x_{i + Dh/2})
    # pair by pos / factor * theta^(-2i/Dh)
    Dh, (theta, factor) = x.shape[-1], base
    angle = pos[:, None, :, None] / factor * theta ** (-np.arange(0, Dh, 2) / Dh)  # (B|1,1,T,Dh/2)
    cos = np.cos(np.concatenate([angle, angle], -1)).astype(x.dtype)  # (B|1, 1, T, Dh)
    sin = np.sin(np.concatenate([angle, angle], -1)).astype(x.dtype)
    x1, x2 = x[..., :Dh // 2], x[..., Dh // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def layer_mask(cfg, i, q_pos, k_pos, k_real, causal):
    # (B|1, Tq), (B|1, Tk) positions, k_real (B|1, Tk) bool -> (B|1, 1, Tq, Tk) True = may attend
    d = q_pos[:, :, None] - k_pos[:, None, :]  # (B|1, Tq, Tk) distance q - k
    allowed = (d >= 0) if causal else np.ones(d.shape, bool)
    W = cfg.sliding_window
    if cfg.layer_types[i] == SLIDING and causal:  # local layer: a window of W positions
        allowed &= d < W
    elif cfg.layer_types[i] == SLIDING and cfg.bidirectional_window == "split":  # T5Gemma 2
        allowed &= np.where(d >= 0, d < (W + 1) // 2, -d < W // 2 + 1)
    elif cfg.layer_types[i] == SLIDING:  # bidirectional: W - 1 either side
        allowed &= np.abs(d) < W
    return (allowed & k_real[:, None, :])[:, None]


def concat_keys(a, b):
    # (B|1, 1, Tq, Ta) ; (B|1, 1, 1, Tb) -> (B, 1, Tq, Ta + Tb): the masks of two key sets
    lead = np.broadcast_shapes(a.shape[:3], b.shape[:3])
    return np.concatenate([np.broadcast_to(a, lead + a.shape[3:]),
                           np.broadcast_to(b, lead + b.shape[3:])], axis=-1)


def attention(cfg, P, name, x, kv, mask, pos, n_rope, base):
    """Grouped-query attention of x (B, T, D) over kv (B, Tk, Dkv); RoPE (base: theta,
    factor) on the queries and on the first n_rope keys (self-attention: all; cross: none;
    merged: the x part)."""
    B, T, _ = x.shape
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = (x @ P[name + "q_proj.weight"].T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # (B,H,T,Dh)
    k = (kv @ P[name + "k_proj.weight"].T).reshape(B, -1, K, Dh).transpose(0, 2, 1, 3)  # (B,K,Tk,Dh)
    v = (kv @ P[name + "v_proj.weight"].T).reshape(B, -1, K, Dh).transpose(0, 2, 1, 3)  # (B,K,Tk,Dh)
    if cfg.qk_norm:  # Gemma 3: every query and key head RMS-normalised over Dh
        q = rms_norm(q, P[name + "q_norm.weight"], cfg.rms_norm_eps)
        k = rms_norm(k, P[name + "k_norm.weight"], cfg.rms_norm_eps)
    if n_rope:
        q = rope(q, pos, base)
        k = np.concatenate([rope(k[:, :, :n_rope], pos, base), k[:, :, n_rope:]], 2)
    k, v = np.repeat(k, H // K, axis=1), np.repeat(v, H // K, axis=1)  # head h reads h // (H/K)
    s = q @ k.swapaxes(-1, -2) * x.dtype.type(cfg.query_pre_attn_scalar ** -0.5)  # (B,H,T,Tk)
    s = np.where(mask, softcap(s, cfg.attn_logit_softcapping), -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(m), m, 0))  # a row with no allowed key: all 0
    p = e / np.maximum(np.sum(e, axis=-1, keepdims=True), np.finfo(x.dtype).tiny)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * Dh)  # (B,H,T,Dh) -> (B,T,H*Dh)
    return o @ P[name + "o_proj.weight"].T  # (B, T, D)


def mlp(P, p, x):
    # GeGLU: (B, T, D) -> (B, T, F) -> (B, T, D)
    gate, up = x @ P[p + "mlp.gate_proj.weight"].T, x @ P[p + "mlp.up_proj.weight"].T
    return (gelu_tanh(gate) * up) @ P[p + "mlp.down_proj.weight"].T


def stack(cfg, P, prefix, norms, x, pos, real, causal, enc=None, enc_real=None,
          merged=False):
    """Gemma 2 blocks, each sublayer in a "sandwich": x = x + post_norm(f(pre_norm(x)))."""
    eps = cfg.rms_norm_eps
    for i in range(cfg.num_hidden_layers):
        p = f"{prefix}layers.{i}."

        def norm(name, h):
            return rms_norm(h, P[p + name + ".weight"], eps)
        mask = layer_mask(cfg, i, pos, pos, real, causal)  # (B|1, 1, T, T)
        base = cfg.rope_base(cfg.layer_types[i])  # (theta, factor) of this layer's type
        n = norm(norms[0], x)
        if merged:  # T5Gemma 2: one attention over [decoder ; encoder] keys
            mask = concat_keys(mask, enc_real[:, None, None, :])  # (B, 1, T, T + S)
            a = attention(cfg, P, p + "self_attn.", n, np.concatenate([n, enc], 1), mask, pos,
                          n.shape[1], base)
        else:
            a = attention(cfg, P, p + "self_attn.", n, n, mask, pos, n.shape[1], base)
        x = x + norm(norms[1], a)
        if enc is not None and not merged:  # T5Gemma: cross-attention, no RoPE
            n = norm("pre_cross_attn_layernorm", x)
            a = attention(cfg, P, p + "cross_attn.", n, enc, enc_real[:, None, None, :], pos, 0,
                          base)
            x = x + norm("post_cross_attn_layernorm", a)
        x = x + norm("post_feedforward_layernorm", mlp(P, p, norm("pre_feedforward_layernorm", x)))
    return rms_norm(x, P[prefix + "norm.weight"], eps)  # (B, T, D)


def embed(E, ids, eoi=None, v=None):
    x = E[ids] * E.dtype.type(np.sqrt(E.shape[1]))  # (B, T) -> (B, T, D), scaled by sqrt(D)
    return x if eoi is None else np.where((ids == eoi)[..., None], v, x)  # T5Gemma 2's eoi


def gemma2_forward(config, P, input_ids, attention_mask=None):
    """Decoder-only Gemma 2 (or Gemma 3, by its config): soft-capped next-token logits
    (B, T, V)."""
    T = input_ids.shape[1]
    real = np.ones((1, T), bool) if attention_mask is None else attention_mask.astype(bool)
    E = P["model.embed_tokens.weight"]
    h = stack(config, P, "model.", ("input_layernorm", "post_attention_layernorm"),
              embed(E, input_ids), positions(attention_mask, T), real, causal=True)
    return softcap(h @ E.T, config.final_logit_softcapping)  # (B, T, V), E tied


def t5gemma_forward(config, P, input_ids, decoder_input_ids, attention_mask=None):
    """T5Gemma (merged attention: T5Gemma 2): soft-capped logits (B, T, V)."""
    enc_cfg, dec_cfg = config.encoder, config.decoder
    S, T = input_ids.shape[1], decoder_input_ids.shape[1]
    enc_real = np.ones((1, S), bool) if attention_mask is None else attention_mask.astype(bool)
    Ee = P["model.encoder.embed_tokens.weight"]
    Ed = Ee if config.tie_all_embeddings else P["model.decoder.embed_tokens.weight"]
    norms = ("pre_self_attn_layernorm", "post_self_attn_layernorm")
    # encoder: bidirectional; local layers see |q - k| < W; positions count real tokens
    eoi = (config.eoi_token_id, P.get("model.encoder.embed_tokens.eoi_embedding"))
    enc = stack(enc_cfg, P, "model.encoder.", norms, embed(Ee, input_ids, *eoi),
                positions(attention_mask, S), enc_real, causal=False)  # (B, S, De)
    # decoder: causal, positions restart at 0, reads enc by cross (or merged) attention
    h = stack(dec_cfg, P, "model.decoder.", norms, embed(Ed, decoder_input_ids, *eoi),
              positions(None, T), np.ones((1, T), bool), causal=True, enc=enc,
              enc_real=enc_real, merged=config.merged_attention)  # (B, T, Dd)
    return softcap(h @ Ed.T, dec_cfg.final_logit_softcapping)  # (B, T, V), Ed tied
