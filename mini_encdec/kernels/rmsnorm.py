"""Numba twin of RMSNorm (`mini_encdec.nn.rmsnorm.rmsnorm_*`):
`y = x * rstd * (1 + w)`, rstd = 1 / sqrt(mean(x^2) + eps).

Checklist
- Fused, forward: mean of squares, rsqrt and both scalings in one pass per row (NumPy
  makes four passes and keeps xhat).
- Fused, backward: xhat = x * rstd is recomputed, not stored; the row mean of
  dxhat * xhat and dx come from two sweeps over the row while it is in cache.
- Parallel: rows (prange over chunks of rows). dw is a sum over rows: each chunk adds into
  its own partial row of a (chunks, D) array and NumPy sums the few partials, so no two
  threads write the same memory.
- Memory: forward keeps x (a reference), w and rstd (N,); backward needs (chunks, D).
- dtypes: float32 and float64 (the row sums in the input dtype, like the reference).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..validate import check_float, check_positive, check_same_dtype, check_shape
from ._runtime import JIT, parallel_chunks, same_float_arrays
from ._vecmath import cst


@njit(**JIT)
def _forward_rows(n0, n1, x, w, eps, y, rstd):
    """Rows n0 <= n < n1 of x (N, D): y[n] = x[n] * rstd[n] * (1 + w), rstd[n] =
    1 / sqrt(mean(x[n]^2) + eps), written into y (N, D) and rstd (N,)."""
    D = x.shape[1]
    for n in range(n0, n1):
        # 1. rstd = 1 / sqrt(mean(x^2) + eps)
        ss = cst(eps, 0.0)
        for d in range(D):
            ss += x[n, d] * x[n, d]
        r = cst(eps, 1.0) / math.sqrt(ss / cst(eps, D) + eps)
        rstd[n] = r
        # 2.-3. y = (x * rstd) * (1 + w)
        for d in range(D):
            y[n, d] = (x[n, d] * r) * (cst(eps, 1.0) + w[d])


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, x, w, eps, y, rstd):
    """_forward_rows over all N rows, cut into nchunks chunks run in parallel (prange)."""
    N = x.shape[0]
    for c in prange(nchunks):
        _forward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, x, w, eps, y, rstd)


@njit(**JIT)
def _backward_rows(n0, n1, dy, x, w, rstd, dx, dw):
    """Rows n0 <= n < n1: dx[n] from dy[n] (recomputing xhat = x * rstd); adds their
    share of dw into dw (D,) (one private row per chunk)."""
    D = x.shape[1]
    one = cst(rstd, 1.0)
    for n in range(n0, n1):
        r = rstd[n]
        # 3. y = xhat * (1 + w):  dw += dy * xhat,  dxhat = dy * (1 + w)
        # 2./1. xhat = x * rstd:  dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
        dot = cst(rstd, 0.0)
        for d in range(D):
            xhat = x[n, d] * r
            dw[d] += dy[n, d] * xhat
            dot += dy[n, d] * (one + w[d]) * xhat
        mean = dot / cst(rstd, D)
        for d in range(D):
            xhat = x[n, d] * r
            dx[n, d] = r * (dy[n, d] * (one + w[d]) - xhat * mean)


@njit(parallel=True, **JIT)
def _backward_parallel(dy, x, w, rstd, dx, dw_part):
    """_backward_rows over all N rows in dw_part.shape[0] chunks run in parallel (prange);
    chunk c adds its share of dw into its own row dw_part[c] (no two threads write the
    same memory)."""
    N = x.shape[0]
    nchunks = dw_part.shape[0]
    for c in prange(nchunks):
        _backward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, dy, x, w, rstd, dx,
                       dw_part[c])


def rmsnorm_forward(x, w, eps=1e-6):
    """Twin of nn.rmsnorm.rmsnorm_forward: x (..., D), w (D,) -> (y, cache)."""
    fn = "rmsnorm_forward"
    if not (same_float_arrays(x, w) and x.ndim >= 1 and w.shape == x.shape[-1:]
            and type(eps) is float and 0 < eps < math.inf):
        check_float(x, "x", fn=fn)  # the reference's checks, in its order
        if x.ndim < 1:
            raise ValueError(f"{fn}: argument 'x': expected at least 1 dimension, got shape "
                             f"{x.shape}")
        check_float(w, "w", fn=fn)
        check_shape(w, "w", (x.shape[-1],), fn=fn)
        check_same_dtype(fn, x=x, w=w)
        eps = check_positive(eps, "eps", fn=fn)
    D = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, D)  # (..., D) -> (N, D)
    w = np.ascontiguousarray(w)
    y2 = np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x.dtype)
    args = (x2, w, x.dtype.type(eps), y2, rstd)
    nchunks = parallel_chunks(x2.size, x2.shape[0])
    if nchunks:
        _forward_parallel(nchunks, *args)
    else:
        _forward_rows(0, x2.shape[0], *args)
    return y2.reshape(x.shape), {"x": x2, "w": w, "rstd": rstd, "shape": x.shape}


def rmsnorm_backward(dy, cache):
    """Twin of nn.rmsnorm.rmsnorm_backward: returns (dx, dw)."""
    x2, w, rstd = cache["x"], cache["w"], cache["rstd"]
    check_float(dy, "dy", fn="rmsnorm_backward")
    check_shape(dy, "dy", cache["shape"], fn="rmsnorm_backward")
    dy2 = np.ascontiguousarray(dy, dtype=x2.dtype).reshape(x2.shape)  # (..., D) -> (N, D)
    dx = np.empty_like(x2)
    nchunks = parallel_chunks(2 * x2.size, x2.shape[0])
    dw_part = np.zeros((max(nchunks, 1), x2.shape[1]), dtype=x2.dtype)  # (chunks, D)
    if nchunks:
        _backward_parallel(dy2, x2, w, rstd, dx, dw_part)
    else:
        _backward_rows(0, x2.shape[0], dy2, x2, w, rstd, dx, dw_part[0])
    return dx.reshape(cache["shape"]), dw_part.sum(axis=0)
