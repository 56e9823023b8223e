"""Token embedding, scaled by sqrt(D) as in Gemma: `x = E[ids] * sqrt(D)`.

Shapes: ids (B, T) integer in [0, V), E (V, D) -> x (B, T, D).
The factor sqrt(D) is rounded to E's dtype first (as Gemma does in the activation dtype).
The backward scatter-adds: a token id used n times receives the sum of its n gradients.

Cache (a dict, also read by the Numba twin of `embedding_backward`):
    ids (B, T) int, vocab_size V, scale (the factor as a scalar of E's dtype, 1 if unscaled),
    dtype (E's dtype).
"""

from __future__ import annotations

import math

import numpy as np

from ..validate import check_float, check_ids, check_shape


def embedding_scale(D: int, dtype) -> np.floating:
    """sqrt(D) rounded to `dtype`."""
    return np.dtype(dtype).type(math.sqrt(D))


def embed_unchecked(ids: np.ndarray, E: np.ndarray, factor) -> np.ndarray:
    """x = E[ids] * factor without checks or cache: the inference fast path for callers
    that validated ids once (embedding_forward computes through it)."""
    return E[ids] * factor  # E[(B, T)] -> (B, T, D)


def embedding_forward(ids: np.ndarray, E: np.ndarray, scale: bool = True):
    """x = E[ids] * sqrt(D) (or E[ids] when scale is False). Returns (x, cache)."""
    fn = "embedding_forward"
    check_float(E, "E", ndim=2, fn=fn)
    V, D = E.shape
    check_ids(ids, "ids", V, ndim=2, fn=fn)
    if not isinstance(scale, (bool, np.bool_)):
        raise ValueError(f"{fn}: argument 'scale': expected True or False, got {scale!r}")
    factor = embedding_scale(D, E.dtype) if scale else E.dtype.type(1)
    x = embed_unchecked(ids, E, factor)  # E[(B, T)] -> (B, T, D)
    return x, {"ids": ids, "vocab_size": V, "scale": factor, "dtype": E.dtype}


def embedding_backward(dx: np.ndarray, cache: dict):
    """dE (V, D): every row of dx * scale added to the row of E its id selected."""
    fn = "embedding_backward"
    ids, V, factor = cache["ids"], cache["vocab_size"], cache["scale"]
    check_float(dx, "dx", ndim=3, fn=fn)
    check_shape(dx, "dx", ids.shape + (None,), fn=fn)
    D = dx.shape[-1]
    dE = np.zeros((V, D), dtype=cache["dtype"])
    # x = E[ids] * factor: each (b, t) adds dx[b, t] * factor into row ids[b, t].
    np.add.at(dE, ids.reshape(-1), dx.reshape(-1, D) * factor)  # (B*T,) ids, (B*T, D) rows
    return dE
