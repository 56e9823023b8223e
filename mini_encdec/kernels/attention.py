"""Numba twin of the attention core (`mini_encdec.nn.attention.attention_core_*`).

Checklist
- Fused, forward: per query row, s0 = q.k * scale, the soft-cap, the mask, an online
  (streaming) softmax over key blocks of at most BLOCK keys and o = p v happen in one
  pass; the row's running max m, running sum l and output accumulator are rescaled when a
  new block raises the max (flash attention's recurrence). Only the row's log-sum-exp
  L = m + log l is kept for the backward.
- Fused, backward: recomputes s0, the soft-cap and p = exp(s1 - L) per row and block
  (as flash attention does), then dp = do.v, ds = p (dp - D) with D = do.o, the soft-cap
  derivative (1 - tanh^2) and the scale, and accumulates dq, dk, dv in the same pass.
- Masks: any bool mask broadcastable to (B, 1, Tq, Tk). Each row only visits keys between
  its first and last allowed key, so a causal row costs O(i) and a sliding-window row
  O(W); forbidden keys inside that range get p = 0. A row with no allowed key outputs
  zeros and gets zero gradients.
- GQA: query head h reads key/value head h // G, G = H / K; no head is repeated in memory.
- Parallel: forward over chunks of the B*H*Tq query rows (prange, 4 chunks per thread
  since causal rows differ in cost); backward over the B*K key/value heads, each thread
  owning its dk, dv rows and the dq rows of its G query heads, so no two threads write
  the same memory and results do not depend on the thread count. Small calls (one
  decoding step) run on the calling thread (see _runtime).
- Memory beyond inputs and outputs: forward k^T (B, K, Dh, Tk) (so score loops run
  along contiguous keys and vectorise) and L (B, H, Tq); backward k^T and v^T
  (B, K, Dh, Tk) each; per call O(BLOCK + Dh) scratch. That is O(B*H*T*Dh): no (Tq, Tk)
  matrix per head is ever stored (tests/test_kernels.py checks the cache).
- Masks are passed dense (the documented signature): building the (B|1, 1, Tq, Tk) bool
  array costs B*Tq*Tk bytes, once per layer call, a few percent of the kernel's time at
  our sizes; scanning a row for its [first, last] allowed key is cheap, so a structured
  mask (positions + window) would save little.
- dtypes: float32 and float64, one compiled specialisation each (masks are converted to
  one C-contiguous bool layout, scalars to the array dtype).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..nn.attention import _check_core
from ..validate import check_float, check_shape
from ._runtime import JIT, parallel_chunks, same_float_arrays
from ._vecmath import cst, row_max, vexp, vtanh

BLOCK = 256  # keys per online-softmax block (one block covers our sequence lengths)


@njit(inline="always")
def _row_range(mask, bm, im):
    """(lo, hi): the first allowed key of mask row (bm, 0, im) and one past its last;
    lo >= hi when no key is allowed."""
    Tk = mask.shape[3]
    lo = 0
    while lo < Tk and not mask[bm, 0, im, lo]:
        lo += 1
    hi = Tk
    while hi > lo and not mask[bm, 0, im, hi - 1]:
        hi -= 1
    return lo, hi


@njit(inline="always")
def _dots(a, b, h, i, bT, kh, j0, n, scale, out):
    """out[jj] = (a[b, h, i] . bT[b, kh, :, j0 + jj]) * scale for jj < n: scores q . k
    (bT = k^T) or dp = do . v (bT = v^T). The inner loop runs along contiguous keys.

    Indexing habits of every kernel here: full indexing, no views (a view in a hot loop
    costs an atomic reference count shared by all threads), and offset indices such as
    j0 + jj cast to unsigned (a signed index gets a negative-index check, which turns a
    contiguous vector load into a gather)."""
    for jj in range(n):
        out[jj] = cst(scale, 0.0)
    for d in range(a.shape[3]):
        ad = a[b, h, i, d] * scale
        for jj in range(n):
            out[jj] += ad * bT[b, kh, d, np.uint64(j0 + jj)]


@njit(**JIT)
def _forward_rows(r0, r1, q, kT, v, mask, scale, cap, o, lse):
    """Query rows r0 <= r < r1 of the B*H*Tq rows (r = (b*H + h)*Tq + i)."""
    B, H, Tq, Dh = q.shape
    K, Tk = v.shape[1], v.shape[2]
    G = H // K
    Bm, Tqm = mask.shape[0], mask.shape[2]
    nb = min(Tk, BLOCK)
    zero, neg_inf = cst(scale, 0.0), cst(scale, -np.inf)
    inv_cap = cst(scale, 1.0) / cap if cap > zero else zero
    s = np.empty(nb, q.dtype)  # scratch, once per call
    acc = np.empty(Dh, q.dtype)
    for r in range(r0, r1):
        b = r // (H * Tq)
        h = (r // Tq) % H
        i = r % Tq
        kh = h // G
        bm, im = (b if Bm > 1 else 0), (i if Tqm > 1 else 0)
        lo, hi = _row_range(mask, bm, im)
        if lo >= hi:
            lse[b, h, i] = neg_inf  # no allowed key: o stays 0
            continue
        for d in range(Dh):
            acc[d] = zero
        m = neg_inf  # running max
        l = zero  # running sum of exp(s - m)
        for j0 in range(lo, hi, nb):
            n = min(nb, hi - j0)
            _dots(q, b, h, i, kT, kh, j0, n, scale, s)  # 1. s0 = (q . k) * scale
            for jj in range(n):
                x = s[jj]
                if cap > zero:
                    x = cap * vtanh(x * inv_cap)  # 2. s1 = cap * tanh(s0 / cap)
                # 3. mask: forbidden keys -> -inf
                s[jj] = x if mask[bm, 0, im, np.uint64(j0 + jj)] else neg_inf
            bmax = row_max(s, n)
            if bmax == neg_inf:
                continue
            # 4. online softmax: rescale what was summed under the old max
            m_new = max(m, bmax)
            alpha = vexp(m - m_new) if m > neg_inf else zero
            psum = zero
            for jj in range(n):
                p = vexp(s[jj] - m_new)  # 0 on forbidden keys
                s[jj] = p
                psum += p
            l = l * alpha + psum
            for d in range(Dh):
                acc[d] *= alpha
            # 5. o = p v (unnormalised so far)
            for jj in range(n):
                p = s[jj]
                if p != 0:
                    j = np.uint64(j0 + jj)
                    for d in range(Dh):
                        acc[d] += p * v[b, kh, j, d]
            m = m_new
        inv_l = cst(scale, 1.0) / l
        for d in range(Dh):
            o[b, h, i, d] = acc[d] * inv_l
        lse[b, h, i] = m + math.log(l)


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, q, kT, v, mask, scale, cap, o, lse):
    R = q.shape[0] * q.shape[1] * q.shape[2]
    for c in prange(nchunks):  # chunks of the query rows, one thread each
        _forward_rows((c * R) // nchunks, ((c + 1) * R) // nchunks, q, kT, v, mask, scale,
                      cap, o, lse)


@njit(**JIT)
def _backward_heads(g0, g1, q, k, kT, v, vT, o, do, mask, scale, cap, lse, dq, dk, dv):
    """Key/value heads g0 <= g < g1 of the B*K (g = b*K + kh), with their G query heads."""
    B, H, Tq, Dh = q.shape
    K, Tk = v.shape[1], v.shape[2]
    G = H // K
    Bm, Tqm = mask.shape[0], mask.shape[2]
    nb = min(Tk, BLOCK)
    zero, one = cst(scale, 0.0), cst(scale, 1.0)
    inv_cap = one / cap if cap > zero else zero
    p = np.empty(nb, q.dtype)  # scratch, once per call
    dp = np.empty(nb, q.dtype)
    for g in range(g0, g1):
        b = g // K
        kh = g % K
        for hg in range(G):
            h = kh * G + hg
            for i in range(Tq):
                bm, im = (b if Bm > 1 else 0), (i if Tqm > 1 else 0)
                lo, hi = _row_range(mask, bm, im)
                if lo >= hi:
                    continue  # empty row: zero gradients
                L = lse[b, h, i]
                Drow = zero  # D = sum_d do * o  (= sum_j p_j dp_j)
                for d in range(Dh):
                    Drow += do[b, h, i, d] * o[b, h, i, d]
                for j0 in range(lo, hi, nb):
                    n = min(nb, hi - j0)
                    _dots(q, b, h, i, kT, kh, j0, n, scale, p)  # recompute 1. s0
                    _dots(do, b, h, i, vT, kh, j0, n, one, dp)  # 5. o = p v -> dp = do . v
                    for jj in range(n):
                        x = p[jj]
                        t = zero
                        if cap > zero:
                            t = vtanh(x * inv_cap)  # recompute 2. s1 = cap * tanh(s0 / cap)
                            x = cap * t
                        # recompute 3.-4. p = exp(s1 - L), 0 on forbidden keys
                        pj = vexp(x - L) if mask[bm, 0, im, np.uint64(j0 + jj)] else zero
                        # 4. softmax: ds1 = p (dp - D)
                        ds = pj * (dp[jj] - Drow)
                        # 2. soft-cap: ds0 = ds1 (1 - t^2)
                        if cap > zero:
                            ds *= one - t * t
                        # 1. s0 = (q . k) * scale: the scale joins ds
                        p[jj] = pj
                        dp[jj] = ds * scale
                    for d in range(Dh):  # dq_i += sum_j ds_ij k_j, along contiguous keys
                        acc = zero
                        for jj in range(n):
                            acc += dp[jj] * kT[b, kh, d, np.uint64(j0 + jj)]
                        dq[b, h, i, d] += acc
                    for jj in range(n):
                        pj, dsj = p[jj], dp[jj]
                        if pj == 0:
                            continue  # forbidden key (or underflow): nothing flows
                        j = np.uint64(j0 + jj)
                        for d in range(Dh):
                            dk[b, kh, j, d] += dsj * q[b, h, i, d]  # dk_j += ds_ij q_i
                            dv[b, kh, j, d] += pj * do[b, h, i, d]  # dv_j += p_ij do_i


@njit(parallel=True, **JIT)
def _backward_parallel(nchunks, q, k, kT, v, vT, o, do, mask, scale, cap, lse, dq, dk, dv):
    R = k.shape[0] * k.shape[1]
    for c in prange(nchunks):  # chunks of key/value heads: their dk, dv rows are private
        _backward_heads((c * R) // nchunks, ((c + 1) * R) // nchunks, q, k, kT, v, vT, o, do,
                        mask, scale, cap, lse, dq, dk, dv)


def _positive(x) -> bool:
    return type(x) is float and 0 < x < math.inf


def _fast_check(q, k, v, mask, scale, softcap) -> bool:
    """True when the arguments surely pass the reference's checks (_check_core), which
    then run only to explain a failure."""
    if not (same_float_arrays(q, k, v) and q.ndim == 4 and k.ndim == 4
            and v.shape == k.shape and k.shape[0] == q.shape[0] and k.shape[3] == q.shape[3]
            and k.shape[1] > 0 and q.shape[1] % k.shape[1] == 0
            and _positive(scale) and (softcap is None or _positive(softcap))):
        return False
    if mask is None:
        return True
    full = (q.shape[0], 1, q.shape[2], k.shape[2])
    return (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.ndim == 4
            and all(m in (1, f) for m, f in zip(mask.shape, full)))


def _dense_mask(mask, B, Tq, Tk):
    """The validated mask as a C-contiguous bool (B|1, 1, Tq|1, Tk) array (one layout
    for the compiled kernel; a size-1 key axis is broadcast since rows are scanned)."""
    if mask is None:
        return np.ones((1, 1, 1, Tk), dtype=bool)
    if mask.shape[3] != Tk:
        mask = np.broadcast_to(mask, mask.shape[:3] + (Tk,))
    return np.ascontiguousarray(mask, dtype=bool)


def attention_core_forward(q, k, v, mask, *, scale, softcap):
    """Twin of nn.attention.attention_core_forward: q (B, H, Tq, Dh), k/v (B, K, Tk, Dh),
    mask bool broadcastable to (B, 1, Tq, Tk) or None -> (o (B, H, Tq, Dh), cache)."""
    if not _fast_check(q, k, v, mask, scale, softcap):
        mask, scale, softcap = _check_core(q, k, v, mask, scale, softcap,
                                           "attention_core_forward")
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    dt = q.dtype.type
    q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    mask = _dense_mask(mask, B, Tq, Tk)
    kT = np.ascontiguousarray(k.swapaxes(2, 3))  # (B, K, Tk, Dh) -> (B, K, Dh, Tk)
    o = np.zeros_like(q)  # (B, H, Tq, Dh)
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    cap = dt(softcap) if softcap is not None else dt(0)
    args = (q, kT, v, mask, dt(scale), cap, o, lse)
    # a few chunks per thread: causal rows differ in cost
    nchunks = parallel_chunks(B * H * Tq * Tk * Dh, B * H * Tq, per_thread=4)
    if nchunks:
        _forward_parallel(nchunks, *args)
    else:
        _forward_rows(0, B * H * Tq, *args)
    cache = {"q": q, "k": k, "kT": kT, "v": v, "o": o, "mask": mask, "lse": lse,
             "scale": dt(scale), "cap": cap}
    return o, cache


def attention_core_backward(do, cache):
    """Twin of nn.attention.attention_core_backward: returns (dq, dk, dv)."""
    q = cache["q"]
    check_float(do, "do", fn="attention_core_backward")
    check_shape(do, "do", q.shape, fn="attention_core_backward")
    if do.dtype != q.dtype:
        raise ValueError(f"attention_core_backward: argument 'do': expected dtype {q.dtype}, "
                         f"got {do.dtype}")
    k, v = cache["k"], cache["v"]
    do = np.ascontiguousarray(do)
    vT = np.ascontiguousarray(v.swapaxes(2, 3))  # (B, K, Tk, Dh) -> (B, K, Dh, Tk)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    args = (q, k, cache["kT"], v, vT, cache["o"], do, cache["mask"], cache["scale"],
            cache["cap"], cache["lse"], dq, dk, dv)
    R = k.shape[0] * k.shape[1]  # B*K key/value heads
    nchunks = parallel_chunks(2 * q.size * k.shape[2], R, per_thread=1)
    if nchunks:
        _backward_parallel(nchunks, *args)
    else:
        _backward_heads(0, R, *args)
    return dq, dk, dv
