"""The tied output head shared by both models: logits, soft-cap, loss (SPEC section 1).

    z      = h E^T                    h (B, T, D), E (V, D) the (decoder) embedding table
    logits = cap * tanh(z / cap)      cap = final_logit_softcapping (30), None = identity
    loss   = mean cross-entropy of logits over labels != -100

The loss uses the fused `ops.softcap_cross_entropy_*` (the soft-capped logits are never
stored separately). The output matrix is the embedding table itself, so its gradient
`dz^T h` is added to the embedding's own gradient by the models.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..nn.linear import linear_backward, linear_forward
from ..nn.softcap import softcap_backward, softcap_forward
from .inputs import IGNORE_INDEX


def raw_logits(h: np.ndarray, E: np.ndarray):
    """z = h E^T: (B, T, D) @ (D, V) -> (B, T, V). Returns (z, cache)."""
    return linear_forward(h, E)


def capped_logits(z: np.ndarray, cap):
    """logits = cap * tanh(z / cap). Returns (logits, cache)."""
    return softcap_forward(z, cap)


def capped_logits_backward(dlogits: np.ndarray, cache: dict) -> np.ndarray:
    # logits = cap * tanh(z / cap)
    return softcap_backward(dlogits, cache)


def loss_forward(z: np.ndarray, labels: np.ndarray, cap):
    """Mean cross-entropy of softcap(z) against labels (-100 ignored). Returns (loss, cache)."""
    return ops.softcap_cross_entropy_forward(z, labels, cap, IGNORE_INDEX)


def loss_backward(cache) -> np.ndarray:
    """dz (B, T, V) for d loss = 1."""
    return ops.softcap_cross_entropy_backward(1.0, cache)


def raw_logits_backward(dz: np.ndarray, cache: dict):
    """Returns (dh (B, T, D), dE (V, D)) of z = h E^T."""
    return linear_backward(dz, cache)
