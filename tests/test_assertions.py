"""tests/assertions.py: the mismatch report shows NaN and inf, the first index, full precision."""

import numpy as np
import pytest

from .assertions import assert_close, describe_mismatch


def test_nan_hidden_in_a_large_array_is_named_with_its_index():
    desired = np.linspace(0, 1, 2000).reshape(40, 50)
    actual = desired.copy()
    actual[17, 23] = np.nan
    actual[30, 1] = np.inf
    with pytest.raises(AssertionError) as e:
        assert_close(actual, desired, rtol=1e-6, atol=0, err_msg="softmax rows")
    text = str(e.value)
    assert text.startswith("softmax rows\n2 of 2000 values differ")
    assert "actual has 1 NaN and 1 inf where the expected value is finite" in text
    assert f"first at [17, 23]: actual nan, expected {float(desired[17, 23])!r}" in text


def test_finite_mismatch_reports_the_first_index_and_the_largest_difference():
    text = describe_mismatch(np.array([1.0, 2.5, 3.0]), np.array([1.0, 2.0, 3.25]), 1e-7, 0)
    assert text.splitlines()[0].startswith("2 of 3 values differ")
    assert "first at [1]: actual 2.5, expected 2.0" in text
    assert "largest finite |actual - expected|: 0.5" in text


def test_agreeing_arrays_pass_and_shapes_are_named():
    assert_close(np.ones(3), np.ones(3) + 1e-12, rtol=1e-9)
    with pytest.raises(AssertionError, match=r"shape \(2,\) \(actual\) != \(3,\)"):
        assert_close(np.ones(2), np.ones(3))
