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
# # 3. Adaptation: from a decoder-only Gemma 2 to an encoder-decoder
#
# The paper's central idea: instead of pre-training an encoder-decoder from scratch,
# initialise every one of its weights from the most similar weight of a pre-trained
# decoder-only model `M`, then keep pre-training (PrefixLM or UL2):
#
# | encoder-decoder weight | initialised from |
# |---|---|
# | encoder and decoder embeddings | `M`'s embedding (two copies; the output matrix stays tied to the decoder's) |
# | encoder layer `i`: self-attention, MLP, four norms | `M` layer `i` |
# | decoder layer `i`: self-attention, MLP, four norms | `M` layer `i` |
# | decoder layer `i`: cross-attention `q, k, v, o` | `M` layer `i` **self**-attention `q, k, v, o` |
# | cross-attention pre/post norms | `M` layer `i` attention norms (*our choice*; the paper is silent) |
# | both final norms | `M`'s final norm |
#
# What changes is only how attention is masked: the encoder becomes bidirectional (global
# layers see every token, local layers a symmetric window `|q - k| < W`), and the decoder
# gains cross-attention to the encoder output. Two checks then hold *exactly*, and we run
# both below:
#
# 1. the adapted encoder, run with the decoder's causal masks, reproduces `M`'s final
#    hidden states;
# 2. the adapted decoder, with its cross-attention output projections zeroed, reproduces
#    `M`'s logits.
#
# Then we train a few steps of PrefixLM on Shakespeare and compare with the same
# encoder-decoder trained from scratch. (For an *unbalanced* model, e.g. the paper's
# 9B-2B, the encoder comes from a large `A` and the decoder from a small `B`;
# cross-attention is then fresh and trains alone for the first K steps. See
# `mini_encdec/training/adapt_mapping.py`.)
#
# Everything is tiny so the file runs in seconds on a laptop CPU.

# %%
import numpy as np

from _tutorial import pyplot, save
from mini_encdec.training.adapt import adapt, adaptation_mapping
from mini_encdec.backend import set_backend
from mini_encdec.text.batching import Batcher, corpus_stream, eval_batches
from mini_encdec.config import GemmaConfig, count_parameters
from mini_encdec.models import build_model
from mini_encdec.objectives import make_objective
from mini_encdec.training.optim import OptimConfig
from mini_encdec.text.tokenizer import load_tokenizer
from mini_encdec.training.train import evaluate, train

# The NumPy reference: no just-in-time compilation to wait for on a first run.
set_backend("numpy")
tok = load_tokenizer()
train_stream = corpus_stream("train", tok)       # the training plays, tokenised and packed
val_stream = corpus_stream("validation", tok)    # six other plays

# %% [markdown]
# ## The source: a tiny decoder-only Gemma 2
#
# Two layers (one local, one global), two query heads sharing one key/value head, the
# shipped 8k vocabulary. Real sources are Gemma 2 2B or 9B; the mechanics are the same.
# We give it a short causal-LM pre-training so it has something worth adapting.

# %%
source_config = GemmaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                            intermediate_size=192, sliding_window=8)
source = build_model(source_config, seed=0)
print(f"source: {count_parameters(source_config):,} parameters, layers "
      f"{source_config.layer_types}")

causal_lm = Batcher(train_stream, make_objective("causal_lm"), batch_size=8, encoder_length=8,
                    decoder_length=8, arch="decoder", seed=0)  # sequences of 16 tokens
