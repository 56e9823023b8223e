"""WindowBuffer (the KV cache's storage) == np.concatenate then keep the last `keep`."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mini_encdec.models.window_buffer import WindowBuffer


@pytest.mark.task5_3
@settings(deadline=None)
@given(sizes=st.lists(st.integers(0, 70), min_size=1, max_size=12),
       keep=st.one_of(st.none(), st.integers(0, 40)), axis=st.sampled_from([1, 2]),
       reorder_at=st.integers(0, 12), seed=st.integers(0, 2 ** 16))
# one append needing more than twice the capacity (64 after the first append): a
# 200-token prompt prefilled into a buffer that has seen one token
@example(sizes=[1, 200], keep=None, axis=2, reorder_at=12, seed=0)
@example(sizes=[3, 5, 300, 1], keep=40, axis=1, reorder_at=12, seed=0)
def test_appends_equal_concatenate_and_trim(sizes, keep, axis, reorder_at, seed):
    rng = np.random.default_rng(seed)
    B = 3
    shape = lambda n: (B, n) if axis == 1 else (B, 2, n, 4)  # noqa: E731
    buf, ref = WindowBuffer(axis, keep), None
    for step, n in enumerate(sizes):
        new = rng.standard_normal(shape(n))
        ref = new if ref is None else np.concatenate([ref, new], axis=axis)
        seen = ref  # what the new entries' queries see: [kept before ; new]
        if keep is not None and ref.shape[axis] > keep:
            ref = np.take(ref, np.arange(ref.shape[axis] - keep, ref.shape[axis]), axis=axis)
        recent = buf.append(new)
        np.testing.assert_array_equal(recent, seen)
        assert recent.base is not None  # a view into the buffer, not a copy
        if step == reorder_at:  # beam search: gather rows, repeating some
            rows = rng.integers(0, B, B)
            ref = ref[rows]
            buf.take_rows(rows)
        np.testing.assert_array_equal(buf.view(), ref)


@pytest.mark.task5_3
@pytest.mark.parametrize("first, big", [(1, 200), (60, 129), (0, 1000)])
def test_one_append_larger_than_twice_the_capacity(first, big):
    """Growing once (doubling) is not enough when a single append brings more than the
    free room of a doubled buffer: the buffer must grow to fit every kept entry plus the
    new ones."""
    buf = WindowBuffer(2, keep=None)
    a = np.arange(first * 2.0).reshape(1, 1, first, 2)
    b = -np.arange(big * 2.0).reshape(1, 1, big, 2)
    buf.append(a)
    recent = buf.append(b)
    np.testing.assert_array_equal(recent, np.concatenate([a, b], axis=2))
    np.testing.assert_array_equal(buf.view(), np.concatenate([a, b], axis=2))


@pytest.mark.task5_3
def test_empty_buffer_has_no_view_and_keep_zero_keeps_nothing():
    buf = WindowBuffer(2, keep=0)
    assert buf.view() is None
    buf.append(np.ones((1, 2, 5, 4)))
    assert buf.view().shape == (1, 2, 0, 4)
