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
# # 4. Generation: greedy, sampling, beam search, and the KV cache
#
# An encoder-decoder generates in two phases: the encoder reads the source **once**
# (bidirectionally), then the decoder produces one token at a time, starting from BOS,
# attending causally to its own past tokens and fully to the encoder output.
#
# To have something worth generating from, we first train a tiny T5Gemma on a synthetic
# task, reversing a string ("c a b" -> "b a c"), over a 41-symbol vocabulary of its own
# (`mini_encdec/text/tasks.py`). A few hundred steps take a few seconds.

# %%
import time

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.text.batching import ExampleBatcher
from mini_encdec.config import EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.models.generate import beam_search, generate, log_softmax, sampling_probs
from mini_encdec.training.optim import OptimConfig
from mini_encdec.text.tasks import (SYNTH_VOCAB_SIZE, exact_match, synth_decode, synth_encode,
                               synthetic_examples)
from mini_encdec.training.train import train

set_backend("numpy")  # the reference code; no compilation on a first run
BOS, EOS, PAD = 2, 1, 0

stack = GemmaConfig(vocab_size=SYNTH_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    intermediate_size=128, sliding_window=8)
model = build_model(EncDecConfig(encoder=stack, decoder=stack), seed=0)
task = dict(min_len=2, max_len=5, alphabet=6)  # strings of 2..5 letters from a..f
examples = synthetic_examples("reverse", 2000, seed=0, **task)
batches = ExampleBatcher(examples, batch_size=32, encoder_length=8, decoder_length=8)
history = train(model, batches, optim=OptimConfig(lr=1e-2, warmup_steps=20), steps=200,
                progress=False)
print(f"training loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")

test = synthetic_examples("reverse", 100, seed=1, **task)  # another seed: unseen strings
sources = [ex.inputs for ex in test]                       # symbols + EOS
outputs = generate(model, sources, max_new_tokens=8)       # greedy, KV cache
for ex, out in list(zip(test, outputs))[:4]:
    print(f"  {synth_decode(ex.inputs):6s} -> {synth_decode(out)}")
accuracy = exact_match(outputs, [ex.targets for ex in test])
print(f"exact match on 100 unseen strings: {accuracy:.2f}")
assert accuracy > 0.3

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["loss"] for r in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    save(fig, "04_reverse_loss.png")

# %% [markdown]
# ## Greedy decoding, by hand
#
# Greedy decoding picks `argmax` of the next-token logits at every step. Written out with
# the full forward pass, the decoder re-reads its whole prefix `[BOS, y1, ..., yt]` at each
# step, so step `t` costs `t` tokens and the whole output `O(N^2)` token-passes:

# %%
def greedy_by_hand(model, source, max_new_tokens):
    src = np.asarray(source)[None]                        # (1, S)
    prefix = [BOS]
    for _ in range(max_new_tokens):
        logits = model.forward({"input_ids": src,
                                "decoder_input_ids": np.array([prefix])})  # (1, t, V)
        token = int(np.argmax(logits[0, -1]))
        prefix.append(token)
        if token == EOS:
            break
    return prefix[1:]


source = synth_encode("cafe").tolist() + [EOS]
by_hand = greedy_by_hand(model, source, 8)
print("by hand :", synth_decode(by_hand), by_hand)
for use_cache in (False, True):
    out = generate(model, [source], max_new_tokens=8, use_cache=use_cache)[0]
    print(f"generate(use_cache={use_cache}):", out.tolist())
    assert out.tolist() == by_hand

# %% [markdown]
# ## The KV cache
#
# Causality makes the recomputation above wasteful: the keys and values of token `t` in
# every decoder self-attention layer never change once computed, because no later token
# can influence them. So we keep them (`models/decoding.py`):
#
# * self-attention: the post-RoPE keys and values of all previous tokens, `(B, K, t, Dh)`
#   per layer (a sliding-window layer only needs the last `W - 1`);
# * cross-attention: the encoder output's keys and values `(B, K, S, Dh)`, projected
#   **once** per request;
#
# and each step runs the decoder on the one new token. The outputs must be identical to
# the full recomputation, for every method; only the cost changes.

