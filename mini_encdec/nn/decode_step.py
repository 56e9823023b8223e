"""The pieces of one KV-cached decoding step (one new token per row), inference only.

A decoding step does little arithmetic per call (at batch 1 a few matrix-vector products),
so the work between its matmuls costs as much as the matmuls: here it is grouped into
three ops, each a composition of this package's own functions, which the Numba twins
(`mini_encdec.kernels.decode_step`) compute in one call with the same roundings, and its
products go through a fourth:

    project(x, W) -> y
        x (..., In) @ W^T (Out, In) -> (..., Out), the step's (or the prompt's) products;
        the twin multiplies a step's 1-32 rows without BLAS's packing of W
        (kernels/linear.py), so its rounding differs from BLAS's within float32's.

    rope_append(qkv, cos, sin, k_buf, v_buf, slot, num_heads) -> q
        qkv (B, 1, (H + 2K)*Dh): the new token's fused q, k, v projection per row;
        cos, sin (B, 1, 1, Dh): the RoPE rows of its position. Stores RoPE(k) in
        k_buf[:, :, slot] and v in v_buf[:, :, slot] (the KV cache's buffers
        (B, K, capacity, Dh)); returns RoPE(q) (B, H, 1, Dh).
    attend(q, k_buf, v_buf, lo, hi, mask, *, scale, softcap) -> o
        the attention core of q (B, H, 1, Dh) over the stored keys and values
        [:, :, lo:hi] of the buffers, mask (B|1, 1, 1, hi - lo) -> o (B, 1, H*Dh), the
        heads merged.
    residual_norm(x, y, w, w_next, eps) -> (x + RMSNorm(y, w), RMSNorm(that, w_next))
        the end of one sublayer (post-norm and residual) and the start of the next
        (its pre-norm): x, y (B, 1, D).

No checks and no backward caches: their one caller (models/decoding.py's plan) validated
the request once, and nothing is trained through them. models/decoding.py's
`cached_block_forward` writes the same layer with the separate functions; the tests hold
the two to the same logits, bit for bit.
"""

from __future__ import annotations

import numpy as np

from .attention import attention_core_forward, merge_heads, split_heads
from .linear import linear_unchecked
from .rmsnorm import rmsnorm_forward
from .rope import apply_rope_unchecked


def project(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T: (..., In) @ (In, Out) -> (..., Out), no checks, no cache."""
    return linear_unchecked(x, W)


def rope_append(qkv: np.ndarray, cos: np.ndarray, sin: np.ndarray, k_buf: np.ndarray,
                v_buf: np.ndarray, slot: int, num_heads: int) -> np.ndarray:
    """RoPE(q) (B, H, 1, Dh); RoPE(k) and v written to [:, :, slot] of k_buf and v_buf."""
    H, K, Dh = num_heads, k_buf.shape[1], k_buf.shape[3]
    q = split_heads(qkv[..., :H * Dh], H)  # (B, 1, H*Dh) -> (B, H, 1, Dh)
    k = split_heads(qkv[..., H * Dh:(H + K) * Dh], K)  # -> (B, K, 1, Dh)
    v = split_heads(qkv[..., (H + K) * Dh:], K)  # -> (B, K, 1, Dh)
    k_buf[:, :, slot:slot + 1] = apply_rope_unchecked(k, cos, sin)
    v_buf[:, :, slot:slot + 1] = v
    return apply_rope_unchecked(q, cos, sin)


def attend(q: np.ndarray, k_buf: np.ndarray, v_buf: np.ndarray, lo: int, hi: int,
           mask: np.ndarray, *, scale: float, softcap) -> np.ndarray:
    """o (B, 1, H*Dh) of q (B, H, 1, Dh) over keys/values [:, :, lo:hi] of the buffers."""
    o, _ = attention_core_forward(q, k_buf[:, :, lo:hi], v_buf[:, :, lo:hi], mask,
                                  scale=scale, softcap=softcap)  # (B, H, 1, Dh)
    return merge_heads(o)  # -> (B, 1, H*Dh)


def residual_norm(x: np.ndarray, y: np.ndarray, w: np.ndarray, w_next: np.ndarray,
                  eps: float) -> tuple:
    """(x + RMSNorm(y, w), RMSNorm(x + RMSNorm(y, w), w_next)), both (..., D)."""
    x = x + rmsnorm_forward(y, w, eps)[0]  # post-norm of the sublayer, residual
    return x, rmsnorm_forward(x, w_next, eps)[0]  # pre-norm of the next sublayer
