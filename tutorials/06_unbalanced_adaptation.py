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
# # 6. Unbalanced adaptation and the cross-attention warmup
#
# The paper's most interesting model is **9B-2B**: the encoder adapted from Gemma 2 9B,
# the decoder from Gemma 2 2B. Generation runs the decoder once per token and the encoder
# once per request, so the decoder sets the latency (tutorial 8); a strong encoder makes
# the input understanding better at almost no cost per generated token.
#
# Two different sources `A` (large, for the encoder) and `B` (small, for the decoder),
# with the same vocabulary, give (SPEC.md section 3, `mini_encdec/training/adapt_mapping.py`):
#
# | encoder-decoder weight | initialised from |
# |---|---|
# | encoder: embedding, every layer, final norm | `A` (as in tutorial 3) |
# | decoder: embedding, self-attention, MLP, their norms, final norm | `B` |
# | decoder cross-attention `q, o` (decoder width) and `k, v` (**encoder** width `D_A`) | fresh, `N(0, 0.02)` |
# | cross-attention pre/post norms | fresh, `w = 0` (the identity, since norms scale by `1 + w`) |
#
# `B`'s self-attention cannot be copied into the cross-attention: its key and value
# projections read width `D_B`, the encoder outputs width `D_A`. So the cross-attention
# starts random, and a random sublayer in the middle of every decoder block disturbs the
# function the decoder inherited from `B`. Hence the paper's **warmup**: for the first `K`
# updates only the cross-attention parameters train and everything else is frozen; then
# everything trains. The paper uses `K = 1000` at 9B-2B and found it better than no
# warmup (62.5 vs 61.8) and than `K = 5000` (60.2).
#
# In code the warmup is one config field, `EncDecConfig.cross_attn_warmup_steps`, which
# the trainer turns into a list of trainable names per step
# (`mini_encdec/training/optim.py: trainable_names`); frozen parameters get no update,
# no weight decay and no Adam moments: they stay bit for bit.

# %%
import copy

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import GemmaConfig, count_parameters
from mini_encdec.models import build_model
from mini_encdec.objectives import make_objective
from mini_encdec.text.batching import Batcher, corpus_stream, eval_batches
from mini_encdec.text.tokenizer import load_tokenizer
from mini_encdec.training.adapt import adapt, adaptation_mapping
from mini_encdec.training.optim import OptimConfig, trainable_names
from mini_encdec.training.train import evaluate, train

set_backend("numpy")  # the readable reference; no compilation on a first run
tok = load_tokenizer()
train_stream = corpus_stream("train", tok)
val_stream = corpus_stream("validation", tok)

# %% [markdown]
# ## Two sources of different sizes
#
# `A`: 3 layers of width 96 with 3 query heads; `B`: 2 layers of width 64 with 2 query
# heads. Both share the shipped 8k vocabulary (`adapt` refuses sources whose vocabularies
# or special ids differ). Each gets a short causal-LM pre-training of its own.

# %%
stack = dict(vocab_size=tok.vocab_size, num_key_value_heads=1, head_dim=32, sliding_window=8)
config_a = GemmaConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                       intermediate_size=256, **stack)
config_b = GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=192, **stack)
sources = {}
for name, cfg in (("A", config_a), ("B", config_b)):
    model = build_model(cfg, seed=0)
    data = Batcher(train_stream, make_objective("causal_lm"), batch_size=8, encoder_length=8,
                   decoder_length=8, arch="decoder", seed=0)
    hist = train(model, data, optim=OptimConfig(lr=3e-3, warmup_steps=5), steps=100,
                 progress=False)
    sources[name] = model
    print(f"{name}: {count_parameters(cfg):,} parameters, width {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers; causal LM loss {hist[0]['loss']:.2f} -> "
          f"{hist[-1]['loss']:.2f}")
A, B = sources["A"], sources["B"]

# %% [markdown]
# ## Adapting A (encoder) and B (decoder)
#
# `adapt(A, B, warmup_steps=K)` builds the model; `adaptation_mapping` tells where every
# tensor came from. Note the shape of the fresh cross-attention key projection:
# `(K_heads * Dh, D_A)`, reading the encoder's width.

# %%
K = 20
model = adapt(A, B, warmup_steps=K, seed=0)
mapping = adaptation_mapping(A, B)
for key in mapping:
    if key.startswith("model.decoder.layers.0.") and "mlp" not in key:
        print(f"{key:55s} <- {mapping[key]:32s} {model.params[key].shape}")
print(f"encoder width {model.config.encoder.hidden_size}, decoder width "
      f"{model.config.decoder.hidden_size}; cross_attn_warmup_steps = "
      f"{model.config.cross_attn_warmup_steps}")

k_proj = model.params["model.decoder.layers.0.cross_attn.k_proj.weight"]
assert k_proj.shape == (1 * 32, config_a.hidden_size)
assert mapping["model.decoder.layers.0.cross_attn.q_proj.weight"].startswith("fresh")
assert mapping["model.encoder.layers.2.mlp.up_proj.weight"].startswith("A:")
assert mapping["model.decoder.layers.1.mlp.up_proj.weight"].startswith("B:")
assert np.all(model.params["model.decoder.layers.0.post_cross_attn_layernorm.weight"] == 0)

# %% [markdown]
# ## The two exact checks still hold
#
# Tutorial 3's checks survive the change of sources: the encoder with causal masks is
# `A`, and the decoder with its cross-attention output projections zeroed is `B`. With
# the fresh cross-attention switched on the decoder is *not* `B` any more: each block's
# post-cross-attention RMSNorm rescales the random branch to unit root-mean-square (a
# fresh norm has `w = 0`, scale `1 + w = 1`), however small its weights, so the branch
# adds a unit-size random vector to the residual stream of every decoder block.

