"""Finite-difference gradient checking, for the tests of every layer and model.

    g = numerical_grad(f, x)             fourth-order central differences, see below
    err = rel_error(analytic, g, floor)  max |a - b| / max(max |a|, max |b|, floor)

`f` takes no arguments and reads `x`, which `numerical_grad` perturbs in place (and always
restores). Use float64 arrays; analytic gradients should then agree to better than
GRAD_TOL = 1e-6, with `floor` the scale of the terms the gradient is made of (see
`rel_error`: a gradient that cancels to zero is judged against its terms, not against 0).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Analytic float64 gradients agree with numerical_grad to better than this (see rel_error).
GRAD_TOL = 1e-6


def numerical_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """d f / d x by fourth-order central differences; f() is re-evaluated with x perturbed
    in place (and restored):

        g_i = (8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))) / (12 h)

    The truncation error is O(h^4) and the rounding error about 1.5 eps F / h, where eps =
    2.2e-16 and F is the size of the terms f is computed from (not |f|, which may cancel to
    0). With h = 1e-4 in float64 both stay near 1e-12 relative to the gradient's terms: far
    below the GRAD_TOL = 1e-6 the tests allow (`rel_error` says relative to what).
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
    """Largest absolute difference over the scale of the quantities compared:

        max |a - b| / max(max |a|, max |b|, floor)

    `floor` is the magnitude below which a gradient counts as zero: the size of the
    terms the gradient is a difference of. It matters when those terms cancel. Take the
    cross-entropy of a single class (V = 1): dz = dloss / n * (p - onehot) = dloss / n *
    (1 - 1) is exactly 0. Its central-difference estimate is rounding noise instead: f
    itself is computed from terms of size F (the soft-capped logits, up to the cap)
    with an absolute rounding error of about eps * F, and `numerical_grad` turns that into
    noise of up to about 1.5 eps F / h: 1e-10 with F = 30, h = 1e-4, eps = 2.2e-16.
    Measured against an arbitrary absolute floor that noise is a "relative error" of
    any size: 1.1e-11 against 1e-5 was 1.1e-6, and the check failed or passed by draw
    (the Numba soft-capped CE shifts by the cap, so F = 30 even when the
    logits are small). Measured against the terms it cancels, dloss / n, it is at most
    1.5 eps F / (h dloss / n), about 1.4e-10 with dloss = 0.7, n = 1. So callers pass
    the terms' size as `floor` whenever the gradient can cancel (losses: dloss / n; see
    tests/test_nn_gradcheck.py), just as the kernel tests judge cancelling attention
    gradients against |do| |v| |k|.
    This is not a wider tolerance: where the terms do not cancel, max |a| is already of
    their size and the floor has no effect; where they do, the error is measured as
    floating point makes it, relative to the terms (p - 1 carries an error of eps, not of
    eps |p - 1|).

    The default floor, 1e-5, suits gradients and f of order one: the noise of the
    differences, about 1.5 eps / h = 3.3e-12, is then below GRAD_TOL * 1e-5 = 1e-11.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: arguments 'a' and 'b': expected equal shapes, "
                         f"got {a.shape} and {b.shape}")
    floor = float(floor)
    if not floor > 0:
        raise ValueError(f"rel_error: argument 'floor': expected a number > 0, got {floor}")
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), floor)
    return float(np.max(np.abs(a - b)) / scale)


def random_cotangent(out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed random R shaped like `out`: sum(out * R) is then a scalar loss whose
    gradient with respect to out is R (the `dout` to feed a backward)."""
    return rng.standard_normal(out.shape).astype(out.dtype)
