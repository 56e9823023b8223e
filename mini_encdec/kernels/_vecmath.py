"""Vectorisable exp and tanh on 1-D buffers, shared by the kernels.

Checklist
- Why: this machine's Numba has no vector math library (no SVML), so `math.exp` and
  `math.tanh` in a loop are scalar libm calls (about 10x slower than NumPy's SIMD
  versions). For float32 we compute them with plain arithmetic that LLVM vectorises
  (8 lanes with AVX2). float64 (the gradient-check dtype) keeps libm for full accuracy.
- exp (float32): clamp to [-88, 88], n = round(x log2 e), r = x - n ln2 (two-part ln2),
  e^r by its Taylor polynomial to degree 7 (|r| <= ln2/2, truncation error 6e-9 relative,
  below float32's 6e-8 rounding), times 2^n built from bits: an int32 buffer holds
  (n + 127) << 23 and is read back as float32. x <= -88 gives 0 (n = -127 is the zero
  pattern), so exp(-inf) = 0 as masks need.
- tanh (float32): with e = exp(-2|x|), tanh|x| = (1 - e) / (1 + e); for |x| < 0.5 the
  numerator 1 - e = -expm1(-2|x|) comes from expm1's Taylor polynomial (degree 10) to
  avoid cancellation; the sign is restored at the end.
- Memory: the caller passes the int32 scratch buffer, so nothing is allocated here.
- Constants are typed with `cst(like, value)` so float32 code never promotes to float64.
- Accuracy, measured against float64 NumPy: exp within 2 ulp (3e-7 relative), tanh
  within 3e-7 absolute / relative; the kernels' tests hold them to the reference's
  tolerances (1e-5 relative outputs, 1e-4 gradients).

"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._runtime import JIT

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 split in two: the high part is exact in float32
_LN2_LO = -2.12194440e-4


def cst(like, value):
    """`value` as a scalar of the float type of `like` (a float scalar or array)."""
    raise NotImplementedError("only callable inside jitted code")


@overload(cst, inline="always")
def _cst(like, value):
    dt = like.dtype if isinstance(like, types.Array) else like
    if dt == types.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)


def exp_inplace(buf, n, ibuf):
    """buf[:n] = exp(buf[:n]); ibuf is int32 scratch of length >= n."""
    raise NotImplementedError("only callable inside jitted code")


@overload(exp_inplace)
def _exp_inplace(buf, n, ibuf):
    if buf.dtype == types.float32:
        def impl(buf, n, ibuf):
            for j in range(n):
                x0 = buf[j]
                x = min(max(x0, np.float32(-88.0)), np.float32(88.0))
                k = np.floor(x * np.float32(_LOG2E) + np.float32(0.5))  # round(x / ln 2)
                r = x - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)  # |r| <= ln2 / 2
                p = np.float32(1.0 / 5040.0)  # Horner: sum_{m=0..7} r^m / m!
                p = p * r + np.float32(1.0 / 720.0)
                p = p * r + np.float32(1.0 / 120.0)
                p = p * r + np.float32(1.0 / 24.0)
                p = p * r + np.float32(1.0 / 6.0)
                p = p * r + np.float32(0.5)
                p = p * r + np.float32(1.0)
                p = p * r + np.float32(1.0)
                buf[j] = p if x0 == x0 else x0  # a NaN stays NaN
                ibuf[j] = (np.int32(k) + np.int32(127)) << np.int32(23)  # bits of 2^k
            two_k = ibuf.view(np.float32)
            for j in range(n):
                buf[j] *= two_k[j]
        return impl

    def impl64(buf, n, ibuf):
        for j in range(n):
            buf[j] = math.exp(buf[j])
    return impl64


def tanh_into(x, out, n, ibuf):
    """out[:n] = tanh(x[:n]) (x and out distinct buffers); ibuf int32 scratch."""
    raise NotImplementedError("only callable inside jitted code")


@overload(tanh_into)
def _tanh_into(x, out, n, ibuf):
    if x.dtype == types.float32:
        def impl(x, out, n, ibuf):
            for j in range(n):
                out[j] = np.float32(-2.0) * abs(x[j])
            exp_inplace(out, n, ibuf)  # e = exp(-2|x|)
            for j in range(n):
                a = abs(x[j])
                u = np.float32(-2.0) * a
                # expm1(u) by Taylor to degree 10, accurate for |u| < 1
                em = np.float32(1.0 / 39916800.0)
                em = em * u + np.float32(1.0 / 3628800.0)
                em = em * u + np.float32(1.0 / 362880.0)
                em = em * u + np.float32(1.0 / 40320.0)
                em = em * u + np.float32(1.0 / 5040.0)
                em = em * u + np.float32(1.0 / 720.0)
                em = em * u + np.float32(1.0 / 120.0)
                em = em * u + np.float32(1.0 / 24.0)
                em = em * u + np.float32(1.0 / 6.0)
                em = em * u + np.float32(0.5)
                em = em * u + np.float32(1.0)
                em = em * u
                e = out[j]
                if a >= np.float32(0.5):
                    em = e - np.float32(1.0)
                t = -em / (np.float32(2.0) + em)  # (1 - e) / (1 + e)
                out[j] = t if x[j] >= np.float32(0.0) else -t
        return impl

    def impl64(x, out, n, ibuf):
        for j in range(n):
            out[j] = math.tanh(x[j])
    return impl64


@njit(**JIT)
def exp_array(x):
    """exp of a 1-D array through `exp_inplace` (for tests of the approximation)."""
    out = x.copy()
    exp_inplace(out, out.shape[0], np.empty(out.shape[0], np.int32))
    return out


@njit(**JIT)
def tanh_array(x):
    """tanh of a 1-D array through `tanh_into` (for tests of the approximation)."""
    out = np.empty_like(x)
    tanh_into(x, out, x.shape[0], np.empty(x.shape[0], np.int32))
    return out
