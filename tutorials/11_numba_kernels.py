# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11. The Numba kernels: online softmax, a recomputing backward, the speed-up
#
# Every hot operation has two implementations with the same signature: the readable
# NumPy reference in `mini_encdec/nn/` (what the assignments grade) and a Numba twin in
# `mini_encdec/kernels/` (what runs by default). `mini_encdec/ops.py` picks one for the
# whole run (`MINI_ENCDEC_BACKEND=numpy|numba`, or `set_backend`). We look at the biggest
# one, the attention core. Per query row `i` of one head:
#
# $$s_{ij} = c \tanh\Big(\frac{q_i \cdot k_j \cdot \sigma}{c}\Big) \text{ (allowed } j\text{)},
#   \qquad p_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad o_i = \sum_j p_{ij} v_j$$
#
# with `sigma = query_pre_attn_scalar^-1/2` and the soft-cap `c`. The reference computes
# the whole `(Tq, Tk)` matrix `p` per head and keeps it for the backward pass: memory
# `B H Tq Tk`, quadratic in the sequence. The kernel keeps only one number per row, the
# log-sum-exp `L_i = log sum_j e^{s_ij}`, using two ideas from flash attention:
#
# **Online softmax.** Visit the keys in blocks; keep a running maximum `m`, a running
# sum `l` and an unnormalised output `a`. When a block raises the maximum, rescale what
# you have:
#
# $$m' = \max(m, \max_{j \in \text{blk}} s_j), \quad
#   l' = l\, e^{m - m'} + \sum_{j \in \text{blk}} e^{s_j - m'}, \quad
#   a' = a\, e^{m - m'} + \sum_{j \in \text{blk}} e^{s_j - m'} v_j$$
#
# and at the end `o = a / l`, `L = m + log l`. One pass over the keys, no row of `p` kept.
#
# **Recomputing backward.** Given `L`, any probability is recomputed on demand,
# `p_ij = exp(s_ij - L_i)`, so the backward recomputes the scores instead of reading a
# stored `p`. With `D_i = do_i . o_i`:
#
# $$dp_{ij} = do_i \cdot v_j, \quad ds_{ij} = p_{ij}(dp_{ij} - D_i)\,(1 - \tanh^2)\,\sigma,
#   \quad dq_i = \sum_j ds_{ij} k_j, \quad dk_j = \sum_i ds_{ij} q_i, \quad dv_j = \sum_i p_{ij} do_i$$
#
# (`sum_j p_ij dp_ij = do_i . o_i`, which is why `D` needs only `o`.) We write both in
# NumPy first, check them against the reference, then time the real kernels.

# %%
import time

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.nn import attention_core_backward, attention_core_forward, attention_mask

rng = np.random.default_rng(0)

# %% [markdown]
# ## Online softmax, by hand
#
# One query row against 40 keys, visited in blocks of 8. The running maximum changes as
# blocks arrive; the rescaling makes the result exact anyway.

# %%
def online_softmax_row(s, v, block):
    """o = softmax(s) v and L = logsumexp(s), visiting s (Tk,), v (Tk, Dh) in blocks."""
    m, l, a = -np.inf, 0.0, np.zeros(v.shape[1])
    history = []
    for j0 in range(0, len(s), block):
        sb, vb = s[j0:j0 + block], v[j0:j0 + block]              # one block of keys
        m_new = max(m, sb.max())
        rescale = np.exp(m - m_new)                              # 0 on the first block
        e = np.exp(sb - m_new)                                   # (block,)
        l = l * rescale + e.sum()
        a = a * rescale + e @ vb                                 # (block,) @ (block, Dh)
        m = m_new
        history.append((m, l))
    return a / l, m + np.log(l), history


s = rng.normal(0, 3, size=40)
v = rng.normal(size=(40, 4))
o, L, history = online_softmax_row(s, v, block=8)
p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()              # the two-pass softmax
print("running max after each block:", np.round([h[0] for h in history], 3))
assert np.allclose(o, p @ v) and np.isclose(L, np.log(np.exp(s).sum()))
assert np.allclose(np.exp(s - L), p)                             # p recomputed from L alone

# %% [markdown]
# ## The recomputing backward, by hand
#
# A grouped-query case (4 query heads sharing 2 key/value heads), a causal local mask and
# the soft-cap. The backward below reads only `q, k, v, o, L` and the mask, recomputes
# `p` from `L`, and must give the reference's gradients.

