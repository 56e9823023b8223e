"""Finite-difference gradient checking, for the tests of every layer and model.

    g = numerical_grad(f, x)        fourth-order central differences, see below
    err = rel_error(analytic, g)    max |a - b| / max(max |a|, max |b|, floor)

`f` takes no arguments and reads `x`, which `numerical_grad` perturbs in place (and always
restores). Use float64 arrays; analytic gradients should then agree to better than 1e-6.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def numerical_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """d f / d x by fourth-order central differences; f() is re-evaluated with x perturbed
    in place (and restored):

        g_i = (8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))) / (12 h)

    The truncation error is O(h^4) and the rounding error about 1e-16 |f| / h, so with
    h = 1e-4 in float64 both stay near 1e-12 relative: far below the 1e-6 the tests allow.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError(f"numerical_grad: argument 'x': expected a float64 array, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if not x.flags.c_contiguous:
        raise ValueError("numerical_grad: argument 'x': expected a C-contiguous array, got "
                         "a strided view")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)  # views of x and grad, (N,)

    def at(i, value):
        flat[i] = value
        return float(f())

    for i in range(flat.size):
        old = flat[i]
        try:
            d1 = at(i, old + h) - at(i, old - h)
            d2 = at(i, old + 2 * h) - at(i, old - 2 * h)
        finally:
            flat[i] = old
        gflat[i] = (8 * d1 - d2) / (12 * h)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-5) -> float:
    """Max absolute difference relative to the larger of the two arrays' max magnitudes
    (at least `floor`, so two all-zero gradients compare as equal: a degenerate case such
    as a one-class softmax has a true gradient of 0, and central differences of a function
    that is constant up to rounding return noise of about 1e-16 / h ~ 1e-12)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: arguments 'a' and 'b': expected equal shapes, "
                         f"got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), floor)
    return float(np.max(np.abs(a - b)) / scale)


def random_cotangent(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed random R shaped like `out`: sum(out * R) is then a scalar loss whose
    gradient with respect to out is R (the `dout` to feed a backward)."""
    return rng.standard_normal(out.shape).astype(out.dtype)
