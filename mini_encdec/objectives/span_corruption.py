"""T5 span corruption, the building block of UL2 (SPEC.md section 4), with the exact rules.

For a raw segment of L tokens, noise density d and mean noise span length m:

    n_noise = round_half_even(float32(L) * float32(d)), clamped to [1, L - 1]
    n_spans = max(1, round_half_even(float32(n_noise) / float32(m)))

The noise lengths are a uniformly random composition of n_noise into n_spans positive
parts (choose n_spans - 1 cut points among the n_noise - 1 gaps), the kept lengths an
independent one of L - n_noise. The segment alternates kept, noise, kept, noise, ...,
starting with kept tokens and ending with a noise span. Then

    inputs  = K1 <s0> K2 <s1> ... Kn <s(n-1)> EOS
    targets = <s0> N1 <s1> N2 ... <s(n-1)> Nn EOS

with <si> the i-th sentinel id given by the tokenizer. More spans than sentinels raises;
ordinary ids are never reused as sentinels. `m = inf` means one noise span (n_spans = 1).

Length helper: for a fixed encoder length, the raw length is the largest L whose inputs
still fit (inputs(L) never decreases with L, since one more raw token adds at most one
noise token and at most one span), and the targets length follows.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .example import Example, as_tokens, check_rng


def check_rates(density, mean_span, fn: str) -> None:
    if not (isinstance(density, (int, float)) and not isinstance(density, bool)
            and 0.0 < density < 1.0):
        raise ValueError(f"{fn}: argument 'density': expected a number in (0, 1), got "
                         f"{density!r}")
    if not (isinstance(mean_span, (int, float)) and not isinstance(mean_span, bool)
            and mean_span >= 1.0):
        raise ValueError(f"{fn}: argument 'mean_span': expected a number >= 1 (or inf for "
                         f"one span), got {mean_span!r}")


def noise_counts(length: int, density: float, mean_span: float) -> tuple:
    """(n_noise, n_spans) for a raw segment of `length` tokens, by the exact rules."""
    check_rates(density, mean_span, "noise_counts")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"noise_counts: argument 'length': expected an int >= 2 (one kept "
                         f"and one noise token), got {length!r}")
    # float32 product, then round half to even (np.rint), as in the T5 reference
    n_noise = int(np.rint(np.float32(length) * np.float32(density)))
    n_noise = min(max(n_noise, 1), int(length) - 1)
    n_spans = max(1, int(np.rint(np.float32(n_noise) / np.float32(mean_span))))
    return n_noise, n_spans


def random_composition(n: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random composition of n into `parts` positive integers: choose
    parts - 1 distinct cut points among the n - 1 gaps. (parts,) int64 summing to n."""
    check_rng(rng, "random_composition")
    if not 1 <= parts <= n:
        raise ValueError(f"random_composition: expected 1 <= parts <= n, got parts={parts}, "
                         f"n={n}")
    cuts = np.sort(rng.choice(n - 1, size=parts - 1, replace=False)) + 1  # in [1, n-1]
    return np.diff(np.concatenate([[0], cuts, [n]])).astype(np.int64)


def composition_first_part_pmf(n: int, parts: int) -> np.ndarray:
    """P(first part = k) for k = 0..n of a uniform composition: C(n-k-1, s-2) / C(n-1, s-1)
    (the other s - 1 parts compose n - k). Every part has this distribution."""
    p = np.zeros(n + 1)
    total = math.comb(n - 1, parts - 1)
    for k in range(1, n - parts + 2):
        p[k] = (math.comb(n - k - 1, parts - 2) if parts >= 2 else float(k == n)) / total
    return p


def noise_mask(length: int, density: float, mean_span: float,
               rng: np.random.Generator) -> np.ndarray:
    """(L,) bool, True on noise tokens: kept, noise, kept, noise, ..., ending in noise."""
    n_noise, n_spans = noise_counts(length, density, mean_span)
    n_kept = length - n_noise
    if n_spans > n_kept:
        raise ValueError(f"noise_mask: {n_spans} noise spans need {n_spans} kept spans but "
                         f"only {n_kept} tokens are kept (length={length}, "
                         f"density={density}, mean_span={mean_span}); use a longer segment")
    noise_lengths = random_composition(n_noise, n_spans, rng)
    kept_lengths = random_composition(n_kept, n_spans, rng)
    # (2 * n_spans,) run lengths: K1, N1, K2, N2, ...
    runs = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], n_spans)
    return np.repeat(is_noise, runs)


