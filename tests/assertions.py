"""Assertions whose failure reads like a hint: `assert_close` is numpy's assert_allclose
(the same test, the same arguments) with a report that shows NaN and inf.

numpy prints the whole arrays, abbreviated with `...`, so a NaN in the middle of the
actual values hides behind the ellipsis ("nan location mismatch" with ACTUAL and DESIRED
printed alike). The report here names how many values differ, how many of those are NaN
or inf where the expected value is finite, and the first such index with both values at
full precision.
"""

import numpy as np


def _value(x) -> str:
    """A scalar at full precision: nan, inf, -inf shown as such."""
    if isinstance(x, (np.floating, float)):
        return repr(float(x))
    if isinstance(x, (np.complexfloating, complex)):
        return repr(complex(x))
    return repr(x.item() if isinstance(x, np.generic) else x)


def describe_mismatch(actual, desired, rtol, atol, equal_nan=True, err_msg="") -> str:
    """What differs between actual and desired under |a - d| <= atol + rtol |d|."""
    a, d = np.asarray(actual), np.asarray(desired)
    head = f"{err_msg}\n" if err_msg else ""
    try:
        a_b, d_b = np.broadcast_arrays(a, d)
    except ValueError:
        return f"{head}shape {a.shape} (actual) != {d.shape} (expected)"
    if a_b.dtype.kind not in "fciub" or d_b.dtype.kind not in "fciub":
        return f"{head}actual {a!r}\nexpected {d!r}"
    af, df = a_b.astype(np.complex128 if "c" in a_b.dtype.kind + d_b.dtype.kind
                        else np.float64), d_b.astype(np.float64 if d_b.dtype.kind != "c"
                                                     else np.complex128)
    with np.errstate(all="ignore"):
        close = np.isclose(af, df, rtol=rtol, atol=atol, equal_nan=equal_nan)
    bad = ~close
    n = int(bad.sum())
    if n == 0:
        return f"{head}(no value differs; numpy's check failed on dtype or shape)"
    nonfinite = bad & ~np.isfinite(af) & np.isfinite(df)
    lines = [f"{n} of {bad.size} values differ (tolerance |actual - expected| <= "
             f"{atol:g} + {rtol:g} |expected|)"]
    if nonfinite.any():
        nans, infs = int((nonfinite & np.isnan(af)).sum()), int((nonfinite & np.isinf(af)).sum())
        lines[0] += f"; actual has {nans} NaN and {infs} inf where the expected value is finite"
        idx = tuple(int(i) for i in np.argwhere(nonfinite)[0])
    else:
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
    where = list(idx) if idx else "the scalar"
    lines.append(f"first at {where}: actual {_value(a_b[idx])}, expected {_value(d_b[idx])}")
    with np.errstate(all="ignore"):
        finite = bad & np.isfinite(af) & np.isfinite(df)
        if finite.any():
            lines.append(f"largest finite |actual - expected|: "
                         f"{float(np.max(np.abs(af - df)[finite])):.6g}")
    return head + "\n".join(lines)


def assert_close(actual, desired, rtol=1e-7, atol=0, equal_nan=True, err_msg="", **kw):
    """np.testing.assert_allclose with the report of describe_mismatch."""
    __tracebackhide__ = True  # pytest: the report starts at the caller
    try:
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, equal_nan=equal_nan,
                                   err_msg=err_msg, **kw)
    except AssertionError:
        raise AssertionError(describe_mismatch(actual, desired, rtol, atol, equal_nan,
                                               err_msg)) from None
