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
# # 5. PrefixLM + knowledge distillation
#
# After adaptation (tutorial 3) the encoder-decoder keeps pre-training. The paper's first
# objective is PrefixLM: the encoder reads the first half of a window of `2N` tokens, the
# decoder predicts the second half. Its best variant adds **knowledge distillation** from
# a decoder-only teacher, by default the very model we adapted from: besides the one-hot
# label, every target token also learns the teacher's whole next-token distribution.
#
# For target token `j` (absolute index `N + j` of the window), the teacher reads the whole
# window `prefix ++ targets` causally, and its distribution for that token is the one it
# predicts at absolute position `N + j - 1`:
#
# $$p^{T}_j = \mathrm{softmax}\big(z^{T}_{N+j-1} / \tau\big), \qquad
#   q_j = \mathrm{softmax}\big(z^{S}_j / \tau\big)$$
#
# $$\mathcal{L} = \alpha \cdot \underbrace{\frac1n \sum_j -\sum_v p^{T}_j[v] \log q_j[v]}_{\text{soft}}
#   + (1 - \alpha) \cdot \underbrace{\frac1n \sum_j -\log \mathrm{softmax}(z^{S}_j)[y_j]}_{\text{ce}}$$
#
# `z` are the models' soft-capped logits, `n` the number of counted targets, `alpha` and
# the temperature `tau` are config values (`kd_alpha`, `kd_temperature`). The soft term is
# the cross-entropy against the teacher; it differs from `KL(p_T || q)` only by the
# teacher's entropy, which does not depend on the student, so both have the same
# gradient (we report both). *Our choice:* no `tau^2` factor is applied (Hinton et al.
# multiply the soft term by `tau^2` to keep its gradient scale; at `tau = 1`, the
# default, it makes no difference). The code is `mini_encdec/training/distill.py`.
#
# We train a tiny teacher, adapt it, check where the teacher's distributions come from and
# the loss by hand, look at the temperature, then continue the student with PrefixLM and
# with PrefixLM + KD on the same batches.

# %%
import copy

import numpy as np

from _tutorial import pyplot, save
from mini_encdec.backend import set_backend
from mini_encdec.config import GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.nn.gradcheck import numerical_grad, rel_error
from mini_encdec.nn.loss import distillation_backward, distillation_forward
from mini_encdec.objectives import make_objective
from mini_encdec.objectives.example import teacher_positions
from mini_encdec.text.batching import Batcher, corpus_stream, eval_batches, split_teacher
from mini_encdec.text.tokenizer import load_tokenizer
from mini_encdec.training.adapt import adapt
from mini_encdec.training.distill import kd_loss_and_grads, teacher_probabilities
from mini_encdec.training.optim import OptimConfig
from mini_encdec.training.train import train

set_backend("numpy")  # the readable reference; no compilation on a first run
rng = np.random.default_rng(0)
tok = load_tokenizer()
train_stream = corpus_stream("train", tok)
val_stream = corpus_stream("validation", tok)

# %% [markdown]
# ## The teacher and the student
#
# The teacher is a tiny decoder-only Gemma 2, given a short causal-LM pre-training so its
# distributions carry something; the student is its adaptation (tutorial 3). The student
# starts with the teacher's weights, but not with its function: its encoder reads the
# prefix bidirectionally, and its decoder sees the prefix only through cross-attention,
# whose weights were copied from self-attention and have yet to learn their new job.

# %%
config = GemmaConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                     intermediate_size=192, sliding_window=8)
teacher = build_model(config, seed=0)
causal_lm = Batcher(train_stream, make_objective("causal_lm"), batch_size=8,
                    encoder_length=8, decoder_length=8, arch="decoder", seed=0)
optim = OptimConfig(lr=3e-3, warmup_steps=5)
hist = train(teacher, causal_lm, optim=optim, steps=200, progress=False)  # about 4 s
print(f"teacher, causal LM: loss {hist[0]['loss']:.3f} -> {hist[-1]['loss']:.3f}")
student = adapt(teacher)

# %% [markdown]
# ## Where the teacher's distribution comes from
#
# A PrefixLM batch made with `with_teacher=True` carries, beside the encoder-decoder
# batch, the decoder-only form of the same examples (`teacher_input_ids`: prefix ++
# targets) and `teacher_positions[b, j]`, the teacher position whose logits predict
# `labels[b, j]`: `N + j - 1`, and -1 where the label is ignored. Position `N + j - 1`
# holds token `N + j - 1` and predicts the next one, `N + j`, which is target `j`.

