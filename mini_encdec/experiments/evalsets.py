"""Evaluation windows drawn from EVERY play of a split, evenly spread inside each play.

`batching.eval_batches` takes consecutive windows from the start of the packed split, so
a small evaluation set comes from the first play only. Here each play contributes the
same number of windows, starting at evenly spaced offsets of that play's own tokens:

    play p with N_p tokens, window W, k windows per play:
        start_i = round(i * (N_p - W) / (k - 1)),  i = 0 .. k-1   (k = 1: start 0)

Window i of the whole set (plays in `corpus.play_paths` order) is corrupted by its
objective with the generator seeded (seed, 2, i), as in `eval_batches`, so the same
arguments always give the same batches, and the two architectures see the same windows.
"""

from __future__ import annotations

import numpy as np

from ..text.batching import Batcher
from ..validate import argument, check_int


def play_streams(split: str, tokenizer) -> list:
    """[(slug, token ids of the play + EOS)] for every play of `split`, in play order."""
    from ..text.corpus import play_paths
    return [(p.stem, np.append(np.asarray(tokenizer.encode(p.read_text(encoding="utf-8")),
                                          dtype=np.int64), tokenizer.eos_id))
            for p in play_paths(split)]


def spread_starts(length: int, window: int, per_play: int) -> list:
    """Evenly spaced starts of `per_play` windows of `window` tokens in `length` tokens."""
    fn = "spread_starts"
    check_int(per_play, argument(fn, "per_play"), low=1)
    if length < window:
        raise ValueError(f"{fn}: a play of {length} tokens is shorter than one window "
                         f"({window})")
    if per_play == 1:
        return [0]
    return [int(round(i * (length - window) / (per_play - 1))) for i in range(per_play)]


def spread_eval_batches(streams: list, objective, *, per_play: int, batch_size: int,
                        encoder_length: int, decoder_length: int, arch: str, seed: int = 0,
                        pad_id: int = 0, bos_id: int = 2, with_teacher: bool = False) -> list:
    """Batches of `per_play` windows from each (slug, ids) stream (module docstring);
    the last batch may be smaller than batch_size."""
    packed = np.concatenate([ids for _, ids in streams])
    b = Batcher(packed, objective, batch_size=batch_size, encoder_length=encoder_length,
                decoder_length=decoder_length, arch=arch, seed=seed, pad_id=pad_id,
                bos_id=bos_id, with_teacher=with_teacher)
    windows = [ids[s:s + b.window] for _, ids in streams
               for s in spread_starts(len(ids), b.window, per_play)]
    examples = [b.objective.example(w, np.random.default_rng([seed, 2, i]))
                for i, w in enumerate(windows)]
    return [b.collate(examples[k:k + batch_size])
            for k in range(0, len(examples), batch_size)]