# %%
B, H, K, T, Dh = 2, 4, 2, 12, 8
scale, cap = Dh ** -0.5, 50.0
q = rng.normal(size=(B, H, T, Dh))
k = rng.normal(size=(B, K, T, Dh))
v = rng.normal(size=(B, K, T, Dh))
do = rng.normal(size=(B, H, T, Dh))
pos = np.arange(T)
mask = attention_mask(pos, pos, causal=True, window=5)          # (1, 1, T, T)
o_ref, cache = attention_core_forward(q, k, v, mask, scale=scale, softcap=cap)
dq_ref, dk_ref, dv_ref = attention_core_backward(do, cache)

G = H // K
kh, vh = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)        # head h reads h // G
t = np.tanh(q @ kh.swapaxes(-1, -2) * scale / cap)               # (B, H, T, T)
s = np.where(mask, cap * t, -np.inf)
L = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) + s.max(-1, keepdims=True)
o = np.exp(s - L) @ vh                                           # forward: only L is kept
assert np.allclose(o, o_ref)

p = np.exp(s - L)                                                # recomputed from L
dp = do @ vh.swapaxes(-1, -2)                                    # (B, H, T, T)
D = np.sum(do * o, axis=-1, keepdims=True)                       # (B, H, T, 1)
ds = p * (dp - D) * (1 - t ** 2) * scale
dq = ds @ kh
dk = (ds.swapaxes(-1, -2) @ q).reshape(B, K, G, T, Dh).sum(2)    # sum the G query heads
dv = (p.swapaxes(-1, -2) @ do).reshape(B, K, G, T, Dh).sum(2)
for name, a, b in (("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)):
    print(f"{name}: max |by hand - reference| = {np.max(np.abs(a - b)):.1e}")
    assert np.allclose(a, b, atol=1e-10)

# %% [markdown]
# ## The Numba kernel
#
# `mini_encdec/kernels/attention.py` implements exactly this (its docstring is a
# checklist: what is fused, what runs in parallel over rows with `prange`, what memory
# it needs). For a decoding step (a few query rows) it runs the online softmax row by
# row over the cached keys in place; for training it tiles the rows and hands the
# `q k^T` and `p v` products to BLAS with one fused Numba pass per row in between, and
# keeps only `L`. The first call compiles it (or loads it from the on-disk cache in
# `__pycache__`):

# %%
t0 = time.perf_counter()
from mini_encdec import kernels  # noqa: E402  (imports Numba: timed on purpose)
t_import = time.perf_counter() - t0
q32, k32, v32, do32 = (x.astype(np.float32) for x in (q, k, v, do))
t0 = time.perf_counter()
o_fast, cache_fast = kernels.attention_core_forward(q32, k32, v32, mask, scale=scale,
                                                    softcap=cap)
grads_fast = kernels.attention_core_backward(do32, cache_fast)
t_first = time.perf_counter() - t0
print(f"import {t_import:.1f} s; first float32 call (compile or load) {t_first:.1f} s")

o_ref32, cache_ref32 = attention_core_forward(q32, k32, v32, mask, scale=scale, softcap=cap)
grads_ref32 = attention_core_backward(do32, cache_ref32)
print("max |kernel - reference|: o", float(np.max(np.abs(o_fast - o_ref32))), " grads",
      [float(np.max(np.abs(a - b))) for a, b in zip(grads_fast, grads_ref32)])
assert np.allclose(o_fast, o_ref32, atol=1e-5)
assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(grads_fast, grads_ref32))

# %% [markdown]
# **Memory.** The largest floating-point array each cache keeps, at a longer sequence:
# the reference keeps `p` (and `tanh`), `(B, H, T, T)`; the kernel keeps nothing of that
# size, only `O(B H T Dh)` (`q, k, v, o` and `L`). Both also hold on to the mask they
# were given, one boolean `(T, T)` array shared by all heads.

# %%
T_long = 512
ql = rng.normal(size=(1, H, T_long, Dh)).astype(np.float32)
kl = rng.normal(size=(1, K, T_long, Dh)).astype(np.float32)
vl = rng.normal(size=(1, K, T_long, Dh)).astype(np.float32)
pos = np.arange(T_long)
mask_long = attention_mask(pos, pos, causal=True)


def largest(cache):
    return max(x.size for x in cache.values()
               if isinstance(x, np.ndarray) and x.dtype.kind == "f")


_, c_ref = attention_core_forward(ql, kl, vl, mask_long, scale=scale, softcap=cap)
_, c_fast = kernels.attention_core_forward(ql, kl, vl, mask_long, scale=scale, softcap=cap)
print(f"T = {T_long}: largest cached float array, reference {largest(c_ref):,} numbers "
      f"(H T^2 = {H * T_long ** 2:,}); kernel {largest(c_fast):,} (H T Dh = "
      f"{H * T_long * Dh:,})")
assert largest(c_ref) >= H * T_long ** 2 and largest(c_fast) <= H * T_long * Dh

# %% [markdown]
# ## The measured speed-up
#
# Two measurements, float32, the best of a few repeats (the machine may be shared, so
# single timings jump):
#
# 1. *training*: forward plus backward of the attention core, causal, 4 sequences with 4
#    query heads of size 32 over 2 key/value heads, as the sequence grows (the tiled
#    path);
# 2. *decoding*: the forward of one generation step, one query row per head (8 heads, 4
#    key/value heads) against a cache of `Tk` keys (the online-softmax path).
#
# What to expect on a 2-core machine: modest factors, not orders of magnitude. The
# reference already hands its matmuls to BLAS; the kernel saves the separate elementwise
# passes over the `(T, T)` scores (scale, soft-cap, mask, max, exp, sum, normalise) and
# their memory, which matters more as `T` grows (about 1-2x here). A decoding step is
# dominated by NumPy's per-call overhead for short caches, which one compiled loop avoids
# (about 2-3x), and by reading the cache for long ones (about 1x). The speed-up is
# measured, not promised, and nothing here asserts it. Whole training steps gain less,
# since the big matmuls run on BLAS under both backends; `python -m mini_encdec bench`
# measures those, against PyTorch too (README, "Speed").

# %%
def best_time(fn, repeats):
    fn()                                                          # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fwd_bwd(impl_forward, impl_backward, args, do_):
    def run():
        o_, c_ = impl_forward(*args, scale=32 ** -0.5, softcap=cap)
        impl_backward(do_, c_)
    return run


training = []
for T_ in (32, 64, 128, 256, 512):
    qb = rng.normal(size=(4, 4, T_, 32)).astype(np.float32)
    kb = rng.normal(size=(4, 2, T_, 32)).astype(np.float32)
    vb = rng.normal(size=(4, 2, T_, 32)).astype(np.float32)
    dob = rng.normal(size=qb.shape).astype(np.float32)
    pos = np.arange(T_)
    args = (qb, kb, vb, attention_mask(pos, pos, causal=True))
    repeats = 5 if T_ <= 128 else 3
    t_ref = best_time(fwd_bwd(attention_core_forward, attention_core_backward, args, dob),
                      repeats)
    t_fast = best_time(fwd_bwd(kernels.attention_core_forward, kernels.attention_core_backward,
                               args, dob), repeats)
    training.append((T_, t_ref * 1e3, t_fast * 1e3))

decoding = []
for Tk in (64, 256, 1024, 4096):
    qd = rng.normal(size=(1, 8, 1, 32)).astype(np.float32)       # one new token
    kd = rng.normal(size=(1, 4, Tk, 32)).astype(np.float32)      # the cached keys
    vd = rng.normal(size=(1, 4, Tk, 32)).astype(np.float32)
    args = (qd, kd, vd, np.ones((1, 1, 1, Tk), dtype=bool))
    t_ref = best_time(lambda: attention_core_forward(*args, scale=32 ** -0.5, softcap=cap), 20)
    t_fast = best_time(lambda: kernels.attention_core_forward(*args, scale=32 ** -0.5,
                                                              softcap=cap), 20)
    decoding.append((Tk, t_ref * 1e3, t_fast * 1e3))

for title, rows, n in (("training, forward + backward", training, "T"),
                       ("one decoding step, forward", decoding, "Tk")):
    print(f"{title}\n{n:>6s} {'numpy ms':>9s} {'numba ms':>9s} {'speed-up':>9s}")
    for x, a, b in rows:
        print(f"{x:6d} {a:9.3f} {b:9.3f} {a / b:8.1f}x")
assert all(a > 0 and b > 0 for _, a, b in training + decoding)

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    for label, rows in (("training (fwd + bwd), sequence length T", training),
                        ("one decoding step, cached keys Tk", decoding)):
        ax.plot([r[0] for r in rows], [r[1] / r[2] for r in rows], marker="o", label=label)
    ax.axhline(1.0, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("keys per query row")
    ax.set_ylabel("speed-up of the Numba kernel")
    ax.set_title("attention core, float32", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "11_speedup.png")

# %% [markdown]
# The other kernels (RMSNorm, the GeGLU activation, the soft-capped cross-entropy, the
# embedding-gradient scatter, the AdamW update) follow the same pattern, each checked
# against its reference by `tests/test_kernels.py`.
