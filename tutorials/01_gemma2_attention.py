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
# # 1. The pieces of Gemma 2 attention
#
# Encoder-Decoder Gemma (T5Gemma) is built from Gemma 2 blocks, so before we adapt a
# decoder into an encoder-decoder (tutorial 3) we take one Gemma 2 attention layer apart:
#
# 1. RMSNorm with the `(1 + w)` weight and its zero initialisation
# 2. rotary position embeddings (RoPE), rotate-half convention
# 3. grouped-query attention (GQA)
# 4. the query scalar `query_pre_attn_scalar`
# 5. the attention soft-cap
# 6. the three masks: causal, causal-local and symmetric-local (the encoder's)
# 7. rows where every key is masked
# 8. a finite-difference gradient check
#
# Every section ends with an `assert` that the library does what the prose says; the
# test suite runs this file, so prose and code cannot drift apart silently.
#
# Run it with `python tutorials/01_gemma2_attention.py`, or open it as a notebook
# (`tutorials/README.md` has the jupytext command). Figures, when matplotlib is installed,
# show inline in a notebook; a script saves them to a temporary directory (or
# `$MINI_ENCDEC_TUTORIAL_OUT`), never into the repository.

# %%
import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.nn import (attention_core_backward, attention_core_forward,
                            attention_forward, attention_mask, rmsnorm_backward,
                            rmsnorm_forward, rope_cos_sin, rope_forward, softcap_forward)
from mini_encdec.nn.gradcheck import numerical_grad, random_cotangent, rel_error
from mini_encdec.nn.rope import rotate_half

# The readable NumPy reference. (The default "numba" backend runs jitted twins of the hot
# ops that compute the same numbers; tests/test_kernels.py holds them to the reference.)
set_backend("numpy")
rng = np.random.default_rng(0)  # all randomness through one explicit generator
np.set_printoptions(precision=4, suppress=True, linewidth=100)

# %% [markdown]
# ## 1. RMSNorm with `(1 + w)`
#
# $$\mathrm{rms}(x) = \frac{x}{\sqrt{\tfrac1D \sum_i x_i^2 + \epsilon}} \odot (1 + w),
#   \qquad \epsilon = 10^{-6}$$
#
# Gemma stores the scale as an *offset* `w`: a fresh norm has `w = 0`, which is the
# identity scale. A port that initialises `w` to ones (the usual LayerNorm habit) doubles
# every normalised activation; a port that loads Gemma weights into a `x * w` norm
# multiplies by (almost) zero. Unlike LayerNorm there is no mean subtraction and no bias.

# %%
D = 8
x = rng.standard_normal((2, 3, D)).astype(np.float32) * 5.0  # (B, T, D), any scale
w0 = np.zeros(D, dtype=np.float32)                           # a fresh norm: w = 0
y, _ = rmsnorm_forward(x, w0)

by_hand = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6)  # (B, T, D)
print("root-mean-square of each output row:", np.sqrt(np.mean(y**2, axis=-1)).ravel())
assert np.allclose(y, by_hand, atol=1e-6)
assert np.allclose(np.sqrt(np.mean(y**2, axis=-1)), 1.0, atol=1e-4)

w = rng.standard_normal(D).astype(np.float32)
y_w, _ = rmsnorm_forward(x, w)
assert np.allclose(y_w, by_hand * (1 + w), atol=1e-5)  # the (1 + w), not w

# %% [markdown]
# ## 2. Rotary position embeddings, rotate-half
#
# Each head vector of size `Dh` is cut into two halves `[x1, x2]`; position `t` rotates
# the pair `(x1[i], x2[i])` by the angle `t * theta^(-2i/Dh)`:
#
# $$\mathrm{rope}(x) = x \odot \cos + \mathrm{rotate\_half}(x) \odot \sin, \qquad
#   \mathrm{rotate\_half}([x_1, x_2]) = [-x_2, x_1]$$
#
# *Deviation from the RoFormer paper*: the paper rotates interleaved pairs
# `(x[2i], x[2i+1])`. Gemma (and Hugging Face) pair element `i` with element
# `i + Dh/2` instead. The two are the same up to a permutation of the weight rows, so
# checkpoints are only compatible with the convention they were trained with; we use
# Gemma's.

