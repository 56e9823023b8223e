"""Matrix products on the thread policy's threads whose bits never depend on the load.

Why. On CPUs where BLAS's results change with its thread count (OpenBLAS's Haswell, Zen
and SkylakeX kernels; `threads.blas_varies`), the thread policy holds BLAS at one thread
for the whole process, so that a run gives the same numbers on a quiet and on a busy
machine. That left the second core idle during every big product of training: measured
on a 2-core Xeon, the `small` training step ran at 0.73-0.79x PyTorch, which multiplies
on both cores (MEASUREMENTS.md).

How. `matmul(a, b)` cuts the product into a fixed number of blocks, `threads.cap()` of
them (the machine's CPUs, never the load), along the larger side of the result: row
blocks a[r0:r1] @ b, or column blocks a @ b[:, c0:c1]. Each block is one single-threaded
BLAS call (NumPy's `matmul` with `out=` a block of the result: no copies, and NumPy
releases the GIL inside it). The blocks run on the calling thread and on cap - 1 helper
threads, or all on the calling thread when the policy says only one thread is free now.
A block computes the same sums in the same order whichever thread runs it, so the result
depends on the cap and on the BLAS library only, as every kernel's does.

Where BLAS's bits do not follow its thread count (threads.POLICY.blas_fixed is None),
BLAS already uses the policy's threads, and `matmul` is `np.matmul`. So are products too
small to be worth a hand-off (under MIN_MACS multiply-adds: waking a helper costs tens of
microseconds), and every product of a process whose OpenMP threads spin while idle (the
wait policy is PASSIVE only after `ops.tune_process()`, which the command line calls):
after each of Numba's parallel kernels its idle thread spins on a core for a while, the
helper has no core to run on, and the split gained nothing (MEASUREMENTS.md).

Checklist
- 2-D float arrays only (the callers reshape); any strides NumPy's BLAS path accepts.
- Memory: the result only (or `out`).
- Fork-safe: a forked child drops the parent's helpers and lock (os.register_at_fork)
  and starts its own.
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np

from . import threads

# Products with fewer multiply-adds than this run as one BLAS call (~30 us at one thread:
# a hand-off to a helper thread costs ~10-30 us).
MIN_MACS = 1 << 22


class _Helpers:
    """cap - 1 daemon threads, each taking (function, args, done-event) jobs."""

    def __init__(self, n: int):
        self.jobs = [queue.SimpleQueue() for _ in range(n)]
        for q in self.jobs:
            threading.Thread(target=self._work, args=(q,), daemon=True,
                             name="mini_encdec-matmul").start()

    @staticmethod
    def _work(q) -> None:
        while True:
            fn, args, box, done = q.get()
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 (re-raised on the calling thread)
                box.append(e)
            done.set()


_helpers: _Helpers | None = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child has no helper threads, and a lock held at the fork stays held."""
    global _helpers, _lock
    _helpers, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _get_helpers(n: int) -> _Helpers:
    global _helpers
    with _lock:
        if _helpers is None or len(_helpers.jobs) < n:
            _helpers = _Helpers(n)
        return _helpers


def idle_threads_sleep() -> bool:
    """Whether OpenMP's idle threads sleep (OMP_WAIT_POLICY=PASSIVE) rather than spin."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def even_bounds(n: int, parts: int) -> list:
    """[0, ..., n]: `parts` (at most n, at least 1) consecutive blocks of 0..n, sizes
    differing by at most one."""
    parts = max(1, min(parts, n))
    return [(n * i) // parts for i in range(parts + 1)]


def blocks(M: int, N: int, parts: int) -> tuple:
    """The split of an (M, N) result into `parts` blocks: ("rows" or "cols", bounds),
    along the larger side (the other operand, packed whole by every block, is then the
    smaller one)."""
    side, n = ("rows", M) if M >= N else ("cols", N)
    return side, even_bounds(n, parts)


def _block(side: str, lo: int, hi: int, a, b, out) -> None:
    if side == "rows":
        np.matmul(a[lo:hi], b, out=out[lo:hi])  # (hi-lo, K) @ (K, N) -> (hi-lo, N)
    else:
        np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])  # (M, K) @ (K, hi-lo) -> (M, hi-lo)


def split_pays(macs: int) -> bool:
    """Whether work of `macs` multiply-adds of BLAS should be split into the cap's blocks
    (BLAS held at one thread, more than one CPU, idle OpenMP threads asleep, big enough)."""
    policy = threads.POLICY
    return (policy.blas_fixed is not None and policy.cap > 1 and macs >= MIN_MACS
            and idle_threads_sleep())


def run_blocks(work, bounds: list) -> None:
    """work(lo, hi) for each block [bounds[i], bounds[i+1]): the first on the calling
    thread, the others on helpers, or all on the calling thread when the policy has one
    thread free now. Returns when every block is done; an error in one is raised here."""
    parts = list(zip(bounds[:-1], bounds[1:]))
    if len(parts) == 1 or threads.POLICY.current() == 1:
        for lo, hi in parts:
            work(lo, hi)
        return
    helpers = _get_helpers(len(parts) - 1)
    waits = []
    for q, (lo, hi) in zip(helpers.jobs, parts[1:]):
        box, done = [], threading.Event()
        q.put((work, (lo, hi), box, done))
        waits.append((box, done))
    try:
        work(*parts[0])
    finally:  # never return (or raise) while a helper still writes into the results
        for _, done in waits:
            done.wait()
    for box, _ in waits:
        if box:
            raise box[0]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a (M, K) @ b (K, N) -> (M, N), split across the policy's threads (module doc)."""
    M, K = a.shape
    N = b.shape[1]
    if not split_pays(M * N * K):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((M, N), dtype=np.result_type(a, b))
    side, bounds = blocks(M, N, threads.POLICY.cap)
    run_blocks(lambda lo, hi: _block(side, lo, hi, a, b, out), bounds)
    return out