# %%
S = T = 8  # N = 8: windows of 16 tokens
prefix_lm = make_objective("prefix_lm")
batches = Batcher(train_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                  arch="encdec", seed=1, with_teacher=True)
batch = batches.next_batch()
student_batch, teacher_batch, positions = split_teacher(batch)
print("encoder input  :", student_batch["input_ids"][0])
print("labels         :", student_batch["labels"][0])
print("teacher input  :", teacher_batch["input_ids"][0])
print("teacher reads position -> predicts index:",
      [(int(p), int(p) + 1) for p in positions[0][:4]], "...")

assert np.array_equal(positions[0], teacher_positions(S, T))  # N + j - 1 = 7, 8, ..., 14
full = teacher_batch["input_ids"][0]                            # (S + T,)
assert np.array_equal(full[positions[0] + 1], student_batch["labels"][0])

# the teacher's distributions: its softmax at those positions
p_teacher = teacher_probabilities(teacher, teacher_batch, positions)          # (B, T, V)
z_teacher = teacher.forward(teacher_batch)                                    # (B, S+T, V)
by_hand = np.exp(z_teacher - z_teacher.max(-1, keepdims=True))
by_hand /= by_hand.sum(-1, keepdims=True)
assert np.allclose(p_teacher, by_hand[np.arange(8)[:, None], positions], atol=1e-6)

# %% [markdown]
# ## The loss by hand
#
# `kd_loss_and_grads` returns the loss, the student's gradients and the parts `ce`,
# `soft` and `kl`. We recompute them from the logits: the soft cross-entropy, the KL
# (the soft term minus the teacher's entropy) and the mixture. With `alpha = 0` the loss
# and every gradient are plain PrefixLM's.

# %%
alpha = 0.5
loss, grads, parts = kd_loss_and_grads(student, teacher, batch, alpha=alpha)
z = student.forward(student_batch).astype(np.float64)                        # (B, T, V)
log_q = z - z.max(-1, keepdims=True)
log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))                       # log softmax
labels = student_batch["labels"]
counted = labels != -100                                                     # (B, T)
pt = p_teacher.astype(np.float64)[counted]                                   # (n, V)
soft = -(pt * log_q[counted]).sum(-1).mean()
ce = -log_q[counted, labels[counted]].mean()
entropy = -(pt * np.log(pt)).sum(-1).mean()
print(f"ce {ce:.4f}  soft {soft:.4f}  KL {soft - entropy:.4f}  "
      f"loss = {alpha} soft + {1 - alpha} ce = {loss:.4f}")
assert np.isclose(parts["ce"], ce, rtol=1e-5) and np.isclose(parts["soft"], soft, rtol=1e-5)
assert np.isclose(parts["kl"], soft - entropy, atol=1e-4) and parts["kl"] >= 0
assert np.isclose(loss, alpha * soft + (1 - alpha) * ce, rtol=1e-5)

loss0, grads0, _ = kd_loss_and_grads(student, teacher, batch, alpha=0.0)
loss_ce, grads_ce = student.loss_and_grads(student_batch)
assert np.isclose(loss0, loss_ce, rtol=1e-6)
assert all(np.allclose(grads0[k], grads_ce[k], rtol=1e-4, atol=1e-7) for k in grads_ce)

# %% [markdown]
# The gradient of the soft term with respect to the student's logits is
# `(q - p_T) / (tau n)` on each counted row: the student moves towards the teacher's
# whole distribution, not only its top token. A float64 finite-difference check of
# `distillation_backward`:

# %%
small = rng.standard_normal((2, 3, 5))                          # (B, T, V) logits
tp = rng.dirichlet(np.ones(5), size=(2, 3))                     # teacher rows sum to 1
mask = np.array([[True, True, False], [True, False, True]])
for tau in (1.0, 2.0):
    _, cache = distillation_forward(small, tp, mask, tau)
    analytic = distillation_backward(1.0, cache)
    numeric = numerical_grad(lambda: distillation_forward(small, tp, mask, tau)[0], small)
    q = np.exp(small / tau) / np.exp(small / tau).sum(-1, keepdims=True)
    assert np.allclose(analytic, (q - tp) * mask[..., None] / (tau * mask.sum()))
    print(f"tau {tau}: relative error of the gradient {rel_error(analytic, numeric):.1e}")
    assert rel_error(analytic, numeric) < 1e-8

