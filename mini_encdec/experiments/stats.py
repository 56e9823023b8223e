"""Statistics for comparing two arms over seeds: mean, standard deviation and a paired
t-test (no SciPy needed).

The study runs every arm with the same seeds (the same parent, data order and fresh
initialisations per seed), so two arms are compared seed by seed:

    d_s = a_s - b_s            the per-seed difference, s = 1..n
    t   = mean(d) / (std(d, ddof=1) / sqrt(n))      with n - 1 degrees of freedom
    p   = P(|T_{n-1}| >= |t|)  two-sided

The Student t tail comes from the regularised incomplete beta function,
P(|T_v| >= t) = I_{v / (v + t^2)}(v / 2, 1 / 2), evaluated with the continued fraction of
Numerical Recipes (section 6.4), written out below; its quantiles by bisection.

What a reviewer needs beside the test (se = std(d, ddof=1) / sqrt(n), v = n - 1):

    confidence interval   mean(d) -/+ t_{1 - (1 - level)/2, v} * se
    Holm (1979)           p-values of the m pre-declared tests sorted, p_(1) <= ... <= p_(m):
                          adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)); a test
                          is significant when its adjusted p < alpha (family-wise error
                          <= alpha)
    TOST (Schuirmann 1987) equivalence within +-margin (the smallest effect of interest):
                          p = max(P(T_v >= (mean + margin) / se), P(T_v <= (mean - margin)
                          / se)); "equivalent" when p < alpha, i.e. when the
                          (1 - 2 alpha) interval lies inside (-margin, margin)
    minimum detectable    the true mean difference that a two-sided paired test at level
    effect                alpha detects with the given power, t approximation:
                          (t_{1 - alpha/2, v} + t_{power, v}) * sd / sqrt(n)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))          # even step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))  # odd step
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1.

    one_minus_x: 1 - x computed without cancellation by the caller (for x near 1)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: argument 'x': expected a number in [0, 1], got {x!r}")
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def t_two_sided_p(t: float, dof: int) -> float:
    """P(|T| >= |t|) for Student's t with `dof` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"t_two_sided_p: argument 'dof': expected >= 1, got {dof!r}")
    if math.isinf(t):
        return 0.0
    return betainc(dof / 2.0, 0.5, dof / (dof + t * t), one_minus_x=t * t / (dof + t * t))


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Seed-paired comparison of arm a with arm b.

    {"n", "mean_a", "std_a", "mean_b", "std_b", "mean_diff", "std_diff", "t", "p"}; std are
    sample standard deviations (ddof=1). With every difference equal (zero spread) the test
    is degenerate: p = 0 if the differences are non-zero, else 1."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired_test: expected two equally long sequences of at least 2 "
                         f"values, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if not (np.isfinite(mean) and np.isfinite(sd)):  # a failed run: no verdict
        t, p = math.nan, math.nan
    elif sd <= 1e-9 * max(1.0, abs(mean)):
        # equal differences (up to rounding: accuracies move in steps of 1/N) make the
        # test degenerate: "significant" only if they are all the same non-zero value
        t, p = (math.inf if mean else 0.0), (0.0 if mean else 1.0)
    else:
        t = mean / (sd / math.sqrt(n))
        p = t_two_sided_p(t, n - 1)
    return {"n": n, "mean_a": float(a.mean()), "std_a": float(a.std(ddof=1)),
            "mean_b": float(b.mean()), "std_b": float(b.std(ddof=1)),
            "mean_diff": mean, "std_diff": sd, "t": float(t), "p": float(p)}


def t_one_sided_p(t: float, dof: int) -> float:
    """P(T >= t) for Student's t with `dof` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    half = 0.5 * t_two_sided_p(t, dof)
    return half if t >= 0 else 1.0 - half


def t_quantile(q: float, dof: int) -> float:
    """The q-quantile of Student's t (0 < q < 1), by bisection on the tail."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile: argument 'q': expected a number in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    tail = 1.0 - q if q > 0.5 else q            # P(T >= |t|)
    lo, hi = 0.0, 1.0
    while t_one_sided_p(hi, dof) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_one_sided_p(mid, dof) > tail:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    return t if q > 0.5 else -t


def _diffs(d: Sequence[float]) -> tuple:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"expected at least 2 paired differences, got shape {d.shape}")
    n = len(d)
    return n, float(d.mean()), float(d.std(ddof=1))


def confidence_interval(d: Sequence[float], level: float = 0.95) -> tuple:
    """The t interval (low, high) of the mean of the paired differences d."""
    n, mean, sd = _diffs(d)
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def holm(pvalues: Sequence[float]) -> list:
    """Holm-adjusted p-values, in the given order (a NaN p counts as 1)."""
    p = [1.0 if math.isnan(x) else float(x) for x in pvalues]
    m = len(p)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def tost(d: Sequence[float], margin: float) -> float:
    """The TOST p-value of equivalence of the mean difference to 0 within +-margin."""
    if not margin > 0:
        raise ValueError(f"tost: argument 'margin': expected a positive number, got {margin!r}")
    n, mean, sd = _diffs(d)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # no spread: equivalent iff inside the margins
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_low = t_one_sided_p((mean + margin) / se, n - 1)          # H0: mean <= -margin
    p_high = 1.0 - t_one_sided_p((mean - margin) / se, n - 1)   # H0: mean >= +margin
    return max(p_low, p_high)


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at `alpha` detects
    with probability `power`, given the sd of the differences and n pairs."""
    if n < 2:
        raise ValueError(f"minimum_detectable_effect: argument 'n': expected >= 2, got {n!r}")
    return (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / \
        math.sqrt(n)


VERDICTS = ("reproduced", "not reproduced", "equivalent", "inconclusive")


def corrected_verdict(mean_diff: float, p_adjusted: float, better: str, *,
                      p_equivalence: float = math.nan, alpha: float = 0.05) -> str:
    """The verdict of one claim from its Holm-adjusted p (and, where the protocol states a
    smallest effect of interest, its TOST p): "reproduced" / "not reproduced" when the
    adjusted p < alpha in the claimed / the opposite direction, else "equivalent" when
    the TOST p < alpha, else "inconclusive"."""
    if better not in ("higher", "lower"):
        raise ValueError(f"corrected_verdict: argument 'better': expected 'higher' or "
                         f"'lower', got {better!r}")
    if p_adjusted < alpha and mean_diff != 0:
        claimed = mean_diff > 0 if better == "higher" else mean_diff < 0
        return "reproduced" if claimed else "not reproduced"
    if p_equivalence < alpha:
        return "equivalent"
    return "inconclusive"


def verdict(test: dict, better: str, alpha: float = 0.05) -> str:
    """"reproduced" when the claimed direction holds with p < alpha, "not reproduced" when
    the opposite direction does, "inconclusive" otherwise.

    better: "higher" (the claim says a > b) or "lower" (the claim says a < b)."""
    if better not in ("higher", "lower"):
        raise ValueError(f"verdict: argument 'better': expected 'higher' or 'lower', got "
                         f"{better!r}")
    if not test["p"] < alpha or test["mean_diff"] == 0:  # NaN p: inconclusive too
        return "inconclusive"
    claimed = test["mean_diff"] > 0 if better == "higher" else test["mean_diff"] < 0
    return "reproduced" if claimed else "not reproduced"
