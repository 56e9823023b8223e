"""UL2, the mixture of denoisers (Tay et al. 2022), as used by T5Gemma (SPEC.md section 4).

Every task prepends a mode token to the encoder input:

    R  [NLU]  span corruption, short spans at a low rate: (mean 3, rate .15), (8, .15)
    X  [NLG]  extreme corruption: (3, .5), (8, .5), (64, .15), (64, .5)
    S  [S2S]  sequential prefix-LM: prefix length k uniform in
              [max(1, round((1 - 2r)(L - 1))), L - 1], r = 0.25;
              inputs = tokens[:k] EOS, targets = tokens[k:] EOS, no sentinels (EOS as
              in T5 and the R and X denoisers)

Presets:
    "ul2"       the UL2 paper's 7 denoisers above, sampled uniformly
    "t5gemma2"  T5Gemma 2's five: (3, .15), (12, .5), (32, .15), (32, .5) and one span
                covering 3/4 of the sequence at rate .75, weighted 1:1:1:1:4. Their mode
                tokens are our choice (the source does not list them), by UL2's own
                taxonomy: (3, .15) is R [NLU]; the long-span or high-rate three are
                X [NLG]; the single 3/4 span, a prefix-LM in disguise, is S [S2S].

Weights are configurable: `UL2Mixture(denoisers, weights)`.

Lengths: for a fixed encoder length S and decoder length T, each denoiser reads the
longest raw segment whose encoder input (mode token included) fits in S and whose
targets fit in T (`Denoiser.raw_length`). A mixture's example takes a window of the
longest raw length over its tasks (`UL2Mixture.window_length`), samples a task, and
corrupts a random sub-window of that task's raw length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from .example import Example, as_tokens, check_rng
from .span_corruption import (check_rates, corrupted_lengths, fitting_raw_length,
                              span_corruption)

MODES = ("[NLU]", "[NLG]", "[S2S]")


@dataclass(frozen=True)
class Denoiser:
    """One UL2 task. kind "span": T5 span corruption with (mean_span, density);
    kind "sequential": the S-denoiser with parameter r."""

    mode: str                       # "[NLU]", "[NLG]" or "[S2S]"
    kind: str = "span"              # "span" or "sequential"
    mean_span: float = 3.0          # span: mean noise span length (inf = one span)
    density: float = 0.15           # span: noise rate
    r: float = 0.25                 # sequential: prefix length lower bound (1 - 2r)(L - 1)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Denoiser.mode: expected one of {MODES}, got {self.mode!r}")
        if self.kind == "span":
            check_rates(self.density, self.mean_span, "Denoiser")
        elif self.kind == "sequential":
            if not (isinstance(self.r, (int, float)) and 0.0 <= self.r <= 0.5):
                raise ValueError(f"Denoiser.r: expected a number in [0, 0.5], got {self.r!r}")
        else:
            raise ValueError(f"Denoiser.kind: expected 'span' or 'sequential', got "
                             f"{self.kind!r}")

    @property
    def name(self) -> str:
        if self.kind == "sequential":
            return f"S(r={self.r:g})"
        return f"{self.mode}(mean={self.mean_span:g},rate={self.density:g})"

    def raw_length(self, encoder_length: int, decoder_length: int) -> int:
        """Longest raw segment whose example fits (S, T), mode token included."""
        return _raw_length(self, int(encoder_length), int(decoder_length))

    def example_lengths(self, length: int) -> tuple:
        """(max inputs length with the mode token, max targets length) for raw `length`."""
        if self.kind == "sequential":  # [S2S] prefix EOS -> suffix EOS
            lo = sequential_prefix_bounds(length, self.r)[0]
            return 1 + (length - 1) + 1, length - lo + 1
        i, t = corrupted_lengths(length, self.density, self.mean_span)
        return 1 + i, t


@lru_cache(maxsize=None)
def _raw_length(den: Denoiser, s: int, t: int) -> int:
    if den.kind == "span":
        best = fitting_raw_length(s, t, den.density, den.mean_span, extra_inputs=1)
    else:  # inputs 1 + k + 1 <= S for k up to L - 1; targets L - k + 1 <= T for k down to lo
        best = 0
        for length in range(2, s + t + 2):
            i, o = den.example_lengths(length)
            if i <= s and o <= t:
                best = length
    if best == 0:
        raise ValueError(f"{den.name}: no raw length fits encoder length {s} and decoder "
                         f"length {t}")
    return best


def sequential_prefix_bounds(length: int, r: float = 0.25) -> tuple:
    """(lo, hi) of the S-denoiser's prefix length k: [max(1, round((1-2r)(L-1))), L-1]."""
    if length < 2:
        raise ValueError(f"sequential_prefix_bounds: argument 'length': expected >= 2, got "
                         f"{length}")
    lo = max(1, int(round((1.0 - 2.0 * r) * (length - 1))))
    return min(lo, length - 1), length - 1


def sequential_denoise(tokens, rng: np.random.Generator, *, r: float = 0.25) -> Example:
    """The S-denoiser without its mode token: a random split into prefix and suffix."""
    tokens = as_tokens(tokens, fn="sequential_denoise")
    check_rng(rng, "sequential_denoise")
    lo, hi = sequential_prefix_bounds(len(tokens), r)
    k = int(rng.integers(lo, hi + 1))
    return Example(tokens[:k], tokens[k:])


