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
# # 8. Quality versus inference cost: the paper's headline
#
# The paper's title promises a better *quality-efficiency trade-off*, and its headline
# figure plots quality against inference cost: the adapted encoder-decoders sit at or
# above their decoder-only parents for about the same cost, and the unbalanced 9B-2B
# reaches far better quality than 2B-2B at about 2B-2B's latency. The argument is a
# cost model of generation. A request with a prompt of `S` tokens that generates `N`
# tokens costs
#
# $$C_{\text{dec-only}} = P(S) + \sum_{i=1}^{N-1} t_{\text{dec}}(S + i), \qquad
#   C_{\text{enc-dec}} = E(S) + \sum_{i=0}^{N-1} t_{\text{dec}}(i;\ S)$$
#
# `P` is the decoder-only prefill, `E` the encoder pass (plus every decoder layer's
# projection of the encoder output into cross-attention keys and values), both paid
# **once per request**; `t_dec` is one cached decoding step, paid **per generated
# token**, and it involves only the decoder (with `S` cached encoder keys in
# cross-attention). So the encoder's size shows up in the prompt cost only: a 9B encoder
# with a 2B decoder generates each token at the price of 2B-2B.
#
# `mini_encdec/models/flops.py` counts matmul FLOPs analytically (2 per multiply-add;
# norms, soft-caps and softmax are O(T D) and not counted);
# `mini_encdec/experiments/downstream.py` has `inference_flops` (the split above),
# `inference_latency` (measured, batch 1, a forced number of new tokens: no early stop at
# EOS, so both architectures generate exactly `N` tokens) and `inference_cost` (both).

# %%
import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import SLIDING, GemmaConfig, encdec_preset, preset
from mini_encdec.experiments.downstream import inference_cost, inference_flops
from mini_encdec.models import build_model
from mini_encdec.models.flops import token_flops
from mini_encdec.objectives import make_objective
from mini_encdec.text.batching import Batcher, corpus_stream, eval_batches
from mini_encdec.text.tokenizer import load_tokenizer
from mini_encdec.training.adapt import adapt
from mini_encdec.training.optim import OptimConfig
from mini_encdec.training.train import evaluate, train

set_backend("numpy")  # the readable reference; tutorial 11 measures the Numba kernels

# %% [markdown]
# ## One generated token, counted by hand
#
# For a decoder-only layer with `context` tokens already cached, the new token costs its
# projections `q, o` (`2 * 2 D H Dh`) and `k, v` (`2 * 2 D K Dh`), attention over the
# keys it may see (`4 H Dh` per key: scores and weighted sum; a local layer sees at most
# `W` keys), and the GeGLU MLP (`3 * 2 D F`); then the tied output matrix costs `2 D V`.

# %%
cfg = GemmaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, sliding_window=8)
D, H, K, Dh, F, V, W = 64, 4, 2, 16, 128, 1000, 8
context = 20
by_hand = 0
for layer_type in cfg.layer_types:                     # local, global
    keys = min(context + 1, W) if layer_type == SLIDING else context + 1
    by_hand += 2 * 2 * D * H * Dh + 2 * 2 * D * K * Dh + 4 * H * Dh * keys + 3 * 2 * D * F
by_hand += 2 * D * V
print(f"one token at context {context}: {by_hand:,} FLOPs by hand, "
      f"{token_flops(cfg, context):,} from flops.py")
assert by_hand == token_flops(cfg, context)

# %% [markdown]
# ## At the paper's sizes
#
# The presets `2b` and `9b` are Gemma 2's shapes (vocabulary 256,000); `2b-2b`, `9b-2b`
# and `9b-9b` their adaptations. A request with a 512-token prompt that generates 128
# tokens:

# %%
S_big, N_big = 512, 128
models_big = {"2B": (preset("2b"), "decoder"), "9B": (preset("9b"), "decoder"),
              "2B-2B": (encdec_preset("2b-2b"), "encdec"),
              "9B-2B": (encdec_preset("9b-2b"), "encdec"),
              "9B-9B": (encdec_preset("9b-9b"), "encdec")}
big = {name: inference_flops(c, arch, S_big, N_big) for name, (c, arch) in models_big.items()}
print(f"{'model':6s} {'prompt GFLOPs':>14s} {'GFLOPs / new token':>19s} {'request GFLOPs':>15s}")
for name, f in big.items():
    print(f"{name:6s} {f['prompt_gflops']:14.0f} {f['gflops_per_generated_token']:19.2f} "
          f"{f['total_gflops']:15.0f}")

# the same decoder, the same cost per generated token, whatever the encoder
assert big["9B-2B"]["gflops_per_generated_token"] == big["2B-2B"]["gflops_per_generated_token"]
assert big["9B-2B"]["prompt_gflops"] > big["2B-2B"]["prompt_gflops"]
# about 2B's cost per token (cross-attention adds a little), a third of 9B's
ratio = big["9B-2B"]["gflops_per_generated_token"] / big["2B"]["gflops_per_generated_token"]
assert 1.0 < ratio < 1.2
assert big["9B-2B"]["gflops_per_generated_token"] < big["9B"]["gflops_per_generated_token"] / 3

# %% [markdown]
# The prompt is where 9B-2B pays for its encoder; every generated token after it costs
# what 2B-2B's does (below, their lines are parallel), so the longer the output, the
# smaller 9B-2B's premium over 2B-2B in relative terms, while 9B-9B and 9B pull away:

