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
# # 2. Pre-training objectives: PrefixLM, span corruption, UL2
#
# The T5Gemma paper adapts with two objectives and compares them: **PrefixLM** (better for
# generation) and **UL2** (better for representations, e.g. SuperGLUE). UL2 is a mixture
# of **T5 span corruption** tasks plus a sequential prefix task, each announced by a mode
# token. Every objective here is a pure function `(tokens, rng) -> Example(inputs,
# targets)`: the same seed always gives the same example.
#
# We run them on real text: Macbeth's "To-morrow" speech from the shipped corpus, cut
# into tokens by the shipped SentencePiece model.

# %%
import numpy as np

from _tutorial import pyplot, save
from mini_encdec.text.batching import collate_decoder, collate_encdec
from mini_encdec.text.corpus import CORPUS_DIR
from mini_encdec.objectives import make_objective
from mini_encdec.objectives.example import teacher_positions
from mini_encdec.objectives.prefix_lm import prefix_lm
from mini_encdec.objectives.span_corruption import (composition_first_part_pmf, corrupted_lengths,
                                                    noise_counts, noise_mask, random_composition,
                                                    span_corruption, span_corruption_lengths,
                                                    uncorrupt)
from mini_encdec.objectives.ul2 import ul2_example
from mini_encdec.text.tokenizer import load_tokenizer

rng = np.random.default_rng(0)
tok = load_tokenizer()  # data/tokenizer.model

play = (CORPUS_DIR / "tragedies" / "macbeth.txt").read_text(encoding="utf-8")
start = play.index("She should have died hereafter")
end = play.index("Signifying nothing.") + len("Signifying nothing.")
speech = play[start:end]
tokens = tok.encode(speech).astype(np.int64)  # (145,) token ids


def show(ids):
    """Token ids as text on one line ("/" for a newline, "<eos>" for EOS)."""
    ids = [int(i) for i in ids]
    eos = " <eos>" if ids and ids[-1] == tok.eos_id else ""
    return tok.decode(ids).replace("\n", " / ") + eos


print(len(tokens), "tokens:", show(tokens[:24]), "...")

# %% [markdown]
# ## Special ids
#
# Gemma's convention: pad 0, eos 1, bos 2, unk 3. The tokenizer adds single-piece mode
# tokens `[NLU] [NLG] [S2S]` and 256 sentinels `<extra_id_0> ...`. The corruption code
# takes the sentinel ids *from the tokenizer*: reusing ordinary ids as sentinels (a bug
# some ports have) would make the model unable to tell "masked here" from a real word.

# %%
print("pad/eos/bos/unk:", tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id)
print("mode tokens:", tok.mode_ids)
print("first sentinels:", tok.sentinel_ids[:3], [tok.id_to_piece(i) for i in tok.sentinel_ids[:3]])
assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
assert not np.isin(tok.special_ids, tokens).any()  # text never contains a special id

# %% [markdown]
# ## PrefixLM
#
# A window of `2N` tokens is cut in half: the first half is the encoder input, the second
# the decoder target. The decoder reads the targets shifted right behind BOS,
# `[BOS] + targets[:-1]`, and predicts `targets` (teacher forcing).
#
# The decoder-only baseline sees the *same* example as one sequence `prefix ++ target`
# and takes the loss on the target half only. That identity is what makes the two
# architectures comparable, and it fixes the distillation alignment: target token `j`
# sits at absolute index `N + j`, so the decoder-only teacher predicts it from position
# `N + j - 1`.

# %%
N = 8
ex = prefix_lm(tokens[:2 * N])
print("encoder input :", show(ex.inputs))
print("decoder target:", show(ex.targets))
assert np.array_equal(np.concatenate([ex.inputs, ex.targets]), tokens[:2 * N])

enc = collate_encdec([ex], encoder_length=N, decoder_length=N, bos_id=tok.bos_id)
print("decoder_input_ids:", enc["decoder_input_ids"][0])
print("labels           :", enc["labels"][0])
assert enc["decoder_input_ids"][0, 0] == tok.bos_id
assert np.array_equal(enc["decoder_input_ids"][0, 1:], enc["labels"][0, :-1])

dec = collate_decoder([ex], 2 * N)  # decoder-only: position t predicts x[t + 1]
x, labels = dec["input_ids"][0], dec["labels"][0]
print("decoder-only labels:", labels)  # -100 = no loss
pos = teacher_positions(N, N)  # N + j - 1
assert np.array_equal(labels[pos], ex.targets)
assert np.all(np.delete(labels, pos) == -100)

