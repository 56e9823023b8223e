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
# # 9. T5Gemma 2: merged attention and tied embeddings
#
# The follow-up model, T5Gemma 2, keeps the adaptation recipe and makes the
# encoder-decoder smaller with two changes, both options of `EncDecConfig` here:
#
# **Tied embeddings** (`tie_all_embeddings=True`). T5Gemma has two tables: the encoder's
# input embedding and the decoder's, which is also the output matrix. T5Gemma 2 uses one
# table `E` for all three uses, stored once as `model.encoder.embed_tokens.weight`. Its
# gradient is the sum of the three uses':
#
# $$\frac{\partial L}{\partial E} = \underbrace{\frac{\partial L}{\partial E}\Big|_{\text{encoder input}}}_{\text{scatter}}
#   + \underbrace{\frac{\partial L}{\partial E}\Big|_{\text{decoder input}}}_{\text{scatter}}
#   + \underbrace{\frac{\partial L}{\partial E}\Big|_{\text{output } z = hE^\top}}_{\text{matmul}}$$
#
# (forgetting one of the three is the classic bug of tied weights).
#
# **Merged attention** (`merged_attention=True`). Each decoder block has one attention
# instead of self-attention followed by cross-attention: the queries are the decoder's,
# the keys and values come from `[decoder tokens ; encoder outputs]`, with **one softmax**
# over both and one set of `q, k, v, o` weights:
#
# $$\mathrm{attn}(x) = \mathrm{softmax}\Big(\mathrm{cap}\big(\tfrac{q(x)\,[k(x);\,k(e)]^\top}{\sqrt{s}}\big) + \text{mask}\Big)\,[v(x);\,v(e)]$$
#
# RoPE and the causal (or causal local) mask apply to the decoder part; the encoder part
# is unrotated and fully visible except padding. It needs equal encoder and decoder
# widths (one `k_proj` reads both). The block loses a sublayer (two norms, four matrices)
# and each decoding step one attention. (SPEC.md section 2; `mini_encdec/models/blocks.py:
# merged_block_forward`, and the one-page forward in `mini_encdec/reference.py`.)

# %%

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import EncDecConfig, GemmaConfig, count_parameters, encdec_preset
from mini_encdec.models import build_model
from mini_encdec.models.flops import token_flops
from mini_encdec.models.inputs import memory_mask, merge_masks, self_attention_masks
from mini_encdec.models.params import param_shapes
from mini_encdec.objectives import make_objective
from mini_encdec.reference import t5gemma_forward
from mini_encdec.text.batching import Batcher, corpus_stream, eval_batches
from mini_encdec.text.tokenizer import load_tokenizer
from mini_encdec.training.adapt import adapt
from mini_encdec.training.optim import OptimConfig
from mini_encdec.training.train import evaluate, train

set_backend("numpy")  # the readable reference; no compilation on a first run
rng = np.random.default_rng(0)

# %% [markdown]
# ## What the two options save
#
# Tied embeddings remove one `V x D` table; merged attention removes, per decoder layer,
# the cross-attention's four projections and its two norms. At the paper's 2B-2B shape
# (vocabulary 256,000):

# %%
def variants(base: EncDecConfig) -> dict:
    return {"T5Gemma": base,
            "tied": base.replace(tie_all_embeddings=True),
            "merged": base.replace(merged_attention=True),
            "tied + merged (T5Gemma 2)": base.replace(tie_all_embeddings=True,
                                                      merged_attention=True)}


base_2b = encdec_preset("2b-2b")
counts = {name: count_parameters(c) for name, c in variants(base_2b).items()}
for name, n in counts.items():
    print(f"{name:26s} {n / 1e9:6.3f} B parameters")

d = base_2b.decoder
D, V, L = d.hidden_size, d.vocab_size, d.num_hidden_layers
cross_per_layer = (2 * D * d.num_attention_heads * d.head_dim          # q and o
                   + 2 * D * d.num_key_value_heads * d.head_dim        # k and v
                   + 2 * D)                                            # two norms
assert counts["T5Gemma"] - counts["tied"] == V * D
assert counts["T5Gemma"] - counts["merged"] == L * cross_per_layer
print(f"tied saves {V * D / 1e6:.0f} M, merged saves {L * cross_per_layer / 1e6:.0f} M")

