"""Literal expected mask matrices (rows = queries, columns = keys, 1 = may attend), T = 5,
W = 2, for both window forms, the global forms, padding, and batched decode positions."""

import numpy as np
import pytest

from mini_encdec.nn.masks import attention_mask

T, W = 5, 2
POS = np.arange(T)


def M(rows):
    return np.array([[int(c) for c in r.split()] for r in rows], dtype=bool)


CAUSAL = M(["1 0 0 0 0",
            "1 1 0 0 0",
            "1 1 1 0 0",
            "1 1 1 1 0",
            "1 1 1 1 1"])
CAUSAL_LOCAL = M(["1 0 0 0 0",  # 0 <= q - k < 2: the key itself and the one before
                  "1 1 0 0 0",
                  "0 1 1 0 0",
                  "0 0 1 1 0",
                  "0 0 0 1 1"])
SYMMETRIC_LOCAL = M(["1 1 0 0 0",  # |q - k| < 2: up to 2W - 1 = 3 keys
                     "1 1 1 0 0",
                     "0 1 1 1 0",
                     "0 0 1 1 1",
                     "0 0 0 1 1"])
FULL = np.ones((T, T), dtype=bool)


@pytest.mark.parametrize("causal,window,expect", [
    (True, None, CAUSAL), (True, W, CAUSAL_LOCAL), (False, W, SYMMETRIC_LOCAL),
    (False, None, FULL)])
def test_literal_masks(causal, window, expect):
    m = attention_mask(POS, POS, causal=causal, window=window)
    assert m.shape == (1, 1, T, T) and m.dtype == np.bool_
    np.testing.assert_array_equal(m[0, 0], expect)


def test_literal_masks_with_padding():
    pad = np.array([[1, 1, 1, 0, 0],    # right padding: two pad keys
                    [1, 1, 1, 1, 1]])   # no padding
    m = attention_mask(POS, POS, causal=False, window=W, key_padding=pad)
    assert m.shape == (2, 1, T, T)
    np.testing.assert_array_equal(m[0, 0], M(["1 1 0 0 0",
                                              "1 1 1 0 0",
                                              "0 1 1 0 0",
                                              "0 0 1 0 0",
                                              "0 0 0 0 0"]))  # a pad query sees nothing
    np.testing.assert_array_equal(m[1, 0], SYMMETRIC_LOCAL)
    mc = attention_mask(POS, POS, causal=True, window=W, key_padding=pad.astype(bool))
    np.testing.assert_array_equal(mc[0, 0], M(["1 0 0 0 0",
                                               "1 1 0 0 0",
                                               "0 1 1 0 0",
                                               "0 0 1 0 0",
                                               "0 0 0 0 0"]))
    left = np.array([[0, 0, 1, 1, 1]], dtype=bool)  # left padding
    ml = attention_mask(POS, POS, causal=True, key_padding=left)
    np.testing.assert_array_equal(ml[0, 0], M(["0 0 0 0 0",
                                               "0 0 0 0 0",
                                               "0 0 1 0 0",
                                               "0 0 1 1 0",
                                               "0 0 1 1 1"]))


def test_cross_attention_mask_is_key_padding_only():
    pad = np.array([[1, 1, 0]])  # encoder length 3, one pad
    m = attention_mask(np.arange(4), np.arange(3), causal=False, key_padding=pad)
    np.testing.assert_array_equal(m[0, 0], M(["1 1 0"] * 4))


def test_decode_positions_against_a_cache():
    """Queries at positions 3, 4 (incremental decoding) against cached keys 0..4."""
    m = attention_mask(np.array([[3, 4], [0, 1]]), POS, causal=True, window=W)
    assert m.shape == (2, 1, 2, T)
    np.testing.assert_array_equal(m[0, 0], CAUSAL_LOCAL[3:])
    np.testing.assert_array_equal(m[1, 0], CAUSAL_LOCAL[:2])


def test_window_one_is_the_diagonal():
    np.testing.assert_array_equal(attention_mask(POS, POS, causal=True, window=1)[0, 0], np.eye(T))
    np.testing.assert_array_equal(attention_mask(POS, POS, causal=False, window=1)[0, 0], np.eye(T))
