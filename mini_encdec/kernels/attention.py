"""Numba twin of the attention core (`mini_encdec.nn.attention.attention_core_*`).

Checklist
- Forward, two paths. Few query rows (Tq < BLAS_MIN_ROWS: one decoding step): per query
  row, s0 = q.k * scale, the soft-cap, the mask, an online (streaming) softmax over key
  blocks of at most BLOCK keys and o = p v in one Numba pass, reading k and v where
  they are (the KV cache's views: no copy, no transpose); the row's running max m,
  running sum l and output accumulator are rescaled when a new block raises the max
  (flash attention's recurrence). Many rows (training, prompt processing): tiled like
  the backward below: s = q k^T (BLAS), one fused Numba pass per row (scale, soft-cap,
  mask, max, exp, sum, normalise), o = p v (BLAS). Either way only the row's
  log-sum-exp L = m + log l is kept for the backward.
- Backward: tiled and handed to BLAS. Per tile of n key/value heads x M of their G*Tq
  query rows (G query heads share one kv head, so a tile is a plain (M, Dh) @ (Dh, Tk)
  batched matmul, no head repeated): s = q k^T and dp = do v^T (np.matmul), then one
  fused Numba pass per row recomputes the soft-cap and p = exp(s1 - L) from the saved
  log-sum-exp and turns dp into ds = p (dp - D) (1 - tanh^2) scale, D = do.o, in place;
  then dq = ds k, dk += ds^T q, dv += p^T do (np.matmul): the five matmuls run near BLAS
  speed, where a loop over (q, k) pairs re-reads and re-writes the dk, dv rows for every
  pair (MEASUREMENTS.md has the numbers). Cost: masked keys inside a tile are computed and
  zeroed (a causal mask wastes up to half the matmul work; still faster).
- Masks: any bool mask broadcastable to (B, 1, Tq, Tk). The online forward visits only
  the keys between a row's first and last allowed key, so a causal row costs O(i) and a
  sliding-window row O(W); the tiled paths' matmuls cover every key of a tile. Forbidden
  keys get p = 0 and ds = 0. A row with no allowed key outputs zeros and gets zero
  gradients.
- GQA: query head h reads key/value head h // G, G = H / K; no head is repeated in memory.
- Parallel: the online forward over chunks of the B*H*Tq query rows (prange, 4 chunks
  per thread since causal rows differ in cost); the tiled paths: the matmuls use BLAS's
  threads, the fused passes chunks of a tile's rows (each row written by one thread),
  so results do not depend on Numba's thread count. Where BLAS must stay at one thread
  (kernels/matmul.py), the tiled paths instead split the key/value heads into the cap's
  fixed blocks, one thread each (its matmuls and row passes serial). Small calls (one decoding step) run
  on the calling thread (see _runtime).
- Memory beyond inputs and outputs: L (B, H, Tq), kept in the cache, which is
  O(B*H*T*Dh): no (Tq, Tk) matrix per head is kept (tests/test_kernels.py checks it).
  Temporaries: the online path O(BLOCK + Dh) scratch (its dot products run along the
  contiguous head axis); the tiled paths one
  (forward) or two (backward) score tiles of at most TILE entries (4 MiB each in
  float32; a whole small-preset batch fits in one tile), reused across tiles, so the
  extra memory is bounded whatever the sequence length.
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

from ..nn.attention import check_core_inputs
from ..validate import check_float, check_shape
from . import threads
from ._runtime import JIT, parallel_chunks, same_float_arrays
from .matmul import even_bounds, run_blocks, split_pays
from ._vecmath import cst, row_max, vexp, vtanh

BLOCK = 256  # keys per online-softmax block (one block covers our sequence lengths)
TILE = 1 << 20  # entries of one score tile (4 MiB in float32; see the checklist)
BLAS_MIN_ROWS = 16  # query rows from which the forward takes the tiled BLAS path


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
def _dots(qs, k, b, kh, j0, n, out):
    """out[jj] = qs . k[b, kh, j0 + jj] for jj < n: the scores of one query row (qs, the
    row already times the scale) against n keys, each a dot product along the contiguous
    head axis of k (B, K, Tbuf, Dh), C-contiguous (so the loop vectorises).

    Indexing habits of every kernel here: full indexing, no views (a view in a hot loop
    costs an atomic reference count shared by all threads), and offset indices such as
    j0 + jj cast to unsigned (a signed index gets a negative-index check, which turns a
    contiguous vector load into a gather)."""
    for jj in range(n):
        j = np.uint64(j0 + jj)
        acc = cst(qs, 0.0)
        for d in range(qs.shape[0]):
            acc += qs[d] * k[b, kh, j, d]
        out[jj] = acc


@njit(**JIT)
def _forward_rows(r0, r1, q, k, v, off, mask, scale, cap, o, lse):
    """Query rows r0 <= r < r1 of the B*H*Tq rows (r = (b*H + h)*Tq + i). Key j of the
    mask is k[:, :, off + j] and v[:, :, off + j] (k, v: the arrays holding the keys, e.g.
    a KV cache's whole buffer, read in place)."""
    B, H, Tq, Dh = q.shape
    K, Tk = v.shape[1], mask.shape[3]
    G = H // K
    Bm, Tqm = mask.shape[0], mask.shape[2]
    nb = min(Tk, BLOCK)
    zero, neg_inf = cst(scale, 0.0), cst(scale, -np.inf)
    inv_cap = cst(scale, 1.0) / cap if cap > zero else zero
    s = np.empty(nb, q.dtype)  # scratch, once per call
    acc = np.empty(Dh, q.dtype)
    qs = np.empty(Dh, q.dtype)
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
            qs[d] = q[b, h, i, d] * scale
        m = neg_inf  # running max
        l = zero  # running sum of exp(s - m)
        for j0 in range(lo, hi, nb):
            n = min(nb, hi - j0)
            _dots(qs, k, b, kh, off + j0, n, s)  # 1. s0 = (q . k) * scale
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
                    j = np.uint64(off + j0 + jj)
                    for d in range(Dh):
                        acc[d] += p * v[b, kh, j, d]
            m = m_new
        inv_l = cst(scale, 1.0) / l
        for d in range(Dh):
            o[b, h, i, d] = acc[d] * inv_l
        lse[b, h, i] = m + math.log(l)


@njit(parallel=True, **JIT)
def _forward_parallel(nchunks, q, k, v, off, mask, scale, cap, o, lse):
    R = q.shape[0] * q.shape[1] * q.shape[2]
    for c in prange(nchunks):  # chunks of the query rows, one thread each
        _forward_rows((c * R) // nchunks, ((c + 1) * R) // nchunks, q, k, v, off, mask, scale,
                      cap, o, lse)


@njit(inline="always")
def _tile_row(t, M, g0, r0, K, G, Tq, Bm, Tqm):
    """Where row t of a tile lives (the layout shared by _grad_rows and _softmax_rows):
    tile slot c = t // M covers kv head g = g0 + c (b = g // K, kh = g % K); its row
    rr = t % M is query row r0 + rr of that kv head's G*Tq rows (query head h = kh*G + hg,
    position i). bm, im index the (possibly broadcast) mask."""
    c, rr = t // M, t % M
    b, kh = (g0 + c) // K, (g0 + c) % K
    hg, i = (r0 + rr) // Tq, (r0 + rr) % Tq
    return c, rr, b, kh * G + hg, i, (b if Bm > 1 else 0), (i if Tqm > 1 else 0)


@njit(nogil=True, **JIT)
def _grad_rows(t0, t1, g0, r0, K, s, dp, o, do, mask, scale, cap, lse):
    """Rows t0 <= t < t1 (t = c*M + rr) of one backward tile. The tile covers the
    key/value heads g = g0 + c (g = b*K + kh, c < n) and, of each, the M query rows
    r0 + rr of its G*Tq rows (row = hg*Tq + i, query head h = kh*G + hg).
    In: s = q . k (raw: unscaled, no cap) and dp = do . v, both (n, M, Tk).
    Out, in place: s <- p, dp <- ds0 * scale (the gradient of the raw score q . k);
    both 0 on forbidden keys and on rows with no allowed key."""
    M, Tk = s.shape[1], s.shape[2]
    H, Tq, Dh = o.shape[1], o.shape[2], o.shape[3]
    G = H // K
    Bm, Tqm = mask.shape[0], mask.shape[2]
    zero, one = cst(scale, 0.0), cst(scale, 1.0)
    inv_cap = one / cap if cap > zero else zero
    for t in range(t0, t1):
        c, rr, b, h, i, bm, im = _tile_row(t, M, g0, r0, K, G, Tq, Bm, Tqm)
        lo, hi = _row_range(mask, bm, im)
        if lo >= hi:  # empty row: zero gradients
            for j in range(Tk):
                s[c, rr, j] = zero
                dp[c, rr, j] = zero
            continue
        L = lse[b, h, i]
        Drow = zero  # D = sum_d do * o  (= sum_j p_j dp_j)
        for d in range(Dh):
            Drow += do[b, h, i, d] * o[b, h, i, d]
        if cap > zero:
            for j in range(Tk):
                tj = vtanh(s[c, rr, j] * scale * inv_cap)  # recompute 2. s1 = cap tanh(s0/cap)
                pj = vexp(cap * tj - L)  # recompute 3.-4. p = exp(s1 - L)
                pj = pj if mask[bm, 0, im, j] else zero  # 0 on forbidden keys
                # 4. softmax: ds1 = p (dp - D); 2. soft-cap: ds0 = ds1 (1 - t^2);
                # 1. s0 = (q . k) * scale: the scale joins ds
                dp[c, rr, j] = pj * (dp[c, rr, j] - Drow) * (one - tj * tj) * scale
                s[c, rr, j] = pj
        else:
            for j in range(Tk):
                pj = vexp(s[c, rr, j] * scale - L)  # recompute 1.-4. p = exp(s0 - L)
                pj = pj if mask[bm, 0, im, j] else zero
                dp[c, rr, j] = pj * (dp[c, rr, j] - Drow) * scale  # 4. then 1. as above
                s[c, rr, j] = pj


@njit(parallel=True, **JIT)
def _grad_parallel(nchunks, g0, r0, K, s, dp, o, do, mask, scale, cap, lse):
    R = s.shape[0] * s.shape[1]
    for c in prange(nchunks):  # chunks of the tile's rows: each row is written by one thread
        _grad_rows((c * R) // nchunks, ((c + 1) * R) // nchunks, g0, r0, K, s, dp, o, do,
                   mask, scale, cap, lse)


@njit(nogil=True, **JIT)
def _softmax_rows(t0, t1, g0, r0, K, s, mask, scale, cap, lse):
    """Rows t0 <= t < t1 (t = c*M + rr) of one forward tile (the layout of _grad_rows).
    In: s = q . k (raw). Out, in place: s <- p = softmax(cap tanh(s scale / cap)) over the
    allowed keys (0 elsewhere, a row with no allowed key all 0); lse <- the row's
    log-sum-exp L (-inf for an empty row), for the backward."""
    M, Tk = s.shape[1], s.shape[2]
    H, Tq = lse.shape[1], lse.shape[2]
    G = H // K
    Bm, Tqm = mask.shape[0], mask.shape[2]
    zero, one, neg_inf = cst(scale, 0.0), cst(scale, 1.0), cst(scale, -np.inf)
    inv_cap = one / cap if cap > zero else zero
    for t in range(t0, t1):
        c, rr, b, h, i, bm, im = _tile_row(t, M, g0, r0, K, G, Tq, Bm, Tqm)
        lo, hi = _row_range(mask, bm, im)
        if lo >= hi:  # no allowed key: o = 0
            for j in range(Tk):
                s[c, rr, j] = zero
            lse[b, h, i] = neg_inf
            continue
        if cap > zero:
            for j in range(Tk):
                x = cap * vtanh(s[c, rr, j] * scale * inv_cap)  # 1.-2. s1 = cap tanh(s0/cap)
                s[c, rr, j] = x if mask[bm, 0, im, j] else neg_inf  # 3. mask
        else:
            for j in range(Tk):
                x = s[c, rr, j] * scale  # 1. s0 = (q . k) * scale
                s[c, rr, j] = x if mask[bm, 0, im, j] else neg_inf  # 3. mask
        m = neg_inf  # 4. p = softmax(s2): max over the allowed keys (a loop of its own)
        for j in range(lo, hi):
            m = max(m, s[c, rr, j])
        l = zero
        for j in range(Tk):
            pj = vexp(s[c, rr, j] - m)  # 0 on forbidden keys
            s[c, rr, j] = pj
            l += pj
        inv_l = one / l
        for j in range(Tk):
            s[c, rr, j] *= inv_l
        lse[b, h, i] = m + math.log(l)


@njit(parallel=True, **JIT)
def _softmax_parallel(nchunks, g0, r0, K, s, mask, scale, cap, lse):
    R = s.shape[0] * s.shape[1]
    for c in prange(nchunks):  # chunks of the tile's rows: each row is written by one thread
        _softmax_rows((c * R) // nchunks, ((c + 1) * R) // nchunks, g0, r0, K, s, mask,
                      scale, cap, lse)


def _tiles(N, R, Tk):
    """(M, n): query rows per tile and key/value heads per tile, so that one (n, M, Tk)
    score tile has at most TILE entries."""
    M = max(1, min(R, TILE // max(Tk, 1)))
    return M, max(1, min(N, TILE // max(M * Tk, 1)))


def _forward_tiled(q, k, v, mask, scale, cap, o, lse):
    """The forward for many query rows (training, prompt processing), tiled as the
    backward: s = q k^T (BLAS), softmax rows (Numba), o = p v (BLAS)."""
    B, H, Tq, Dh = q.shape
    K, Tk = k.shape[1], k.shape[2]
    N, R = B * K, (H // K) * Tq
    qg = q.reshape(N, R, Dh)  # (B, H, Tq, Dh) -> (B*K, G*Tq, Dh): h = kh*G + hg
    og = o.reshape(N, R, Dh)  # (B, H, Tq, Dh) -> (B*K, G*Tq, Dh)
    kg, vg = k.reshape(N, Tk, Dh), v.reshape(N, Tk, Dh)  # (B, K, Tk, Dh) -> (B*K, Tk, Dh)
    _by_heads(lambda ga, gb, pool: _forward_heads(ga, gb, pool, qg, kg, vg, og, K, mask,
                                                  scale, cap, lse), N, R * Tk * Dh)


def _by_heads(work, N: int, macs_per_head: int) -> None:
    """work(ga, gb, pool) over the N key/value heads: at once with Numba's pool (pool=True)
    and BLAS's threads, or, where BLAS must stay at one thread (matmul.py), in the cap's
    fixed blocks of heads, one per thread, each on its thread alone (pool=False). The
    tiles of a block never depend on the load, so neither do the results."""
    if N > 1 and split_pays(2 * N * macs_per_head):
        run_blocks(lambda ga, gb: work(ga, gb, False), even_bounds(N, threads.POLICY.cap))
    else:
        work(0, N, True)


def _forward_heads(ga, gb, pool, qg, kg, vg, og, K, mask, scale, cap, lse):
    """The tiled forward of kv heads [ga, gb) (rows of qg (N, R, Dh), kg/vg (N, Tk, Dh))."""
    R, Tk = qg.shape[1], kg.shape[1]
    M, n_max = _tiles(gb - ga, R, Tk)
    buf = np.empty(n_max * M * Tk, dtype=qg.dtype)
    for g0 in range(ga, gb, n_max):
        g1 = min(gb, g0 + n_max)
        for r0 in range(0, R, M):
            r1 = min(R, r0 + M)
            shape = (g1 - g0, r1 - r0, Tk)
            s = buf[:math.prod(shape)].reshape(shape)
            # 1. raw scores q . k: (n,M,Dh) @ (n,Dh,Tk) -> (n,M,Tk)
            np.matmul(qg[g0:g1, r0:r1], kg[g0:g1].swapaxes(1, 2), out=s)
            args = (g0, r0, K, s, mask, scale, cap, lse)  # 1.-4. s <- p, lse
            nchunks = parallel_chunks(8 * s.size, shape[0] * shape[1], per_thread=2) \
                if pool else 0
            if nchunks:
                _softmax_parallel(nchunks, *args)
            else:
                _softmax_rows(0, shape[0] * shape[1], *args)
            # 5. o = p v: (n,M,Tk) @ (n,Tk,Dh) -> (n,M,Dh)
            np.matmul(s, vg[g0:g1], out=og[g0:g1, r0:r1])


def _positive(x) -> bool:
    return type(x) is float and 0 < x < math.inf


def _fast_check(q, k, v, mask, scale, softcap) -> bool:
    """True when the arguments surely pass the reference's checks (check_core_inputs), which
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


def _key_buffers(k, v):
    """(kb, vb, off): C-contiguous arrays with k = kb[:, :, off:off + Tk] and the same for
    v. When k and v are such slices of one buffer each (the KV cache's views), the
    buffers themselves, so nothing is copied; otherwise contiguous copies and off = 0."""
    Tk = k.shape[2]
    kb, vb = k.base, v.base
    if (isinstance(kb, np.ndarray) and isinstance(vb, np.ndarray) and kb.ndim == vb.ndim == 4
            and kb.flags.c_contiguous and vb.flags.c_contiguous and kb.shape == vb.shape
            and kb.dtype == k.dtype == vb.dtype and kb.shape[:2] == k.shape[:2]
            and kb.shape[3] == k.shape[3] and k.strides == kb.strides == v.strides):
        row = kb.strides[2]
        off_k, rem_k = divmod(k.ctypes.data - kb.ctypes.data, row)
        off_v, rem_v = divmod(v.ctypes.data - vb.ctypes.data, row)
        if rem_k == rem_v == 0 and off_k == off_v and 0 <= off_k <= kb.shape[2] - Tk:
            return kb, vb, off_k
    return np.ascontiguousarray(k), np.ascontiguousarray(v), 0


def attention_core_forward(q, k, v, mask, *, scale, softcap):
    """Twin of nn.attention.attention_core_forward: q (B, H, Tq, Dh), k/v (B, K, Tk, Dh),
    mask bool broadcastable to (B, 1, Tq, Tk) or None -> (o (B, H, Tq, Dh), cache)."""
    if not _fast_check(q, k, v, mask, scale, softcap):
        mask, scale, softcap = check_core_inputs(q, k, v, mask, scale, softcap,
                                           "attention_core_forward")
    B, H, Tq, Dh = q.shape
    Tk = k.shape[2]
    dt = q.dtype.type
    q = np.ascontiguousarray(q)
    mask = _dense_mask(mask, B, Tq, Tk)
    cap = dt(softcap) if softcap is not None else dt(0)
    if Tq >= BLAS_MIN_ROWS:
        o = np.zeros_like(q)  # (B, H, Tq, Dh)
        lse = np.empty((B, H, Tq), dtype=q.dtype)
        k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
        _forward_tiled(q, k, v, mask, dt(scale), cap, o, lse)
    else:  # a view of the KV cache is read in place
        o, lse = online_forward(q, *_key_buffers(k, v), mask, dt(scale), cap)
    cache = {"q": q, "k": k, "v": v, "o": o, "mask": mask, "lse": lse,
             "scale": dt(scale), "cap": cap}
    return o, cache


def online_forward(q, kb, vb, off, mask, scale, cap):
    """The online path for few query rows: q (B, H, Tq, Dh) C-contiguous over the keys
    kb[:, :, off:off + Tk] (and vb), read in place, mask the dense (B|1, 1, Tq|1, Tk) bool,
    scale and cap in q's dtype (cap 0: none) -> (o (B, H, Tq, Dh), lse (B, H, Tq)). Also
    what a decoding step's `attend` runs (kernels/decode_step.py)."""
    B, H, Tq, Dh = q.shape
    o = np.zeros_like(q)  # a row with no allowed key stays 0
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    args = (q, kb, vb, off, mask, scale, cap, o, lse)
    # a few chunks per thread: causal rows differ in cost
    nchunks = parallel_chunks(B * H * Tq * mask.shape[3] * Dh, B * H * Tq, per_thread=4)
    if nchunks:
        _forward_parallel(nchunks, *args)
    else:
        _forward_rows(0, B * H * Tq, *args)
    return o, lse


def _backward_heads(ga, gb, pool, qg, kg, vg, dog, o, do, dqg, dkg, dvg, K, mask, scale,
                    cap, lse):
    """The tiled backward of kv heads [ga, gb): dqg, dkg, dvg's rows of those heads."""
    R, Tk = qg.shape[1], kg.shape[1]
    # tile: M query rows of n heads, so that an (n, M, Tk) score tile has <= TILE entries
    M, n_max = _tiles(gb - ga, R, Tk)
    buf_s = np.empty(n_max * M * Tk, dtype=qg.dtype)
    buf_dp = np.empty(n_max * M * Tk, dtype=qg.dtype)
    for g0 in range(ga, gb, n_max):
        g1 = min(gb, g0 + n_max)
        for r0 in range(0, R, M):
            r1 = min(R, r0 + M)
            shape = (g1 - g0, r1 - r0, Tk)
            s = buf_s[:math.prod(shape)].reshape(shape)
            dp = buf_dp[:math.prod(shape)].reshape(shape)
            # 1. s0 = (q . k) * scale (raw part): (n,M,Dh) @ (n,Dh,Tk) -> (n,M,Tk)
            np.matmul(qg[g0:g1, r0:r1], kg[g0:g1].swapaxes(1, 2), out=s)
            # 5. o = p v -> dp = do v^T: (n,M,Dh) @ (n,Dh,Tk) -> (n,M,Tk)
            np.matmul(dog[g0:g1, r0:r1], vg[g0:g1].swapaxes(1, 2), out=dp)
            # s <- p, dp <- ds (the gradient of the raw score), row by row
            args = (g0, r0, K, s, dp, o, do, mask, scale, cap, lse)
            nchunks = parallel_chunks(8 * s.size, shape[0] * shape[1], per_thread=2) \
                if pool else 0
            if nchunks:
                _grad_parallel(nchunks, *args)
            else:
                _grad_rows(0, shape[0] * shape[1], *args)
            # 1. s0 = q . k: dq = ds k: (n,M,Tk) @ (n,Tk,Dh) -> (n,M,Dh)
            np.matmul(dp, kg[g0:g1], out=dqg[g0:g1, r0:r1])
            # dk = ds^T q, dv = p^T do, summed over the query rows (and the G heads):
            # (n,Tk,M) @ (n,M,Dh) -> (n,Tk,Dh)
            if r0 == 0:
                np.matmul(dp.swapaxes(1, 2), qg[g0:g1, r0:r1], out=dkg[g0:g1])
                np.matmul(s.swapaxes(1, 2), dog[g0:g1, r0:r1], out=dvg[g0:g1])
            else:
                dkg[g0:g1] += dp.swapaxes(1, 2) @ qg[g0:g1, r0:r1]
                dvg[g0:g1] += s.swapaxes(1, 2) @ dog[g0:g1, r0:r1]


def attention_core_backward(do, cache):
    """Twin of nn.attention.attention_core_backward: returns (dq, dk, dv)."""
    q = cache["q"]
    check_float(do, "do", fn="attention_core_backward")
    check_shape(do, "do", q.shape, fn="attention_core_backward")
    if do.dtype != q.dtype:
        raise ValueError(f"attention_core_backward: argument 'do': expected dtype {q.dtype}, "
                         f"got {do.dtype}")
    k, v, o, mask, lse = cache["k"], cache["v"], cache["o"], cache["mask"], cache["lse"]
    scale, cap = cache["scale"], cache["cap"]
    B, H, Tq, Dh = q.shape
    K, Tk = k.shape[1], k.shape[2]
    G, N = H // K, B * k.shape[1]
    R = G * Tq  # query rows per key/value head
    do = np.ascontiguousarray(do)
    qg = q.reshape(N, R, Dh)  # (B, H, Tq, Dh) -> (B*K, G*Tq, Dh): h = kh*G + hg
    dog = do.reshape(N, R, Dh)  # (B, H, Tq, Dh) -> (B*K, G*Tq, Dh)
    kg, vg = k.reshape(N, Tk, Dh), v.reshape(N, Tk, Dh)  # (B, K, Tk, Dh) -> (B*K, Tk, Dh)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dqg, dkg, dvg = dq.reshape(N, R, Dh), dk.reshape(N, Tk, Dh), dv.reshape(N, Tk, Dh)
    _by_heads(lambda ga, gb, pool: _backward_heads(ga, gb, pool, qg, kg, vg, dog, o, do,
                                                   dqg, dkg, dvg, K, mask, scale, cap, lse),
              N, 2 * R * Tk * Dh)
    return dq, dk, dv