# %% [markdown]
# ## The merged mask
#
# For a decoder of `T = 6` tokens in a local layer with window `W = 3` and an encoder
# input of `S = 5` tokens whose last two are padding: the decoder part is the causal
# local mask `0 <= q - k < W`, the encoder part is every real encoder token, for every
# query. (`mini_encdec/models/inputs.py` builds it from the same pieces as the other
# masks.)

# %%
small = GemmaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=8, intermediate_size=32, sliding_window=3)
T, S = 6, 5
enc_padding = np.array([[1, 1, 1, 0, 0]], dtype=bool)                       # (B, S)
self_masks = self_attention_masks(small, np.arange(T), np.arange(T), causal=True)
merged = merge_masks(self_masks, memory_mask(enc_padding, S), B=1)          # type -> (B,1,T,T+S)
local = merged[small.layer_types[0]][0, 0]                                  # (T, T + S)
print("decoder keys | encoder keys (1 = may attend)")
for row in local.astype(int):
    print(" ", row[:T], "|", row[T:])
q, k = np.arange(T)[:, None], np.arange(T)[None, :]
assert np.array_equal(local[:, :T], (q - k >= 0) & (q - k < 3))
assert np.array_equal(local[:, T:], np.broadcast_to(enc_padding, (T, S)))

plt = pyplot()
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, lt in zip(axes, small.layer_types):
        ax.imshow(merged[lt][0, 0], cmap="Greys", vmin=0, vmax=1)
        ax.axvline(T - 0.5, color="red", lw=1.5)
        ax.set_title(f"{lt} (black: may attend)", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("decoder query")
    save(fig, "09_merged_masks.png")

# %% [markdown]
# ## The model against the one-page reference, and two properties
#
# A random T5Gemma 2 model (both options on) must agree with `reference.t5gemma_forward`,
# the plain NumPy forward on one page. Then: the decoder stays causal (changing a later
# decoder token leaves earlier logits alone), and every decoder position reads the
# encoder (changing one encoder token changes every position's logits).

# %%
config = EncDecConfig(encoder=small, decoder=small, tie_all_embeddings=True,
                      merged_attention=True)
model = build_model(config, seed=0)
print("stored embedding tables:", [k for k in model.params if "embed_tokens" in k])
assert "model.decoder.embed_tokens.weight" not in model.params
assert not any("cross_attn" in k for k in model.params)

enc_ids = rng.integers(4, 50, size=(2, S))
enc_mask = np.ones((2, S), dtype=np.int64)
enc_mask[1, 3:] = 0                                                         # padded row
dec_ids = rng.integers(4, 50, size=(2, T))
batch = {"input_ids": enc_ids, "attention_mask": enc_mask, "decoder_input_ids": dec_ids}
logits = model.forward(batch)                                               # (B, T, V)
reference = t5gemma_forward(config, model.params, enc_ids, dec_ids, enc_mask)
print("max |model - reference|:", float(np.max(np.abs(logits - reference))))
assert np.allclose(logits, reference, atol=1e-5)

changed = dict(batch, decoder_input_ids=dec_ids.copy())
changed["decoder_input_ids"][:, 4] = 7                                      # decoder token 4
diff = np.abs(model.forward(changed) - logits).max(axis=(0, 2))             # (T,)
assert np.all(diff[:4] == 0) and diff[4] > 0
changed = dict(batch, input_ids=enc_ids.copy())
changed["input_ids"][0, 0] = 7                                              # encoder token 0
diff = np.abs(model.forward(changed) - logits)[0].max(axis=-1)              # (T,)
assert np.all(diff > 0)

# %% [markdown]
# ## The tied gradient is the sum of its three uses
#
# An untied T5Gemma whose two tables hold the *same* values computes the same function;
# its encoder table's gradient is the encoder-input use, its decoder table's gradient the
# decoder-input and output uses together. Their sum must be the tied model's gradient.

# %%
untied_config = config.replace(tie_all_embeddings=False)
params = dict(model.params)
params["model.decoder.embed_tokens.weight"] = params["model.encoder.embed_tokens.weight"].copy()
untied = build_model(untied_config, params)
labels = rng.integers(4, 50, size=(2, T))
loss_tied, g_tied = model.loss_and_grads(dict(batch, labels=labels))
loss_untied, g_untied = untied.loss_and_grads(dict(batch, labels=labels))
g_sum = g_untied["model.encoder.embed_tokens.weight"] + g_untied["model.decoder.embed_tokens.weight"]
err = np.max(np.abs(g_tied["model.encoder.embed_tokens.weight"] - g_sum))
print(f"losses {loss_tied:.6f} / {loss_untied:.6f}; max |tied grad - sum of uses| = {err:.1e}")
assert np.isclose(loss_tied, loss_untied, rtol=1e-6)
assert np.allclose(g_tied["model.encoder.embed_tokens.weight"], g_sum, atol=1e-6)

# %% [markdown]
# ## Adapting into T5Gemma 2
#
# The adaptation recipe carries over: the merged attention's `q, k, v, o` come from the
# source's self-attention (as for T5Gemma), there is simply no cross-attention to
# initialise, and a tied model keeps one copy of the embedding. An exact check in the
# spirit of tutorial 3: with the encoder input entirely padding, the encoder part of the
# merged softmax is empty and the decoder *is* the source model.

# %%
source = build_model(small, seed=1)
adapted = adapt(source)                                  # T5Gemma (cross-attention)
t5g2_config = adapted.config.replace(tie_all_embeddings=True, merged_attention=True)
t5g2 = build_model(t5g2_config, {k: adapted.params[k] for k in param_shapes(t5g2_config)})
ids = rng.integers(4, 50, size=(2, 7))
no_encoder = t5g2.forward({"input_ids": enc_ids, "attention_mask": np.zeros_like(enc_ids),
                           "decoder_input_ids": ids})
assert np.allclose(no_encoder, source.forward({"input_ids": ids}), atol=1e-5)

# %% [markdown]
# ## Cost and a short training run
#
# Merged attention also saves decoding work: one attention per block over `t + S` keys
# instead of two (the cross-attention's `q` and `o` projections disappear). On Shakespeare
# we adapt one tiny parent into all four variants and continue each with PrefixLM for the
# same 40 updates.
#
# What to expect: the four end within a few hundredths of a nat; the variants have fewer
# parameters and a cheaper step. T5Gemma 2 reports that the two changes cost little
# quality at its scale; at ours, the differences are as small as the run-to-run noise.

# %%
tok = load_tokenizer()
train_stream, val_stream = corpus_stream("train", tok), corpus_stream("validation", tok)
parent_config = GemmaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                            intermediate_size=192, sliding_window=8)
parent = build_model(parent_config, seed=0)
causal = Batcher(train_stream, make_objective("causal_lm"), batch_size=8, encoder_length=8,
                 decoder_length=8, arch="decoder", seed=0)
