"""kernels/matmul.py: BLAS products split across the thread policy's threads, whose bits
depend on the cap only, never on how many threads the load leaves free; and the linear
layer's backward twin built on it."""

import multiprocessing
import sys

import numpy as np
import pytest

from mini_encdec import ops
from mini_encdec.kernels import linear as klinear
from mini_encdec.kernels import matmul as kmatmul
from mini_encdec.kernels import threads
from mini_encdec.nn import linear as nlinear


@pytest.fixture
def split_policy(monkeypatch):
    """The policy of a machine whose BLAS must stay at one thread, with a cap of 3 (more
    blocks than this machine may have CPUs: the helpers are threads, so it runs anyway);
    `policy.force(n)` holds the current count at n."""
    policy = threads.POLICY
    monkeypatch.setattr(policy, "blas_fixed", 1)
    monkeypatch.setattr(policy, "cap", 3)
    monkeypatch.setattr(kmatmul, "MIN_MACS", 0)
    monkeypatch.setattr(kmatmul, "idle_threads_sleep", lambda: True)
    saved = (policy._current, policy._next, policy._serial)

    def force(n):
        policy._current, policy._next = n, float("inf")

    policy.force = force
    yield policy
    policy._current, policy._next, policy._serial = saved
    del policy.force


SHAPES = [(37, 11, 5), (5, 11, 37), (64, 64, 64), (3, 200, 2), (1, 7, 9)]


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("layout", ["C", "a transposed", "b transposed", "out given"])
def test_split_product_matches_numpy_and_not_the_load(split_policy, M, K, N, layout):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    if layout == "a transposed":
        a = np.ascontiguousarray(a.T).T  # F-ordered, as dy.T in the weight gradient
    if layout == "b transposed":
        b = np.ascontiguousarray(b.T).T  # as W.T in the forward
    results = []
    for n in (3, 2, 1):
        split_policy.force(n)
        out = np.full((M, N), np.nan, np.float32) if layout == "out given" else None
        y = kmatmul.matmul(a, b, out=out)
        if out is not None:
            assert y is out
        results.append(y)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    terms = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)  # size of the sums
    assert np.all(np.abs(results[0] - expected) <= 1e-5 * terms + 1e-30)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_blocks_split_the_longer_side_evenly():
    assert kmatmul.blocks(100, 10, 2) == ("rows", [0, 50, 100])
    assert kmatmul.blocks(10, 101, 3) == ("cols", [0, 33, 67, 101])
    assert kmatmul.blocks(2, 1, 4) == ("rows", [0, 1, 2])  # never an empty block


def test_small_products_and_a_free_blas_stay_one_call(monkeypatch):
    calls = []
    real = np.matmul

    def counting(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    policy = threads.POLICY
    monkeypatch.setattr(kmatmul.np, "matmul", counting)
    monkeypatch.setattr(policy, "cap", 2)
    a, b = np.ones((64, 64), np.float32), np.ones((64, 64), np.float32)
    monkeypatch.setattr(policy, "blas_fixed", None)  # BLAS threads itself: one call
    monkeypatch.setattr(kmatmul, "MIN_MACS", 0)
    kmatmul.matmul(a, b)
    monkeypatch.setattr(policy, "blas_fixed", 1)
    monkeypatch.setattr(kmatmul, "idle_threads_sleep", lambda: True)
    monkeypatch.setattr(kmatmul, "MIN_MACS", 64 ** 3 + 1)  # too small to split
    kmatmul.matmul(a, b)
    monkeypatch.setattr(kmatmul, "MIN_MACS", 0)
    monkeypatch.setattr(kmatmul, "idle_threads_sleep", lambda: False)  # OpenMP spins
    kmatmul.matmul(a, b)
    assert calls == [(64, 64)] * 3
    monkeypatch.setattr(kmatmul, "idle_threads_sleep", lambda: True)
    kmatmul.matmul(a, b)
    assert len(calls) == 5  # split in two


def test_idle_threads_sleep_reads_the_wait_policy(monkeypatch):
    for value, expected in (("PASSIVE", True), (" passive ", True), ("ACTIVE", False),
                            ("", False)):
        monkeypatch.setenv("OMP_WAIT_POLICY", value)
        assert kmatmul.idle_threads_sleep() is expected
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert kmatmul.idle_threads_sleep() is False


def test_an_error_in_a_helper_reaches_the_caller_after_every_block(split_policy, monkeypatch):
    split_policy.force(3)
    seen = []
    real = kmatmul._block

    def failing(side, lo, hi, a, b, out):
        seen.append(lo)
        if lo > 0:
            raise FloatingPointError(f"block {lo}")
        real(side, lo, hi, a, b, out)

    monkeypatch.setattr(kmatmul, "_block", failing)
    a = np.ones((9, 4), np.float32)
    with pytest.raises(FloatingPointError, match="block"):
        kmatmul.matmul(a, np.ones((4, 2), np.float32))
    assert sorted(seen) == [0, 3, 6]


def _child(conn):
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    conn.send(kmatmul.matmul(a, a.T).sum())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method: Linux")
def test_a_forked_child_gets_its_own_helpers(split_policy):
    split_policy.force(3)
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    expected = kmatmul.matmul(a, a.T).sum()  # helpers started in this process
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child,))
    p.start()
    assert parent.poll(60), "the forked child hung on the parent's helper threads"
    assert parent.recv() == expected
    p.join(10)


