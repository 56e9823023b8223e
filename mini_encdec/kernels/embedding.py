"""Numba twin of the embedding gradient (`mini_encdec.nn.embedding.embedding_backward`):
`dE[ids[b, t]] += dx[b, t] * scale`, a scatter-add over repeated ids.

Checklist
- Fused: the scale and the scatter-add in one pass (NumPy's `np.add.at` plus a scaled
  copy of dx).
- Parallel: over slices of the D columns (prange): every thread walks all tokens but
  writes only its own columns, so repeated ids never race and the sum order per element
  is the token order, the same for any thread count.
- Memory: dE (V, D) (zeroed) is the output; nothing else.
- dtypes: float32 and float64; ids as int64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..validate import check_float, check_shape
from ._runtime import JIT, parallel_chunks


@njit(**JIT)
def _scatter_columns(d0, d1, dx, ids, scale, dE):
    """Columns d0 <= d < d1 of dE, every token in order."""
    for n in range(dx.shape[0]):
        row = ids[n]
        # x = E[ids] * scale: row ids[n] of dE receives dx[n] * scale
        for d in range(d0, d1):
            dE[row, d] += dx[n, d] * scale


@njit(parallel=True, **JIT)
def _scatter_parallel(nchunks, dx, ids, scale, dE):
    D = dx.shape[1]
    for c in prange(nchunks):
        _scatter_columns((c * D) // nchunks, ((c + 1) * D) // nchunks, dx, ids, scale, dE)


def embedding_backward(dx, cache):
    """Twin of nn.embedding.embedding_backward: dE (V, D)."""
    fn = "embedding_backward"
    ids, V, factor = cache["ids"], cache["vocab_size"], cache["scale"]
    check_float(dx, "dx", ndim=3, fn=fn)
    check_shape(dx, "dx", ids.shape + (None,), fn=fn)
    D = dx.shape[-1]
    dtype = np.dtype(cache["dtype"])
    dx2 = np.ascontiguousarray(dx, dtype=dtype).reshape(-1, D)  # (B, T, D) -> (B*T, D)
    ids1 = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)  # (B, T) -> (B*T,)
    dE = np.zeros((V, D), dtype=dtype)
    nchunks = parallel_chunks(dx2.size, D // 16, per_thread=1)  # slices of >= 16 columns
    if nchunks:
        _scatter_parallel(nchunks, dx2, ids1, dtype.type(factor), dE)
    else:
        _scatter_columns(0, D, dx2, ids1, dtype.type(factor), dE)
    return dE
