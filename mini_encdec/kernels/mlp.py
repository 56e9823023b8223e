"""Numba twin of the GeGLU activation (`mini_encdec.nn.mlp.geglu_act_*`):
`a = gelu_tanh(gate) * up`, gelu_tanh(u) = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))).

Checklist
- Fused, forward: the cubic, tanh, gelu and the product with `up` in one elementwise
  pass (NumPy makes about ten passes and keeps g and t).
- Fused, backward: t = tanh(...) is recomputed (cheaper than storing and re-reading two
  (N, F) arrays); dgate and dup are written in the same pass.
- Parallel: rows (prange over chunks of rows); every element is independent.
- Memory: the cache keeps references to gate and up only; no scratch.
- dtypes: float32 (vectorised tanh, see _vecmath) and float64 (libm tanh).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.mlp import GELU_A, GELU_C
from ..validate import check_float, check_same_dtype, check_shape
from ._runtime import JIT, parallel_chunks, same_float_arrays
from ._vecmath import cst, vtanh


@njit(inline="always")
def _tanh_arg(u):
    """t = tanh(sqrt(2/pi) (u + 0.044715 u^3))."""
    return vtanh(cst(u, GELU_C) * (u + cst(u, GELU_A) * u * u * u))


@njit(**JIT)
def _forward_rows(n0, n1, gate, up, out):
    F = gate.shape[1]
    half, one = cst(gate, 0.5), cst(gate, 1.0)
    for n in range(n0, n1):
        for f in range(F):
            u = gate[n, f]
            # g = 0.5 u (1 + t);  a = g * up
            out[n, f] = half * u * (one + _tanh_arg(u)) * up[n, f]


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, gate, up, out):
    N = gate.shape[0]
    for c in prange(nchunks):
        _forward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, gate, up, out)


@njit(**JIT)
def _backward_rows(n0, n1, da, gate, up, dgate, dup):
    F = gate.shape[1]
    half, one = cst(gate, 0.5), cst(gate, 1.0)
    c_, a3 = cst(gate, GELU_C), cst(gate, 3.0 * GELU_A)
    for n in range(n0, n1):
        for f in range(F):
            u = gate[n, f]
            t = _tanh_arg(u)  # recompute t
            # a = g * up:  dup = da * g,  dg = da * up
            dup[n, f] = da[n, f] * half * u * (one + t)
            # g = 0.5 u (1 + tanh(c (u + a u^3))):
            #   dg/du = 0.5 (1 + t) + 0.5 u (1 - t^2) c (1 + 3 a u^2)
            dgdu = half * (one + t) + half * u * (one - t * t) * c_ * (one + a3 * u * u)
            dgate[n, f] = da[n, f] * up[n, f] * dgdu


@njit(parallel=True, **JIT)
def _backward_parallel(nchunks, da, gate, up, dgate, dup):
    N = gate.shape[0]
    for c in prange(nchunks):
        _backward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, da, gate, up, dgate, dup)


def geglu_act_forward(gate, up):
    """Twin of nn.mlp.geglu_act_forward: a = gelu_tanh(gate) * up -> (a, cache)."""
    fn = "geglu_act_forward"
    if not (same_float_arrays(gate, up) and up.shape == gate.shape):
        check_float(gate, "gate", fn=fn)  # the reference's checks, in its order
        check_float(up, "up", fn=fn)
        check_shape(up, "up", gate.shape, fn=fn)
        check_same_dtype(fn, gate=gate, up=up)
    F = gate.shape[-1] if gate.ndim else 1
    g2 = np.ascontiguousarray(gate).reshape(-1, F)  # (..., F) -> (N, F)
    u2 = np.ascontiguousarray(up).reshape(-1, F)
    a2 = np.empty_like(g2)
    nchunks = parallel_chunks(8 * g2.size, g2.shape[0])
    if nchunks:
        _forward_parallel(nchunks, g2, u2, a2)
    else:
        _forward_rows(0, g2.shape[0], g2, u2, a2)
    return a2.reshape(gate.shape), {"gate": g2, "up": u2, "shape": gate.shape}


def geglu_act_backward(da, cache):
    """Twin of nn.mlp.geglu_act_backward: returns (dgate, dup)."""
    g2, u2, shape = cache["gate"], cache["up"], cache["shape"]
    check_float(da, "da", fn="geglu_act_backward")
    check_shape(da, "da", shape, fn="geglu_act_backward")
    da2 = np.ascontiguousarray(da, dtype=g2.dtype).reshape(g2.shape)  # (..., F) -> (N, F)
    dgate, dup = np.empty_like(g2), np.empty_like(g2)
    nchunks = parallel_chunks(10 * g2.size, g2.shape[0])
    if nchunks:
        _backward_parallel(nchunks, da2, g2, u2, dgate, dup)
    else:
        _backward_rows(0, g2.shape[0], da2, g2, u2, dgate, dup)
    return dgate.reshape(shape), dup.reshape(shape)
