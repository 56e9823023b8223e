"""Rotary position embedding (RoPE), "rotate-half" convention (not interleaved).

    inv_freq[i] = theta^(-2i / Dh) * scale,  i in [0, Dh/2)   (scale = 1 / the linear
                                                              scaling factor, default 1)
    angle[t, i] = position[t] * inv_freq[i]
    cos, sin    = cos(angle), sin(angle) repeated over both halves   (T, Dh)
    rope(x)     = x * cos + rotate_half(x) * sin,  rotate_half([x1, x2]) = [-x2, x1]

Shapes: x (B, N, T, Dh) with N heads; cos/sin (T, Dh) shared by the batch or
(B, T, Dh) per sequence. The angles are computed in float64 and rounded to `dtype` once.
"""

from __future__ import annotations

import numpy as np

from ..validate import (FLOAT_DTYPES, check_dtype, check_float, check_int_array, check_positive,
                        check_positive_int, check_shape)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[x1, x2] -> [-x2, x1] on the last axis (halves of Dh/2)."""
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def rotate_half_transpose(x: np.ndarray) -> np.ndarray:
    """The transpose (= inverse) of rotate_half: [a1, a2] -> [a2, -a1]."""
    h = x.shape[-1] // 2
    return np.concatenate([x[..., h:], -x[..., :h]], axis=-1)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float = 10000.0,
                 dtype=np.float32, *, scale: float = 1.0):
    """cos, sin tables (T, Dh) for positions (T,), or (B, T, Dh) for positions (B, T).
    scale multiplies the angles (linear RoPE scaling: 1 / factor; 1.0 is plain RoPE)."""
    fn = "rope_cos_sin"
    check_int_array(positions, "positions", ndims=(1, 2), fn=fn)
    head_dim = check_positive_int(head_dim, "head_dim", fn=fn)
    if head_dim % 2:
        raise ValueError(f"{fn}: argument 'head_dim': expected an even number, got {head_dim}")
    theta = check_positive(theta, "theta", fn=fn)
    scale = check_positive(scale, "scale", fn=fn)
    if np.dtype(dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: argument 'dtype': expected float32 or float64, got {dtype!r}")
    return rope_tables_unchecked(positions, head_dim, theta, dtype, scale=scale)


def rope_tables_unchecked(positions: np.ndarray, head_dim: int, theta: float, dtype, *,
                          scale: float = 1.0):
    """rope_cos_sin without checks: the inference fast path for callers that validated
    the arguments once (rope_cos_sin computes through it)."""
    # (Dh/2,), times the linear scaling (1 / factor; 1 for plain RoPE)
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim) * scale
    # (..., T, 1) * (Dh/2,) -> (..., T, Dh/2)
    angle = positions.astype(np.float64)[..., None] * inv_freq
    angle = np.concatenate([angle, angle], axis=-1)  # (..., T, Dh/2) -> (..., T, Dh)
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


def check_rope_table(x, c, name, fn):
    B, N, T, Dh = x.shape
    check_float(c, name, fn=fn)
    if c.ndim == 2:
        check_shape(c, name, (T, Dh), fn=fn)
    else:
        check_shape(c, name, (B, T, Dh), fn=fn)
    check_dtype(c, name, x.dtype, fn=fn)
    return c if c.ndim == 2 else c[:, None]  # (B, T, Dh) -> (B, 1, T, Dh) over heads


def apply_rope_unchecked(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """y = x * cos + rotate_half(x) * sin without checks or cache (the inference fast path;
    rope_forward computes through it). cos/sin (T, Dh) or (B, 1, T, Dh)."""
    return x * cos + rotate_half(x) * sin  # (B, N, T, Dh) * (T, Dh) or (B, 1, T, Dh)


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray):
    """y = x * cos + rotate_half(x) * sin. Returns (y, cache)."""
    fn = "rope_forward"
    check_float(x, "x", ndim=4, fn=fn)
    if x.shape[-1] % 2:
        raise ValueError(f"{fn}: argument 'x': expected an even head size (last axis), "
                         f"got shape {x.shape}")
    c = check_rope_table(x, cos, "cos", fn)
    s = check_rope_table(x, sin, "sin", fn)
    y = apply_rope_unchecked(x, c, s)  # (B, N, T, Dh) * (T, Dh) or (B, 1, T, Dh)
    return y, {"cos": c, "sin": s, "shape": x.shape}


def rope_backward(dy: np.ndarray, cache: dict):
    """dx = dy * cos + rotate_half^T(dy * sin)."""
    check_float(dy, "dy", fn="rope_backward")
    check_shape(dy, "dy", cache["shape"], fn="rope_backward")
    # y = x * cos + rotate_half(x) * sin
    return dy * cache["cos"] + rotate_half_transpose(dy * cache["sin"])
