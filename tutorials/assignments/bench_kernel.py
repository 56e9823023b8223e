"""Assignment 7.1's benchmark: how fast is your Numba RMSNorm, against NumPy?

    python tutorials/assignments/bench_kernel.py            # from the repository root
    python tutorials/assignments/bench_kernel.py --threads 1

Times, per shape (N rows, D features), the NumPy reference (mini_encdec/nn/rmsnorm.py),
the kernel's serial loop (_forward_rows / _backward_rows over every row) and its prange
version (_forward_parallel / _backward_parallel), forward and backward, as the median of
several runs after a warm-up call (the first call compiles), and prints the speed-ups.
Speed is not graded (tests/test_kernel_task.py grades the results); this shows whether
the kernel is worth it, and from which size the threads pay for themselves (waking them
costs microseconds: mini_encdec/kernels/_runtime.py, SERIAL_WORK).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's mini_encdec

from mini_encdec.kernels import rmsnorm as kernel  # noqa: E402
from mini_encdec.nn import rmsnorm as reference  # noqa: E402

SHAPES = [(64, 64), (512, 256), (4096, 512), (16384, 1024)]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compiles on the first call)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def with_chunks(chunks: int, fn, *args):
    """fn(*args) with the kernel's work cut into `chunks` parallel chunks (0: serial)."""
    saved = kernel.parallel_chunks
    kernel.parallel_chunks = lambda work, rows, per_thread=2: min(chunks, rows)
    try:
        return fn(*args)
    finally:
        kernel.parallel_chunks = saved


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    import numba
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    chunks = 2 * threads
    print(f"RMSNorm, {args.dtype}, {threads} Numba thread(s), {chunks} chunks in parallel; "
          f"median of {args.repeats} runs, milliseconds")
    print(f"{'N x D':>12} | {'numpy fwd':>9} {'serial':>7} {'prange':>7} {'speed-up':>8} | "
          f"{'numpy bwd':>9} {'serial':>7} {'prange':>7} {'speed-up':>8}")
    rng = np.random.default_rng(0)
    for N, D in SHAPES:
        x = rng.standard_normal((N, D)).astype(args.dtype)
        w = rng.standard_normal(D).astype(args.dtype)
        dy = rng.standard_normal((N, D)).astype(args.dtype)
        _, c_ref = reference.rmsnorm_forward(x, w)
        _, c_k = kernel.rmsnorm_forward(x, w)
        fwd = [median_time(lambda: reference.rmsnorm_forward(x, w), args.repeats)]
        bwd = [median_time(lambda: reference.rmsnorm_backward(dy, c_ref), args.repeats)]
        for n in (0, chunks):
            fwd.append(median_time(lambda: with_chunks(n, kernel.rmsnorm_forward, x, w),
                                   args.repeats))
            bwd.append(median_time(lambda: with_chunks(n, kernel.rmsnorm_backward, dy, c_k),
                                   args.repeats))
        ms = [1e3 * t for t in fwd + bwd]
        print(f"{N:>5} x {D:<4} | {ms[0]:9.3f} {ms[1]:7.3f} {ms[2]:7.3f} "
              f"{fwd[0] / min(fwd[1:]):7.1f}x | {ms[3]:9.3f} {ms[4]:7.3f} {ms[5]:7.3f} "
              f"{bwd[0] / min(bwd[1:]):7.1f}x")
    print("speed-up: NumPy's time over the faster of the kernel's serial and prange times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