# %%
batch_sources = sources[:16]
timings = {}
results = {}
for use_cache in (False, True):
    t0 = time.perf_counter()
    results[use_cache] = {
        "greedy": generate(model, batch_sources, max_new_tokens=8, use_cache=use_cache),
        "sample": generate(model, batch_sources, max_new_tokens=8, method="sample",
                           temperature=1.5, seed=3, use_cache=use_cache),
        "beam": generate(model, batch_sources, max_new_tokens=8, method="beam", num_beams=3,
                         use_cache=use_cache),
    }
    timings[use_cache] = time.perf_counter() - t0
for method in ("greedy", "sample", "beam"):
    assert np.array_equal(results[True][method], results[False][method]), method
print(f"without cache {timings[False]:.3f} s, with cache {timings[True]:.3f} s "
      f"(same tokens for greedy, sampling and beam search)")

# %% [markdown]
# ## Sampling: temperature, top-k, nucleus (top-p)
#
# Sampling draws the next token from `softmax(logits / temperature)`, optionally restricted
# to the `top_k` most likely tokens, then to the smallest set whose probability reaches
# `top_p`. Randomness comes only from an explicit `np.random.Generator` (or a `seed`), so a
# run is reproducible. On a made-up distribution over 5 tokens:

# %%
logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
for kw in (dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=2),
           dict(top_p=0.8)):
    print(f"{str(kw):22s}", np.round(sampling_probs(logits, **kw)[0], 3))
# top_p=0.8 keeps 0.5, 0.2, 0.15: the smallest prefix whose mass reaches 0.8
assert np.allclose(sampling_probs(logits, top_p=0.8)[0], np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85)
assert np.allclose(sampling_probs(logits, top_k=2)[0], np.array([0.5, 0.2, 0, 0, 0]) / 0.7)

a = generate(model, batch_sources, method="sample", temperature=1.5, seed=7, max_new_tokens=8)
b = generate(model, batch_sources, method="sample", temperature=1.5, seed=7, max_new_tokens=8)
top1 = generate(model, batch_sources, method="sample", top_k=1, seed=7, max_new_tokens=8)
assert np.array_equal(a, b)                                  # same seed, same samples
assert np.array_equal(top1, results[True]["greedy"])         # top_k = 1 is greedy
print("samples at temperature 1.5:", [synth_decode(r) for r in a[:6]])

# %% [markdown]
# ## Beam search
#
# Beam search keeps the `num_beams` best partial outputs at every step and returns the
# finished hypothesis with the best length-normalised score
# `sum(log p) / length ** length_penalty` (length counts the new tokens, EOS included).
# We check the returned score against the log-probabilities of a plain teacher-forced
# forward pass over the chosen tokens.

# %%
tokens, scores = beam_search(model, batch_sources[:4], num_beams=4, max_new_tokens=8,
                             length_penalty=1.0)
for src, out, score in zip(batch_sources[:4], tokens, scores):
    out = out[:list(out).index(EOS) + 1] if EOS in out else out  # up to and with EOS
    logits = model.forward({"input_ids": np.asarray(src)[None],
                            "decoder_input_ids": np.array([[BOS] + out[:-1].tolist()])})
    logp = log_softmax(logits[0])[np.arange(len(out)), out]          # (N,)
    print(f"  {synth_decode(src):6s} -> {synth_decode(out):6s} score {score:.4f}")
    assert np.isclose(score, logp.sum() / len(out), rtol=1e-5)  # float32 logits

one_beam = generate(model, batch_sources, method="beam", num_beams=1, max_new_tokens=8)
assert np.array_equal(one_beam, results[True]["greedy"])     # one beam is greedy

# %% [markdown]
# ## Batches with different lengths
#
# Sources of different lengths are right-padded and the padding keys masked, so a source
# generates the same tokens alone or in a batch. (For decoder-only models the prompts are
# left-padded instead, so every row's next token sits in the same column; positions count
# real tokens only.)

# %%
alone = [generate(model, [s], max_new_tokens=8)[0] for s in batch_sources[:6]]
together = generate(model, batch_sources[:6], max_new_tokens=8)
for x, y in zip(alone, together):
    assert np.array_equal(x, y[:len(x)]) and np.all(y[len(x):] == PAD)
print("lengths of the sources:", [len(s) for s in batch_sources[:6]], "- same outputs alone "
      "and batched")
