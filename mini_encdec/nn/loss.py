"""Losses on output logits: cross-entropy (plain and fused with the final soft-cap) and
the distillation loss against teacher probabilities.

Shapes: logits (..., V), labels (...) integer in [0, V) or ignore_index (-100).
Losses are Python floats: the mean over the counted positions (0.0 when none is counted,
with zero gradient). Softmaxes run in the logits' dtype (float32 or float64).

Caches keep the probabilities p (N, V), N = number of positions, once; the fused soft-cap
form keeps a reference to its input z (not a copy) and recomputes tanh in the backward.
"""

from __future__ import annotations

import numpy as np

from ..validate import check_float, check_ids, check_mask, check_positive, check_shape
from .softcap import softcap_backward_unchecked, softcap_unchecked, tanh_ratio


def _log_softmax(z2):
    """log_softmax over the last axis of z2 (N, V), stable: z - max - log(sum(exp(z - max)))."""
    zs = z2 - np.max(z2, axis=-1, keepdims=True)  # (N, V)
    return zs - np.log(np.sum(np.exp(zs), axis=-1, keepdims=True))


def check_logits_labels(logits, labels, ignore_index, fn, logits_name="logits"):
    check_float(logits, logits_name, fn=fn)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: argument {logits_name!r}: expected at least 1 dimension, "
                         f"got shape {logits.shape}")
    if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        raise ValueError(f"{fn}: argument 'ignore_index': expected an integer, "
                         f"got {ignore_index!r}")
    V = logits.shape[-1]
    check_ids(labels, "labels", V, fn=fn, allow=(int(ignore_index),))
    check_shape(labels, "labels", logits.shape[:-1], fn=fn)
    return V


def _ce_from_z(z2, labels1, ignore_index):
    """Mean cross-entropy of logits z2 (N, V) against labels1 (N,).
    Returns (loss, p, counted, n)."""
    logp = _log_softmax(z2)  # (N, V)
    p = np.exp(logp)
    counted = labels1 != ignore_index  # (N,)
    n = int(counted.sum())
    rows = np.nonzero(counted)[0]
    nll = -logp[rows, labels1[rows]]  # (n,)
    loss = float(nll.sum() / n) if n else 0.0
    return loss, p, counted, n


def _ce_grad(dloss, p, labels1, counted, n):
    """d loss / d z2 = (p - onehot(label)) / n on counted rows, 0 elsewhere."""
    dz = p * counted[:, None]  # (N, V)
    rows = np.nonzero(counted)[0]
    dz[rows, labels1[rows]] -= 1
    scale = p.dtype.type(float(dloss) / n) if n else p.dtype.type(0)
    return dz * scale


def check_dloss(dloss, fn):
    if isinstance(dloss, np.ndarray) and dloss.size == 1:
        dloss = dloss.item()
    if not isinstance(dloss, (int, float, np.integer, np.floating)) or isinstance(dloss, bool) \
            or not np.isfinite(dloss):
        raise ValueError(f"{fn}: argument 'dloss': expected a finite scalar, got {dloss!r}")
    return float(dloss)


def cross_entropy_forward(logits, labels, ignore_index=-100):
    """Mean of -log softmax(logits)[label] over labels != ignore_index. Returns (loss, cache)."""
    fn = "cross_entropy_forward"
    V = check_logits_labels(logits, labels, ignore_index, fn)
    z2 = logits.reshape(-1, V)  # (..., V) -> (N, V)
    labels1 = labels.reshape(-1)  # (...) -> (N,)
    loss, p, counted, n = _ce_from_z(z2, labels1, ignore_index)
    return loss, {"p": p, "labels": labels1, "counted": counted, "n": n, "shape": logits.shape}


def cross_entropy_backward(dloss, cache):
    """dlogits (..., V) = dloss * (softmax(logits) - onehot(label)) / n on counted positions."""
    dloss = check_dloss(dloss, "cross_entropy_backward")
    dz = _ce_grad(dloss, cache["p"], cache["labels"], cache["counted"], cache["n"])
    return dz.reshape(cache["shape"])  # (N, V) -> (..., V)


def softcap_cross_entropy_forward(z, labels, cap, ignore_index=-100):
    """Cross-entropy of cap * tanh(z / cap) (Gemma's final soft-cap; cap None = plain CE).
    Returns (loss, cache)."""
    fn = "softcap_cross_entropy_forward"
    V = check_logits_labels(z, labels, ignore_index, fn, logits_name="z")
    cap = check_positive(cap, "cap", fn=fn, allow_none=True)
    z2 = z.reshape(-1, V)  # (..., V) -> (N, V)
    labels1 = labels.reshape(-1)  # (...) -> (N,)
    # 1. y = cap * tanh(z / cap)
    y2 = softcap_unchecked(z2, cap) if cap is not None else z2  # nn/softcap.py
    # 2. loss = mean cross-entropy(y, labels)
    loss, p, counted, n = _ce_from_z(y2, labels1, ignore_index)
    return loss, {"z": z, "cap": cap, "p": p, "labels": labels1, "counted": counted, "n": n}


