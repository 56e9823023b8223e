"""The paired t-test of the study against textbook critical values."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mini_encdec.experiments.stats import (betainc, confidence_interval, corrected_verdict, holm,
                                           minimum_detectable_effect, paired_test, t_quantile,
                                           t_two_sided_p, tost, verdict)


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


# --- intervals, Holm, TOST, minimum detectable effect (hand-computed values) ---------------

@pytest.mark.parametrize("q,dof,t", [(0.975, 2, 4.303), (0.975, 5, 2.571), (0.975, 10, 2.228),
                                     (0.8, 5, 0.920), (0.8, 10, 0.879), (0.95, 5, 2.015),
                                     (0.025, 5, -2.571)])
def test_t_quantile_matches_tables(q, dof, t):
    assert t_quantile(q, dof) == pytest.approx(t, abs=1e-3)
    assert t_quantile(0.5, 3) == 0.0


def test_confidence_interval_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.3027 -> half width 2.4841
    lo, hi = confidence_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 2.4841, abs=1e-4) and hi == pytest.approx(2 + 2.4841, abs=1e-4)


def test_holm_by_hand():
    # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1, kept at 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, float("nan")]) == [1.0, 1.0]
    assert holm([0.3]) == [0.3] and holm([]) == []


def test_tost_by_hand():
    # d = 1, 2, 3 (mean 2, se 0.57735, 2 dof; P(T_2 <= -t) = (1 - t / sqrt(t^2 + 2)) / 2)
    # margin 4: the upper one-sided test decides, t = -3.4641 -> p = 0.0371: equivalent
    assert tost([1.0, 2.0, 3.0], 4.0) == pytest.approx(0.03709, abs=1e-4)
    # margin 3: t = -1.7321 -> p = 0.1127: not shown equivalent
    assert tost([1.0, 2.0, 3.0], 3.0) == pytest.approx(0.11270, abs=1e-4)
    assert tost([0.5, 0.5, 0.5], 1.0) == 0.0 and tost([2.0, 2.0], 1.0) == 1.0
    with pytest.raises(ValueError, match="margin"):
        tost([1.0, 2.0], 0.0)


@given(st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=8), st.floats(0.05, 2.0))
def test_tost_agrees_with_the_90_percent_interval(d, margin):
    if np.std(d) < 1e-6:
        return
    lo, hi = confidence_interval(d, level=0.90)
    inside = -margin < lo and hi < margin
    p = tost(d, margin)
    if abs(p - 0.05) > 1e-6:
        assert (p < 0.05) == inside


def test_minimum_detectable_effect_by_hand():
    # n 6, sd 1: (t_{0.975, 5} + t_{0.8, 5}) / sqrt(6) = (2.5706 + 0.9195) / 2.4495
    assert minimum_detectable_effect(1.0, 6) == pytest.approx(1.4248, abs=1e-3)
    assert minimum_detectable_effect(0.5, 6) == pytest.approx(0.7124, abs=1e-3)
    assert minimum_detectable_effect(0.0, 6) == 0.0


def test_corrected_verdicts():
    assert corrected_verdict(-0.1, 0.01, "lower") == "reproduced"
    assert corrected_verdict(0.1, 0.01, "lower") == "not reproduced"
    assert corrected_verdict(0.1, 0.01, "higher") == "reproduced"
    assert corrected_verdict(0.001, 0.6, "lower", p_equivalence=0.01) == "equivalent"
    assert corrected_verdict(0.001, 0.6, "lower", p_equivalence=0.2) == "inconclusive"
    assert corrected_verdict(0.001, 0.6, "lower") == "inconclusive"
    with pytest.raises(ValueError, match="better"):
        corrected_verdict(0.1, 0.01, "up")
