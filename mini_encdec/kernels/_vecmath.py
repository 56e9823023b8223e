"""Vectorisable exp and tanh for the kernels: `vexp(x)`, `vtanh(x)` on scalars, meant
for element loops that LLVM turns into SIMD code; `row_max`, a vectorised maximum.

A rule learnt the hard way: keep a `max` reduction out of a loop that calls vexp/vtanh
(Python's max semantics make LLVM give up vectorising the whole loop, 10x slower).

Checklist
- Why: this machine's Numba has no vector math library (no SVML), so `math.exp` and
  `math.tanh` in a loop stay scalar libm calls, about 10x slower than NumPy's SIMD
  versions. For float32 we compute them with plain arithmetic that LLVM vectorises
  (8 lanes with AVX2), so a kernel can fuse them into one pass over a row.
  float64 (the gradient-check dtype) keeps libm, for full accuracy.
- exp (float32): clamp to [-88, 88]; k = round(x log2 e); r = x - k ln2 (ln2 in two
  parts, the high one exact); e^r by its Taylor polynomial to degree 7 (|r| <= ln2/2:
  truncation error 6e-9 relative, below float32's 6e-8 rounding); times 2^k made from
  its bits ((k + 127) << 23, reinterpreted as float32 by `_float32_from_bits`).
  x <= -88 gives 0 (k = -127 is the bit pattern of 0.0), so exp(-inf) = 0 as masks need;
  a NaN stays NaN.
- tanh (float32): with e = exp(-2|x|), tanh|x| = (1 - e) / (1 + e), then the sign of x.
  One division. Near 0 the subtraction 1 - e makes the error absolute (<= 2e-7) rather
  than relative; every use is `cap * tanh(z / cap)` or `u (1 + tanh(...))`, where an
  absolute error of the tanh is what matters (a 50 * 2e-7 = 1e-5 error in a score moves
  its probability by 1e-5 relative). An expm1 branch for small |x| made it exact in the
  relative sense too but cost 30% more.
- Accuracy against float64 NumPy (tests/test_kernels.py): exp within 3e-7 relative,
  tanh within 2e-7 absolute.
- Memory: none; scalars in, scalars out.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ._runtime import JIT

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375  # ln 2 = _LN2_HI + _LN2_LO; the high part is exact in float32
_LN2_LO = -2.12194440e-4


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the low 32 bits of the integer `bits`."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


def cst(like, value):
    """`value` as a scalar of the float type of `like` (a float scalar or array), so
    float32 code never promotes to float64 through a Python float literal. (This body runs
    in plain Python; inside jitted code the overload below is inlined instead.)"""
    dtype = like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype
    return dtype.type(value)


@overload(cst, inline="always")
def _cst(like, value):
    dt = like.dtype if isinstance(like, types.Array) else like
    if dt == types.float32:
        return lambda like, value: np.float32(value)
    return lambda like, value: np.float64(value)


def vexp(x):
    """exp(x), vectorisable for float32 (libm for float64)."""
    return math.exp(x)


@overload(vexp)
def _vexp(x):
    if x == types.float32:
        def exp32(x):
            y = min(max(x, np.float32(-88.0)), np.float32(88.0))
            k = np.floor(y * np.float32(_LOG2E) + np.float32(0.5))  # round(y / ln 2)
            r = y - k * np.float32(_LN2_HI) - k * np.float32(_LN2_LO)  # |r| <= ln2 / 2
            p = np.float32(1.0 / 5040.0)  # Horner: sum_{m=0..7} r^m / m!
            p = p * r + np.float32(1.0 / 720.0)
            p = p * r + np.float32(1.0 / 120.0)
            p = p * r + np.float32(1.0 / 24.0)
            p = p * r + np.float32(1.0 / 6.0)
            p = p * r + np.float32(0.5)
            p = p * r + np.float32(1.0)
            p = p * r + np.float32(1.0)
            e = p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))  # * 2^k
            return e if x == x else x  # a NaN stays NaN
        return exp32
    return lambda x: math.exp(x)


def vtanh(x):
    """tanh(x), vectorisable for float32 (libm for float64)."""
    return math.tanh(x)


@overload(vtanh)
def _vtanh(x):
    if x == types.float32:
        def tanh32(x):
            e = vexp(np.float32(-2.0) * abs(x))  # exp(-2|x|) in (0, 1]
            t = (np.float32(1.0) - e) / (np.float32(1.0) + e)  # tanh|x|
            return t if x >= np.float32(0.0) else -t
        return tanh32
    return lambda x: math.tanh(x)


@njit(cache=True, fastmath={"reassoc", "nsz", "nnan"}, error_model="numpy")
def row_max(s, n):
    """max(s[:n]) (-inf when n == 0), vectorised. Its own fast-math flags (no-NaN) let
    LLVM vectorise the max; a NaN in s may be skipped here, but then it still reaches
    the output through exp(s - max)."""
    m = cst(s, -np.inf)
    for j in range(n):
        m = max(m, s[j])
    return m


@njit(**JIT)
def exp_array(x):
    """vexp over a 1-D array (for the tests of the approximation)."""
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = vexp(x[j])
    return out


@njit(**JIT)
def tanh_array(x):
    """vtanh over a 1-D array (for the tests of the approximation)."""
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        out[j] = vtanh(x[j])
    return out
