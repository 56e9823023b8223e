"""Numba twin of one AdamW parameter update (`mini_encdec.nn.adamw.adamw_update`).

Checklist
- Fused: the reference makes about ten NumPy passes over the parameter (m *= b1,
  m += (1 - b1) g, g^2, v *= b2, v += ..., m_hat, v_hat, sqrt, the decay, the update),
  each reading and writing whole arrays and allocating temporaries. Here one pass reads
  p, g, m, v once and writes p, m, v once, element by element, with no temporaries.
- Same formula and the same operation order as the reference (the bias corrections
  divide, as there); FASTMATH `contract` may fuse a multiply-add, so results agree with
  the reference to float rounding, not bit for bit (tests/test_optim.py).
- Parallel: over contiguous chunks of the flattened parameter (prange, 2 per thread);
  small parameters run on the calling thread (see _runtime). Each element is computed
  by exactly one thread with the same arithmetic, so results do not depend on the
  thread count, and a run resumed from a checkpoint reproduces an uninterrupted one.
- Vectorised (8 float32 lanes with AVX2, vsqrtps/vdivps) thanks to the unsigned index
  (a signed one keeps a wraparound check that blocks vectorisation: 7x slower).
- Memory: none beyond the arrays (flat views of C-contiguous arrays). Arguments that
  are not all C-contiguous arrays of the parameter's dtype go to the reference.
- dtypes: float32 and float64, one compiled specialisation each; the scalars are cast
  to the parameter's dtype as the reference does.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.adamw import adamw_update as reference_adamw_update
from ._runtime import JIT, parallel_chunks
from ._vecmath import cst


@njit(**JIT)
def _update_range(i0, i1, p, g, m, v, lr, beta1, beta2, eps, shrink, bc1, bc2):
    """Elements i0 <= i < i1 of the flat arrays; shrink = 1 - lr * weight_decay (or 1),
    bc1 = 1 - beta1^t, bc2 = 1 - beta2^t."""
    one = cst(beta1, 1.0)
    for ii in range(i0, i1):
        i = np.uint64(ii)  # unsigned: no negative-index check, so the loop vectorises
        gi = g[i]
        mi = m[i] * beta1 + (one - beta1) * gi  # m = beta1 * m + (1 - beta1) * g
        vi = v[i] * beta2 + (one - beta2) * (gi * gi)  # v = beta2 * v + (1 - beta2) * g^2
        m[i] = mi
        v[i] = vi
        m_hat = mi / bc1
        v_hat = vi / bc2
        # p = p * (1 - lr * weight_decay);  p = p - lr * m_hat / (sqrt(v_hat) + eps)
        p[i] = p[i] * shrink - lr * m_hat / (np.sqrt(v_hat) + eps)


@njit(parallel=True, **JIT)
def _update_parallel(nchunks, p, g, m, v, lr, beta1, beta2, eps, shrink, bc1, bc2):
    n = p.shape[0]
    for c in prange(nchunks):  # contiguous chunks of the elements, one thread each
        _update_range((c * n) // nchunks, ((c + 1) * n) // nchunks, p, g, m, v, lr, beta1,
                      beta2, eps, shrink, bc1, bc2)


def adamw_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, t):
    """Twin of nn.adamw.adamw_update: one AdamW update of p, m, v in place (step t >= 1)."""
    arrays = (p, g, m, v)
    if not (all(isinstance(a, np.ndarray) and a.dtype == p.dtype and a.shape == p.shape
                and a.flags.c_contiguous for a in arrays)
            and p.dtype in (np.float32, np.float64) and p.flags.writeable):
        return reference_adamw_update(p, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                      weight_decay=weight_decay, t=t)
    f = p.dtype.type
    shrink = f(1 - lr * weight_decay) if weight_decay else f(1)
    args = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), f(lr), f(beta1),
            f(beta2), f(eps), shrink, f(1 - beta1 ** t), f(1 - beta2 ** t))
    # work: ~16 flops per element (the division and square root dominate)
    nchunks = parallel_chunks(16 * p.size, p.size)
    if nchunks:
        _update_parallel(nchunks, *args)
    else:
        _update_range(0, p.size, *args)
