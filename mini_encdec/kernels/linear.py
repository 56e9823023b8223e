"""Twins of the linear layer (`mini_encdec.nn.linear`): y = x W^T and its gradients.

- 1 to 32 rows of KV-cached decoding (`project`, the decoding plan's op; SMALL_ROWS):
  the Numba kernel below. A layer's few rows in a model's forward stay on BLAS.
- Many rows (training, prompts) and the backward: BLAS through `matmul.matmul`, which
  splits a big product across the thread policy's threads in blocks fixed by the cap, so
  both cores work even where BLAS itself must stay at one thread (kernels/matmul.py).
- Odd layouts (W not C-contiguous): `numpy.matmul`.

Why a kernel for a matmul: one decoding step multiplies B rows (B = the batch, 1 to a
few dozen) by every weight matrix. BLAS's gemm packs the whole weight matrix into its
own layout before multiplying, which pays off for hundreds of rows but dominates with a
handful: for a few rows this kernel is several times faster (MEASUREMENTS.md). From
about 64 rows on BLAS is as fast or faster. A single row is a gemv, which BLAS does
without packing, but on one thread where BLAS must stay there (threads.py): a weight
matrix that streams from memory then reads at one core's bandwidth, where this kernel's
chunks of output features read it on every thread (MEASUREMENTS.md: 2x on 4-17 MB).

Checklist
- Reads W once, in its stored (Out, In) layout: no packing, no transpose, no copy.
- Register blocking: each pass of the inner loop over In takes 2 rows of W and 4 rows
  of x and keeps 8 running sums (6 loads per 8 multiply-adds; LLVM vectorises the sums
  over In with `reassoc`, as BLAS reorders its sums too). Tails (odd Out, M not a
  multiple of 4) use the same loop with fewer sums.
- Parallel: output features (rows of W) in chunks (prange); each chunk writes its own
  columns of y. Chunk counts come from the thread policy's cap (kernels/threads.py), so
  results never depend on the load.
- Memory: y only.
- dtypes: float32 and float64; other layouts (W not C-contiguous) and row counts go to
  `numpy.matmul` (the reference), so every input gives the reference's result.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.linear import linear_backward as _reference_backward, linear_unchecked
from ..validate import check_float, check_same_dtype, check_shape
from . import threads
from ._runtime import JIT, parallel_chunks, same_float_arrays
from ._vecmath import cst
from .matmul import matmul

SMALL_ROWS = (1, 32)  # row counts (product of x's leading axes) this kernel takes
# Multiply-adds per unit of parallel_chunks' work (SERIAL_WORK units run serially): 16, so
# products below 4M multiply-adds stay on the calling thread: waking Numba's pool costs
# more than a smaller product takes (MEASUREMENTS.md).
MACS_PER_UNIT = 16


@njit(**JIT)
def _forward_features(n0, n1, x, W, y):
    """y[:, n0:n1] = x @ W[n0:n1].T for x (M, In), W (Out, In), y (M, Out)."""
    M, D = x.shape
    z = cst(x, 0.0)
    n = n0
    while n + 1 < n1:  # two features (rows of W) at a time
        m = 0
        while m + 3 < M:  # four rows of x at a time: 8 sums
            a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = z
            for d in range(D):
                w0, w1 = W[n, d], W[n + 1, d]
                x0, x1, x2, x3 = x[m, d], x[m + 1, d], x[m + 2, d], x[m + 3, d]
                a00 += x0 * w0
                a01 += x0 * w1
                a10 += x1 * w0
                a11 += x1 * w1
                a20 += x2 * w0
                a21 += x2 * w1
                a30 += x3 * w0
                a31 += x3 * w1
            y[m, n], y[m, n + 1] = a00, a01
            y[m + 1, n], y[m + 1, n + 1] = a10, a11
            y[m + 2, n], y[m + 2, n + 1] = a20, a21
            y[m + 3, n], y[m + 3, n + 1] = a30, a31
            m += 4
        while m < M:  # remaining rows of x, one at a time
            a0 = a1 = z
            for d in range(D):
                a0 += x[m, d] * W[n, d]
                a1 += x[m, d] * W[n + 1, d]
            y[m, n], y[m, n + 1] = a0, a1
            m += 1
        n += 2
    if n < n1:  # an odd last feature
        for m in range(M):
            a0 = z
            for d in range(D):
                a0 += x[m, d] * W[n, d]
            y[m, n] = a0


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, x, W, y):
    N = W.shape[0]
    for c in prange(nchunks):
        _forward_features((c * N) // nchunks, ((c + 1) * N) // nchunks, x, W, y)


def _product(x, W, few_rows: bool):
    """y = x W^T (..., In) -> (..., Out) for valid float arrays of one dtype: many rows on
    BLAS through matmul.py; 1 to 32 rows with `few_rows` on this file's kernel, without it
    on BLAS (the reference's own call)."""
    N, D = W.shape
    M = x.size // D if D else 0
    if M > SMALL_ROWS[1]:  # many rows: BLAS on the policy's threads
        y = matmul(x.reshape(M, D), W.T)  # (M, In) @ (In, Out) -> (M, Out)
        return y.reshape(x.shape[:-1] + (N,))  # -> (..., Out)
    if not (few_rows and SMALL_ROWS[0] <= M and D and W.flags.c_contiguous):
        return linear_unchecked(x, W)  # odd layouts, or a layer's few rows: BLAS
    # fewer than 4 rows cost what 4 do: each weight is loaded for at most 4 rows, and a
    # weight matrix of 4 MB or more is worth a second thread's memory bandwidth
    nchunks = parallel_chunks(max(M, 4) * N * D // MACS_PER_UNIT, N)
    if M == 1 and not (nchunks and not threads.in_serial()):
        # one row of a step that runs on one thread (threads.serial: fixed by its rows and
        # weight bytes, never by the load), or too small to split: BLAS's gemv is as fast
        return linear_unchecked(x, W)
    x2 = np.ascontiguousarray(x).reshape(M, D)  # (..., In) -> (M, In)
    y = np.empty((M, N), dtype=x.dtype)
    if nchunks:
        _forward_parallel(nchunks, x2, W, y)
    else:
        _forward_features(0, N, x2, W, y)
    return y.reshape(x.shape[:-1] + (N,))  # (M, Out) -> (..., Out)


def linear_forward(x, W):
    """Twin of nn.linear.linear_forward, the layers' projections: y = x W^T -> (y, cache).
    A few rows stay on BLAS here (the reference's rounding: a model's forward is held to
    the reference's); the few-row kernel serves decoding through `project`."""
    fn = "linear_forward"
    if not (same_float_arrays(x, W) and W.ndim == 2 and x.ndim >= 1
            and x.shape[-1] == W.shape[1]):
        check_float(x, "x", fn=fn)  # the reference's checks, in its order
        check_float(W, "W", ndim=2, fn=fn)
        if x.ndim < 1:
            raise ValueError(f"{fn}: argument 'x': expected at least 1 dimension, got "
                             f"shape {x.shape}")
        check_shape(x, "x", (None,) * (x.ndim - 1) + (W.shape[1],), fn=fn)
        check_same_dtype(fn, x=x, W=W)
    return _product(x, W, few_rows=False), {"x": x, "W": W}


def project(x, W):
    """Twin of nn.decode_step.project: y = x W^T for KV-cached decoding (a step's few rows
    on the kernel above, a prompt's many on BLAS), no checks and no cache: its caller, the
    decoding plan, validated the request once."""
    if not (same_float_arrays(x, W) and W.ndim == 2 and x.ndim >= 1
            and x.shape[-1] == W.shape[1]):
        return linear_unchecked(x, W)  # the reference (and NumPy's errors)
    return _product(x, W, few_rows=True)


def linear_backward(dy, cache):
    """Twin of nn.linear.linear_backward: (dx, dW) of y = x W^T, the products on the
    policy's threads (matmul.py)."""
    x, W = cache["x"], cache["W"]
    Out, In = W.shape
    if not (same_float_arrays(dy, x, W) and dy.shape == x.shape[:-1] + (Out,)):
        return _reference_backward(dy, cache)  # its checks (and errors), its dtypes
    dy2 = dy.reshape(-1, Out)  # (..., Out) -> (N, Out)
    x2 = x.reshape(-1, In)  # (..., In) -> (N, In)
    dx = matmul(dy2, W).reshape(x.shape)  # (N, Out) @ (Out, In) -> (N, In) -> (..., In)
    dW = matmul(dy2.T, x2)  # (Out, N) @ (N, In) -> (Out, In)
    return dx, dW
