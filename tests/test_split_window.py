"""T5Gemma 2's split encoder window (SPEC.md section 2; `nn/masks.py: split_window_allowed`):
with d = q - k, a key is in the window when 0 <= d < (W + 1) // 2 or 0 < -d < W // 2 + 1.
Literal expected matrices (rows = queries, columns = keys, 1 = may attend), T = 6, frozen
(the model built on this rule matches transformers' T5Gemma 2 encoder at the window's
boundary for W = 1..5: tests/test_parity_t5gemma2.py); the rule written plainly on
hypothesis-drawn offsets; and
the two facts the tutorial (tutorials/12_gemma3_t5gemma2.py) teaches: a query far from
the ends sees exactly W keys, and for odd W the split window is the symmetric one of
(W + 1) // 2.

Every test here grades classroom task 2.5 (tutorials/assignments/README.md).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.nn.masks import attention_mask, split_window_allowed

pytestmark = pytest.mark.task2_5

T = 6
POS = np.arange(T)
DIFF = POS[:, None] - POS[None, :]  # (T, T): q - k

# Frozen references: W -> the (T, T) mask of queries 0..5 over keys 0..5.
LITERAL = {
    1: np.eye(T, dtype=int),
    2: np.array([
        [1, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 1]]),
    3: np.array([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1]]),
    4: np.array([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1]]),
    5: np.array([
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1]]),
}


def split_by_the_rule(d: int, window: int) -> bool:
    """The rule for one offset d = q - k, written plainly."""
    return (0 <= d < (window + 1) // 2) or (0 < -d < window // 2 + 1)


@pytest.mark.parametrize("window", sorted(LITERAL))
def test_split_window_literal_masks(window):
    """For T = 6 and W = 1..5 the split window is the frozen literal matrix."""
    got = split_window_allowed(DIFF, window)
    assert got.dtype == np.bool_ and got.shape == (T, T)
    np.testing.assert_array_equal(got.astype(int), LITERAL[window])


def test_attention_mask_uses_the_split_window_with_padding():
    """attention_mask with split=True is the W = 4 literal matrix, with padded keys removed."""
    pad = np.array([[1, 1, 1, 1, 0, 0]], dtype=bool)  # (B, T): keys 4 and 5 are padding
    got = attention_mask(POS, POS, causal=False, window=4, split=True, key_padding=pad)
    want = LITERAL[4].astype(bool) & pad[0][None, :]
    assert got.shape == (1, 1, T, T)
    np.testing.assert_array_equal(got[0, 0], want)


@given(window=st.integers(1, 9), diffs=st.lists(st.integers(-12, 12), min_size=1,
                                                 max_size=20))
def test_split_window_is_the_rule(window, diffs):
    """On drawn offsets and windows each entry is 0 <= q-k < (W+1)//2 or 0 < k-q < W//2 + 1."""
    d = np.array(diffs, dtype=np.int64)
    want = np.array([split_by_the_rule(int(x), window) for x in diffs])
    np.testing.assert_array_equal(split_window_allowed(d, window), want)


@pytest.mark.parametrize("window", range(1, 9))
def test_a_middle_query_sees_exactly_w_keys(window):
    """A query far from both ends sees W keys, (W + 1) // 2 of them at or left of itself."""
    d = np.arange(-20, 21)  # q - k for one query in the middle of 41 keys
    allowed = split_window_allowed(d, window)
    assert int(allowed.sum()) == window
    assert int(allowed[d >= 0].sum()) == (window + 1) // 2


@pytest.mark.parametrize("window", [1, 3, 5, 7])
def test_odd_windows_are_symmetric(window):
    """For odd W the split window equals the symmetric window |q - k| < (W + 1) // 2."""
    np.testing.assert_array_equal(split_window_allowed(DIFF, window),
                                  np.abs(DIFF) < (window + 1) // 2)