# %% [markdown]
# ## T5 span corruption, step by step
#
# For a raw segment of `L` tokens, noise density `d` and mean span length `m`:
#
# 1. counts: `n_noise = round_half_even(float32(L) * float32(d))`, clamped to `[1, L-1]`;
#    `n_spans = max(1, round_half_even(n_noise / m))`.
# 2. two independent uniformly random *compositions*: `n_noise` into `n_spans` positive
#    noise-span lengths, and `L - n_noise` into `n_spans` kept-span lengths (choose
#    `n_spans - 1` cut points among the `n - 1` gaps).
# 3. the segment alternates kept, noise, kept, noise, ...: it starts with kept tokens and
#    ends with a noise span.
# 4. `inputs  = K1 <s0> K2 <s1> ... Kn <s(n-1)> EOS` and
#    `targets = <s0> N1 <s1> N2 ... <s(n-1)> Nn EOS`.
#
# The float32 product and the round-half-to-even copy the T5 reference code
# (`np.round` rounds 2.5 to 2); the counts below show both effects.

# %%
L, density, mean_span = 40, 0.15, 3.0
n_noise, n_spans = noise_counts(L, density, mean_span)
print(f"L={L}, d={density}, m={mean_span}: n_noise={n_noise}, n_spans={n_spans}")
assert (n_noise, n_spans) == (6, 2)  # 40 * .15 = 6 noise tokens; 6 / 3 = 2 spans
assert noise_counts(10, 0.25, 1) == (2, 2)  # 2.5 rounds half to even: 2
assert noise_counts(14, 0.25, 1) == (4, 4)  # 3.5 rounds half to even: 4
assert noise_counts(10, 0.01, 3) == (1, 1)  # at least one noise token
assert noise_counts(4, 0.99, 1)[0] == 3     # at most L - 1

# %% [markdown]
# Step 2, the compositions, for our counts. Every composition of 6 into 2 parts
# (1+5, 2+4, ..., 5+1) is equally likely, so each part is uniform on 1..5:

# %%
noise_lengths = random_composition(n_noise, n_spans, rng)
kept_lengths = random_composition(L - n_noise, n_spans, rng)
print("noise span lengths:", noise_lengths, " kept span lengths:", kept_lengths)
assert noise_lengths.sum() == n_noise and kept_lengths.sum() == L - n_noise
assert np.all(noise_lengths >= 1) and np.all(kept_lengths >= 1)
print("P(first part = k), k = 0..6:", composition_first_part_pmf(6, 2))
assert np.allclose(composition_first_part_pmf(6, 2)[1:6], 0.2)

# %% [markdown]
# Steps 3 and 4 on the speech (`span_corruption` draws the compositions itself, from the
# generator it is given). Noise tokens are shown in brackets:

# %%
segment = tokens[:L]
mask = noise_mask(L, density, mean_span, np.random.default_rng(1))
pieces = [tok.id_to_piece(t).replace("\n", "/") for t in segment]
print(" ".join(f"[{p}]" if m else p for p, m in zip(pieces, mask)))
assert not mask[0] and mask[-1]  # starts kept, ends with noise

ex = span_corruption(segment, np.random.default_rng(1), density=density,
                     mean_span=mean_span, sentinel_ids=tok.sentinel_ids, eos_id=tok.eos_id)
print("inputs :", show(ex.inputs))
print("targets:", show(ex.targets))
# same generator state -> the same noise mask as above: the inputs keep exactly the kept tokens
kept = ~np.isin(ex.inputs, tok.sentinel_ids) & (ex.inputs != tok.eos_id)
assert np.array_equal(ex.inputs[kept], segment[~mask])
assert (len(ex.inputs), len(ex.targets)) == corrupted_lengths(L, density, mean_span)
assert len(ex.inputs) == L - n_noise + n_spans + 1 and len(ex.targets) == n_noise + n_spans + 1
assert list(ex.targets[np.isin(ex.targets, tok.sentinel_ids)]) == list(tok.sentinel_ids[:n_spans])
assert np.array_equal(uncorrupt(ex.inputs, ex.targets, tok.sentinel_ids, tok.eos_id), segment)

# %% [markdown]
# More spans than sentinels is an error, never a silent reuse of ordinary ids:

# %%
try:
    span_corruption(tokens[:100], rng, density=0.5, mean_span=1, sentinel_ids=tok.sentinel_ids[:3],
                    eos_id=tok.eos_id)
    raise AssertionError("expected a ValueError")
except ValueError as e:
    print("ValueError:", e)

# %% [markdown]
# ### The length helper
#
# Batches have a fixed encoder length, so we need the longest raw segment whose corrupted
# inputs (sentinels and EOS included) still fit. T5's reference code has a helper for
# this; with an encoder length of 64, density 0.2 and mean span 2 it reads 70 raw tokens
# and produces 22 target tokens. We reproduce its known values:

# %%
for args, want in (((64, 0.2, 2), (70, 22)), ((64, 0.2, 1), (63, 27)),
                   ((512, 0.15, 3), (568, 114))):
    got = span_corruption_lengths(*args)
    print(f"inputs_length, density, mean_span = {args} -> (raw, targets) = {got}")
    assert got == want
raw, _ = span_corruption_lengths(64, 0.2, 2)
assert corrupted_lengths(raw, 0.2, 2)[0] <= 64 < corrupted_lengths(raw + 1, 0.2, 2)[0]

