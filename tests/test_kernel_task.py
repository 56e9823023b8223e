"""Assignment 7.1: the Numba RMSNorm kernel (mini_encdec/kernels/rmsnorm.py), in the style
of minitorch's fast_ops: a jitted loop over a range of rows, and a `parallel=True` twin
whose `prange` hands chunks of rows to Numba's threads.

The kernel is graded against the equation written plainly here (not against nn/rmsnorm.py,
itself a task), through its public wrappers `rmsnorm_forward` / `rmsnorm_backward`, on the
serial path and on the parallel one (forced for small inputs by replacing the module's
`parallel_chunks`, which otherwise sends only large inputs to the threads), with every
number of chunks. The backward is checked against float64 central differences of the
equation. Speed is never asserted here: `python tutorials/assignments/bench_kernel.py`
measures it.

Marker task7_1 (tutorials/assignments/README.md). These tests import the kernel module
directly, so they run in a student copy, where the other Numba twins are left out.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_encdec.nn.gradcheck import numerical_grad, random_cotangent, rel_error

from .assertions import assert_close

pytestmark = pytest.mark.task7_1
# A student copy keeps the kernel file only when it blanks task 7.1 (blank.py): the kernel
# computes RMSNorm, task 1.1's answer.
kernel = pytest.importorskip("mini_encdec.kernels.rmsnorm", reason="this copy leaves out "
                             "mini_encdec/kernels/rmsnorm.py (its task 7.1 is not assigned)")
EPS = 1e-6


def rmsnorm_by_the_equation(x, w, eps=EPS):
    """y[n, d] = x[n, d] / sqrt(mean_d x[n, :]^2 + eps) * (1 + w[d]), row by row."""
    y = np.empty_like(x)
    for n in range(x.shape[0]):
        rstd = 1.0 / np.sqrt(np.mean(x[n] * x[n]) + eps)
        y[n] = x[n] * rstd * (1 + w)
    return y


def run(fn, chunks, *args):
    """fn(*args) with the kernel module sending the work to `chunks` parallel chunks of
    rows (0: the serial loop, whatever the size)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernel, "parallel_chunks", lambda work, rows, per_thread=2: min(chunks, rows))
        return fn(*args)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 7))  # (N rows, D)


@settings(max_examples=20)
@given(shape=shapes, chunks=st.integers(0, 4), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31), scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_forward_is_the_equation_serial_and_parallel(shape, chunks, dtype, seed, scale):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal(shape)).astype(dtype)
    w = rng.standard_normal(shape[1]).astype(dtype)
    y, cache = run(kernel.rmsnorm_forward, chunks, x, w, EPS)
    assert y.shape == x.shape and y.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    assert_close(y, rmsnorm_by_the_equation(x.astype(np.float64),
                                                          w.astype(np.float64)), **tol,
                               err_msg=f"{chunks} parallel chunks (0: serial)")


@settings(max_examples=15)
@given(shape=shapes, chunks=st.integers(0, 4), seed=st.integers(0, 2**31))
def test_backward_is_the_derivative_serial_and_parallel(shape, chunks, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape), rng.standard_normal(shape[1])
    R = random_cotangent(x, rng)
    y, cache = run(kernel.rmsnorm_forward, chunks, x, w, EPS)
    dx, dw = run(kernel.rmsnorm_backward, chunks, R, cache)
    assert dx.shape == x.shape and dw.shape == w.shape

    def loss():
        return float(np.sum(rmsnorm_by_the_equation(x, w) * R))
    for name, got, arg in (("x", dx, x), ("w", dw, w)):
        err = rel_error(got, numerical_grad(loss, arg))
        assert err < 1e-6, (f"gradient of {name} with {chunks} parallel chunks (0: serial): "
                            f"max relative error {err:.2e}")


@settings(max_examples=10)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_every_chunking_gives_the_same_rows(shape, seed):
    """Rows are independent: y and dx do not depend on how the rows are chunked (bit for
    bit), and dw, a sum over rows, only up to rounding."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[1]).astype(
        np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    outs = []
    for chunks in range(0, 4):
        y, cache = run(kernel.rmsnorm_forward, chunks, x, w, EPS)
        outs.append((y, *run(kernel.rmsnorm_backward, chunks, dy, cache)))
    for chunks, (y, dx, dw) in enumerate(outs[1:], start=1):
        np.testing.assert_array_equal(y, outs[0][0], err_msg=f"y, {chunks} chunks vs serial")
        np.testing.assert_array_equal(dx, outs[0][1], err_msg=f"dx, {chunks} chunks vs serial")
        assert_close(dw, outs[0][2], rtol=1e-5, atol=1e-5,
                                   err_msg=f"dw, {chunks} chunks vs serial")


def test_a_large_input_takes_the_parallel_path():
    """Unpatched, an input above the serial threshold goes to _forward_parallel (the
    prange loop) and still equals the equation."""
    x = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    w = np.linspace(-1, 1, 256, dtype=np.float32)
    if kernel.parallel_chunks(x.size, x.shape[0]) == 0:
        pytest.skip("one thread on this machine: every size runs serially")
    y, _ = kernel.rmsnorm_forward(x, w)
    assert_close(y, rmsnorm_by_the_equation(x.astype(np.float64), w), rtol=1e-5,
                               atol=1e-5)


@settings(max_examples=10)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 5)), chunks=st.integers(1, 4),
       seed=st.integers(0, 2**31))
def test_each_chunk_adds_its_dw_into_its_own_row(shape, chunks, seed):
    """_backward_parallel: chunk c (rows c*N//C <= n < (c+1)*N//C) adds its share of dw
    into dw_part[c] and nowhere else, so no two threads write the same memory. Checked
    row by row, not through the sum: a shared row gives the right sum when the threads
    happen not to overlap, and a race only on some runs."""
    rng = np.random.default_rng(seed)
    x, w, dy = rng.standard_normal(shape), rng.standard_normal(shape[1]), \
        rng.standard_normal(shape)
    N = shape[0]
    chunks = min(chunks, N)
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=1) + EPS)
    dx, dw_part = np.empty_like(x), np.zeros((chunks, shape[1]))
    kernel._backward_parallel(dy, x, w, rstd, dx, dw_part)
    for c in range(chunks):
        rows = slice((c * N) // chunks, ((c + 1) * N) // chunks)
        want = np.sum(dy[rows] * x[rows] * rstd[rows, None], axis=0)
        assert_close(dw_part[c], want, rtol=1e-12, atol=1e-12, err_msg=(
            f"dw_part[{c}] must hold the dw of chunk {c} (rows {rows.start}..{rows.stop - 1}) "
            f"only; {chunks} chunks of {N} rows"))
