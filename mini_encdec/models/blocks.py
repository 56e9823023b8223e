"""The Gemma 2 / T5Gemma blocks, forward and backward, as straight lines (SPEC 1, 2).

Gemma 2 wraps every sublayer f in a "sandwich" of two RMSNorms before the residual add:

    x = x + post_norm( f( pre_norm(x) ) )

    encoder block (also the decoder-only Gemma 2 block; the mask says causal or not)
        x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    decoder block (T5Gemma)
        x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )       causal
        x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    merged decoder block (T5Gemma 2)
        x = x + post_self_attn_norm( attn over [x ; enc]( pre_self_attn_norm(x) ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )

The attention and MLP are the `nn` layers (`nn/attention.py`, `nn/mlp.py`), the very
functions the assignments grade; the hot pieces inside them (attention core, GeGLU
activation, RMSNorm) run through `mini_encdec.ops`, the one dispatch point.
The training path only: KV-cached decoding has its own module (`decoding.py`).

Shapes: B batch, T tokens, D width of this stack, S encoder tokens, De encoder width.
`p` is the block's key prefix (e.g. "model.decoder.layers.3."), `norms` the names of its
self-attention norms (Gemma 2 and T5Gemma name them differently, params.py).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..config import GemmaConfig
from ..nn.attention import attention_backward, attention_forward
from ..nn.mlp import geglu_backward, geglu_forward
from .params import CROSS_NORMS, FFW_NORMS


def add_grad(grads: dict, key: str, g: np.ndarray) -> None:
    """grads[key] += g (a parameter used twice gets the sum of both gradients)."""
    grads[key] = grads[key] + g if key in grads else g


# --- the sandwich: x + post_norm( f( pre_norm(x) ) ) ------------------------------------------

def sandwich_forward(x, P: dict, p: str, norms: tuple, eps: float, f):
    """x (B, T, D) + post_norm(f(pre_norm(x))); f(n) -> (y, cache). Returns (x', cache)."""
    n, c_pre = ops.rmsnorm_forward(x, P[f"{p}{norms[0]}.weight"], eps)
    y, c_f = f(n)
    m, c_post = ops.rmsnorm_forward(y, P[f"{p}{norms[1]}.weight"], eps)
    return x + m, {"pre": c_pre, "f": c_f, "post": c_post}


def sandwich_backward(dx, c: dict, grads: dict, p: str, norms: tuple, f_backward):
    """Gradient of sandwich_forward; f_backward(dy, cache) -> dn. Returns dx (B, T, D)."""
    dy, dw = ops.rmsnorm_backward(dx, c["post"])
    add_grad(grads, f"{p}{norms[1]}.weight", dw)
    dn = f_backward(dy, c["f"])
    dres, dw = ops.rmsnorm_backward(dn, c["pre"])
    add_grad(grads, f"{p}{norms[0]}.weight", dw)
    return dx + dres


# --- the sublayers f ------------------------------------------------------------------------

def _attention(cfg: GemmaConfig, P: dict, name: str, x_q, x_kv, mask, rope_q, rope_k):
    """The nn attention layer with the weights `name`.{q,k,v,o}_proj and cfg's heads,
    query scalar and soft-cap, its core and RoPE dispatched by ops."""
    return attention_forward(
        x_q, x_kv, *(P[f"{name}.{w}_proj.weight"] for w in "qkvo"),
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, scale=float(cfg.query_pre_attn_scalar) ** -0.5,
        softcap=cfg.attn_logit_softcapping, mask=mask, rope_q=rope_q, rope_k=rope_k,
        core=(ops.attention_core_forward, ops.attention_core_backward),
        rope=(ops.rope_forward, ops.rope_backward))


def _attention_grads(dy, c: dict, grads: dict, name: str):
    """Adds dW{q,k,v,o} of `name`; returns (dx_q, dx_kv)."""
    dx_q, dx_kv, *dW = attention_backward(dy, c)
    for w, g in zip("qkvo", dW):
        add_grad(grads, f"{name}.{w}_proj.weight", g)
    return dx_q, dx_kv


def _self_attention_grads(dy, c: dict, grads: dict, name: str):
    """Self-attention: x gives both the queries and the keys/values, dx is the sum."""
    dx_q, dx_kv = _attention_grads(dy, c, grads, name)
    return dx_q + dx_kv


def _identity_rope(rope, S: int):
    """Extend (cos, sin) of T positions by S rows of cos 1, sin 0: RoPE leaves the S
    encoder keys of merged attention unrotated. (T|B,T, Dh) -> (T + S|B,T + S, Dh)."""
    cos, sin = rope
    pad = cos.shape[:-2] + (S, cos.shape[-1])
    return (np.concatenate([cos, np.ones(pad, cos.dtype)], axis=-2),
            np.concatenate([sin, np.zeros(pad, sin.dtype)], axis=-2))


def _mlp(cfg: GemmaConfig, P: dict, p: str, n):
    return geglu_forward(n, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"],
                         P[p + "mlp.down_proj.weight"],
                         act=(ops.geglu_act_forward, ops.geglu_act_backward))


def _mlp_grads(dy, c: dict, grads: dict, p: str):
    dn, *dW = geglu_backward(dy, c)
    for w, g in zip(("gate", "up", "down"), dW):
        add_grad(grads, f"{p}mlp.{w}_proj.weight", g)
    return dn


# --- the blocks -----------------------------------------------------------------------------

def encoder_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope):
    """x (B, T, D) -> (B, T, D). mask (B|1, 1, T, T) of this layer (bidirectional in the
    encoder, causal in Gemma 2); rope (cos, sin) for x's positions."""
    eps, c = cfg.rms_norm_eps, {}
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
    x, c["self"] = sandwich_forward(
        x, P, p, norms, eps, lambda n: _attention(cfg, P, p + "self_attn", n, n, mask, rope, rope))
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    x, c["mlp"] = sandwich_forward(x, P, p, FFW_NORMS, eps, lambda n: _mlp(cfg, P, p, n))
    return x, c


