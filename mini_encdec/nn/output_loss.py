"""The output layer and its loss in one function, forward and backward together, a block of
rows at a time, so the (N, V) logits are never stored whole.

For the final hidden states h (N, D) and the tied output table E (V, D) (the embedding):

    1. z    = h E^T                                  (N, V) the raw logits
    2. s    = cap * tanh(z / cap)                    (N, V) Gemma's final soft-cap
    3. ce   = mean over counted rows of -log softmax(s)[label]
       soft = mean over counted rows of -sum_v tp[v] log softmax(s / tau)[v]   (optional)
       loss = ce, or with teacher probabilities tp: alpha * soft + (1 - alpha) * ce

A row is counted when its label is not ignore_index; both losses average over the same
n counted rows (distillation: `training/distill.py`). The gradients of `loss` with
respect to h and E come back with it: the logits are a means, not a result, in training.

Why blocks: with a vocabulary of V = 8192 and N = 2048 rows, z and every array derived
from it (s, the probabilities, dz) are 64 MiB each in float32, and the output layer is
most of a small model's training step. Every row's loss and gradient depend only on its
own logits, and the mean over rows is a sum with weight 1/n, so the rows can go a block
at a time: a block's z, s, dz are made, used and dropped before the next block's, and
only h's gradient rows and E's gradient (summed over the blocks) are kept.

    loss = sum over blocks b of (n_b / n) * (mean loss of block b's n_b counted rows)

so a block's cross-entropy and distillation are the plain `loss.py` functions on its
rows, their backward called with dloss = n_b / n. This reference is exactly that
composition of the existing layers (linear.py, softcap.py, loss.py); the Numba twin
(kernels/output_loss.py) fuses steps 2 and 3 and their backward into passes over each
block row while it is still in the cache.

Shapes: h (..., D), labels (...), teacher_probs (..., V) or None; E (V, D). Returns
(loss, dh (..., D), dE (V, D), parts) with parts = {"ce": float, "soft": float} (soft 0.0
without a teacher).
"""

from __future__ import annotations

import numpy as np

from ..validate import check_float, check_ids, check_positive, check_same_dtype, check_shape
from .linear import linear_backward, linear_forward
from .loss import (check_teacher_probs, cross_entropy_backward, cross_entropy_forward,
                   distillation_backward, distillation_forward)
from .softcap import softcap_backward, softcap_forward

BLOCK_ROWS = 256  # rows of h per block: one block's logits are BLOCK_ROWS * V floats


def check_output_loss_args(h, E, labels, cap, ignore_index, teacher_probs, alpha,
                           temperature, fn):
    """The checks of output_loss_and_grads (the twin runs the same). Returns
    (cap, alpha, temperature) as floats (cap None: no soft-cap)."""
    check_float(E, "E", ndim=2, fn=fn)
    check_float(h, "h", fn=fn)
    if h.ndim < 1:
        raise ValueError(f"{fn}: argument 'h': expected at least 1 dimension, got shape "
                         f"{h.shape}")
    check_shape(h, "h", (None,) * (h.ndim - 1) + (E.shape[1],), fn=fn)
    check_same_dtype(fn, h=h, E=E)
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ValueError(f"{fn}: argument 'ignore_index': expected an integer, "
                         f"got {ignore_index!r}")
    check_ids(labels, "labels", E.shape[0], fn=fn, allow=(int(ignore_index),))
    check_shape(labels, "labels", h.shape[:-1], fn=fn)
    cap = check_positive(cap, "cap", fn=fn, allow_none=True)
    temperature = check_positive(temperature, "temperature", fn=fn)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: argument 'alpha': expected a number in [0, 1], got {alpha!r}")
    if teacher_probs is None:
        if alpha != 0:
            raise ValueError(f"{fn}: argument 'alpha': {alpha!r} weighs a distillation loss, "
                             f"but no teacher_probs were given")
    else:
        check_float(teacher_probs, "teacher_probs", fn=fn)
        check_shape(teacher_probs, "teacher_probs", h.shape[:-1] + (E.shape[0],), fn=fn)
        check_teacher_probs(teacher_probs, labels != ignore_index, fn)
    return cap, float(alpha), temperature


def output_loss_and_grads(h, E, labels, cap, ignore_index=-100, teacher_probs=None,
                          alpha=0.0, temperature=1.0):
    """loss of the logits cap * tanh(h E^T / cap) (module docstring), and its gradients.
    Returns (loss, dh (..., D), dE (V, D), {"ce": float, "soft": float})."""
    fn = "output_loss_and_grads"
    cap, alpha, temperature = check_output_loss_args(h, E, labels, cap, ignore_index,
                                                     teacher_probs, alpha, temperature, fn)
    V, D = E.shape
    h2 = h.reshape(-1, D)  # (..., D) -> (N, D)
    labels1 = labels.reshape(-1)  # (...) -> (N,)
    tp2 = None if teacher_probs is None else teacher_probs.reshape(-1, V)  # (N, V)
    counted = labels1 != ignore_index  # (N,)
    n = int(counted.sum())
    dh2 = np.zeros_like(h2)
    dE = np.zeros_like(E)
    ce = soft = 0.0
    for r0 in range(0, h2.shape[0], BLOCK_ROWS):
        rows = slice(r0, r0 + BLOCK_ROWS)
        n_b = int(counted[rows].sum())
        if n_b == 0:
            continue  # no counted row: no loss, zero gradient (dh2 rows stay 0)
        w = n_b / n  # this block's weight in the mean over all n counted rows
        # 1. z = h E^T, this block's rows
        z, c_z = linear_forward(h2[rows], E)  # (R, D) @ (D, V) -> (R, V)
        # 2. s = cap * tanh(z / cap)
        s, c_s = softcap_forward(z, cap)
        # 3. ce (and soft): the block's means, weighted by w
        ce_b, c_ce = cross_entropy_forward(s, labels1[rows], ignore_index)
        ce += w * ce_b
        # backward of 3.: d loss / d ce = (1 - alpha) without a teacher too (alpha = 0)
        ds = cross_entropy_backward(w * (1 - alpha), c_ce)  # (R, V)
        if tp2 is not None:
            soft_b, c_soft = distillation_forward(s, tp2[rows].astype(s.dtype, copy=False),
                                                  counted[rows], temperature)
            soft += w * soft_b
            ds += distillation_backward(w * alpha, c_soft)
        # backward of 2.: dz = ds * (1 - tanh(z / cap)^2)
        dz = softcap_backward(ds, c_s)
        # backward of 1.: dh = dz E, dE = dz^T h, summed over the blocks
        dh2[rows], dE_b = linear_backward(dz, c_z)
        dE += dE_b
    loss = alpha * soft + (1 - alpha) * ce if tp2 is not None else ce
    return float(loss), dh2.reshape(h.shape), dE, {"ce": float(ce), "soft": float(soft)}