def softcap_cross_entropy_backward(dloss, cache):
    """dz (..., V)."""
    dloss = check_dloss(dloss, "softcap_cross_entropy_backward")
    z, cap = cache["z"], cache["cap"]
    # 2. loss = mean cross-entropy(y, labels)
    dy = _ce_grad(dloss, cache["p"], cache["labels"], cache["counted"], cache["n"])  # (N, V)
    # 1. y = cap * tanh(z / cap)  ->  dz = dy * (1 - tanh(z / cap)^2)   (nn/softcap.py)
    if cap is not None:
        t = tanh_ratio(z.reshape(dy.shape), z.dtype.type(cap))  # recomputed, not cached
        dy = softcap_backward_unchecked(dy, t)
    return dy.reshape(z.shape)  # (N, V) -> (..., V)


def check_teacher_probs(teacher_probs, mask, fn):
    """Finite probabilities >= 0, rows summing to 1 (within 1e-3) where mask is True."""
    # min >= 0 and max < inf (both False with a NaN): two reductions, no (N, V) temporary
    if teacher_probs.size and not (teacher_probs.min() >= 0 and teacher_probs.max() < np.inf):
        raise ValueError(f"{fn}: argument 'teacher_probs': expected finite probabilities >= 0, "
                         f"got min {np.nanmin(teacher_probs)}")
    sums = teacher_probs.sum(axis=-1)[mask]  # (n,) the rows of the masked-in positions
    if sums.size and np.max(np.abs(sums - 1)) > 1e-3:
        bad = sums[np.argmax(np.abs(sums - 1))]
        raise ValueError(f"{fn}: argument 'teacher_probs': expected rows summing to 1 "
                         f"(within 1e-3) at masked-in positions, got a row summing to {bad}")


def distillation_forward(logits, teacher_probs, mask, temperature=1.0):
    """Soft cross-entropy against the teacher:

        loss = mean over positions with mask True of
               -sum_v teacher_probs[v] * log_softmax(logits / temperature)[v]

    logits, teacher_probs (..., V); mask (...) bool or None (every position). The KL
    divergence KL(teacher || student) equals this minus the teacher's entropy, which does
    not depend on the student, so both have the same gradient; we report the cross-entropy.
    No temperature^2 factor is applied (multiply outside if wanted). Returns (loss, cache).
    """
    fn = "distillation_forward"
    check_float(logits, "logits", fn=fn)
    if logits.ndim < 1:
        raise ValueError(f"{fn}: argument 'logits': expected at least 1 dimension, "
                         f"got shape {logits.shape}")
    V = logits.shape[-1]
    check_float(teacher_probs, "teacher_probs", fn=fn)
    check_shape(teacher_probs, "teacher_probs", logits.shape, fn=fn)
    if mask is None:
        mask = np.ones(logits.shape[:-1], dtype=bool)
    mask = check_mask(mask, "mask", logits.shape[:-1], fn=fn)
    temperature = check_positive(temperature, "temperature", fn=fn)
    check_teacher_probs(teacher_probs, mask, fn)
    tp2 = teacher_probs.reshape(-1, V)  # (..., V) -> (N, V)
    m1 = mask.reshape(-1)  # (...) -> (N,)
    z2 = logits.reshape(-1, V) / logits.dtype.type(temperature)  # (N, V)
    logq = _log_softmax(z2)
    n = int(m1.sum())
    rows = np.nonzero(m1)[0]
    loss = float(-(tp2[rows].astype(logq.dtype) * logq[rows]).sum() / n) if n else 0.0
    cache = {"q": np.exp(logq), "tp": tp2, "mask": m1, "n": n, "T": temperature,
             "shape": logits.shape}
    return loss, cache


def distillation_backward(dloss, cache):
    """dlogits (..., V) = dloss * (softmax(logits/T) * sum(tp) - tp) / (T n) on masked-in rows."""
    dloss = check_dloss(dloss, "distillation_backward")
    q, tp, m1, n = cache["q"], cache["tp"], cache["mask"], cache["n"]
    if not n:
        return np.zeros(cache["shape"], dtype=q.dtype)
    # loss = -sum_v tp[v] * (z[v] / T - logsumexp(z / T)) / n
    tpq = tp.astype(q.dtype, copy=False)
    dz = (q * tpq.sum(axis=-1, keepdims=True) - tpq) * m1[:, None]  # (N, V)
    dz *= q.dtype.type(dloss / (cache["T"] * n))
    return dz.reshape(cache["shape"])  # (N, V) -> (..., V)
