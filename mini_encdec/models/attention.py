"""One attention sublayer as the models use it: self, cross, or merged, with a KV cache.

Composed from `nn` (linear, rope) and the hot core `ops.attention_core_forward`; this
file adds no math of its own, only the wiring `mini_encdec.nn.attention.attention_forward`
does for one (x_q, x_kv) pair, generalised to the three key sources a model needs:

    keys/values = [ past ; self ; memory ]      concatenated along the key axis
      past    (B, K, Tp, Dh)  earlier decoder tokens' k, v, already rotated (KV cache)
      self    (B, K, T, Dh)   k, v of the query tokens x themselves, RoPE on k
      memory  (B, K, S, Dh)   k, v of the encoder output, no RoPE; either projected here
                              from `memory` (B, S, De) (training: gradients flow back) or
                              given already projected as `memory_kv` (generation)

    self-attention     self_kv=True,  no memory
    cross-attention    self_kv=False, memory          (queries from the decoder, no RoPE)
    merged attention   self_kv=True,  memory          (T5Gemma 2: one softmax over both)

Shapes: B batch, T query tokens, D query width, H/K query/kv heads, Dh head size.
The softmax runs over all keys at once, so merged attention is one softmax over
[decoder ; encoder] as SPEC section 2 asks. `mask` is (B|1, 1, T, Tp + T + S) bool.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..config import GemmaConfig
from ..nn.linear import _linear, linear_backward, linear_forward
from ..nn.rope import _apply_rope, rope_backward, rope_forward


def split_heads(y: np.ndarray, n: int) -> np.ndarray:
    """(B, T, N*Dh) -> (B, N, T, Dh), contiguous (the core's matmuls want it)."""
    B, T, ND = y.shape
    # (B, T, N*Dh) -> (B, T, N, Dh) -> (B, N, T, Dh)
    return np.ascontiguousarray(y.reshape(B, T, n, ND // n).transpose(0, 2, 1, 3))


def merge_heads(o: np.ndarray) -> np.ndarray:
    """(B, N, T, Dh) -> (B, T, N*Dh) (a copy: the heads become the fast axis)."""
    B, N, T, Dh = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, N * Dh)  # (B,N,T,Dh) -> (B,T,N,Dh) -> (B,T,N*Dh)


def attention_weights(params: dict, name: str):
    """(Wq, Wk, Wv, Wo) of the attention whose keys start with `name` (e.g. "...self_attn")."""
    return tuple(params[f"{name}.{w}_proj.weight"] for w in "qkvo")


def project_memory(memory: np.ndarray, Wk: np.ndarray, Wv: np.ndarray, num_kv_heads: int):
    """Keys and values of the encoder output, no RoPE: memory (B, S, De) ->
    k, v (B, K, S, Dh), plus the linear caches for the backward."""
    k, ck = linear_forward(memory, Wk)  # (B, S, De) @ (De, K*Dh) -> (B, S, K*Dh)
    v, cv = linear_forward(memory, Wv)  # (B, S, De) @ (De, K*Dh) -> (B, S, K*Dh)
    return split_heads(k, num_kv_heads), split_heads(v, num_kv_heads), (ck, cv)


def _linear_nocache(x: np.ndarray, W: np.ndarray):
    return _linear(x, W), None


def _rope_nocache(x: np.ndarray, cos: np.ndarray, sin: np.ndarray):
    if cos.ndim == 3:  # (B, T, Dh) -> (B, 1, T, Dh), shared by the heads
        cos, sin = cos[:, None], sin[:, None]
    return _apply_rope(x, cos, sin), None


def fuse_qkv(weights) -> np.ndarray:
    """[Wq ; Wk ; Wv] (H*Dh + 2*K*Dh, D): the three projections of x as one matmul
    (concatenated once per generation request, for attention_forward's Wqkv)."""
    return np.concatenate(weights[:3], axis=0)


def attention_forward(weights, cfg: GemmaConfig, x: np.ndarray, *, mask, rope=None,
                      self_kv: bool = True, past=None, memory=None, memory_kv=None,
                      fast: bool = False, Wqkv=None):
    """y (B, T, D) = attention of x's queries over [past ; self ; memory] keys, then Wo.

    weights (Wq, Wk, Wv, Wo); rope (cos, sin) for x's positions or None (no RoPE).
    fast=True: the inference path of KV-cached decoding: the unchecked nn helpers, no
    backward cache (the caller validated its inputs once per request); with Wqkv
    (fuse_qkv(weights)) q, k and v come from one matmul.
    Returns (y, cache, (k_self, v_self)) where k_self/v_self (B, K, T, Dh) are the
    post-RoPE keys and values of x (None when self_kv is False), for a KV cache.
    """
    Wq, Wk, Wv, Wo = weights
    H, K = cfg.num_attention_heads, cfg.num_key_value_heads
    linear_fw = _linear_nocache if fast else linear_forward
    rope_fw = _rope_nocache if fast else rope_forward
    c = {"T": x.shape[1], "H": H, "rope": rope is not None}
    one_matmul = fast and self_kv and Wqkv is not None
    if one_matmul:
        qkv = _linear(x, Wqkv)  # (B, T, D) @ (D, (H + 2K)*Dh) -> (B, T, (H + 2K)*Dh)
        nq, nk = Wq.shape[0], Wk.shape[0]
        # (B, T, (H + 2K)*Dh) -> (B, T, H*Dh), (B, T, K*Dh), (B, T, K*Dh)
        q2, k2, v2 = qkv[..., :nq], qkv[..., nq:nq + nk], qkv[..., nq + nk:]
    else:
        q2, c["q"] = linear_fw(x, Wq)  # (B, T, D) @ (D, H*Dh) -> (B, T, H*Dh)
    q = split_heads(q2, H)  # (B, T, H*Dh) -> (B, H, T, Dh)
    if rope is not None:
        q, c["rope_q"] = rope_fw(q, *rope)
    keys, values = [], []
    c["n_past"] = 0
    if past is not None:
        keys.append(past[0])
        values.append(past[1])
        c["n_past"] = past[0].shape[2]
    k_self = v_self = None
    if self_kv:
        if not one_matmul:
            k2, c["k"] = linear_fw(x, Wk)  # (B, T, D) @ (D, K*Dh) -> (B, T, K*Dh)
            v2, c["v"] = linear_fw(x, Wv)  # (B, T, D) @ (D, K*Dh) -> (B, T, K*Dh)
        k_self, v_self = split_heads(k2, K), split_heads(v2, K)  # -> (B, K, T, Dh)
        if rope is not None:
            k_self, c["rope_k"] = rope_fw(k_self, *rope)
        keys.append(k_self)
        values.append(v_self)
    c["memory"] = None
    if memory is not None:
        k_mem, v_mem, c["memory"] = project_memory(memory, Wk, Wv, K)
        keys.append(k_mem)
        values.append(v_mem)
    elif memory_kv is not None:
        keys.append(memory_kv[0])
        values.append(memory_kv[1])
    c["self_kv"] = self_kv
    # (B, K, Tp, Dh) ; (B, K, T, Dh) ; (B, K, S, Dh) -> (B, K, Tp + T + S, Dh)
    k = keys[0] if len(keys) == 1 else np.concatenate(keys, axis=2)
    v = values[0] if len(values) == 1 else np.concatenate(values, axis=2)
    scale = float(cfg.query_pre_attn_scalar) ** -0.5
    o, c["core"] = ops.attention_core_forward(q, k, v, mask, scale=scale,
                                              softcap=cfg.attn_logit_softcapping)
    y, c["o"] = linear_fw(merge_heads(o), Wo)  # (B, T, H*Dh) @ (H*Dh, D) -> (B, T, D)
    return y, c, (k_self, v_self)


def attention_backward(dy: np.ndarray, c: dict):
    """Gradients of attention_forward (the past keys are constants: no gradient).

    Returns (dx (B, T, D), dmemory (B, S, De) or None, (dWq, dWk, dWv, dWo)); dWk/dWv sum
    the self and memory uses of the same projection (merged attention).
    """
    # y = merge_heads(o) Wo^T
    do2, dWo = linear_backward(dy, c["o"])
    do = split_heads(do2, c["H"])  # (B, T, H*Dh) -> (B, H, T, Dh)
    # o = core(q, [past; self; memory] keys and values)
    dq, dk, dv = ops.attention_core_backward(do, c["core"])
    T, n_past = c["T"], c["n_past"]
    # q = rope(split_heads(x Wq^T))
    if c["rope"]:
        dq = rope_backward(dq, c["rope_q"])
    dx, dWq = linear_backward(merge_heads(dq), c["q"])
    dWk = dWv = None
    start = n_past
    if c["self_kv"]:
        dk_self, dv_self = dk[:, :, start:start + T], dv[:, :, start:start + T]  # (B, K, T, Dh)
        start += T
        # k_self = rope(split_heads(x Wk^T)), v_self = split_heads(x Wv^T)
        if c["rope"]:
            dk_self = rope_backward(dk_self, c["rope_k"])
        dxk, dWk = linear_backward(merge_heads(dk_self), c["k"])
        dxv, dWv = linear_backward(merge_heads(dv_self), c["v"])
        dx += dxk
        dx += dxv
    dmemory = None
    if c["memory"] is not None:
        ck, cv = c["memory"]
        dk_mem, dv_mem = dk[:, :, start:], dv[:, :, start:]  # (B, K, S, Dh)
        # k_mem = split_heads(memory Wk^T), v_mem = split_heads(memory Wv^T)
        dmk, dWk_mem = linear_backward(merge_heads(dk_mem), ck)
        dmv, dWv_mem = linear_backward(merge_heads(dv_mem), cv)
        dmemory = dmk + dmv
        dWk = dWk_mem if dWk is None else dWk + dWk_mem
        dWv = dWv_mem if dWv is None else dWv + dWv_mem
    return dx, dmemory, (dWq, dWk, dWv, dWo)
