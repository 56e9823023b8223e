"""The unit every objective produces: one (inputs, targets) pair of token ids.

An objective is a pure function `(tokens, rng) -> Example`. The same Example feeds both
architectures (batching.collate_encdec / batching.collate_decoder):

    encoder-decoder:  encoder reads `inputs`; decoder reads [BOS] + targets[:-1] and
                      predicts `targets`
    decoder-only:     one sequence x = inputs ++ targets; position t predicts x[t + 1],
                      with loss only where x[t + 1] is a target token

Target token j (0-based) is then predicted at decoder-only position len(inputs) + j - 1,
which is the teacher-alignment rule of PrefixLM + distillation (SPEC.md section 4).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Example(NamedTuple):
    inputs: np.ndarray   # (P,) int64: encoder input, or the decoder-only prefix
    targets: np.ndarray  # (N,) int64: decoder targets, or the decoder-only loss part


def as_tokens(tokens, name: str = "tokens", fn: str = "") -> np.ndarray:
    """A 1-D integer array of non-negative ids (copied to int64), else ValueError."""
    where = f"{fn}: argument {name!r}" if fn else f"argument {name!r}"
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{where}: expected integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{where}: expected token ids >= 0, got {int(arr.min())}")
    return arr


def check_rng(rng, fn: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"{fn}: argument 'rng': expected a numpy.random.Generator, got "
                         f"{type(rng).__name__}")
    return rng


def teacher_positions(prefix_length: int, target_length: int) -> np.ndarray:
    """(N,) positions in the decoder-only sequence `prefix ++ targets` whose logits predict
    target token j: prefix_length + j - 1 (SPEC.md section 4, PrefixLM + distillation)."""
    if prefix_length < 1:
        raise ValueError(f"teacher_positions: argument 'prefix_length': expected >= 1 (the "
                         f"first target needs a token before it), got {prefix_length}")
    return prefix_length - 1 + np.arange(target_length, dtype=np.int64)
