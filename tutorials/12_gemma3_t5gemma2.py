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
# # 12. From Gemma 2 to Gemma 3 to T5Gemma 2
#
# T5Gemma is built from Gemma 2 (tutorials 1 and 3). Its successor, T5Gemma 2, is built
# from **Gemma 3**, and adds the two options of tutorial 9. This tutorial walks through
# every difference, one at a time, each with its equation and a tiny check:
#
# | | Gemma 2 | Gemma 3 | T5Gemma 2 (encoder / decoder) |
# |---|---|---|---|
# | q/k norm | none | RMSNorm of every query and key head | as Gemma 3 |
# | attention soft-cap | `50 tanh(s / 50)` | none | none |
# | RoPE base | 10,000 everywhere | 10,000 local, 1,000,000 global (global with linear scaling) | as Gemma 3 |
# | layer pattern | local, global, local, ... | 5 local, then 1 global | as Gemma 3 |
# | encoder local window | - | - | split: `(W+1)//2` keys left, `W//2` right |
# | decoder attention | - | - | merged: one softmax over `[decoder ; encoder]` |
# | embeddings | one table (input = output) | one table | one table for encoder input, decoder input and output, plus an eoi vector |
#
# All of these are fields of `GemmaConfig` / `EncDecConfig` (SPEC.md sections 2, 3 and 5):
# `qk_norm`, `attn_logit_softcapping=None`, `rope_local_theta`, `rope_scaling_factor`,
# `layer_types`, `bidirectional_window="split"`, `merged_attention`,
# `tie_all_embeddings` and `eoi_token_id`. `t5gemma2_config(stack)` sets the T5Gemma 2 ones
# from a Gemma 3 stack. Everything here is tiny: the file runs in a few seconds.

# %%
import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import (FULL, SLIDING, GemmaConfig, alternating_layer_types,
                                patterned_layer_types, preset, t5gemma2_config)
from mini_encdec.models import build_model
from mini_encdec.models.params import EOI_KEY
from mini_encdec.nn import (attention_forward, attention_mask, rmsnorm_forward,
                            rope_cos_sin, rope_forward)
from mini_encdec.nn.masks import split_window_allowed
from mini_encdec.reference import t5gemma_forward
from mini_encdec.training.adapt import adapt

set_backend("numpy")  # the readable reference
rng = np.random.default_rng(0)
np.set_printoptions(precision=4, suppress=True, linewidth=100)

g2, g3 = preset("2b"), preset("gemma3_tiny")
for f in ("qk_norm", "attn_logit_softcapping", "final_logit_softcapping", "rope_theta",
          "rope_local_theta", "rope_scaling_factor"):
    print(f"{f:24s} Gemma 2 2B: {getattr(g2, f)!s:10s} gemma3_tiny: {getattr(g3, f)}")
assert g3.qk_norm and not g2.qk_norm
assert g3.attn_logit_softcapping is None and g3.final_logit_softcapping is None

# %% [markdown]
# ## 1. RMSNorm of every query and key head
#
# Gemma 3 normalises each head vector of the queries and keys over its `Dh` entries, with
# the `(1 + w)` weight of tutorial 1 (one weight of shape `(Dh,)` shared by the heads),
# after the projection and **before** RoPE:
#
# $$\hat q_h = \frac{q_h}{\sqrt{\tfrac{1}{D_h}\lVert q_h\rVert^2 + \epsilon}} \odot (1 + w_q),
#   \qquad \hat k_h \text{ likewise with } w_k, \qquad s = \mathrm{rope}(\hat q_h) \cdot
#   \mathrm{rope}(\hat k_h)\ \cdot\ \text{query\_pre\_attn\_scalar}^{-1/2}$$
#
# We build one attention layer by hand and check the library's `attention_forward`
# (given `q_norm` and `k_norm`) against it.

