"""Attention masks from positions (SPEC.md section 1): the definitions written as loops, checked on
hypothesis-drawn positions, windows and paddings (and against an off-by-one window, which
the check must reject); then literal expected matrices (rows = queries, columns = keys,
1 = may attend), T = 5, W = 2, for both window forms, the global forms, padding, and
batched decode positions.

Every test here grades classroom task 2.1 (tutorials/assignments/README.md).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.nn.masks import attention_mask

from .strategies import batch_sizes, key_paddings, seq_lens, windows

pytestmark = pytest.mark.task2_1


def mask_by_the_definition(q_pos, k_pos, causal, window, key_padding):
    """(B, 1, Tq, Tk) with loops; q_pos/k_pos (B, T), key_padding (B, Tk) or None.
    Causal: 0 <= q - k (< W if windowed); symmetric: |q - k| < W; padded keys never."""
    B, Tq, Tk = q_pos.shape[0], q_pos.shape[1], k_pos.shape[1]
    out = np.zeros((B, 1, Tq, Tk), dtype=bool)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                d = int(q_pos[b, i]) - int(k_pos[b, j])
                if causal:
                    ok = 0 <= d and (window is None or d < window)
                else:
                    ok = window is None or abs(d) < window
                out[b, 0, i, j] = ok and (key_padding is None or bool(key_padding[b, j]))
    return out


def check_mask(make_mask, q_pos, k_pos, causal, window, key_padding):
    got = make_mask(q_pos, k_pos, causal=causal, window=window, key_padding=key_padding)
    want = mask_by_the_definition(q_pos, k_pos, causal, window, key_padding)
    assert got.dtype == np.bool_ and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@given(data=st.data(), B=batch_sizes, Tq=seq_lens, Tk=seq_lens, causal=st.booleans(),
       window=st.none() | windows, offset=st.integers(0, 6))
def test_masks_follow_the_definitions(data, B, Tq, Tk, causal, window, offset):
    """On drawn positions, windows and paddings the mask is the definition: causal 0 <= q - k
    (and q - k < W when windowed), symmetric |q - k| < W, padded keys never."""
    # decoding against a cache: queries sit after `offset` earlier keys
    q_pos = np.tile(offset + np.arange(Tq), (B, 1))
    k_pos = np.tile(np.arange(Tk), (B, 1))
    pad = data.draw(st.none() | key_paddings(B, Tk), label="key_padding")
    check_mask(attention_mask, q_pos, k_pos, causal, window, pad)


def test_check_rejects_an_off_by_one_window():
    """Your mask passes the definition check for a causal window W = 2, and the same check
    rejects the off-by-one window q - k <= W."""
    p = np.arange(6)[None]

    def window_off_by_one(q_pos, k_pos, *, causal, window=None, key_padding=None):
        d = q_pos[:, :, None] - k_pos[:, None, :]
        return ((d >= 0) & (d <= window))[:, None]  # W + 1 keys

    check_mask(attention_mask, p, p, True, 2, None)
    with pytest.raises(AssertionError):
        check_mask(window_off_by_one, p, p, True, 2, None)


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
    """For T = 5, W = 2 the causal, causal-local (0 <= q - k < W), symmetric-local (|q - k| < W)
    and full masks equal the matrices written out in this file (rows = queries, columns = keys)."""
    m = attention_mask(POS, POS, causal=causal, window=window)
    assert m.shape == (1, 1, T, T) and m.dtype == np.bool_
    np.testing.assert_array_equal(m[0, 0], expect)


def test_literal_masks_with_padding():
    """Padded keys (right or left padding) are never allowed, on top of the window, exactly as
    in the matrices written out in this test."""
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
    """Without causality or a window (cross-attention) every query may see every real key and no
    padded key."""
    pad = np.array([[1, 1, 0]])  # encoder length 3, one pad
    m = attention_mask(np.arange(4), np.arange(3), causal=False, key_padding=pad)
    np.testing.assert_array_equal(m[0, 0], M(["1 1 0"] * 4))


def test_decode_positions_against_a_cache():
    """The mask follows positions, not indices: queries at positions 3 and 4 against cached keys
    0 to 4 get rows 3 and 4 of the causal-local mask."""
    m = attention_mask(np.array([[3, 4], [0, 1]]), POS, causal=True, window=W)
    assert m.shape == (2, 1, 2, T)
    np.testing.assert_array_equal(m[0, 0], CAUSAL_LOCAL[3:])
    np.testing.assert_array_equal(m[1, 0], CAUSAL_LOCAL[:2])


def test_window_one_is_the_diagonal():
    """A window of 1 lets each query see only its own position: both window forms give the
    identity matrix."""
    np.testing.assert_array_equal(attention_mask(POS, POS, causal=True, window=1)[0, 0], np.eye(T))
    np.testing.assert_array_equal(attention_mask(POS, POS, causal=False, window=1)[0, 0], np.eye(T))
