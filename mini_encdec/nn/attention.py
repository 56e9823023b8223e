"""Grouped-query attention with Gemma 2's query scalar, score soft-cap and masks.

Shape letters: B batch, H query heads, K key/value heads (H a multiple of K), G = H / K
query heads per key/value head, Tq queries, Tk keys, Dh head size, Dq / Dkv model widths.
Query head h reads key/value head h // G, so reshaping the heads (H,) -> (K, G) lines each
group of G query heads up with its one key/value head.

The core, as numbered steps (the backward undoes them in reverse order):
    1. s0 = (q . k) * scale                       scale = query_pre_attn_scalar ** -0.5
    2. s1 = softcap * tanh(s0 / softcap)           (skipped when softcap is None)
    3. s2 = s1 where mask, else -inf
    4. p  = softmax(s2) over keys, in the input dtype (float32 or float64); a row with no
            allowed key gets p = 0 (our choice, SPEC.md section 1: zeros, never NaN)
    5. o  = p v

Gemma 3 adds one step to the layer, before RoPE: each query and key head is normalised,
`q = rmsnorm(q, q_norm)`, `k = rmsnorm(k, k_norm)` over Dh, with the (1 + w) weights of
shape (Dh,) shared by the heads (`q_norm=None` skips it: Gemma 2).

Self-attention passes the same activations as x_q and x_kv; cross-attention passes the
encoder output as x_kv (no RoPE, mask = encoder key padding). Tq may differ from Tk.

The layer, `attention_forward(x_q, x_kv, ...)`, is the one every model runs, in three ways:
    self-attention     x_kv = x_q, RoPE on queries and keys (encoder, decoder)
    cross-attention    x_kv = the encoder output, no RoPE (T5Gemma decoder)
    merged attention   x_kv = [x_q ; encoder output], RoPE on the x_q keys only: the
                       encoder keys get the identity rotation (cos 1, sin 0) (T5Gemma 2)
By default it runs this file's `attention_core_forward`: what you read (and edit) is what
runs. The models pass `core=` the (forward, backward) pair `mini_encdec.ops` dispatches
(the Numba twin under the numba backend); nn itself never imports the dispatcher.
"""

from __future__ import annotations

import numpy as np

from ..validate import (check_broadcast_mask, check_float, check_positive, check_positive_int,
                        check_same_dtype, check_shape)
from .linear import linear_backward, linear_forward
from .rmsnorm import rmsnorm_backward, rmsnorm_forward
from .rope import rope_backward, rope_forward
from .softcap import softcap_backward, softcap_forward


