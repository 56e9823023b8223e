"""The bench's start-up measurement, run in a fresh process (bench.py starts it twice: with
an empty Numba compile cache, then with the cache on disk):

    python -c "from mini_encdec.experiments.bench_startup import worker_main; worker_main()" '{}'

It imports mini_encdec's models and the numba kernels, builds tiny (decoder-only) and runs
one numba training step on a random batch (B=2, T=16), and prints the seconds that took
after "@@RESULT@@" (the parent times the whole process). The imports of the models and
kernels are inside `worker_main`, after its clock starts, because they are what it
measures; for the same reason it has a module of its own, apart from bench_workers.py,
whose imports would be done before any clock started.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from ..config import preset


def worker_main(argv=None) -> None:
    t0 = time.perf_counter()
    from ..backend import set_backend
    from ..models import build_model  # timed: part of a program's start-up
    set_backend("numba")  # imports the kernels (Numba) and compiles or loads them
    model = build_model(preset("tiny"), seed=0)
    ids = np.random.default_rng(1).integers(3, model.config.vocab_size, (2, 17))  # (B, T + 1)
    model.loss_and_grads({"input_ids": ids[:, :-1], "labels": ids[:, 1:].copy()})
    sys.stdout.write("\n@@RESULT@@" + json.dumps({"in_process": time.perf_counter() - t0}) + "\n")