# %%
B, T, D, H, K, Dh = 1, 6, 16, 2, 1, 8
Wq, Wk, Wv = (0.3 * rng.standard_normal((n * Dh, D)) for n in (H, K, K))
Wo = 0.3 * rng.standard_normal((D, H * Dh))
w_q, w_k = 0.2 * rng.standard_normal(Dh), 0.2 * rng.standard_normal(Dh)
rope = rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
scale = Dh ** -0.5
causal = attention_mask(np.arange(T), np.arange(T), causal=True)  # (1, 1, T, T)


def heads(y, n):
    """(B, T, n*Dh) -> (B, n, T, Dh)"""
    return y.reshape(y.shape[0], y.shape[1], n, Dh).transpose(0, 2, 1, 3)


def logits_by_hand(x, qk_norm):
    """The scores s (B, H, T, T) of the equation above, before the mask and softmax."""
    q, k = heads(x @ Wq.T, H), heads(x @ Wk.T, K)
    if qk_norm:
        q, k = rmsnorm_forward(q, w_q)[0], rmsnorm_forward(k, w_k)[0]  # per head, over Dh
    q, k = rope_forward(q, *rope)[0], rope_forward(k, *rope)[0]
    return (q @ np.repeat(k, H // K, axis=1).transpose(0, 1, 3, 2)) * scale


x = rng.standard_normal((B, T, D))
s = np.where(causal[0], logits_by_hand(x, True), -np.inf)
p = np.exp(s - s.max(-1, keepdims=True))
p /= p.sum(-1, keepdims=True)
v = np.repeat(heads(x @ Wv.T, K), H // K, axis=1)
y_hand = (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * Dh) @ Wo.T
y_lib, _ = attention_forward(x, x, Wq, Wk, Wv, Wo, num_heads=H, num_kv_heads=K, head_dim=Dh,
                             scale=scale, softcap=None, mask=causal, rope_q=rope,
                             rope_k=rope, q_norm=w_q, k_norm=w_k)
print("max |library - by hand|:", float(np.abs(y_lib - y_hand).max()))
assert np.allclose(y_lib, y_hand, atol=1e-12)

# %% [markdown]
# **Why it replaces the soft-cap.** After the norm, every head vector has length
# `sqrt(Dh)` before its `(1 + w)` (RoPE is a rotation and keeps lengths), so by
# Cauchy-Schwarz
#
# $$|s| \le \text{scale}\cdot D_h \cdot \max_i|1 + w_{q,i}| \cdot \max_i|1 + w_{k,i}|$$
#
# whatever the input. Without the norm the logits grow with the square of the
# activations; Gemma 2 needed `50 tanh(s/50)` to keep them in range. Scale the input by
# 1, 100 and 10,000:

# %%
bound = scale * Dh * np.abs(1 + w_q).max() * np.abs(1 + w_k).max()
for c in (1.0, 1e2, 1e4):
    with_norm = np.abs(logits_by_hand(c * x, True)).max()
    without = np.abs(logits_by_hand(c * x, False)).max()
    print(f"input x {c:>7g}: max |s| with q/k norm {with_norm:8.3f} (bound {bound:.3f}),"
          f" without {without:12.1f}")
    assert with_norm <= bound + 1e-9
assert np.abs(logits_by_hand(1e4 * x, False)).max() > 1e6 * bound  # unbounded: ~ c^2

# %% [markdown]
# ## 2. No attention soft-cap (and no final soft-cap)
#
# Gemma 3 sets both soft-caps to `None` (`attn_logit_softcapping`,
# `final_logit_softcapping`). With `softcap=None` the attention core is the plain
# softmax of the scores, so the layer above is already Gemma 3's. A 50-cap would have
# changed the result only slightly here, because the q/k norm keeps the scores small:

# %%
y_capped, _ = attention_forward(x, x, Wq, Wk, Wv, Wo, num_heads=H, num_kv_heads=K,
                                head_dim=Dh, scale=scale, softcap=50.0, mask=causal,
                                rope_q=rope, rope_k=rope, q_norm=w_q, k_norm=w_k)
print("max |capped - uncapped|:", float(np.abs(y_capped - y_lib).max()))
assert 0 < np.abs(y_capped - y_lib).max() < 1e-2

# %% [markdown]
# ## 3. A RoPE base per layer type, and linear scaling
#
# Gemma 3's local layers rotate with base `theta = 10,000`, its global layers with
# `theta = 1,000,000`: pair `i` of a global layer turns `100^(2i/Dh)` times more slowly
# than in a local layer (the slowest pair almost 100 times at Gemma 3's `Dh = 256`, about
# 32 times at this tutorial's `Dh = 8`), so positions far apart stay distinguishable. Models trained to a longer context (Gemma 3
# 4B and up) also divide the global layers' positions by a factor `f` (linear scaling,
# `rope_scaling_factor`):
#
# $$\text{angle}_i(t) = \frac{t}{f}\,\theta^{-2i/D_h}, \qquad (\theta, f) =
#   \begin{cases}(10^4, 1) & \text{local}\\ (10^6, f) & \text{global}\end{cases}$$
#
# `GemmaConfig.rope_base(layer_type)` returns the pair; `rope_cos_sin(..., scale=1/f)`
# multiplies the angles.

# %%
g3_long = g3.replace(rope_scaling_factor=8.0)
print("local :", g3_long.rope_base(SLIDING), " global:", g3_long.rope_base(FULL))
assert g3_long.rope_base(SLIDING) == (10_000.0, 1.0)
assert g3_long.rope_base(FULL) == (1_000_000.0, 8.0)
assert g2.rope_base(SLIDING) == g2.rope_base(FULL) == (10_000.0, 1.0)  # Gemma 2: one base

theta, f = g3_long.rope_base(FULL)
pos = np.array([0, 8, 80, 800])
cos, sin = rope_cos_sin(pos, Dh, theta, dtype=np.float64, scale=1 / f)
angle = (pos / f)[:, None] * theta ** (-np.arange(0, Dh, 2) / Dh)  # (T, Dh/2) by hand
assert np.allclose(cos[:, :Dh // 2], np.cos(angle)) and np.allclose(sin[:, Dh // 2:],
                                                                     np.sin(angle))
# position 800 scaled by 8 is position 100 unscaled
assert np.allclose(cos[3], rope_cos_sin(np.array([100]), Dh, theta, dtype=np.float64)[0][0])
slowest = {name: 2 * np.pi * g3.rope_base(lt)[0] ** ((Dh - 2) / Dh)   # wavelength of pair Dh/2 - 1
           for name, lt in (("local", SLIDING), ("global", FULL))}
for name, wl in slowest.items():
    print(f"{name:6s} slowest wavelength: {wl:10,.0f} positions")
assert np.isclose(slowest["global"] / slowest["local"], 100 ** ((Dh - 2) / Dh))

# %% [markdown]
# ## 4. The 5:1 layer pattern
#
# Gemma 2 alternates local and global layers. Gemma 3 has five local layers, then one
# global: layer `i` is global when `(i + 1) % 6 == 0` (transformers'
# `sliding_window_pattern = 6`). Local layers only look `W` tokens back, so their KV
# cache stays small; with five of six layers local, the cache of a long context shrinks
# by almost a factor 6 compared with all-global (Gemma 2's half-local pattern: almost 2).
# Counted for Gemma 3 1B (26 layers, `W = 512`) at a context of 32,768 tokens, in cached
# positions per KV head:

# %%
short = {SLIDING: "L", FULL: "G"}
print("Gemma 2, 12 layers:", "".join(short[t] for t in alternating_layer_types(12)))
print("Gemma 3, 12 layers:", "".join(short[t] for t in patterned_layer_types(12)))
g3_1b = preset("gemma3_1b")
assert g3.layer_types == patterned_layer_types(6) == (SLIDING,) * 5 + (FULL,)
assert [i for i, t in enumerate(g3_1b.layer_types) if t == FULL] == [5, 11, 17, 23]
assert all((t == FULL) == ((i + 1) % 6 == 0) for i, t in enumerate(g3_1b.layer_types))


def cached_positions(layer_types, context, window):
    return sum(context if t == FULL else min(context, window) for t in layer_types)


N, W_1b = 32_768, g3_1b.sliding_window
all_global = cached_positions((FULL,) * 26, N, W_1b)
for name, lts in (("Gemma 2 pattern", alternating_layer_types(26)),
                  ("Gemma 3 pattern", g3_1b.layer_types)):
    print(f"{name}: {cached_positions(lts, N, W_1b):9,d} cached positions, "
          f"{all_global / cached_positions(lts, N, W_1b):.2f}x less than all-global")
assert 5.5 < all_global / cached_positions(g3_1b.layer_types, N, W_1b) < 6
assert 1.9 < all_global / cached_positions(alternating_layer_types(26), N, W_1b) < 2

# %% [markdown]
# ## 5. The encoder's split sliding window
#
# A decoder's local window is causal: `0 <= q - k < W`. The T5Gemma encoder (tutorial 1)
# made it symmetric, `|q - k| < W`, up to `2W - 1` keys. T5Gemma 2 follows transformers'
# bidirectional sliding window instead: it **splits** one window of `W` keys around the
# query,
#
# $$\text{allowed}(q, k) \iff 0 \le q - k < \left\lfloor\tfrac{W+1}{2}\right\rfloor
#   \;\text{ or }\; 0 < k - q < \left\lfloor\tfrac{W}{2}\right\rfloor + 1$$
#
# i.e. the query and `(W+1)//2 - 1` keys on its left, `W//2` on its right. For even `W`
# the right side gets one key more than the left. `attention_mask(..., causal=False,
# window=W, split=True)` computes it (through `nn/masks.py: split_window_allowed`, the
# assignment task 2.5); `t5gemma2_config` sets `bidirectional_window="split"` on the
# encoder only. For `W = 4`, `T = 8`:

# %%
T, W = 8, 4
pos = np.arange(T)
symmetric = attention_mask(pos, pos, causal=False, window=W)[0, 0]
split = attention_mask(pos, pos, causal=False, window=W, split=True)[0, 0]
print(f"symmetric |q-k| < {W} (T5Gemma):\n{symmetric.astype(int)}\n")
print(f"split (T5Gemma 2):\n{split.astype(int)}")
q_, k_ = pos[:, None], pos[None, :]
rule = ((0 <= q_ - k_) & (q_ - k_ < (W + 1) // 2)) | ((0 < k_ - q_) & (k_ - q_ < W // 2 + 1))
assert np.array_equal(split, rule)
assert np.array_equal(split, split_window_allowed(q_ - k_, W))
assert split[4].sum() == W and symmetric[4].sum() == 2 * W - 1  # a middle query
assert np.flatnonzero(split[4]).tolist() == [3, 4, 5, 6]        # 1 left, itself, 2 right
assert np.all(split <= symmetric)                                # a subset, never more
# the model's encoder, built by t5gemma2_config, uses it in its local layers only
t5g2_stack = GemmaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         intermediate_size=32, sliding_window=W,
                         layer_types=patterned_layer_types(3, 3), qk_norm=True,
                         rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                         attn_logit_softcapping=None, final_logit_softcapping=None)
cfg2 = t5gemma2_config(t5g2_stack)
assert cfg2.encoder.bidirectional_window == "split"
assert cfg2.decoder.bidirectional_window == "symmetric"  # unused: the decoder is causal

plt = pyplot()
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    for ax, (title, m) in zip(axes, ((f"T5Gemma: |q-k| < {W}", symmetric),
                                     (f"T5Gemma 2: split, W = {W}", split))):
        ax.imshow(m, cmap="Greys", vmin=0, vmax=1)
        ax.set_title(f"{title} (black: may attend)", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("encoder query")
    save(fig, "12_encoder_windows.png")

# %% [markdown]
# ## 6. Merged attention: with no encoder key it is the decoder's self-attention
#
# T5Gemma 2's decoder block has one attention (tutorial 9): the queries are the
# decoder's, the keys and values `[decoder ; encoder]`, one softmax over both; RoPE
# rotates the decoder part only. Written as the library's attention layer over the
# concatenated keys, with the encoder part unrotated (cos = 1, sin = 0):
#
# $$\mathrm{merged}(x, e) = \mathrm{softmax}\big(s([x; e]) + [\text{causal} ;
#   \text{encoder padding}]\big)\,[v(x); v(e)]$$
#
# When every encoder token is padding, the encoder columns of the softmax are empty and
# the result must be the decoder's own causal self-attention, exactly.

# %%
T, S = 6, 5
x_dec = rng.standard_normal((B, T, D))
enc = rng.standard_normal((B, S, D))
rope_dec = rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
rope_kv = (np.concatenate([rope_dec[0], np.ones((S, Dh))]),    # (T + S, Dh): cos = 1 and
           np.concatenate([rope_dec[1], np.zeros((S, Dh))]))   # sin = 0 on encoder keys
causal = attention_mask(np.arange(T), np.arange(T), causal=True)  # (1, 1, T, T)


def merged(enc_real):
    """Merged attention of x_dec over [x_dec ; enc]; enc_real (B, S) marks real tokens."""
    mask = np.concatenate([np.broadcast_to(causal, (B, 1, T, T)),
                           np.broadcast_to(enc_real[:, None, None, :], (B, 1, T, S))], -1)
    return attention_forward(x_dec, np.concatenate([x_dec, enc], 1), Wq, Wk, Wv, Wo,
                             num_heads=H, num_kv_heads=K, head_dim=Dh, scale=scale,
                             softcap=None, mask=mask, rope_q=rope_dec, rope_k=rope_kv,
                             q_norm=w_q, k_norm=w_k)[0]


self_only, _ = attention_forward(x_dec, x_dec, Wq, Wk, Wv, Wo, num_heads=H, num_kv_heads=K,
                                 head_dim=Dh, scale=scale, softcap=None, mask=causal,
                                 rope_q=rope_dec, rope_k=rope_dec, q_norm=w_q, k_norm=w_k)
no_encoder = merged(np.zeros((B, S), dtype=bool))
with_encoder = merged(np.ones((B, S), dtype=bool))
print("max |merged, no encoder key - self-attention|:", float(np.abs(no_encoder - self_only).max()))
print("max |merged, encoder visible - self-attention|:", float(np.abs(with_encoder - self_only).max()))
assert np.allclose(no_encoder, self_only, atol=1e-12)
assert np.abs(with_encoder - self_only).max() > 1e-3

# %% [markdown]
# ## 7. Tied embeddings and the eoi vector
#
# T5Gemma 2 keeps **one** table `E` (`V x D`), stored as
# `model.encoder.embed_tokens.weight`, for the encoder's input, the decoder's input and
# the output logits `z = h E^T` (tutorial 9 checks its gradient). One token is special:
# the eoi token (transformers' `eoi_token_index`, 256,000, which ends an image in the
# multimodal model) gets its input embedding from a learned vector of its own,
# `model.encoder.embed_tokens.eoi_embedding` (`D`,), **not** scaled by `sqrt(D)`; its row
# of `E` is then used only as an output row. `t5gemma2_config` sets `eoi_token_id` when
# the vocabulary holds it; here we pick token 5 of a vocabulary of 40.

# %%
EOI = 5
cfg_eoi = t5gemma2_config(t5g2_stack, eoi_token_id=EOI)
model = build_model(cfg_eoi, seed=0, dtype=np.float64)
model.params[EOI_KEY][:] = rng.standard_normal(D)         # a trained value (fresh: zeros)
print("embedding parameters:", [k for k in model.params if "embed_tokens" in k])
assert [k for k in model.params if "embed_tokens" in k] == [
    "model.encoder.embed_tokens.weight", EOI_KEY]

src = rng.integers(6, 40, size=(1, 7))
src[0, 3] = EOI
tgt = rng.integers(6, 40, size=(1, 4))
batch = {"input_ids": src, "attention_mask": np.ones_like(src), "decoder_input_ids": tgt}
logits = model.forward(batch)
assert np.allclose(logits, t5gemma_forward(cfg_eoi, model.params, src, tgt, np.ones_like(src)),
                   atol=1e-12)
E = model.params["model.encoder.embed_tokens.weight"]
E[EOI] += 1.0                                   # change the eoi token's row of the table:
enc_after = model.encode(src, np.ones_like(src))
logits_after = model.forward(batch)
E[EOI] -= 1.0
assert np.allclose(enc_after, model.encode(src, np.ones_like(src)), atol=1e-12)  # not read as input
assert np.abs(logits_after[..., EOI] - logits[..., EOI]).max() > 1e-3           # but as output
others = np.arange(40) != EOI
assert np.allclose(logits_after[..., others], logits[..., others], atol=1e-12)

# %% [markdown]
# ## 8. Adapting a tiny Gemma 3 into T5Gemma 2
#
# The recipe of tutorial 3, the T5Gemma 2 way: both stacks start from the Gemma 3
# parent's layers (q/k norms included), the merged attention from the parent's
# self-attention, the one table from the parent's embedding; nothing is fresh (no
# cross-attention to initialise) and the eoi vector starts at zeros. Two invariants
# hold exactly (SPEC.md section 3):
#
# 1. the encoder run with **causal** masks is the parent: the same final hidden states;
# 2. the decoder whose merged attention sees **no encoder key** is the parent: the same
#    logits (section 6 above, for the whole stack).

# %%
parent = build_model(t5g2_stack, seed=1, dtype=np.float64)
for k, w in parent.params.items():                       # norms away from their zero init
    if k.endswith("norm.weight"):
        w[:] = 0.3 * rng.standard_normal(w.shape)
adapted = adapt(parent, dtype=np.float64)
print("adapted config is t5gemma2_config(parent):", adapted.config == t5gemma2_config(t5g2_stack))
assert adapted.config == t5gemma2_config(t5g2_stack)

ids = rng.integers(3, 40, size=(2, 9))
mask = np.ones((2, 9), dtype=np.int64)
mask[1, 6:] = 0                                          # a padded second row
real = mask.astype(bool)
h_parent = parent.hidden_states({"input_ids": ids, "attention_mask": mask})
h_causal = adapted.encode(ids, mask, causal=True)
err1 = float(np.abs(h_causal[real] - h_parent[real]).max())
dec_ids = rng.integers(3, 40, size=(2, 7))
enc_out = adapted.encode(ids, mask)
err2 = float(np.abs(adapted.decode(dec_ids, enc_out, np.zeros_like(mask))
                    - parent.forward({"input_ids": dec_ids})).max())
print(f"max |parent - causal encoder| = {err1:.1e}; max |parent - decoder, no encoder| = {err2:.1e}")
assert err1 < 1e-12 and err2 < 1e-12
# with the encoder visible, the merged attention reads it: the decoder is no longer the parent
assert np.abs(adapted.decode(dec_ids, enc_out, mask) - parent.forward({"input_ids": dec_ids})
              ).max() > 1e-3

# %% [markdown]
# The same adaptation runs from the command line on a Gemma 3 checkpoint (a directory
# saved by `save_hf`, or a transformers Gemma 3 directory); the README's "Gemma 3 and
# T5Gemma 2" section shows the commands. Tutorial 10 moves these models to and from
# Hugging Face `transformers`.
