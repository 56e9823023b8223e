"""RMSNorm with Gemma's offset weight: `y = x / sqrt(mean(x^2) + eps) * (1 + w)`.

Shapes: x (..., D), w (D,) -> y (..., D). The stored weight is an *offset*: a fresh norm
has w = 0 (the identity scale), not w = 1. Computed in the input dtype (float32 or
float64), matching Gemma's float32 computation for float32 activations.
"""

from __future__ import annotations

import numpy as np

from ..validate import check_float, check_positive, check_same_dtype, check_shape


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float = 1e-6):
    """Returns (y, cache); cache keeps xhat = x * rstd, rstd and w."""
    fn = "rmsnorm_forward"
    check_float(x, "x", fn=fn)
    if x.ndim < 1:
        raise ValueError(f"{fn}: argument 'x': expected at least 1 dimension, got shape {x.shape}")
    check_float(w, "w", fn=fn)
    check_shape(w, "w", (x.shape[-1],), fn=fn)  # one weight per feature of x
    check_same_dtype(fn, x=x, w=w)
    eps = check_positive(eps, "eps", fn=fn)
    # 1. rstd = 1 / sqrt(mean(x^2) + eps)            (..., 1)
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))
    # 2. xhat = x * rstd                              (..., D)
    xhat = x * rstd
    # 3. y = xhat * (1 + w)                           (..., D) * (D,)
    y = xhat * (1 + w)
    return y, {"xhat": xhat, "rstd": rstd, "w": w}


def rmsnorm_backward(dy: np.ndarray, cache: dict):
    """Returns (dx, dw), dx shaped like x and dw like w (D,).

    Hint: dw sums over every leading axis of x (each row used the same w); dx has a second
    term besides rstd * dy * (1 + w), because rstd depends on x too."""
    xhat, rstd, w = cache["xhat"], cache["rstd"], cache["w"]
    check_float(dy, "dy", fn="rmsnorm_backward")
    check_shape(dy, "dy", xhat.shape, fn="rmsnorm_backward")
    D = xhat.shape[-1]
    # 3. y = xhat * (1 + w)
    dw = np.sum((dy * xhat).reshape(-1, D), axis=0)  # (N, D) -> (D,)
    dxhat = dy * (1 + w)
    # 2./1. xhat = x * rstd with rstd = (mean(x^2) + eps)^-1/2, so
    #   dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))
    return dx.astype(xhat.dtype, copy=False), dw.astype(w.dtype, copy=False)
