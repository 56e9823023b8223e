"""Gemma's tanh soft-cap: `y = cap * tanh(x / cap)`; cap None is the identity.

In exact arithmetic |y| < cap for every finite x. In floating point tanh rounds to
exactly +-1 once |x| is large (about 9*cap in float32, 19*cap in float64), and then
|y| == cap; the gradient there is 0, as it is in exact arithmetic to working precision.
"""

from __future__ import annotations

import numpy as np

from ..validate import check_float, check_positive, check_shape


def tanh_ratio(x: np.ndarray, c) -> np.ndarray:
    """t = tanh(x / c), c the cap as a scalar of x's dtype."""
    with np.errstate(over="ignore"):  # |x| / cap beyond the float range: tanh(+-inf) = +-1
        return np.tanh(x / c)


def softcap_unchecked(x: np.ndarray, cap) -> np.ndarray:
    """y = cap * tanh(x / cap) (cap None: a copy of x) without checks or cache: the
    inference fast path for callers that validated x and cap once."""
    if cap is None:
        return x.copy()
    c = x.dtype.type(cap)
    return c * tanh_ratio(x, c)


def softcap_forward(x: np.ndarray, cap):
    """Returns (y, cache); cache keeps t = tanh(x / cap)."""
    fn = "softcap_forward"
    check_float(x, "x", fn=fn)
    cap = check_positive(cap, "cap", fn=fn, allow_none=True)
    if cap is None:
        return x.copy(), {"t": None, "cap": None, "shape": x.shape}
    c = x.dtype.type(cap)
    t = tanh_ratio(x, c)
    return c * t, {"t": t, "cap": cap, "shape": x.shape}


def softcap_backward(dy: np.ndarray, cache: dict):
    """dx = dy * (1 - tanh(x / cap)^2)."""
    check_float(dy, "dy", fn="softcap_backward")
    check_shape(dy, "dy", cache["shape"], fn="softcap_backward")
    t = cache["t"]
    if t is None:  # y = x
        return dy.copy()
    return softcap_backward_unchecked(dy, t)


def softcap_backward_unchecked(dy: np.ndarray, t: np.ndarray) -> np.ndarray:
    """dx = dy * (1 - t^2) given t = tanh(x / cap), without checks: y = cap * tanh(x / cap)
    ->  dy/dx = 1 - tanh^2. The attention core and the fused loss call it on their own t."""
    return dy * (1 - t * t)
