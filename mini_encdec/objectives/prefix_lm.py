"""PrefixLM, the T5Gemma paper's first objective (SPEC.md section 4).

A sequence of length 2N is split into two equal halves: the first is the encoder input,
the second the decoder target. For the decoder-only baseline the same example is the
sequence prefix ++ target with loss on the target half only.

Distillation: the teacher is decoder-only and reads the full sequence of 2N tokens; its
distribution for target token j (absolute index N + j) comes from its logits at absolute
position N + j - 1 (`example.teacher_positions(N, N)`).
"""

from __future__ import annotations

from .example import Example, as_tokens, teacher_positions  # noqa: F401


def prefix_lm(tokens, rng=None) -> Example:
    """Even-length window 2N -> Example(inputs=tokens[:N], targets=tokens[N:]).
    (rng unused: the split is fixed; kept for the common signature.)"""
    tokens = as_tokens(tokens, fn="prefix_lm")
    if len(tokens) < 2 or len(tokens) % 2:
        raise ValueError(f"prefix_lm: argument 'tokens': expected an even length >= 2, got "
                         f"{len(tokens)}")
    n = len(tokens) // 2
    return Example(tokens[:n], tokens[n:])
