"""How every kernel is compiled and launched.

- JIT: `cache=True` (compiled code is kept in `__pycache__`, so only the first process
  compiles), `error_model="numpy"` (x / 0 gives inf instead of a Python ZeroDivisionError
  branch, which would stop vectorisation) and FASTMATH.
- FASTMATH is only `reassoc` (LLVM may vectorise sums such as dot products and row sums,
  changing the summation order as BLAS does) and `contract` (fused multiply-add). No
  `nnan`/`ninf`/`afn`: masks rely on -inf and a NaN input must stay visible. Measured
  harmless: every twin meets the reference tolerances (tests/test_kernels.py).
- Launching: each kernel is a plain jitted function over a range of rows, called directly
  (on the calling thread) when the work is small, or from a `parallel=True` wrapper whose
  `prange` hands chunks of rows to Numba's thread pool. Waking the pool costs ~10 us on an
  idle machine (much more when the cores are busy), more than a small kernel such as one
  step of KV-cached decoding takes.
- Threads: how many threads the pools use, and when, is `threads.py`'s policy (the CPUs
  that are actually free, so a busy machine does not make every parallel call wait for
  a descheduled thread; OMP_WAIT_POLICY=PASSIVE so idle pool threads sleep). Chunk
  counts come from its fixed cap, never from the current count, so results do not
  depend on the load.
"""

from __future__ import annotations

import numpy as np

from . import threads

FASTMATH = {"reassoc", "contract"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")

# Work (about one vectorised multiply-add per unit) below which a kernel runs serially.
SERIAL_WORK = 1 << 18


def parallel_chunks(work: int, rows: int, per_thread: int = 2) -> int:
    """0 when the kernel should run serially; else the number of row chunks to hand out
    (a few per thread of the cap, so rows of unequal cost still balance). Also the point
    where the thread policy re-measures the load and sets the pools' counts."""
    if work < SERIAL_WORK or rows < 2:
        return 0
    cap = threads.POLICY.cap
    if cap == 1:
        return 0
    threads.POLICY.current()
    return min(rows, per_thread * cap)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def same_float_arrays(*arrays) -> bool:
    """True when all are NumPy arrays of one dtype, float32 or float64: the wrappers' fast
    check (a few hundred ns); when it fails they run the reference's full checks, which
    raise the ValueError naming the argument (one decoding step calls a dozen kernels, so
    the validation cost matters)."""
    a0 = arrays[0]
    if not isinstance(a0, np.ndarray) or a0.dtype not in _FLOATS:
        return False
    for a in arrays[1:]:  # a loop, not all(...): a generator costs more than the test
        if not isinstance(a, np.ndarray) or a.dtype != a0.dtype:
            return False
    return True