# %% [markdown]
# ### Span lengths are uniform compositions
#
# Over many draws, the length of a noise span follows the pmf of a part of a uniform
# composition, `P(k) = C(n-k-1, s-2) / C(n-1, s-1)`. For `L = 100, d = 0.15, m = 3`
# (15 noise tokens in 5 spans):

# %%
L2 = 100
n2, s2 = noise_counts(L2, 0.15, 3.0)
lengths = []
for seed in range(400):
    m2 = noise_mask(L2, 0.15, 3.0, np.random.default_rng(seed))
    starts = np.flatnonzero(np.diff(np.concatenate([[0], m2.astype(int), [0]])) == 1)
    stops = np.flatnonzero(np.diff(np.concatenate([[0], m2.astype(int), [0]])) == -1)
    lengths.extend(stops - starts)
freq = np.bincount(lengths, minlength=n2 + 1) / len(lengths)
pmf = composition_first_part_pmf(n2, s2)
print("k        :", np.arange(1, 8))
print("observed :", freq[1:8])
print("expected :", pmf[1:8])
assert np.max(np.abs(freq - pmf)) < 0.03  # 2000 spans: standard error about 0.01

plt = pyplot()
if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(np.arange(n2 + 1) - 0.2, freq, width=0.4, label="observed")
    ax.bar(np.arange(n2 + 1) + 0.2, pmf, width=0.4, label="uniform composition")
    ax.set_xlabel("noise span length")
    ax.set_ylabel("probability")
    ax.set_xlim(0, 12)
    ax.legend()
    save(fig, "02_span_lengths.png")

# %% [markdown]
# ## UL2: a mixture of denoisers with mode tokens
#
# UL2 (Tay et al. 2022) samples one of seven tasks per example and prepends its mode token
# to the encoder input:
#
# | mode | task | (mean span, rate) |
# |---|---|---|
# | `[NLU]` | R: regular span corruption | (3, .15), (8, .15) |
# | `[NLG]` | X: extreme corruption | (3, .5), (8, .5), (64, .15), (64, .5) |
# | `[S2S]` | S: sequential prefix-LM | prefix length uniform in `[round((1-2r)(L-1)), L-1]`, r = .25; prefix and suffix each end with EOS |
#
# For a fixed encoder length `S` and decoder length `T`, each task reads the longest raw
# segment whose example fits (mode token included), so tasks read different amounts of
# text. The "t5gemma2" preset is the T5Gemma 2 mixture instead (see `objectives/ul2.py`;
# the assignment of its mode tokens is our choice, the source does not list them).

# %%
ul2 = make_objective("ul2", tok)
S, T = 64, 64
window = tokens[:ul2.window_length(S, T)]
for d in ul2.mixture.denoisers:
    print(f"{d.name:32s} mode {d.mode}  raw length {d.raw_length(S, T)}")

def is_slice_of(part, whole):
    """True when `part` occurs in `whole` as a contiguous run."""
    return any(np.array_equal(whole[i:i + len(part)], part)
               for i in range(len(whole) - len(part) + 1))


shown = set()
for seed in range(40):
    ex, task = ul2_example(window, np.random.default_rng(seed), ul2.mixture, encoder_length=S,
                           decoder_length=T, mode_ids=tok.mode_ids,
                           sentinel_ids=tok.sentinel_ids, eos_id=tok.eos_id)
    d = ul2.mixture.denoisers[task]
    assert ex.inputs[0] == tok.mode_ids[d.mode]       # the mode token comes first
    assert len(ex.inputs) <= S and len(ex.targets) <= T
    if d.kind == "sequential":  # S: a plain prefix/suffix split of a sub-window, each + EOS
        assert not np.isin(ex.targets, tok.sentinel_ids).any()
        assert ex.inputs[-1] == tok.eos_id and ex.targets[-1] == tok.eos_id
        assert is_slice_of(np.concatenate([ex.inputs[1:-1], ex.targets[:-1]]), window)
    else:                       # R and X: span corruption of a sub-window
        original = uncorrupt(ex.inputs[1:], ex.targets, tok.sentinel_ids, tok.eos_id)
        assert len(original) == d.raw_length(S, T) and is_slice_of(original, window)
    if d.mode not in shown:     # print one example per mode
        shown.add(d.mode)
        print(f"\n{d.name}")
        print("  inputs :", show(ex.inputs)[:160])
        print("  targets:", show(ex.targets)[:160])
assert shown == set(tok.mode_ids)

# %% [markdown]
# Over many examples the task frequencies follow the weights: uniform for "ul2",
# 1:1:1:1:4 for "t5gemma2".

# %%
for name in ("ul2", "t5gemma2"):
    mixture = make_objective(name, tok).mixture
    counts = np.bincount([mixture.sample_task(np.random.default_rng(s)) for s in range(3000)],
                         minlength=len(mixture.denoisers)) / 3000
    print(f"{name:9s} observed {np.round(counts, 3)}  expected {np.round(mixture.probabilities, 3)}")
    assert np.max(np.abs(counts - mixture.probabilities)) < 0.03