train(parent, causal, optim=OptimConfig(lr=3e-3, warmup_steps=5), steps=100, progress=False)
adapted = adapt(parent)
prefix_lm = make_objective("prefix_lm")
val = eval_batches(val_stream, prefix_lm, batch_size=8, encoder_length=8, decoder_length=8,
                   max_batches=4)
results = {}
for name, c in variants(adapted.config).items():
    m = build_model(c, {k: adapted.params[k].copy() for k in param_shapes(c)})
    data = Batcher(train_stream, prefix_lm, batch_size=8, encoder_length=8, decoder_length=8,
                   arch="encdec", seed=1)
    hist = train(m, data, optim=OptimConfig(lr=1e-3, warmup_steps=5), steps=40, progress=False)
    results[name] = (count_parameters(c), token_flops(c, 8, 8), evaluate(m, val)["loss"],
                     [r["loss"] for r in hist])
print(f"{'variant':26s} {'parameters':>10s} {'FLOPs/token':>12s} {'PrefixLM val':>12s}")
for name, (n, f, loss, _) in results.items():
    print(f"{name:26s} {n:10,d} {f:12,d} {loss:12.3f}")
assert results["tied + merged (T5Gemma 2)"][0] < results["T5Gemma"][0]
assert results["merged"][1] < results["T5Gemma"][1]
assert all(np.isfinite(r[2]) for r in results.values())

if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, (_, _, _, losses) in results.items():
        ax.plot(np.arange(1, len(losses) + 1), losses, label=name, lw=1)
    ax.set_xlabel("update")
    ax.set_ylabel("PrefixLM training loss")
    ax.legend(fontsize=8)
    save(fig, "09_variants_training.png")

# %% [markdown]
# Next: tutorial 10 moves these models to and from Hugging Face `transformers`.
