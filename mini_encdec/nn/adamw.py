"""One AdamW update (Loshchilov & Hutter): Adam's moments with bias correction, and weight
decay applied to the parameter directly ("decoupled"), not added to the gradient.

    m     = beta1 m + (1 - beta1) g              v     = beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)                    v_hat = v / (1 - beta2^t)
    p     = p (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)

All arrays have the parameter's shape and dtype; the update is in place.
"""

from __future__ import annotations

import numpy as np

from ..validate import check_float, check_positive_int, check_same_dtype, check_shape


def adamw_update(p, g, m, v, *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, t: int) -> None:
    """One AdamW update of one parameter p IN PLACE, with its gradient g and moments m, v
    (all the same shape and dtype) at its t-th update (t >= 1); weight_decay 0 for a
    parameter without decay. The NumPy reference of the ops entry "adamw_update" (the
    numba backend runs a fused one-pass twin, mini_encdec/kernels/adamw.py); the
    optimizer (training/optim.py AdamW) calls it once per parameter per step."""
    fn = "adamw_update"
    check_float(p, "p", fn=fn)
    for name, a in (("g", g), ("m", m), ("v", v)):
        check_float(a, name, fn=fn)
        check_shape(a, name, p.shape, fn=fn)
    check_same_dtype(fn, p=p, g=g, m=m, v=v)
    check_positive_int(t, "t", fn=fn)
    f = p.dtype.type
    # m = beta1 * m + (1 - beta1) * g
    m *= f(beta1)
    m += f(1 - beta1) * g
    # v = beta2 * v + (1 - beta2) * g^2
    v *= f(beta2)
    v += f(1 - beta2) * np.square(g)
    m_hat = m / f(1 - beta1 ** t)
    v_hat = v / f(1 - beta2 ** t)
    # p = p * (1 - lr * weight_decay)
    if weight_decay:
        p *= f(1 - lr * weight_decay)
    # p = p - lr * m_hat / (sqrt(v_hat) + eps)
    p -= f(lr) * m_hat / (np.sqrt(v_hat) + f(eps))
