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
- Thread pool: with the OpenMP layer, idle pool threads spin by default and steal the
  cores from the BLAS threads of the matmul that follows each kernel (we measured a 2x
  slower training step). Unless the user chose otherwise, OMP_WAIT_POLICY=PASSIVE is set
  before the pool starts (it only affects OpenMP runtimes that start after this import).
"""

from __future__ import annotations

import os

import numba

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FASTMATH = {"reassoc", "contract"}
JIT = dict(cache=True, fastmath=FASTMATH, error_model="numpy")

# Work (about one vectorised multiply-add per unit) below which a kernel runs serially.
SERIAL_WORK = 1 << 18


def parallel_chunks(work: int, rows: int, per_thread: int = 2) -> int:
    """0 when the kernel should run serially; else the number of row chunks to hand out
    (a few per thread, so rows of unequal cost still balance)."""
    threads = numba.get_num_threads()
    if work < SERIAL_WORK or threads == 1 or rows < 2:
        return 0
    return min(rows, per_thread * threads)