def encoder_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Adds the block's parameter gradients into grads; returns dx (B, T, D)."""
    dx = sandwich_backward(dx, c["mlp"], grads, p, FFW_NORMS,
                           lambda dy, cf: _mlp_grads(dy, cf, grads, p))
    return sandwich_backward(dx, c["self"], grads, p, norms,
                             lambda dy, cf: _self_attention_grads(dy, cf, grads, p + "self_attn"))


def decoder_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope,
                          memory, memory_mask):
    """x (B, T, D), memory (B, S, De) the encoder output -> (B, T, D). mask (B|1, 1, T, T)
    causal; memory_mask (B|1, 1, 1, S) the encoder's real tokens."""
    eps, c = cfg.rms_norm_eps, {}
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
    x, c["self"] = sandwich_forward(
        x, P, p, norms, eps, lambda n: _attention(cfg, P, p + "self_attn", n, n, mask, rope, rope))
    # x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) ): no RoPE
    x, c["cross"] = sandwich_forward(
        x, P, p, CROSS_NORMS, eps,
        lambda n: _attention(cfg, P, p + "cross_attn", n, memory, memory_mask, None, None))
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    x, c["mlp"] = sandwich_forward(x, P, p, FFW_NORMS, eps, lambda n: _mlp(cfg, P, p, n))
    return x, c


def decoder_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Returns (dx (B, T, D), dmemory (B, S, De))."""
    dmemory = []
    dx = sandwich_backward(dx, c["mlp"], grads, p, FFW_NORMS,
                           lambda dy, cf: _mlp_grads(dy, cf, grads, p))

    def cross_backward(dy, cf):
        dn, dmem = _attention_grads(dy, cf, grads, p + "cross_attn")
        dmemory.append(dmem)
        return dn
    dx = sandwich_backward(dx, c["cross"], grads, p, CROSS_NORMS, cross_backward)
    dx = sandwich_backward(dx, c["self"], grads, p, norms,
                           lambda dy, cf: _self_attention_grads(dy, cf, grads, p + "self_attn"))
    return dx, dmemory[0]


def merged_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope,
                         memory):
    """x (B, T, D), memory (B, S, D) -> (B, T, D): one attention of x over [x ; memory]
    (one softmax over both), mask (B, 1, T, T + S) (inputs.merge_masks)."""
    eps, c = cfg.rms_norm_eps, {}
    rope_k = _identity_rope(rope, memory.shape[1])

    def merged(n):  # keys and values of [n ; memory], (B, T + S, D)
        return _attention(cfg, P, p + "self_attn", n, np.concatenate([n, memory], axis=1),
                          mask, rope, rope_k)
    # x = x + post_self_attn_norm( attn over [x ; enc]( pre_self_attn_norm(x) ) )
    x, c["self"] = sandwich_forward(x, P, p, norms, eps, merged)
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    x, c["mlp"] = sandwich_forward(x, P, p, FFW_NORMS, eps, lambda n: _mlp(cfg, P, p, n))
    c["T"] = x.shape[1]
    return x, c


def merged_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Returns (dx (B, T, D), dmemory (B, S, D))."""
    T, dmemory = c["T"], []
    dx = sandwich_backward(dx, c["mlp"], grads, p, FFW_NORMS,
                           lambda dy, cf: _mlp_grads(dy, cf, grads, p))

    def merged_backward(dy, cf):
        dn, dkv = _attention_grads(dy, cf, grads, p + "self_attn")
        dmemory.append(dkv[:, T:])  # (B, T + S, D) -> the encoder part (B, S, D)
        return dn + dkv[:, :T]
    dx = sandwich_backward(dx, c["self"], grads, p, norms, merged_backward)
    return dx, dmemory[0]
