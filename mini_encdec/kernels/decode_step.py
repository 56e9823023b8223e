"""Numba twins of one KV-cached decoding step's pieces (`mini_encdec.nn.decode_step`).

Why: a decoding step of one token per row multiplies a few rows by each weight matrix
(BLAS, `numpy.matmul`), and between those matmuls the reference runs a dozen small NumPy
calls per layer (three head splits, two RoPEs of five passes each, two cache appends,
the attention's checks and mask, a head merge, two RMSNorms and an add per sublayer),
each costing microseconds of Python whatever its size. Here each group is one call.

Checklist
- rope_append: one pass over the row's fused qkv projection: RoPE of the query and key
  heads (rotate-half, y[i] = x[i] c - x[i+h] s, y[i+h] = x[i+h] c + x[i] s), the keys
  and values written straight into the cache's buffers at the new token's slot. The
  roundings are the reference's (`x * cos + rotate_half(x) * sin`): a product, a product,
  a sum, compiled without fast-math so no multiply-add is fused.
- attend: the attention kernel's online forward (kernels/attention.py, `_forward_rows`)
  over the buffers' [lo, hi) keys, read in place; its output (B, H, 1, Dh) is already
  the merged (B, 1, H*Dh) layout (one query per row), so merging is a reshape.
- residual_norm: RMSNorm's row kernel (kernels/rmsnorm.py) for the post-norm, the
  residual add, the row kernel again for the next pre-norm; the add without fast-math.
- So the twins give the reference's numbers where the reference's own twins do: equal to
  the separate Numba ops bit for bit (tests/test_decode_step.py), and to the NumPy
  reference within the kernels' tolerances.
- Parallel: attend as the attention kernel (chunks of query rows when the work is large,
  batch 8 and long contexts); the other two run on the calling thread (a step's rows
  are a few KiB).
- Memory: the outputs only (rope_append writes into the cache's buffers).
- dtypes: float32 and float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .attention import online_forward
from .rmsnorm import _forward_rows as _rmsnorm_rows

EXACT = dict(cache=True, error_model="numpy")  # no fast-math: the reference's roundings


@njit(**EXACT)
def _rope_append_rows(qkv, cos, sin, k_buf, v_buf, slot, H, q):
    """Every row b: q[b, h, 0] = RoPE(query head h), k_buf[b, kh, slot] = RoPE(key head
    kh), v_buf[b, kh, slot] = value head kh, from qkv (B, 1, (H + 2K)*Dh)."""
    B, K, Dh = qkv.shape[0], k_buf.shape[1], k_buf.shape[3]
    h2 = Dh // 2
    for b in range(B):
        for n in range(H + K):  # the query heads, then the key heads
            base = n * Dh
            for i in range(Dh):
                x = qkv[b, 0, base + i]
                # rotate_half: [x1, x2] -> [-x2, x1]
                r = -qkv[b, 0, base + i + h2] if i < h2 else qkv[b, 0, base + i - h2]
                y = x * cos[b, 0, 0, i] + r * sin[b, 0, 0, i]
                if n < H:
                    q[b, n, 0, i] = y
                else:
                    k_buf[b, n - H, slot, i] = y
        for kh in range(K):
            base = (H + K + kh) * Dh
            for i in range(Dh):
                v_buf[b, kh, slot, i] = qkv[b, 0, base + i]


def rope_append(qkv, cos, sin, k_buf, v_buf, slot, num_heads):
    """Twin of nn.decode_step.rope_append: RoPE(q) (B, H, 1, Dh); RoPE(k) and v written to
    [:, :, slot] of k_buf and v_buf."""
    B, Dh = qkv.shape[0], k_buf.shape[3]
    q = np.empty((B, num_heads, 1, Dh), dtype=qkv.dtype)
    _rope_append_rows(qkv, cos, sin, k_buf, v_buf, slot, num_heads, q)
    return q


def attend(q, k_buf, v_buf, lo, hi, mask, *, scale, softcap):
    """Twin of nn.decode_step.attend: o (B, 1, H*Dh) of q (B, H, 1, Dh) over the keys and
    values [:, :, lo:hi] of the buffers, mask (B|1, 1, 1, hi - lo)."""
    B, H, _, Dh = q.shape
    if not (k_buf.flags.c_contiguous and v_buf.flags.c_contiguous):  # read in place needs C
        k_buf, v_buf = (np.ascontiguousarray(a[:, :, lo:hi]) for a in (k_buf, v_buf))
        lo = 0
    dt = q.dtype.type
    cap = dt(softcap) if softcap is not None else dt(0)
    o, _ = online_forward(q, k_buf, v_buf, lo, np.ascontiguousarray(mask), dt(scale), cap)
    return o.reshape(B, 1, H * Dh)  # one query per row: (B, H, 1, Dh) is (B, 1, H, Dh)


@njit(**EXACT)
def _residual_norm_rows(x, y, w, w_next, eps, x_out, n_out, scratch, rstd):
    """x_out = x + RMSNorm(y, w), n_out = RMSNorm(x_out, w_next), rows of (N, D)."""
    N, D = x.shape
    _rmsnorm_rows(0, N, y, w, eps, scratch, rstd)
    for n in range(N):
        for d in range(D):
            x_out[n, d] = x[n, d] + scratch[n, d]
    _rmsnorm_rows(0, N, x_out, w_next, eps, n_out, rstd)


def residual_norm(x, y, w, w_next, eps):
    """Twin of nn.decode_step.residual_norm: (x + RMSNorm(y, w), RMSNorm(that, w_next))."""
    D = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, D)  # (..., D) -> (N, D)
    y2 = np.ascontiguousarray(y).reshape(-1, D)
    x_out, n_out, scratch = np.empty_like(x2), np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x2.dtype)
    _residual_norm_rows(x2, y2, np.ascontiguousarray(w), np.ascontiguousarray(w_next),
                        x.dtype.type(eps), x_out, n_out, scratch, rstd)
    return x_out.reshape(x.shape), n_out.reshape(x.shape)