# %%
batch = Batcher(train_stream, make_objective("causal_lm"), batch_size=4, encoder_length=8,
                decoder_length=8, arch="decoder", seed=5).next_batch()
ids = batch["input_ids"]                                               # (B, T)
assert np.array_equal(model.encode(ids, causal=True), A.hidden_states({"input_ids": ids}))

params = dict(model.params)
for key in params:
    if "cross_attn.o_proj" in key:
        params[key] = np.zeros_like(params[key])
no_cross = build_model(model.config, params)
enc_ids = ids[:, ::-1].copy()                                          # any encoder input
logits_b = B.forward({"input_ids": ids})                               # (B, T, V)
assert np.array_equal(no_cross.forward({"input_ids": enc_ids, "decoder_input_ids": ids}),
                      logits_b)
logits_ab = model.forward({"input_ids": enc_ids, "decoder_input_ids": ids})
print("max |logit difference| to B with the fresh cross-attention on:",
      float(np.max(np.abs(logits_ab - logits_b))))
assert not np.allclose(logits_ab, logits_b, atol=0.1)

# %% [markdown]
# ## Freezing: who trains when
#
# `trainable_names(names, step, warmup_steps=K)` is the list the trainer updates at a
# given step. During the warmup it holds the cross-attention projections *and* their
# norms (the pattern `cross_attn` matches `pre_/post_cross_attn_layernorm` too).

# %%
names = list(model.params)
during = trainable_names(names, 0, warmup_steps=K)
after = trainable_names(names, K, warmup_steps=K)
print(f"step 0..{K - 1}: {len(during)} of {len(names)} tensors train, "
      f"{sum(model.params[n].size for n in during):,} of "
      f"{sum(p.size for p in model.params.values()):,} numbers:")
for n in during[:6]:
    print("   ", n)
print(f"step {K} on: {len(after)} tensors train")
assert all("cross_attn" in n for n in during) and len(after) == len(names)

# %% [markdown]
# We run the warmup alone (K updates) on a copy and check the promise: every tensor
# outside cross-attention is unchanged bit for bit, every cross-attention projection
# has moved. The PrefixLM validation loss falls although only the new parameters train:
# the cross-attention learns to read the encoder.

# %%
S = T = 8
prefix_lm = make_objective("prefix_lm")
val = eval_batches(val_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   max_batches=4)
optim = OptimConfig(lr=1e-3, warmup_steps=5)


def prefix_lm_batches():
    return Batcher(train_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   arch="encdec", seed=2)  # the same batches for every run


warm = copy.deepcopy(model)
before = evaluate(warm, val)["loss"]
train(warm, prefix_lm_batches(), optim=optim, steps=K, progress=False)
after_warmup = evaluate(warm, val)["loss"]
frozen = [n for n in names if n not in during]
assert all(np.array_equal(warm.params[n], model.params[n]) for n in frozen)
assert all(not np.array_equal(warm.params[n], model.params[n]) for n in during
           if n.endswith("_proj.weight"))
print(f"{len(frozen)} frozen tensors unchanged; PrefixLM validation loss {before:.3f} -> "
      f"{after_warmup:.3f} after {K} cross-attention-only updates")
assert after_warmup < before

# %% [markdown]
# ## No warmup, a warmup, a long warmup
#
# Three copies of the adapted model (the same fresh cross-attention, drawn with seed 0)
# train for 60 updates on the same batches with `K = 0`, `K = 20` and `K = 60` (the whole
# run: only cross-attention ever trains). For scale we also run the *balanced* `B-B`
# adaptation of the small source, which has the same decoder and so about the same cost
# per generated token.
#
# What to expect: all four improve; the differences between the warmups are small at
# this scale and can go either way with the seed. This project's study (experiment E4 in
# the README, 6 seeds, 300 annealed updates, a 9-update warmup) found no benefit from the
# warmup at tiny scale (+0.0017 nats of fine-tuned reply NLL, the wrong direction and far
# below any effect worth having): with 2-layer stacks there is little
# inherited function for the random branch to damage. Whether the warmup pays off is a
# claim about large models; the mechanism is the same.

# %%
steps, runs = 60, {}
for label, warmup in (("A-B, no warmup", 0), (f"A-B, warmup {K}", K),
                      ("A-B, warmup 60 (all)", 60), ("B-B (balanced)", None)):
    m = adapt(B) if warmup is None else adapt(A, B, warmup_steps=warmup, seed=0)
    hist = train(m, prefix_lm_batches(), optim=optim, steps=steps, eval_batches=val,
                 eval_every=10, progress=False)
    start = evaluate(adapt(B) if warmup is None else model, val)["loss"]
    curve = [(0, start)] + [(r["step"], r["val_loss"]) for r in hist if "val_loss" in r]
    runs[label] = (warmup, curve)
    print(f"{label:22s} PrefixLM validation loss {start:.3f} -> {curve[-1][1]:.3f}")
assert all(curve[-1][1] < curve[0][1] for _, curve in runs.values())

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (warmup, curve) in runs.items():
        steps_, losses = zip(*curve)
        line, = ax.plot(steps_, losses, marker="o", ms=3, label=label)
        if warmup:
            ax.axvline(warmup, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("update (dotted: end of the warmup)")
    ax.set_ylabel("PrefixLM validation loss")
    ax.legend(fontsize=8)
    save(fig, "06_warmup.png")

# %% [markdown]
# Next: tutorial 7 fine-tunes the adapted model with a classification head, the paper's
# SuperGLUE probe.
