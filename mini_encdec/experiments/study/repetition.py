"""A repetition measure of generated replies, beside ROUGE-L (a reply that repeats one
phrase, "I am not, sir, I am not, I am not,", can score a fair ROUGE-L):

    repeated n-gram fraction of a sequence x (up to its EOS) =
        #{ i : the n-gram x[i:i+n] occurred at an earlier position j < i }
        / #{ n-grams of x }

0 for a reply without any repeated n-gram, approaching 1 for a loop. A reply shorter than
n tokens has no n-gram and counts 0. The reported value is the mean over the replies,
with the same measure of the reference replies beside it.
"""

from __future__ import annotations

import numpy as np

N = 3  # trigrams


def repeated_ngram_fraction(ids, eos_id: int = 1, n: int = N) -> float:
    seq = []
    for t in ids:
        if int(t) == eos_id:
            break
        seq.append(int(t))
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    if not grams:
        return 0.0
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def mean_repetition(sequences, eos_id: int = 1, n: int = N) -> float:
    vals = [repeated_ngram_fraction(s, eos_id, n) for s in sequences]
    return float(np.mean(vals)) if vals else 0.0