# %% [markdown]
# ## The temperature
#
# Dividing the teacher's logits by `tau > 1` flattens its distribution: the student
# learns more about the *relative* probabilities of the tokens the teacher finds
# unlikely ("dark knowledge"); `tau < 1` sharpens it towards the teacher's top token.
# The same `tau` divides the student's logits in the soft term.

# %%
taus = (0.5, 1.0, 2.0, 4.0)
row = positions[0, 3]
entropies = []
for tau in taus:
    p = teacher_probabilities(teacher, teacher_batch, positions, temperature=tau)[0, 3]
    entropies.append(float(-(p * np.log(p)).sum()))
    print(f"tau {tau}: top probability {p.max():.3f}, entropy {entropies[-1]:.2f} nats "
          f"(uniform: {np.log(tok.vocab_size):.2f})")
assert all(a < b for a, b in zip(entropies, entropies[1:]))  # flatter as tau grows

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    for tau in taus:
        p = teacher_probabilities(teacher, teacher_batch, positions, temperature=tau)[0, 3]
        ax.semilogy(np.sort(p)[::-1][:200], label=f"tau = {tau}")
    ax.set_xlabel("token rank")
    ax.set_ylabel("teacher probability")
    ax.set_title("one teacher distribution at four temperatures")
    ax.legend()
    save(fig, "05_temperature.png")

# %% [markdown]
# ## PrefixLM versus PrefixLM + KD
#
# Two copies of the adapted student continue for the same number of updates on the same
# batches, one with plain PrefixLM (`alpha = 0`), one with PrefixLM + KD (`alpha = 0.5`;
# `train(..., teacher=teacher, kd_alpha=0.5)` is how the command line's
# `pretrain --teacher` runs it). We compare, on validation plays, the PrefixLM loss and
# the KL divergence from the teacher.
#
# What to expect: both students learn (lower PrefixLM loss) and move closer to the
# teacher than the freshly adapted model, the distilled one more so (lower KL); their
# PrefixLM losses end within a few hundredths of a nat of each other. The paper reports PrefixLM + KD as its best generation
# objective at 2B and 9B; this project's study at tiny scale (experiment E3 in the README)
# found the effect too small to call (-0.008 nats of fine-tuned reply NLL, p = 0.07).

# %%
def validation(model, batches):
    """(PrefixLM loss, KL(teacher || student)) averaged over counted targets."""
    losses, kls = [], []
    for b in batches:
        _, _, parts = kd_loss_and_grads(model, teacher, b, alpha=0.5)
        losses.append(parts["ce"])
        kls.append(parts["kl"])
    return float(np.mean(losses)), float(np.mean(kls))


val = eval_batches(val_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   max_batches=4, with_teacher=True)
steps = 40
student_optim = OptimConfig(lr=1e-3, warmup_steps=5)
results = {}
for name, a in (("PrefixLM", 0.0), ("PrefixLM + KD", 0.5)):
    model = copy.deepcopy(student)
    data = Batcher(train_stream, prefix_lm, batch_size=8, encoder_length=S, decoder_length=T,
                   arch="encdec", seed=2, with_teacher=True)   # the same batches for both
    h = train(model, data, optim=student_optim, steps=steps, teacher=teacher, kd_alpha=a,
              progress=False)
    results[name] = (validation(model, val), [r["ce"] for r in h], [r["kl"] for r in h])

start = validation(student, val)
print(f"{'':15s} {'PrefixLM loss':>14s} {'KL to teacher':>14s}")
print(f"{'adapted':15s} {start[0]:14.3f} {start[1]:14.3f}")
for name, ((ce_val, kl_val), _, _) in results.items():
    print(f"{name:15s} {ce_val:14.3f} {kl_val:14.3f}")
plain, kd = results["PrefixLM"][0], results["PrefixLM + KD"][0]
assert plain[0] < start[0] and kd[0] < start[0]   # both learn
assert kd[1] < plain[1]                            # distillation keeps the student near its teacher

if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for name, (_, ces, kls) in results.items():
        axes[0].plot(np.arange(1, steps + 1), ces, label=name)
        axes[1].plot(np.arange(1, steps + 1), kls, label=name)
    axes[0].set_ylabel("training PrefixLM cross-entropy")
    axes[1].set_ylabel("training KL(teacher || student)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend()
    save(fig, "05_kd_training.png")

# %% [markdown]
# Next: tutorial 6 adapts an *unbalanced* model, a large encoder with a small decoder,
# where the cross-attention starts from scratch and gets a warmup of its own.