@pytest.mark.parametrize("lead", [(40,), (3, 17), (2, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_backward_twin_matches_the_reference(split_policy, lead, dtype):
    split_policy.force(2)
    rng = np.random.default_rng(len(lead))
    x = rng.standard_normal(lead + (13,)).astype(dtype)
    W = rng.standard_normal((29, 13)).astype(dtype)
    y, cache = klinear.linear_forward(x, W)
    y_ref, cache_ref = nlinear.linear_forward(x, W)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW = klinear.linear_backward(dy, cache)
    dx_ref, dW_ref = nlinear.linear_backward(dy, cache_ref)
    assert dx.dtype == dx_ref.dtype and dW.dtype == dW_ref.dtype
    assert dx.shape == x.shape and dW.shape == W.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-4, atol=1e-4)
    split_policy.force(1)
    dx1, dW1 = klinear.linear_backward(dy, cache)
    np.testing.assert_array_equal(dx1, dx)
    np.testing.assert_array_equal(dW1, dW)


def test_linear_backward_twin_rejects_bad_input_like_the_reference():
    x, W = np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32)
    cache = {"x": x, "W": W}
    for dy in (np.zeros((4, 4), np.float32), np.zeros((4, 5), np.int64), [[0.0] * 5] * 4):
        with pytest.raises(ValueError) as ref_err:
            nlinear.linear_backward(dy, cache)
        with pytest.raises(ValueError) as twin_err:
            klinear.linear_backward(dy, cache)
        assert str(twin_err.value) == str(ref_err.value)
    assert ops.REFERENCE["linear_backward"] is nlinear.linear_backward


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_training_gradients_do_not_depend_on_the_free_threads(split_policy, arch):
    """A whole training step through the split products: the same loss and gradients when
    the load leaves 3, 2 or 1 threads (the blocks come from the cap)."""
    from mini_encdec.backend import use_backend
    from mini_encdec.experiments.bench_workers import _batch, bench_model

    model = bench_model("tiny", arch)
    batch = _batch(model.config, arch, 2, 24)
    results = []
    with use_backend("numba"):
        for n in (3, 2, 1):
            split_policy.force(n)
            results.append(model.loss_and_grads(batch))
    (loss0, g0), *rest = results
    for loss, g in rest:
        assert loss == loss0
        for k in g0:
            np.testing.assert_array_equal(g[k], g0[k], err_msg=k)


def test_a_one_row_product_does_not_depend_on_the_free_threads(split_policy):
    """project's one row: the few-row kernel or BLAS's gemv (different roundings) is chosen
    by the step (threads.serial) and the size, never by the threads free now."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 1, 512)).astype(np.float32)
    W = rng.standard_normal((8192, 512)).astype(np.float32)  # 16 MB: worth two threads
    results = []
    for n in (2, 1):
        split_policy.force(n)
        results.append(klinear.project(x, W))
    np.testing.assert_array_equal(results[0], results[1])
    with threads.serial():  # a small step: one thread, BLAS's gemv, bit for bit
        np.testing.assert_array_equal(klinear.project(x, W), nlinear.linear_unchecked(x, W))