# %%
plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ns = np.arange(1, 2049, 64)
    for name, (c, arch) in models_big.items():
        f = inference_flops(c, arch, S_big, 1)
        per = big[name]["gflops_per_generated_token"]
        ax.plot(ns, f["prompt_gflops"] + (ns - 1) * per, label=name)
    ax.set_xlabel(f"generated tokens N (prompt of {S_big})")
    ax.set_ylabel("GFLOPs per request")
    ax.legend()
    save(fig, "08_request_flops.png")

# %% [markdown]
# (The lines use the mean cost per token of a 128-token output; the attention part grows
# slowly with the context, which the exact count in `inference_flops` includes.)
#
# ## The headline plot at tiny scale
#
# Now the same comparison with models we can train here: a small parent `B` (2 layers of
# width 64) and a larger parent `A` (3 layers of width 96), each pre-trained briefly with
# causal LM; then, with the **same extra budget** of updates for everyone, the two
# parents continue their causal LM and the adaptations `B-B`, `A-A` and `A-B` continue
# with PrefixLM. Quality is the PrefixLM validation loss (the decoder-only models read
# the same windows as `prefix ++ target` with the loss on the target half, so the numbers
# compare). Cost is measured like the paper's: FLOPs and latency of one request at
# batch 1 with the same prompt and the same forced number of generated tokens.
#
# What to expect, honestly: the FLOPs behave as at 9B (A-B generates at B-B's cost per
# token); the latency of such tiny models is dominated by Python overhead per step, so it
# tracks the number of layers more than the FLOPs, and on a shared machine it moves by
# tens of percent from run to run; and which model has the best loss
# after a few seconds of training is not the paper's result at scale. This project's study
# (README, experiments E2 and E4) found the adapted models level with their parents and
# A-B not better than B-B at tiny scale.

# %%
tok = load_tokenizer()
train_stream = corpus_stream("train", tok)
val_stream = corpus_stream("validation", tok)
stack = dict(vocab_size=tok.vocab_size, num_key_value_heads=1, head_dim=32, sliding_window=8)
config_b = GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=192, **stack)
config_a = GemmaConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
                       intermediate_size=256, **stack)
S = T = 8
optim = OptimConfig(lr=3e-3, warmup_steps=5)


def batches(objective, arch, seed):
    return Batcher(train_stream, make_objective(objective), batch_size=8, encoder_length=S,
                   decoder_length=T, arch=arch, seed=seed)


parents = {}
for name, c in (("B", config_b), ("A", config_a)):
    parents[name] = build_model(c, seed=0)
    train(parents[name], batches("causal_lm", "decoder", 0), optim=optim, steps=100,
          progress=False)

models = {"B": (parents["B"], "decoder"), "A": (parents["A"], "decoder"),
          "B-B": (adapt(parents["B"]), "encdec"), "A-A": (adapt(parents["A"]), "encdec"),
          "A-B": (adapt(parents["A"], parents["B"], warmup_steps=10), "encdec")}
extra = 40
val = {arch: eval_batches(val_stream, make_objective("prefix_lm"), batch_size=8,
                          encoder_length=S, decoder_length=T, arch=arch, max_batches=4)
       for arch in ("decoder", "encdec")}
prompt = val["encdec"][0]["input_ids"][0]          # one validation prefix of S tokens
N = 16
rows = {}
for name, (model, arch) in models.items():
    objective = "causal_lm" if arch == "decoder" else "prefix_lm"
    train(model, batches(objective, arch, 1), optim=optim.replace(lr=1e-3), steps=extra,
          progress=False)
    quality = evaluate(model, val[arch])["loss"]
    cost = inference_cost(model, arch, prompt, N, repeats=5)
    rows[name] = dict(quality=quality, **cost)

print(f"prompt {len(prompt)} tokens, {N} generated; batch 1; numpy backend")
print(f"{'model':6s} {'PrefixLM loss':>13s} {'MFLOPs/request':>15s} {'MFLOPs/token':>13s} "
      f"{'ms/request':>11s} {'ms/token':>9s}")
for name, r in rows.items():
    print(f"{name:6s} {r['quality']:13.3f} {r['total_gflops'] * 1e3:15.2f} "
          f"{r['gflops_per_generated_token'] * 1e3:13.3f} {r['total_ms']:11.2f} "
          f"{r['ms_per_generated_token']:9.3f}")

assert rows["A-B"]["gflops_per_generated_token"] == rows["B-B"]["gflops_per_generated_token"]
assert rows["A-B"]["prompt_gflops"] > rows["B-B"]["prompt_gflops"]
assert rows["A-A"]["gflops_per_generated_token"] > rows["A-B"]["gflops_per_generated_token"]
assert all(r["total_ms"] > 0 and np.isfinite(r["quality"]) for r in rows.values())

# %% [markdown]
# At this size the tied output matrix (`2 D V` with `V = 8192`) is most of every token's
# FLOPs, which is why the per-token costs of the five models are so close; at 2B it is a
# small part. The headline plot, at tiny scale: quality (lower is better) against the
# FLOPs of a request and against its measured latency.

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "total_gflops", "MFLOPs per request"),
                           (axes[1], "total_ms", "measured ms per request (batch 1)")):
        for name, r in rows.items():
            x = r[key] * (1e3 if key == "total_gflops" else 1)
            marker = "s" if "-" in name else "o"
            ax.scatter([x], [r["quality"]], marker=marker)
            ax.annotate(name, (x, r["quality"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(label)
        ax.set_ylabel("PrefixLM validation loss")
        ax.grid(alpha=0.3)
    fig.suptitle("circles: decoder-only; squares: encoder-decoder", fontsize=9)
    save(fig, "08_quality_vs_cost.png")

# %% [markdown]
# Next: tutorial 9 looks at two ways T5Gemma 2 makes the encoder-decoder cheaper still:
# merged attention and tied embeddings.
