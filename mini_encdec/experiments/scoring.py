"""Scoring targets with a trained model: per-example NLL and rank classification.

Both architectures share the label convention of the batch dicts (labels[:, t] is the
target of position t, -100 ignored), so one function scores either:

    nll[b] = sum over counted t of -log softmax(logits[b, t])[labels[b, t]]

Rank classification (the T5 way of doing classification with a language model): every
class is written as a short target text; the predicted class is the one whose target has
the lowest NLL given the input. (The paper's SuperGLUE runs put a classification head on
the last token instead; ours needs no extra parameters and works for both architectures
with the language-model loss alone.)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..text.batching import collate_decoder, collate_encdec
from ..objectives.example import Example

IGNORE = -100


def example_nll(model, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(nll (B,), counted tokens (B,)): summed target NLL of each example of the batch."""
    if "labels" not in batch:
        raise ValueError("example_nll: argument 'batch': expected a 'labels' entry")
    logits = model.forward(batch).astype(np.float64)        # (B, T, V)
    labels = batch["labels"]                                 # (B, T)
    counted = labels != IGNORE
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (B, T, V)
    picked = np.take_along_axis(logp, np.where(counted, labels, 0)[..., None], axis=-1)[..., 0]
    return -(picked * counted).sum(axis=1), counted.sum(axis=1)


def collate(examples: Sequence[Example], arch: str, encoder_length: int, decoder_length: int,
            *, pad_id: int = 0, bos_id: int = 2) -> dict:
    """The batch dict of `examples` for `arch` ("encdec" or "decoder")."""
    if arch == "encdec":
        return collate_encdec(examples, encoder_length, decoder_length, pad_id=pad_id,
                              bos_id=bos_id)
    if arch == "decoder":
        return collate_decoder(examples, encoder_length + decoder_length, pad_id=pad_id)
    raise ValueError(f"collate: argument 'arch': expected 'encdec' or 'decoder', got {arch!r}")


def mean_token_nll(model, examples: Sequence[Example], arch: str, encoder_length: int,
                   decoder_length: int, *, batch_size: int = 16) -> float:
    """Target NLL per token over all examples (nats)."""
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        nll, n = example_nll(model, collate(examples[i:i + batch_size], arch, encoder_length,
                                            decoder_length))
        total, count = total + float(nll.sum()), count + int(n.sum())
    return total / max(count, 1)


def rank_classify(model, inputs: Sequence[np.ndarray], candidates: Sequence[np.ndarray],
                  arch: str, encoder_length: int, decoder_length: int, *,
                  batch_size: int = 16) -> np.ndarray:
    """Predicted class index per input: argmin over candidates of the target NLL.

    inputs: token-id arrays; candidates: one target token-id array per class."""
    if len(candidates) < 2:
        raise ValueError(f"rank_classify: argument 'candidates': expected at least 2 classes, "
                         f"got {len(candidates)}")
    scores = np.zeros((len(inputs), len(candidates)))
    for c, target in enumerate(candidates):
        exs = [Example(np.asarray(x), np.asarray(target)) for x in inputs]
        for i in range(0, len(exs), batch_size):
            nll, _ = example_nll(model, collate(exs[i:i + batch_size], arch, encoder_length,
                                                decoder_length))
            scores[i:i + len(nll), c] = nll
    return scores.argmin(axis=1)
