"""The paired t-test of the study against textbook critical values."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mini_encdec.experiments.stats import betainc, paired_test, t_two_sided_p, verdict


# two-sided 5% and 1% critical values of Student's t (any statistics table)
@pytest.mark.parametrize("dof,t,p", [(1, 12.706, 0.05), (2, 4.303, 0.05), (4, 2.776, 0.05),
                                     (10, 2.228, 0.05), (30, 2.042, 0.05), (2, 9.925, 0.01),
                                     (10, 3.169, 0.01)])
def test_t_tail_matches_tables(dof, t, p):
    assert t_two_sided_p(t, dof) == pytest.approx(p, rel=2e-3)
    assert t_two_sided_p(-t, dof) == pytest.approx(p, rel=2e-3)


@given(st.floats(0.0, 50.0))
def test_t_tail_closed_forms(t):
    # dof 1 (Cauchy) and dof 2 have closed forms
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-12)


@given(st.floats(0.5, 5.0), st.floats(0.5, 5.0), st.floats(0.0, 1.0))
@example(0.5, 1.0, 4.5069155971023674e-15)
def test_betainc_symmetry(a, b, x):
    # pass the complement's own complement, x, exactly: 1 - x rounds away x's digits when x
    # is tiny (x = 4.5e-15 moved I_{1-x}(1, 0.5) by 3e-10; found by seed hunting, seed 2)
    assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x, one_minus_x=x), abs=1e-10)


def test_paired_test_and_verdict():
    r = paired_test([3.0, 3.2, 3.1], [3.5, 3.6, 3.55])      # a clearly lower
    assert r["mean_diff"] == pytest.approx(-0.45 + 0.0, abs=0.02) and r["p"] < 0.01
    assert verdict(r, "lower") == "reproduced" and verdict(r, "higher") == "not reproduced"
    noisy = paired_test([1.0, 2.0, 3.0], [2.0, 1.0, 3.1])
    assert verdict(noisy, "higher") == "inconclusive"
    same = paired_test([1.0, 2.0], [1.0, 2.0])
    assert same["p"] == 1.0 and verdict(same, "higher") == "inconclusive"
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0])
    with pytest.raises(ValueError, match="better"):
        verdict(r, "bigger")
    # the t statistic by hand
    d = np.array([0.1, 0.3, 0.2])
    assert paired_test(d, np.zeros(3))["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(3)))