def denoise(tokens, rng: np.random.Generator, denoiser: Denoiser, *, mode_id: int,
            sentinel_ids: Sequence[int], eos_id: int) -> Example:
    """Apply one denoiser to a raw segment and prepend its mode token to the inputs.

    Every denoiser's inputs and targets end with EOS, as in T5: span corruption appends
    it itself; the S-denoiser's split (prefix, suffix) gets it here."""
    if denoiser.kind == "sequential":
        ex = sequential_denoise(tokens, rng, r=denoiser.r)
        ex = Example(np.concatenate([ex.inputs, [eos_id]]).astype(np.int64),  # prefix EOS
                     np.concatenate([ex.targets, [eos_id]]).astype(np.int64))  # suffix EOS
    else:
        ex = span_corruption(tokens, rng, density=denoiser.density,
                             mean_span=denoiser.mean_span, sentinel_ids=sentinel_ids,
                             eos_id=eos_id)
    return Example(np.concatenate([[mode_id], ex.inputs]).astype(np.int64), ex.targets)


UL2_PAPER = (
    Denoiser("[NLU]", mean_span=3, density=0.15),
    Denoiser("[NLU]", mean_span=8, density=0.15),
    Denoiser("[NLG]", mean_span=3, density=0.5),
    Denoiser("[NLG]", mean_span=8, density=0.5),
    Denoiser("[NLG]", mean_span=64, density=0.15),
    Denoiser("[NLG]", mean_span=64, density=0.5),
    Denoiser("[S2S]", kind="sequential", r=0.25),
)
T5GEMMA2 = (
    Denoiser("[NLU]", mean_span=3, density=0.15),
    Denoiser("[NLG]", mean_span=12, density=0.5),
    Denoiser("[NLG]", mean_span=32, density=0.15),
    Denoiser("[NLG]", mean_span=32, density=0.5),
    # one span (mean = inf gives n_spans = 1) covering 3/4 of the segment
    Denoiser("[S2S]", mean_span=math.inf, density=0.75),
)
T5GEMMA2_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 4.0)


@dataclass(frozen=True)
class UL2Mixture:
    """A weighted set of denoisers. weights=None means uniform."""

    denoisers: tuple
    weights: Optional[tuple] = None

    def __post_init__(self):
        if not self.denoisers or not all(isinstance(d, Denoiser) for d in self.denoisers):
            raise ValueError("UL2Mixture.denoisers: expected a non-empty tuple of Denoiser")
        object.__setattr__(self, "denoisers", tuple(self.denoisers))
        w = self.weights
        if w is None:
            w = (1.0,) * len(self.denoisers)
        w = tuple(float(x) for x in w)
        if len(w) != len(self.denoisers) or any(not x >= 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"UL2Mixture.weights: expected {len(self.denoisers)} "
                             f"non-negative weights with a positive sum, got {self.weights!r}")
        object.__setattr__(self, "weights", w)

    @property
    def probabilities(self) -> np.ndarray:
        w = np.asarray(self.weights)
        return w / w.sum()

    def sample_task(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.denoisers), p=self.probabilities))

    def window_length(self, encoder_length: int, decoder_length: int) -> int:
        return max(d.raw_length(encoder_length, decoder_length) for d in self.denoisers)


def ul2_preset(name: str, weights: Optional[Sequence[float]] = None) -> UL2Mixture:
    """"ul2" (the paper's 7, uniform) or "t5gemma2" (5 tasks, 1:1:1:1:4); weights override."""
    if name == "ul2":
        return UL2Mixture(UL2_PAPER, None if weights is None else tuple(weights))
    if name == "t5gemma2":
        return UL2Mixture(T5GEMMA2, T5GEMMA2_WEIGHTS if weights is None else tuple(weights))
    raise ValueError(f"ul2_preset: argument 'name': expected 'ul2' or 't5gemma2', got "
                     f"{name!r}")


def ul2_example(window, rng: np.random.Generator, mixture: UL2Mixture, *,
                encoder_length: int, decoder_length: int, mode_ids: dict,
                sentinel_ids: Sequence[int], eos_id: int) -> tuple:
    """Sample a task, take a random sub-window of its raw length, denoise it.
    Returns (Example, task index). mode_ids maps "[NLU]"/"[NLG]"/"[S2S]" to ids."""
    window = as_tokens(window, "window", "ul2_example")
    check_rng(rng, "ul2_example")
    task = mixture.sample_task(rng)
    den = mixture.denoisers[task]
    length = den.raw_length(encoder_length, decoder_length)
    if len(window) < length:
        raise ValueError(f"ul2_example: argument 'window': expected at least {length} tokens "
                         f"for {den.name}, got {len(window)}")
    start = int(rng.integers(0, len(window) - length + 1))
    ex = denoise(window[start:start + length], rng, den, mode_id=mode_ids[den.mode],
                 sentinel_ids=sentinel_ids, eos_id=eos_id)
    return ex, task
