"""Objectives as objects the batcher can drive: each knows the raw window length it needs
for a given encoder length S and decoder length T, and turns a window into an Example.

    obj = make_objective("prefix_lm" | "causal_lm" | "span_corruption" | "ul2" | "t5gemma2",
                         tokenizer, ...)
    obj.window_length(S, T) -> int
    obj.example(window, rng) -> Example   (a pure function of the window and the rng)

Lengths: PrefixLM uses halves of N = min(S, T) (window 2N); span corruption the longest
raw segment whose inputs fit S and targets fit T; UL2 the longest over its tasks (each
task then takes a random sub-window of its own raw length). Causal LM is decoder-only
and reads windows of S + T + 1 tokens, so its sequences have the length S + T of the
decoder-only form of the other objectives and both architectures see equal contexts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .causal_lm import causal_lm
from .example import Example
from .prefix_lm import prefix_lm
from .span_corruption import fitting_raw_length, span_corruption
from .ul2 import UL2Mixture, ul2_example, ul2_preset


@dataclass(frozen=True)
class CausalLM:
    name: str = "causal_lm"
    decoder_only: bool = True  # no encoder-decoder form

    def window_length(self, s: int, t: int) -> int:
        return s + t + 1

    def example(self, window, rng) -> Example:
        return causal_lm(window)


@dataclass(frozen=True)
class PrefixLM:
    name: str = "prefix_lm"
    decoder_only: bool = False

    def window_length(self, s: int, t: int) -> int:
        return 2 * min(s, t)

    def example(self, window, rng) -> Example:
        return prefix_lm(window)


@dataclass(frozen=True)
class SpanCorruption:
    sentinel_ids: tuple
    eos_id: int
    density: float = 0.15
    mean_span: float = 3.0
    name: str = "span_corruption"
    decoder_only: bool = False

    def window_length(self, s: int, t: int) -> int:
        raw = fitting_raw_length(s, t, self.density, self.mean_span)
        if raw == 0:
            raise ValueError(f"span_corruption: nothing fits encoder length {s} and decoder "
                             f"length {t}")
        return raw

    def example(self, window, rng) -> Example:
        return span_corruption(window, rng, density=self.density, mean_span=self.mean_span,
                               sentinel_ids=np.asarray(self.sentinel_ids), eos_id=self.eos_id)


@dataclass(frozen=True)
class UL2:
    mixture: UL2Mixture
    mode_ids: dict = field(hash=False)
    sentinel_ids: tuple = ()
    eos_id: int = 1
    name: str = "ul2"
    decoder_only: bool = False
    # set by the batcher: the example function needs (S, T) to size each task
    lengths: Optional[tuple] = None

    def window_length(self, s: int, t: int) -> int:
        return self.mixture.window_length(s, t)

    def with_lengths(self, s: int, t: int) -> "UL2":
        return UL2(self.mixture, self.mode_ids, self.sentinel_ids, self.eos_id, self.name,
                   self.decoder_only, (s, t))

    def example(self, window, rng) -> Example:
        if self.lengths is None:
            raise ValueError("UL2.example: call with_lengths(S, T) first (the batcher does)")
        ex, _ = ul2_example(window, rng, self.mixture, encoder_length=self.lengths[0],
                            decoder_length=self.lengths[1], mode_ids=self.mode_ids,
                            sentinel_ids=np.asarray(self.sentinel_ids), eos_id=self.eos_id)
        return ex


OBJECTIVES = ("causal_lm", "prefix_lm", "span_corruption", "ul2", "t5gemma2")


def make_objective(name: str, tokenizer=None, *, density: float = 0.15, mean_span: float = 3.0,
                   weights: Optional[Sequence[float]] = None):
    """An objective by name. span_corruption/ul2/t5gemma2 need the tokenizer (sentinel and
    mode ids); weights overrides the UL2 task weights."""
    if name == "causal_lm":
        return CausalLM()
    if name == "prefix_lm":
        return PrefixLM()
    if name not in OBJECTIVES:
        raise ValueError(f"make_objective: argument 'name': expected one of {OBJECTIVES}, got "
                         f"{name!r}")
    if tokenizer is None:
        raise ValueError(f"make_objective: argument 'tokenizer': {name} needs the tokenizer's "
                         f"sentinel ids, got None")
    sentinels = tuple(int(i) for i in tokenizer.sentinel_ids)
    if name == "span_corruption":
        return SpanCorruption(sentinels, tokenizer.eos_id, density, mean_span)
    return UL2(ul2_preset(name, weights), dict(tokenizer.mode_ids), sentinels,
               tokenizer.eos_id, name)
