"""Causal language modelling on packed sequences (decoder-only pre-training).

Documents are packed into one stream, each followed by EOS, and the stream is cut into
windows of T + 1 tokens. A window w gives input_ids = w[:T] and labels = w[1:]: every
position predicts the next token. As an `Example` that is a prefix of one token and the
rest as targets (see example.py), so the decoder-only collation with length T yields
exactly those (input_ids, labels).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .example import Example, as_tokens


def pack_documents(documents: Sequence[np.ndarray], eos_id: int) -> np.ndarray:
    """One stream: doc_0 EOS doc_1 EOS ... (int64)."""
    parts = []
    for k, d in enumerate(documents):
        parts.append(as_tokens(d, f"documents[{k}]", "pack_documents"))
        parts.append(np.array([eos_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def causal_lm(tokens, rng=None) -> Example:
    """Window of T + 1 tokens -> Example(inputs=tokens[:1], targets=tokens[1:]).
    (rng unused: the objective is deterministic; kept for the common signature.)"""
    tokens = as_tokens(tokens, fn="causal_lm")
    if len(tokens) < 2:
        raise ValueError(f"causal_lm: argument 'tokens': expected at least 2 tokens, got "
                         f"{len(tokens)}")
    return Example(tokens[:1], tokens[1:])


def causal_lm_arrays(tokens) -> tuple:
    """The plain (input_ids, labels) of one window: tokens[:-1], tokens[1:]."""
    tokens = as_tokens(tokens, fn="causal_lm_arrays")
    return tokens[:-1], tokens[1:]