def span_corruption(tokens, rng: np.random.Generator, *, density: float, mean_span: float,
                    sentinel_ids: Sequence[int], eos_id: int) -> Example:
    """Corrupt one raw segment: Example(inputs, targets) as in the module docstring."""
    tokens = as_tokens(tokens, fn="span_corruption")
    check_rng(rng, "span_corruption")
    sentinel_ids = np.asarray(sentinel_ids, dtype=np.int64).reshape(-1)
    mask = noise_mask(len(tokens), density, mean_span, rng)
    # a span starts where noise follows kept (the segment starts with kept tokens)
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    n_spans = int(starts.sum())
    if n_spans > len(sentinel_ids):
        raise ValueError(f"span_corruption: {n_spans} noise spans but only "
                         f"{len(sentinel_ids)} sentinel ids; train the tokenizer with more "
                         f"sentinels or use a shorter segment")
    sentinels = sentinel_ids[:n_spans]
    # inputs: kept tokens, with each noise span replaced by its sentinel
    inputs = np.where(starts, 0, tokens)
    inputs[starts] = sentinels
    inputs = inputs[~mask | starts]
    # targets: each noise span preceded by its sentinel
    span_index = np.cumsum(starts) - 1                              # (L,) span of each token
    span_lengths = np.bincount(span_index[mask], minlength=n_spans)  # (n_spans,)
    offsets = np.concatenate([[0], np.cumsum(span_lengths)[:-1]])  # span k's start in noise
    targets = np.insert(tokens[mask], offsets, sentinels)
    eos = np.array([eos_id], dtype=np.int64)
    return Example(np.concatenate([inputs, eos]), np.concatenate([targets, eos]))


def uncorrupt(inputs, targets, sentinel_ids: Sequence[int], eos_id: int) -> np.ndarray:
    """Re-interleave inputs and targets into the original segment (the inverse of
    span_corruption; used by the tests and handy for looking at examples)."""
    inputs, targets = as_tokens(inputs, "inputs", "uncorrupt"), as_tokens(targets, "targets",
                                                                          "uncorrupt")
    if not (len(inputs) and inputs[-1] == eos_id and len(targets) and targets[-1] == eos_id):
        raise ValueError("uncorrupt: expected inputs and targets ending in EOS")
    index = {int(s): i for i, s in enumerate(sentinel_ids)}
    spans, cur = {}, None
    for t in targets[:-1]:
        if int(t) in index:
            cur = index[int(t)]
            spans[cur] = []
        elif cur is None:
            raise ValueError("uncorrupt: targets must start with a sentinel")
        else:
            spans[cur].append(int(t))
    out = []
    for t in inputs[:-1]:
        out.extend(spans[index[int(t)]] if int(t) in index else [int(t)])
    return np.asarray(out, dtype=np.int64)


def corrupted_lengths(length: int, density: float, mean_span: float) -> tuple:
    """(inputs_length, targets_length) of a corrupted raw segment, both with EOS."""
    n_noise, n_spans = noise_counts(length, density, mean_span)
    return length - n_noise + n_spans + 1, n_noise + n_spans + 1


def span_corruption_lengths(inputs_length: int, density: float, mean_span: float) -> tuple:
    """Length helper: (raw_length, targets_length) for a fixed encoder length: the largest
    raw L whose inputs (with sentinels and EOS) fit in inputs_length."""
    check_rates(density, mean_span, "span_corruption_lengths")
    if isinstance(inputs_length, bool) or not isinstance(inputs_length, int) \
            or inputs_length < 3:
        raise ValueError(f"span_corruption_lengths: argument 'inputs_length': expected an "
                         f"int >= 3, got {inputs_length!r}")
    length = 2
    while corrupted_lengths(length + 1, density, mean_span)[0] <= inputs_length:
        length += 1
    return length, corrupted_lengths(length, density, mean_span)[1]


def fitting_raw_length(encoder_length: int, decoder_length: int, density: float,
                       mean_span: float, extra_inputs: int = 0) -> int:
    """Largest raw L whose corruption fits both lengths: inputs + extra_inputs (e.g. a UL2
    mode token) <= encoder_length and targets <= decoder_length, with every noise span
    after a kept span. 0 when nothing fits."""
    check_rates(density, mean_span, "fitting_raw_length")
    best = 0
    for length in range(2, encoder_length + decoder_length + 2):  # inputs+targets > L
        n_noise, n_spans = noise_counts(length, density, mean_span)
        i, t = corrupted_lengths(length, density, mean_span)
        if i + extra_inputs <= encoder_length and t <= decoder_length \
                and n_spans <= length - n_noise:
            best = length
    return best


def max_spans(inputs_length: int) -> int:
    """Most noise spans any corruption can have when its inputs fit in inputs_length:
    every span needs a sentinel and a kept span before it, plus the EOS."""
    return (inputs_length - 1) // 2
