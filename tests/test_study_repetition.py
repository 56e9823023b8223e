"""The repeated n-gram fraction against hand counts."""

from mini_encdec.experiments.study.repetition import mean_repetition, repeated_ngram_fraction


def test_repeated_trigram_fraction_by_hand():
    # "a b c a b c a" -> trigrams abc bca cab abc bca: the last two are repeats -> 2/5
    assert repeated_ngram_fraction([5, 6, 7, 5, 6, 7, 5]) == 0.4
    assert repeated_ngram_fraction([5, 6, 7, 8, 9]) == 0.0
    assert repeated_ngram_fraction([5, 5, 5, 5]) == 0.5           # 555 555: 1 of 2
    assert repeated_ngram_fraction([5, 6, 1, 5, 6, 7]) == 0.0      # stops at EOS (1)
    assert repeated_ngram_fraction([5, 6]) == 0.0
    assert mean_repetition([[5, 6, 7, 5, 6, 7, 5], [5, 6, 7]]) == 0.2
    assert mean_repetition([]) == 0.0