optim = OptimConfig(lr=3e-3, warmup_steps=5)
history = train(source, causal_lm, optim=optim, steps=30, progress=False)
print(f"causal LM: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
assert history[-1]["loss"] < history[0]["loss"] - 1.0

# %% [markdown]
# ## Adapting
#
# `adapt(M)` returns an `EncDecLM` whose parameters are copies of `M`'s, under the
# T5Gemma (Hugging Face) names. `adaptation_mapping` says where each one came from
# (`A:` is the source model):

# %%
model = adapt(source)
mapping = adaptation_mapping(source)
for key in mapping:
    if ".layers.0." in key and key.startswith("model.decoder") and "mlp" not in key:
        print(f"{key:55s} <- {mapping[key]}")
print(f"encoder-decoder: {count_parameters(model.config):,} parameters")

cross_q = model.params["model.decoder.layers.0.cross_attn.q_proj.weight"]
self_q = source.params["model.layers.0.self_attn.q_proj.weight"]
assert np.array_equal(cross_q, self_q) and not np.shares_memory(cross_q, self_q)

# %% [markdown]
# ## Check 1: a causal encoder is the source model
#
# Run the adapted encoder with the decoder's masks (`causal=True`: `k <= q`, and
# `0 <= q - k < W` in local layers). Embedding, blocks and final norm are the source's,
# so the final hidden states must be the source's too, bit for bit. With its real,
# bidirectional masks the encoder lets every token see the future, and the result differs.

# %%
batch = causal_lm.next_batch()
ids = batch["input_ids"]                                        # (B, T)
h_source = source.hidden_states({"input_ids": ids})             # (B, T, D)
h_causal = model.encode(ids, causal=True)                       # (B, T, D)
h_bidirectional = model.encode(ids)                             # (B, T, D)
print("max |source - causal encoder|        :", np.max(np.abs(h_source - h_causal)))
print("max |source - bidirectional encoder| :", np.max(np.abs(h_source - h_bidirectional)))
assert np.array_equal(h_source, h_causal)
assert not np.allclose(h_source, h_bidirectional, atol=1e-3)

# %% [markdown]
# ## Check 2: without cross-attention the decoder is the source model
#
# Decoder block: `h1 = x + post_self(self_attn(pre_self(x)))`, then
# `h2 = h1 + post_cross(cross_attn(pre_cross(h1), enc))`, then the MLP. With the
# cross-attention output projection `o_proj` zeroed, `cross_attn(...) = 0`, the RMSNorm of
# a zero vector is zero, so `h2 = h1`: what remains is exactly the source's block, and the
# logits are the source's whatever the encoder reads.

# %%
params = dict(model.params)
for key in params:
    if "cross_attn.o_proj" in key:
        params[key] = np.zeros_like(params[key])
no_cross = build_model(model.config, params)

rng = np.random.default_rng(0)
logits_source = source.forward({"input_ids": ids})              # (B, T, V)
for trial in range(2):  # any encoder input, even random ids of another length
    enc_ids = rng.integers(4, tok.vocab_size, size=(ids.shape[0], 5 + 7 * trial))
    logits = no_cross.forward({"input_ids": enc_ids, "decoder_input_ids": ids})
    print(f"encoder input of length {enc_ids.shape[1]}: max |logit difference| = "
          f"{np.max(np.abs(logits - logits_source))}")
    assert np.array_equal(logits, logits_source)

# with cross-attention on, the encoder matters
logits_cross = model.forward({"input_ids": enc_ids, "decoder_input_ids": ids})
assert not np.allclose(logits_cross, logits_source, atol=1e-3)

# %% [markdown]
# ## PrefixLM pre-training: adapted versus from scratch
#
# PrefixLM cuts a window of `2N` tokens in half: the encoder reads the first half, the
# decoder predicts the second. We train the adapted model and, with the same data and
# settings, the same encoder-decoder from a fresh random initialisation (norm offsets 0,
# weights N(0, 0.02)), and compare validation losses. At this toy scale the source's
# short pre-training is what the adapted model inherits; the paper's claim is the same
# effect at 2B and 9B: adaptation reaches a given quality with far less compute.

# %%
S = T = 8
prefix_lm = make_objective("prefix_lm")
val = eval_batches(val_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   max_batches=4)
scratch = build_model(model.config, seed=1)
runs = {}
for name, m in (("adapted", model), ("from scratch", scratch)):
    data = Batcher(train_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   arch="encdec", seed=1)  # the same batches for both
    before = evaluate(m, val)["loss"]
    hist = train(m, data, optim=optim, steps=20, progress=False)
    after = evaluate(m, val)["loss"]
    runs[name] = (before, after, [r["loss"] for r in hist])
    print(f"{name:13s} validation loss {before:.3f} -> {after:.3f}")

assert runs["adapted"][1] < runs["adapted"][0]          # training helps
assert runs["adapted"][0] < runs["from scratch"][0]     # adaptation starts ahead
assert runs["adapted"][1] < runs["from scratch"][1]     # and stays ahead after 20 steps

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, (_, _, losses) in runs.items():
        ax.plot(np.arange(1, len(losses) + 1), losses, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("PrefixLM training loss")
    ax.legend()
    save(fig, "03_prefixlm_loss.png")
