"""Numba twin of the fused output layer and loss (`mini_encdec.nn.output_loss`): for the
final hidden states h (N, D) and the tied table E (V, D), the loss of the logits
s = cap * tanh(h E^T / cap) (cross-entropy, or alpha * distillation + (1 - alpha) *
cross-entropy), with dh and dE, a block of BLOCK_ROWS rows at a time.

Checklist
- Blocked: per block of rows, z = h_b E^T goes into one reused (BLOCK_ROWS, V) buffer
  (BLAS, `out=`), the kernel below turns it into dz in place, and two more BLAS products
  take dh_b = dz E and dE += dz^T h_b. The (N, V) logits, probabilities and dz are never
  stored: the block (BLOCK_ROWS * V floats, 8 MiB at 256 x 8192 float32) is written by
  the matmul and read back by the kernel (a row, 32 KiB, at a time) and by the two
  products while it is still in the last-level cache (the unfused path writes z, reads
  it twice, writes dz and reads it twice, 64 MiB each at N = 2048, through memory).
- Fused, per row (in the cache): pass 1 writes s = cap * tanh(z / cap) to a scratch
  row and e = exp(s - m) over z, summing e, with the shift m = cap (the capped logits
  are bounded by cap, as in loss.py; with caps above 40, or without one, the row max);
  with a teacher, one more pass sums exp((s - m) / tau), sum(tp) and sum(tp * s);
  pass 2 writes dz = (g_ce * p + g_soft / tau * (q * sum(tp) - tp)) * (1 - (s / cap)^2)
  over e, with p = e / sum(e), q = exp(s / tau - Lq), and subtracts
  g_ce * (1 - (s_label / cap)^2) at the label. One tanh and one exp per logit (two
  more exps with a teacher); 1 - t^2 comes from s = cap * t.
- Ignored rows (label == ignore_index) get dz = 0 and cost no exp; a block without a
  counted row is skipped (its dh rows stay 0).
- Parallel: rows of a block (prange over chunks); the blocks, and so the order in
  which dE is summed, never depend on the thread count; the BLAS products run on the
  policy's threads through matmul.py (blocks fixed by the cap, kernels/threads.py).
- Memory: the block buffer, one (V, D) product buffer, the per-row losses (N,).
- dtypes: float32 (vectorised exp/tanh, see _vecmath) and float64 (libm).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..nn.output_loss import check_output_loss_args
from ._runtime import JIT, parallel_chunks
from .loss import FIXED_SHIFT_CAP
from ._vecmath import cst, row_max, vexp, vtanh
from .matmul import matmul

BLOCK_ROWS = 256  # rows per block (MEASUREMENTS.md: fewer slow the BLAS products)


@njit(**JIT)
def _rows(r0, r1, z, labels, ignore_index, cap, g_ce, teacher, tp, g_soft, inv_tau, nll,
          soft):
    """Rows r0..r1 of the block z (R, V): z -> dz in place; nll, soft (R,) per row
    (soft only when `teacher`; tp (R, V) the teacher's probabilities, else unused)."""
    V = z.shape[1]
    zero, one = cst(cap, 0.0), cst(cap, 1.0)
    inv_cap = one / cap if cap > zero else zero
    fixed_shift = zero < cap <= cst(cap, FIXED_SHIFT_CAP) and \
        (not teacher or cap * inv_tau <= cst(cap, FIXED_SHIFT_CAP))
    s = np.empty(V, z.dtype)  # one row of soft-capped logits, once per call
    for n in range(r0, r1):
        row = z[n]
        label = labels[n]
        if label == ignore_index:
            for v in range(V):
                row[v] = zero
            nll[n] = zero
            soft[n] = zero
            continue
        # pass 1: s = cap * tanh(z / cap) into the scratch row, e = exp(s - m) over z,
        # and their sum. With a cap up to FIXED_SHIFT_CAP (and cap / tau too, for the
        # teacher's softmax) the bound m = cap replaces the row max (a slow pass).
        if cap > zero:
            for v in range(V):
                s[v] = cap * vtanh(row[v] * inv_cap)
        else:
            for v in range(V):
                s[v] = row[v]
        m = cap if fixed_shift else row_max(s, V)
        total = zero
        for v in range(V):
            e = vexp(s[v] - m)
            row[v] = e
            total += e
        # L = logsumexp(s) = m + log(total), nll = L - s[label]
        nll[n] = m + math.log(total) - s[label]
        Lq = sum_tp = zero
        if teacher:
            # soft = -sum_v tp[v] (s[v] / tau - Lq) = Lq sum(tp) - sum(tp s) / tau,
            # Lq = logsumexp(s / tau)
            total_q = sum_tps = zero
            for v in range(V):
                total_q += vexp((s[v] - m) * inv_tau)
                sum_tp += tp[n, v]
                sum_tps += tp[n, v] * s[v]
            Lq = m * inv_tau + math.log(total_q)
            soft[n] = Lq * sum_tp - sum_tps * inv_tau
        else:
            soft[n] = zero
        # pass 2, the backward: ds = g_ce (p - onehot) + g_soft / tau (q sum(tp) - tp)
        # with p = e / total, q = exp(s / tau - Lq); dz = ds (1 - t^2), t = s / cap
        g_p = g_ce / total
        if teacher:
            g_q = g_soft * inv_tau
            for v in range(V):
                ds = g_p * row[v] + g_q * (vexp(s[v] * inv_tau - Lq) * sum_tp - tp[n, v])
                row[v] = ds * (one - (s[v] * inv_cap) * (s[v] * inv_cap))
        else:
            for v in range(V):
                row[v] = g_p * row[v] * (one - (s[v] * inv_cap) * (s[v] * inv_cap))
        t = s[label] * inv_cap
        row[label] -= g_ce * (one - t * t)


@njit(parallel=True, **JIT)
def _rows_parallel(nchunks, z, labels, ignore_index, cap, g_ce, teacher, tp, g_soft, inv_tau,
                   nll, soft):
    R = z.shape[0]
    for c in prange(nchunks):
        _rows((c * R) // nchunks, ((c + 1) * R) // nchunks, z, labels, ignore_index, cap,
              g_ce, teacher, tp, g_soft, inv_tau, nll, soft)


def output_loss_and_grads(h, E, labels, cap, ignore_index=-100, teacher_probs=None,
                          alpha=0.0, temperature=1.0):
    """Twin of nn.output_loss.output_loss_and_grads: returns
    (loss, dh (..., D), dE (V, D), {"ce": float, "soft": float})."""
    fn = "output_loss_and_grads"
    cap, alpha, temperature = check_output_loss_args(h, E, labels, cap, ignore_index,
                                                     teacher_probs, alpha, temperature, fn)
    V, D = E.shape
    dt = E.dtype.type
    h2 = np.ascontiguousarray(h).reshape(-1, D)  # (..., D) -> (N, D)
    N = h2.shape[0]
    labels1 = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)  # (...) -> (N,)
    counted = labels1 != ignore_index
    n = int(np.count_nonzero(counted))
    dh2 = np.zeros_like(h2)
    if not n:
        dE = np.zeros(E.shape, dtype=E.dtype)
        return 0.0, dh2.reshape(h.shape), dE, {"ce": 0.0, "soft": 0.0}
    teacher = teacher_probs is not None
    tp2 = np.ascontiguousarray(teacher_probs.reshape(-1, V), dtype=E.dtype) if teacher \
        else np.zeros((1, 1), dtype=E.dtype)  # (N, V), or a placeholder
    capv = dt(cap) if cap is not None else dt(0)
    g_ce, g_soft = dt((1 - alpha) / n), dt(alpha / n)
    inv_tau = dt(1.0 / temperature)
    nll, soft = np.zeros(N, dtype=E.dtype), np.zeros(N, dtype=E.dtype)
    zbuf = np.empty((min(BLOCK_ROWS, N), V), dtype=E.dtype)
    dE = dEb = None  # the first block's dz^T h is dE; later blocks' go through dEb
    Et = E.T  # (D, V), a view
    for r0 in range(0, N, BLOCK_ROWS):
        r1 = min(N, r0 + BLOCK_ROWS)
        if not counted[r0:r1].any():
            continue
        z = zbuf[:r1 - r0]
        matmul(h2[r0:r1], Et, out=z)  # 1. z = h E^T: (R, D) @ (D, V) -> (R, V)
        tp = tp2[r0:r1] if teacher else tp2
        args = (z, labels1[r0:r1], np.int64(ignore_index), capv, g_ce, teacher, tp, g_soft,
                inv_tau, nll[r0:r1], soft[r0:r1])
        nchunks = parallel_chunks(8 * z.size, z.shape[0], per_thread=4)
        if nchunks:
            _rows_parallel(nchunks, *args)
        else:
            _rows(0, z.shape[0], *args)
        # z now holds dz: dh = dz E, dE += dz^T h
        matmul(z, E, out=dh2[r0:r1])  # (R, V) @ (V, D) -> (R, D)
        if dE is None:
            dE = matmul(z.T, h2[r0:r1])  # (V, R) @ (R, D) -> (V, D)
        else:
            dEb = matmul(z.T, h2[r0:r1], out=dEb)  # (V, R) @ (R, D) -> (V, D)
            dE += dEb
    ce = float(nll.sum(dtype=np.float64) / n)
    sft = float(soft.sum(dtype=np.float64) / n) if teacher else 0.0
    loss = alpha * sft + (1 - alpha) * ce if teacher else ce
    return float(loss), dh2.reshape(h.shape), dE, {"ce": ce, "soft": sft}
