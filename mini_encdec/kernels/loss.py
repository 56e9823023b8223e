"""Numba twin of the fused soft-capped cross-entropy
(`mini_encdec.nn.loss.softcap_cross_entropy_*`): the mean over counted positions of
`logsumexp(s) - s[label]` with `s = cap * tanh(z / cap)`.

Checklist
- Fused, forward: per row, the soft-cap, exp and the sum in one pass: the capped
  logits are bounded by cap, so cap replaces the row max as the shift (for caps up to
  40, where exp(-2 cap) is still a normal float32; else a max pass first). Nothing of
  size (N, V) is written: the cache keeps a reference to z, the labels and the per-row
  log-sum-exp L (N,).
- Fused, backward: one pass per row recomputes tanh and p = exp(s - L) and writes
  dz = dloss / n * (p - onehot(label)) * (1 - t^2) once. So the (N, V)
  probabilities are written exactly once in the whole forward + backward (NumPy writes
  s, p and dz, and reads them back).
- Ignored rows (label == ignore_index) are skipped: no soft-cap, no exp; zero gradient.
- Parallel: rows (prange over chunks of rows).
- Memory: L and the per-row losses (N,); one (V,) scratch row per chunk (used only
  without a cap, or with a cap above 40).
- dtypes: float32 (vectorised exp/tanh, see _vecmath) and float64 (libm).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..nn.loss import check_dloss, check_logits_labels
from ..validate import check_positive
from ._runtime import JIT, parallel_chunks
from ._vecmath import cst, row_max, vexp, vtanh


# Soft-capped logits lie in [-cap, cap]: with cap <= FIXED_SHIFT_CAP, exp(s - cap) >=
# exp(-80) stays a normal float32, so cap can replace the row max (one pass, no max).
FIXED_SHIFT_CAP = 40.0


@njit(**JIT)
def _forward_rows(n0, n1, z, labels, ignore_index, cap, lse, nll):
    V = z.shape[1]
    zero = cst(cap, 0.0)
    inv_cap = cst(cap, 1.0) / cap if cap > zero else zero
    fixed_shift = zero < cap <= cst(cap, FIXED_SHIFT_CAP)
    s = np.empty(V, z.dtype)  # scratch row, once per call
    for n in range(n0, n1):
        label = labels[n]
        if label == ignore_index:
            lse[n] = zero
            nll[n] = zero
            continue
        total = zero
        if fixed_shift:
            # 1. s = cap * tanh(z / cap);  2. sum(exp(s - m)) with m = cap
            m = cap
            for v in range(V):
                total += vexp(cap * vtanh(z[n, v] * inv_cap) - m)
            s_label = cap * vtanh(z[n, label] * inv_cap)
        else:
            # 1. s = cap * tanh(z / cap) (or z), then the row max m
            for v in range(V):
                s[v] = cap * vtanh(z[n, v] * inv_cap) if cap > zero else z[n, v]
            m = row_max(s, V)
            # 2. sum(exp(s - m))
            for v in range(V):
                total += vexp(s[v] - m)
            s_label = s[label]
        # 2. L = logsumexp(s) = m + log(sum(exp(s - m))),  nll = L - s[label]
        L = m + math.log(total)
        lse[n] = L
        nll[n] = L - s_label


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, z, labels, ignore_index, cap, lse, nll):
    N = z.shape[0]
    for c in prange(nchunks):
        _forward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, z, labels, ignore_index,
                      cap, lse, nll)


@njit(**JIT)
def _backward_rows(n0, n1, z, labels, ignore_index, cap, lse, g, dz):
    V = z.shape[1]
    zero, one = cst(cap, 0.0), cst(cap, 1.0)
    inv_cap = one / cap if cap > zero else zero
    for n in range(n0, n1):
        label = labels[n]
        if label == ignore_index:
            for v in range(V):
                dz[n, v] = zero
            continue
        L = lse[n]
        # 2. nll = logsumexp(s) - s[label]:  ds = g * (softmax(s) - onehot(label))
        # 1. s = cap * tanh(z / cap):  dz = ds * (1 - t^2)
        if cap > zero:
            for v in range(V):
                t = vtanh(z[n, v] * inv_cap)  # recompute 1.
                dz[n, v] = g * vexp(cap * t - L) * (one - t * t)
            t = vtanh(z[n, label] * inv_cap)
            dz[n, label] -= g * (one - t * t)
        else:
            for v in range(V):
                dz[n, v] = g * vexp(z[n, v] - L)
            dz[n, label] -= g


@njit(parallel=True, **JIT)
def _backward_parallel(nchunks, z, labels, ignore_index, cap, lse, g, dz):
    N = z.shape[0]
    for c in prange(nchunks):
        _backward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, z, labels, ignore_index,
                       cap, lse, g, dz)


def softcap_cross_entropy_forward(z, labels, cap, ignore_index=-100):
    """Twin of nn.loss.softcap_cross_entropy_forward: z (..., V), labels (...) ->
    (loss: float, cache)."""
    fn = "softcap_cross_entropy_forward"
    V = check_logits_labels(z, labels, ignore_index, fn, logits_name="z")
    cap = check_positive(cap, "cap", fn=fn, allow_none=True)
    z2 = np.ascontiguousarray(z).reshape(-1, V)  # (..., V) -> (N, V)
    labels1 = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)  # (...) -> (N,)
    dt = z.dtype.type
    capv = dt(cap) if cap is not None else dt(0)
    N = z2.shape[0]
    lse = np.empty(N, dtype=z.dtype)
    nll = np.empty(N, dtype=z.dtype)
    args = (z2, labels1, np.int64(ignore_index), capv, lse, nll)
    nchunks = parallel_chunks(8 * z2.size, N, per_thread=4)  # ignored rows cost nothing
    if nchunks:
        _forward_parallel(nchunks, *args)
    else:
        _forward_rows(0, N, *args)
    n = int(np.count_nonzero(labels1 != ignore_index))
    loss = float(nll.sum(dtype=np.float64) / n) if n else 0.0
    cache = {"z": z2, "labels": labels1, "ignore_index": np.int64(ignore_index),
             "cap": capv, "lse": lse, "n": n, "shape": z.shape}
    return loss, cache


def softcap_cross_entropy_backward(dloss, cache):
    """Twin of nn.loss.softcap_cross_entropy_backward: returns dz (..., V)."""
    dloss = check_dloss(dloss, "softcap_cross_entropy_backward")
    z2, n = cache["z"], cache["n"]
    if not n:
        return np.zeros(cache["shape"], dtype=z2.dtype)
    g = z2.dtype.type(dloss / n)
    dz = np.empty_like(z2)
    args = (z2, cache["labels"], cache["ignore_index"], cache["cap"], cache["lse"], g, dz)
    nchunks = parallel_chunks(10 * z2.size, z2.shape[0], per_thread=4)
    if nchunks:
        _backward_parallel(nchunks, *args)
    else:
        _backward_rows(0, z2.shape[0], *args)
    return dz.reshape(cache["shape"])  # (N, V) -> (..., V)