# %%
Dh = 8
cos, sin = rope_cos_sin(np.arange(6), Dh)  # (T, Dh): angles for positions 0..5
v = np.arange(1, Dh + 1, dtype=np.float32)
print("x             =", v)
print("rotate_half(x)=", rotate_half(v))
assert np.array_equal(rotate_half(v), np.concatenate([-v[Dh // 2:], v[:Dh // 2]]))
# both halves carry the same angles, and position 0 is no rotation at all
assert np.allclose(cos[:, :Dh // 2], cos[:, Dh // 2:]) and np.allclose(cos[0], 1)

# %% [markdown]
# The reason RoPE exists: after rotating `q` at position `m` and `k` at position `n`,
# their dot product depends on `m - n` only. Shifting both positions by the same amount
# leaves every attention score unchanged, and rotation never changes a vector's length.

# %%
def rotated(vec, pos):
    """RoPE of one head vector (Dh,) at integer position pos."""
    c, s = rope_cos_sin(np.array([pos]), Dh, dtype=np.float64)  # (1, Dh)
    out, _ = rope_forward(vec[None, None, None, :], c, s)       # (1, 1, 1, Dh)
    return out[0, 0, 0]


q_vec, k_vec = rng.standard_normal(Dh), rng.standard_normal(Dh)
scores = [rotated(q_vec, 7 + s) @ rotated(k_vec, 3 + s) for s in (0, 10, 1000)]
print("q.k at (m, n) = (7, 3), (17, 13), (1007, 1003):", np.round(scores, 10))
assert np.allclose(scores, scores[0], atol=1e-9)
assert np.isclose(np.linalg.norm(rotated(q_vec, 123)), np.linalg.norm(q_vec))

# %% [markdown]
# ## 3. Grouped-query attention
#
# With `H` query heads and `K` key/value heads (`H` a multiple of `K`), query head `h`
# reads key/value head `h // (H/K)`. Gemma 2 2B has `H = 8, K = 4`: every key/value head
# serves two query heads, halving the KV cache. GQA is exactly multi-head attention with
# each key/value head repeated `H/K` times; the library never materialises the copies
# (it reshapes the query heads into `K` groups of `H/K`).

# %%
B, H, K, T = 1, 4, 2, 5
q = rng.standard_normal((B, H, T, Dh))  # (B, H, T, Dh)
k = rng.standard_normal((B, K, T, Dh))  # (B, K, T, Dh)
v = rng.standard_normal((B, K, T, Dh))  # (B, K, T, Dh)
scale = Dh ** -0.5
o_gqa, _ = attention_core_forward(q, k, v, None, scale=scale, softcap=None)
k_rep = np.repeat(k, H // K, axis=1)  # (B, K, T, Dh) -> (B, H, T, Dh): heads 0,0,1,1
v_rep = np.repeat(v, H // K, axis=1)
o_mha, _ = attention_core_forward(q, k_rep, v_rep, None, scale=scale, softcap=None)
assert np.allclose(o_gqa, o_mha)
print("query head -> kv head:", {h: h // (H // K) for h in range(H)})

# %% [markdown]
# ## 4. The query scalar and 5. the attention soft-cap
#
# Gemma 2 scores are
#
# $$s = (q \cdot k)\,\cdot\,\text{query\_pre\_attn\_scalar}^{-1/2}, \qquad
#   s \leftarrow c \tanh(s / c), \quad c = 50$$
#
# then the mask, then a softmax over keys. The query scalar is a config field rather than
# always `Dh`: Gemma 2 2B and 9B use `Dh = 256`, but 27B scales by `(D/H)^{-1/2} = 144^{-1/2}`
# with `Dh = 128`. The soft-cap keeps every score strictly inside `(-c, c)` and is nearly
# the identity for small scores. (Ports that use fused "flash"/SDPA kernels often drop
# the soft-cap silently: Hugging Face's "sdpa" path ignores it, so parity needs "eager".)
#
# Below: the library's attention core against the equation written out as loops.

# %%
def attention_by_the_equation(q, k, v, allowed, scale, cap):
    """Loops over heads and queries: the formula, nothing clever. allowed (Tq, Tk)."""
    B, H, Tq, _ = q.shape
    G = H // k.shape[1]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                s = (k[b, h // G] @ q[b, h, i]) * scale          # (Tk,)
                if cap is not None:
                    s = cap * np.tanh(s / cap)
                keys = np.flatnonzero(allowed[i])
                if keys.size == 0:
                    continue                                      # no key: zeros (see 7.)
                p = np.exp(s[keys] - s[keys].max())
                p /= p.sum()
                out[b, h, i] = p @ v[b, h // G, keys]            # (n,) @ (n, Dh) -> (Dh,)
    return out


qbig = 20 * q  # large scores, so the cap matters
causal = attention_mask(np.arange(T), np.arange(T), causal=True)  # (1, 1, T, T)
for query_pre_attn_scalar, cap in ((Dh, None), (144.0, None), (Dh, 50.0), (Dh, 1.0)):
    sc = query_pre_attn_scalar ** -0.5
    o_lib, _ = attention_core_forward(qbig, k, v, causal, scale=sc, softcap=cap)
    o_ref = attention_by_the_equation(qbig, k, v, causal[0, 0], sc, cap)
    assert np.allclose(o_lib, o_ref, atol=1e-10), (query_pre_attn_scalar, cap)

s = np.array([-1e4, -100.0, -10.0, 0.0, 1.0, 10.0, 100.0, 1e4])
capped, _ = softcap_forward(s, 50.0)
print("scores      :", s)
print("soft-capped :", capped)
assert np.all(np.abs(capped) <= 50.0) and abs(capped[4] - 1.0) < 1e-3

# %% [markdown]
# ## 6. The three masks
#
# `True` means "query row may attend to key column". With positions `q` and `k` and the
# sliding window `W`:
#
# | mask | rule | used by |
# |---|---|---|
# | causal | `k <= q` | decoder, global layers |
# | causal-local | `0 <= q - k < W` | decoder, local layers (W keys, the query included) |
# | symmetric-local | `abs(q - k) < W` | encoder, local layers (up to 2W - 1 keys) |
# | (none) | every key | encoder, global layers |
#
# Gemma 2 alternates local (even layers) and global (odd layers). The window is the
# classic off-by-one trap: `q - k <= W` would let `W + 1` keys through. The symmetric
# window is the T5Gemma encoder's; the paper does not spell it out, and the rule here
# follows the Hugging Face implementation. Printed for `T = 5, W = 2` (1 = allowed):

# %%
T, W = 5, 2
pos = np.arange(T)
masks = {
    "causal": attention_mask(pos, pos, causal=True),
    "causal-local": attention_mask(pos, pos, causal=True, window=W),
    "symmetric-local": attention_mask(pos, pos, causal=False, window=W),
}
for name, m in masks.items():
    print(f"{name} (rows = queries, columns = keys):\n{m[0, 0].astype(int)}\n")

assert np.array_equal(masks["causal"][0, 0], np.tril(np.ones((T, T), dtype=bool)))
assert np.array_equal(masks["causal-local"][0, 0].astype(int), np.array([
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 1, 1, 0, 0],
    [0, 0, 1, 1, 0],
    [0, 0, 0, 1, 1]]))
assert np.array_equal(masks["symmetric-local"][0, 0].astype(int), np.array([
    [1, 1, 0, 0, 0],
    [1, 1, 1, 0, 0],
    [0, 1, 1, 1, 0],
    [0, 0, 1, 1, 1],
    [0, 0, 0, 1, 1]]))
# the definitions, for every window size
for w_ in range(1, 7):
    d = pos[:, None] - pos[None, :]  # (T, 1) - (1, T) -> (T, T): q - k
    assert np.array_equal(attention_mask(pos, pos, causal=True, window=w_)[0, 0],
                          (0 <= d) & (d < w_))
    assert np.array_equal(attention_mask(pos, pos, causal=False, window=w_)[0, 0],
                          np.abs(d) < w_)

# %% [markdown]
# Padding is a fourth mask, `key_padding[b, k]` (1 for real tokens), ANDed into any of
# the three. Here the second sequence has only 3 real tokens:

# %%
pad = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)  # (B, T)
m = attention_mask(pos, pos, causal=False, window=W, key_padding=pad)  # (B, 1, T, T)
print(m[1, 0].astype(int))
assert not m[1, 0][:, 3:].any() and np.array_equal(m[0, 0], masks["symmetric-local"][0, 0])

# %% [markdown]
# ## 7. A query with no allowed key
#
# A padded *query* row whose keys are all padding has nothing to attend to. The softmax of
# an all `-inf` row is `0/0 = NaN`; Hugging Face's eager path adds a large negative number
# instead, which gives a uniform average over the forbidden keys. *Our choice* (SPEC.md section 1):
# such a row outputs exactly zeros and gets exactly zero gradient. The loss never reads
# padded positions, so this changes no real result; it only keeps NaNs out.

# %%
B, H, K, T = 1, 2, 1, 4
q = rng.standard_normal((B, H, T, Dh))
k = rng.standard_normal((B, K, T, Dh))
v = rng.standard_normal((B, K, T, Dh))
mask = np.ones((1, 1, T, T), dtype=bool)
mask[0, 0, 2, :] = False  # query 2 may see no key at all
o, cache = attention_core_forward(q, k, v, mask, scale=Dh**-0.5, softcap=50.0)
dq, dk, dv = attention_core_backward(np.ones_like(o), cache)
print("output of query 2, both heads:", o[0, :, 2])
assert np.all(o[0, :, 2] == 0) and np.all(dq[0, :, 2] == 0) and np.all(np.isfinite(o))

# %% [markdown]
# ## A whole attention layer, and its attention map
#
# `attention_forward` puts it together: projections (`y = x W^T`, weights `[out, in]` as
# in Hugging Face), RoPE on `q` and `k`, the core, heads concatenated, `Wo`. Gemma 2's
# real layer has no biases. We draw the probabilities of a causal-local layer.

# %%
B, T, Dm, H, K, Dh, W = 1, 10, 16, 4, 2, 8, 4
x = rng.standard_normal((B, T, Dm))
Wq, Wk, Wv = (0.3 * rng.standard_normal((n * Dh, Dm)) for n in (H, K, K))
Wo = 0.3 * rng.standard_normal((Dm, H * Dh))
rope = rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
local = attention_mask(np.arange(T), np.arange(T), causal=True, window=W)
y, cache = attention_forward(x, x, Wq, Wk, Wv, Wo, num_heads=H, num_kv_heads=K, head_dim=Dh,
                             scale=Dh**-0.5, softcap=50.0, mask=local, rope_q=rope,
                             rope_k=rope)
p = cache["core"]["p"].reshape(B, H, T, T)  # (B, K, H/K, T, T) -> (B, H, T, T)
assert np.allclose(p.sum(-1), 1) and np.all(p[0][:, ~local[0, 0]] == 0)
print("y:", y.shape, " attention probabilities:", p.shape)

plt = pyplot()
if plt is not None:
    fig, axes = plt.subplots(1, H, figsize=(3 * H, 3))
    for h, ax in enumerate(axes):
        ax.imshow(p[0, h], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h} (kv head {h // (H // K)})")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    save(fig, "01_attention_map.png")

# %% [markdown]
# ## 8. Checking a backward pass with finite differences
#
# Every layer comes as a `forward -> (out, cache)` / `backward(dout, cache)` pair. To check
# a backward, pick a fixed random `R`, define the scalar `L = sum(out * R)` (so
# `dL/dout = R`), and compare the analytic gradient with central differences in float64
# (`mini_encdec/nn/gradcheck.py` uses the fourth-order formula
# `(8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h`). Here: RMSNorm, both inputs.

# %%
x = rng.standard_normal((2, 3, 5))       # float64: finite differences need the precision
w = 0.1 * rng.standard_normal(5)
y, cache = rmsnorm_forward(x, w)
R = random_cotangent(y, rng)             # dL/dy
dx, dw = rmsnorm_backward(R, cache)


def loss():
    return float(np.sum(rmsnorm_forward(x, w)[0] * R))


err_x = rel_error(dx, numerical_grad(loss, x))
err_w = rel_error(dw, numerical_grad(loss, w))
print(f"relative error: dx {err_x:.1e}, dw {err_w:.1e}")
assert err_x < 1e-8 and err_w < 1e-8

# %% [markdown]
# The same check for the attention core with a causal-local mask and the soft-cap on:

# %%
B, H, K, T, Dh = 1, 2, 1, 4, 4
q, k, v = (rng.standard_normal((B, n, T, Dh)) for n in (H, K, K))
mask = attention_mask(np.arange(T), np.arange(T), causal=True, window=2)
o, cache = attention_core_forward(q, k, v, mask, scale=Dh**-0.5, softcap=1.0)
R = random_cotangent(o, rng)
grads = attention_core_backward(R, cache)


def loss():
    return float(np.sum(attention_core_forward(q, k, v, mask, scale=Dh**-0.5,
                                               softcap=1.0)[0] * R))


for name, arr, g in zip("qkv", (q, k, v), grads):
    err = rel_error(g, numerical_grad(loss, arr))
    print(f"d{name}: relative error {err:.1e}")
    assert err < 1e-8
