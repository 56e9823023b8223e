"""PrefixLM + knowledge distillation (SPEC.md section 4).

The student is the encoder-decoder; the teacher a decoder-only model (by default the one
the student was adapted from). For a PrefixLM example of prefix length N, target token j
sits at absolute index N + j of the full sequence `prefix ++ targets`, and the teacher's
distribution for it is its softmax at absolute position N + j - 1 (the position that
predicts index N + j). The batcher precomputes those positions (`teacher_positions`,
-1 where the label is ignored; batching.collate_encdec(with_teacher=True)).

    p_teacher = softmax(teacher_logits[b, N + j - 1] / tau)             (B, T, V)
    soft      = mean over targets of -sum_v p_teacher[v] log softmax(student_logits / tau)[v]
    ce        = mean over targets of -log softmax(student_logits)[label]
    loss      = alpha * soft + (1 - alpha) * ce

Both logits are the models' soft-capped outputs. `soft` is the soft cross-entropy; it
differs from KL(p_teacher || p_student) by the teacher's entropy, which does not depend
on the student (same gradient); both are reported. No tau^2 factor is applied.
"""

from __future__ import annotations

import numpy as np

from ..nn.linear import linear_forward
from ..nn.softcap import softcap_forward
from ..text.batching import split_teacher

IGNORE = -100


def _log_softmax(z: np.ndarray) -> np.ndarray:
    zs = z - z.max(axis=-1, keepdims=True)
    return zs - np.log(np.exp(zs).sum(axis=-1, keepdims=True))


def _teacher_log_probs(teacher, teacher_batch: dict, positions: np.ndarray,
                       temperature: float) -> np.ndarray:
    """log softmax(teacher_logits[b, positions[b, j]] / tau): (B, T, V). The teacher's
    output layer runs on the gathered positions only (T of its S + T)."""
    h = teacher.hidden_states(teacher_batch)  # (B, S + T, D)
    B, T = positions.shape
    if positions.max(initial=-1) >= h.shape[1]:
        raise ValueError(f"teacher_probabilities: argument 'positions': expected positions "
                         f"< {h.shape[1]} (the teacher sequence length), got "
                         f"{int(positions.max())}")
    rows = np.arange(B)[:, None]  # (B, 1) broadcast against (B, T)
    gathered = h[rows, np.maximum(positions, 0)]  # (B, S + T, D) -> (B, T, D)
    # logits = cap * tanh(h E^T / cap), the teacher's forward (models/gemma.py), here
    z, _ = linear_forward(gathered, teacher.params[teacher.embed_key])  # (B, T, V)
    logits, _ = softcap_forward(z, teacher.config.final_logit_softcapping)
    return _log_softmax(logits / logits.dtype.type(temperature))


def teacher_probabilities(teacher, teacher_batch: dict, positions: np.ndarray,
                          temperature: float = 1.0) -> np.ndarray:
    """softmax(teacher_logits[b, positions[b, j]] / tau): (B, T, V); rows with position -1
    (ignored labels) are uniform placeholders that the loss masks out."""
    return np.exp(_teacher_log_probs(teacher, teacher_batch, positions, temperature))


def kd_loss_and_grads(student, teacher, batch: dict, *, alpha: float = 0.5,
                      temperature: float = 1.0):
    """(loss, grads, parts) of alpha * soft + (1 - alpha) * ce on a with_teacher batch.
    parts = {"ce", "soft", "kl"} as floats."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss_and_grads: argument 'alpha': expected a number in [0, 1], "
                         f"got {alpha!r}")
    if "teacher_input_ids" not in batch:
        raise ValueError("kd_loss_and_grads: argument 'batch': no 'teacher_input_ids'; make "
                         "the batches with with_teacher=True (PrefixLM + distillation)")
    sb, tb, positions = split_teacher(batch)
    labels = sb["labels"]
    if positions.shape != labels.shape:
        raise ValueError(f"kd_loss_and_grads: teacher_positions has shape {positions.shape}, "
                         f"labels {labels.shape}")
    logp = _teacher_log_probs(teacher, tb, positions, temperature)  # (B, T, V)
    probs = np.exp(logp).astype(student.dtype, copy=False)
    # loss = alpha * soft + (1 - alpha) * ce, from the student's final hidden states a
    # block of rows at a time (ops.output_loss_and_grads): its logits are never stored
    loss, grads, parts = student.distill_loss_and_grads(sb, probs, alpha=alpha,
                                                        temperature=temperature)
    # the teacher's entropy -sum_v p log p per counted row (row sums in float64)
    counted = labels != IGNORE
    entropy = float(-np.einsum("btv,btv->bt", probs, logp, dtype=np.float64)[counted].sum()
                    / max(1, int(counted.sum())))
    soft = parts["soft"]
    return float(loss), grads, {"ce": parts["ce"], "soft": soft, "kl": soft - entropy}