def split_heads(y: np.ndarray, n: int) -> np.ndarray:
    """(B, T, N*Dh) -> (B, N, T, Dh), contiguous (the core's matmuls want it)."""
    B, T, ND = y.shape
    # (B, T, N*Dh) -> (B, T, N, Dh) -> (B, N, T, Dh)
    return np.ascontiguousarray(y.reshape(B, T, n, ND // n).transpose(0, 2, 1, 3))


def merge_heads(o: np.ndarray) -> np.ndarray:
    """(B, N, T, Dh) -> (B, T, N*Dh) (a copy: the heads become the fast axis)."""
    B, N, T, Dh = o.shape
    return o.transpose(0, 2, 1, 3).reshape(B, T, N * Dh)  # (B,N,T,Dh) -> (B,T,N,Dh) -> (B,T,N*Dh)


def check_core_inputs(q, k, v, mask, scale, softcap, fn):
    check_float(q, "q", ndim=4, fn=fn)
    B, H, Tq, Dh = q.shape
    check_float(k, "k", ndim=4, fn=fn)
    check_shape(k, "k", (B, None, None, Dh), fn=fn)
    K, Tk = k.shape[1], k.shape[2]
    check_float(v, "v", ndim=4, fn=fn)
    check_shape(v, "v", (B, K, Tk, Dh), fn=fn)
    check_same_dtype(fn, q=q, k=k, v=v)
    if K == 0 or H % K:
        raise ValueError(f"{fn}: argument 'k': expected a number of key/value heads dividing "
                         f"the {H} query heads, got {K}")
    if mask is not None:
        mask = check_broadcast_mask(mask, "mask", (B, 1, Tq, Tk), fn=fn)
    scale = check_positive(scale, "scale", fn=fn)
    softcap = check_positive(softcap, "softcap", fn=fn, allow_none=True)
    return mask, scale, softcap


def attention_core_forward(q, k, v, mask, *, scale, softcap):
    """q (B, H, Tq, Dh), k/v (B, K, Tk, Dh), mask (B|1, 1, Tq, Tk) bool or None (all keys)
    -> o (B, H, Tq, Dh) in q's dtype. Query head h reads key/value head h // G, G = H // K.

    Returns (o, cache). attention_core_backward reads the cache, so its layout is part of
    the contract (graded by task 2.2's test_core_cache_is_what_the_backward_reads):
      cache["q"], cache["k"], cache["v"]: the inputs, unchanged;
      cache["p"]: the probabilities, shape (B, K, G, Tq, Tk) (query head h at
          [:, h // G, h % G]), q's dtype, exactly 0 on masked keys and on rows with no
          allowed key;
      cache["cap"]: the soft-cap's cache of s0 = (q . k) * scale as softcap_forward
          returns it (a dict with "t" = tanh(s0 / softcap) of shape (B, K, G, Tq, Tk),
          "cap", "shape"), or None when softcap is None;
      cache["scale"], cache["softcap"]: the two numbers given."""
    fn = "attention_core_forward"
    mask, scale, softcap = check_core_inputs(q, k, v, mask, scale, softcap, fn)
    B, H, Tq, Dh = q.shape
    K = k.shape[1]  # k (B, K, Tk, Dh)
    G = H // K
    dt = q.dtype.type
    qg = q.reshape(B, K, G, Tq, Dh)  # (B, H, Tq, Dh) -> (B, K, G, Tq, Dh)
    kt = k[:, :, None].swapaxes(-1, -2)  # (B, K, Tk, Dh) -> (B, K, 1, Dh, Tk)
    # 1. s0 = (q . k) * scale
    s0 = (qg @ kt) * dt(scale)  # (B, K, G, Tq, Dh) @ (B, K, 1, Dh, Tk) -> (B, K, G, Tq, Tk)
    # 2. s1 = softcap * tanh(s0 / softcap)      (nn/softcap.py; skipped when softcap is None)
    s1, c_cap = softcap_forward(s0, softcap) if softcap is not None else (s0, None)
    # 3. s2 = s1 where mask, else -inf
    if mask is not None:
        m5 = mask[:, :, None]  # (B|1, 1, Tq, Tk) -> (B|1, 1, 1, Tq, Tk)
        s2 = np.where(m5, s1, -np.inf).astype(q.dtype, copy=False)
    else:
        m5, s2 = None, s1
    # 4. p = softmax(s2); rows with no allowed key: max is -inf, use 0 so exp gives 0s
    row_max = np.max(s2, axis=-1, keepdims=True)  # (B, K, G, Tq, 1)
    row_max = np.where(np.isfinite(row_max), row_max, 0).astype(q.dtype, copy=False)
    e = np.exp(s2 - row_max)  # exp(-inf) = 0 for masked keys
    denom = np.sum(e, axis=-1, keepdims=True)  # (B, K, G, Tq, 1)
    p = e / np.where(denom > 0, denom, 1).astype(q.dtype, copy=False)
    # 5. o = p v
    og = p @ v[:, :, None]  # (B, K, G, Tq, Tk) @ (B, K, 1, Tk, Dh) -> (B, K, G, Tq, Dh)
    o = og.reshape(B, H, Tq, Dh)  # (B, K, G, Tq, Dh) -> (B, H, Tq, Dh)
    cache = {"q": q, "k": k, "v": v, "p": p, "cap": c_cap, "scale": scale, "softcap": softcap}
    return o, cache


def attention_core_backward(do, cache):
    """do (B, H, Tq, Dh), the cache of attention_core_forward (its docstring gives the
    layout: q, k, v, p, cap, scale) -> (dq, dk, dv), shaped and typed like q, k, v. Masked
    keys and empty rows get exactly zero gradient. Reads only the cache, so it must work
    on any cache of that layout (graded by task 2.3's
    test_core_backward_reads_the_documented_cache)."""
    q, k, v, p = cache["q"], cache["k"], cache["v"], cache["p"]
    check_float(do, "do", fn="attention_core_backward")
    check_shape(do, "do", q.shape, fn="attention_core_backward")
    B, H, Tq, Dh = q.shape
    K = k.shape[1]  # k (B, K, Tk, Dh)
    G = H // K
    dt = q.dtype.type
    dog = do.reshape(B, K, G, Tq, Dh)  # (B, H, Tq, Dh) -> (B, K, G, Tq, Dh)
    # 5. o = p v
    dp = dog @ v[:, :, None].swapaxes(-1, -2)  # (B,K,G,Tq,Dh) @ (B,K,1,Dh,Tk) -> (B,K,G,Tq,Tk)
    # (B,K,G,Tk,Tq) @ (B,K,G,Tq,Dh) -> (B,K,G,Tk,Dh), summed over the G heads -> (B,K,Tk,Dh)
    dv = np.sum(p.swapaxes(-1, -2) @ dog, axis=2)
    # 4. p = softmax(s2): ds2 = p * (dp - sum_k p dp); p = 0 on masked keys and empty rows
    ds = p * (dp - np.sum(p * dp, axis=-1, keepdims=True))
    # 3. s2 = s1 where mask: the gradient passes where allowed (elsewhere p = 0 made it 0)
    # 2. s1 = softcap * tanh(s0 / softcap)
    if cache["cap"] is not None:
        ds = softcap_backward(ds, cache["cap"])
    # 1. s0 = (q . k) * scale
    ds = ds * dt(cache["scale"])
    dqg = ds @ k[:, :, None]  # (B,K,G,Tq,Tk) @ (B,K,1,Tk,Dh) -> (B,K,G,Tq,Dh)
    dq = dqg.reshape(B, H, Tq, Dh)  # (B, K, G, Tq, Dh) -> (B, H, Tq, Dh)
    qg = q.reshape(B, K, G, Tq, Dh)  # (B, H, Tq, Dh) -> (B, K, G, Tq, Dh)
    # (B,K,G,Tk,Tq) @ (B,K,G,Tq,Dh) -> (B,K,G,Tk,Dh), summed over the G heads -> (B,K,Tk,Dh)
    dk = np.sum(ds.swapaxes(-1, -2) @ qg, axis=2)
    return dq, dk, dv


def _check_rope(rope, name, B, T, Dh, dtype, fn):
    if rope is None:
        return None
    if not (isinstance(rope, (tuple, list)) and len(rope) == 2):
        raise ValueError(f"{fn}: argument {name!r}: expected a (cos, sin) pair or None, "
                         f"got {type(rope).__name__}")
    for part, arr in zip(("cos", "sin"), rope):
        check_float(arr, f"{name}[{part}]", fn=fn)
        if arr.ndim == 2:
            check_shape(arr, f"{name}[{part}]", (T, Dh), fn=fn)
        else:
            check_shape(arr, f"{name}[{part}]", (B, T, Dh), fn=fn)
        if arr.dtype != dtype:
            raise ValueError(f"{fn}: argument {name}[{part}]: expected dtype {dtype}, "
                             f"got {arr.dtype}")
    return rope


def attention_forward(x_q, x_kv, Wq, Wk, Wv, Wo, *, num_heads, num_kv_heads, head_dim,
                      scale, softcap, mask, rope_q=None, rope_k=None, core=None,
                      rope=None, q_norm=None, k_norm=None, norm_eps=1e-6, norm=None,
                      linear=None):
    """y = attention(x_q attends to x_kv) Wo^T. Returns (y, cache).

    x_q (B, Tq, Dq), x_kv (B, Tk, Dkv); Wq (H*Dh, Dq), Wk/Wv (K*Dh, Dkv), Wo (Dq, H*Dh);
    mask (B|1, 1, Tq, Tk) or None; rope_q/rope_k (cos, sin) pairs or None.
    q_norm/k_norm (Dh,) or None: Gemma 3's RMSNorm of each query/key head before RoPE
    (both or neither; eps norm_eps).
    core: the (forward, backward) pair of the attention core; default this file's
    attention_core_forward / attention_core_backward. rope: likewise the pair of RoPE
    (default nn.rope's rope_forward / rope_backward), norm the pair of RMSNorm (default
    nn.rmsnorm's), linear the pair of the projections (default nn.linear's). The models
    pass the ops pairs.
    """
    fn = "attention_forward"
    H = check_positive_int(num_heads, "num_heads", fn=fn)
    K = check_positive_int(num_kv_heads, "num_kv_heads", fn=fn)
    Dh = check_positive_int(head_dim, "head_dim", fn=fn)
    if H % K:
        raise ValueError(f"{fn}: argument 'num_heads': expected a multiple of "
                         f"num_kv_heads={K}, got {H}")
    check_float(x_q, "x_q", ndim=3, fn=fn)
    B, Tq, Dq = x_q.shape
    check_float(x_kv, "x_kv", ndim=3, fn=fn)
    check_shape(x_kv, "x_kv", (B, None, None), fn=fn)
    Tk, Dkv = x_kv.shape[1], x_kv.shape[2]
    for name, W, shape in (("Wq", Wq, (H * Dh, Dq)), ("Wk", Wk, (K * Dh, Dkv)),
                           ("Wv", Wv, (K * Dh, Dkv)), ("Wo", Wo, (Dq, H * Dh))):
        check_float(W, name, fn=fn)
        check_shape(W, name, shape, fn=fn)
    check_same_dtype(fn, x_q=x_q, x_kv=x_kv, Wq=Wq, Wk=Wk, Wv=Wv, Wo=Wo)
    if (q_norm is None) != (k_norm is None):
        raise ValueError(f"{fn}: arguments 'q_norm' and 'k_norm': expected both or neither, "
                         f"got only {'q_norm' if k_norm is None else 'k_norm'}")
    if q_norm is not None:
        for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
            check_float(w, name, fn=fn)
            check_shape(w, name, (Dh,), fn=fn)
        check_same_dtype(fn, x_q=x_q, q_norm=q_norm, k_norm=k_norm)
    if mask is None:  # every key allowed; kernels always receive an array
        mask = np.ones((1, 1, Tq, Tk), dtype=bool)
    mask = check_broadcast_mask(mask, "mask", (B, 1, Tq, Tk), fn=fn)
    rope_q = _check_rope(rope_q, "rope_q", B, Tq, Dh, x_q.dtype, fn)
    rope_k = _check_rope(rope_k, "rope_k", B, Tk, Dh, x_q.dtype, fn)

    project, project_backward = linear or (linear_forward, linear_backward)
    q2, c_q = project(x_q, Wq)  # (B, Tq, Dq) -> (B, Tq, H*Dh)
    k2, c_k = project(x_kv, Wk)  # (B, Tk, Dkv) -> (B, Tk, K*Dh)
    v2, c_v = project(x_kv, Wv)  # (B, Tk, Dkv) -> (B, Tk, K*Dh)
    q = split_heads(q2, H)  # (B, Tq, H*Dh) -> (B, H, Tq, Dh)
    k = split_heads(k2, K)  # (B, Tk, K*Dh) -> (B, K, Tk, Dh)
    v = split_heads(v2, K)  # (B, Tk, K*Dh) -> (B, K, Tk, Dh)
    c_qn = c_kn = None
    norm_forward, norm_backward = norm or (rmsnorm_forward, rmsnorm_backward)
    if q_norm is not None:  # Gemma 3: q = rmsnorm(q) (1 + w), k likewise, per head over Dh
        q, c_qn = norm_forward(q, q_norm, norm_eps)  # (B, H, Tq, Dh)
        k, c_kn = norm_forward(k, k_norm, norm_eps)  # (B, K, Tk, Dh)
    c_rq = c_rk = None
    rotate, rotate_backward = rope or (rope_forward, rope_backward)
    if rope_q is not None:
        q, c_rq = rotate(q, *rope_q)
    if rope_k is not None:
        k, c_rk = rotate(k, *rope_k)
    core_forward, core_backward = core or (attention_core_forward, attention_core_backward)
    o, c_core = core_forward(q, k, v, mask, scale=scale, softcap=softcap)  # (B, H, Tq, Dh)
    y, c_o = project(merge_heads(o), Wo)  # (B, Tq, H*Dh) -> (B, Tq, Dq)
    cache = {"q": c_q, "linear_backward": project_backward, "k": c_k, "v": c_v, "rope_q": c_rq, "rope_k": c_rk, "core": c_core,
             "core_backward": core_backward, "rope_backward": rotate_backward, "o": c_o,
             "q_norm": c_qn, "k_norm": c_kn, "norm_backward": norm_backward,
             "dims": (B, Tq, Tk, H, K, Dh)}
    return y, cache


def attention_backward(dy, cache):
    """Returns (dx_q, dx_kv, dWq, dWk, dWv, dWo), and with q/k norms also (dq_norm,
    dk_norm) after dWo. Self-attention: dx = dx_q + dx_kv."""
    B, Tq, Tk, H, K, Dh = cache["dims"]
    check_float(dy, "dy", fn="attention_backward")
    check_shape(dy, "dy", (B, Tq, cache["o"]["W"].shape[0]), fn="attention_backward")
    # y = o2 Wo^T
    project_backward = cache["linear_backward"]
    do2, dWo = project_backward(dy, cache["o"])
    do = split_heads(do2, H)  # (B, Tq, H*Dh) -> (B, H, Tq, Dh)
    # o = core(q, k, v)
    dq, dk, dv = cache["core_backward"](do, cache["core"])
    # q = rope(q), k = rope(k)
    if cache["rope_q"] is not None:
        dq = cache["rope_backward"](dq, cache["rope_q"])
    if cache["rope_k"] is not None:
        dk = cache["rope_backward"](dk, cache["rope_k"])
    # q = rmsnorm(q, q_norm), k = rmsnorm(k, k_norm)      (Gemma 3)
    dnorms = ()
    if cache["q_norm"] is not None:
        dq, dw_q = cache["norm_backward"](dq, cache["q_norm"])
        dk, dw_k = cache["norm_backward"](dk, cache["k_norm"])
        dnorms = (dw_q, dw_k)
    dq2 = merge_heads(dq)  # (B, H, Tq, Dh) -> (B, Tq, H*Dh)
    dk2 = merge_heads(dk)  # (B, K, Tk, Dh) -> (B, Tk, K*Dh)
    dv2 = merge_heads(dv)  # (B, K, Tk, Dh) -> (B, Tk, K*Dh)
    # q2 = x_q Wq^T, k2 = x_kv Wk^T, v2 = x_kv Wv^T
    dx_q, dWq = project_backward(dq2, cache["q"])
    dx_k, dWk = project_backward(dk2, cache["k"])
    dx_v, dWv = project_backward(dv2, cache["v"])
    return (dx_q, dx_k + dx_v, dWq, dWk, dWv, dWo) + dnorms
