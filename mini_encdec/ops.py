"""The one dispatch point for the hot ops: name -> (NumPy reference, Numba twin).

The models and the optimizer call the hot functions through this module, e.g.
`ops.attention_core_forward(q, k, v, mask, scale=..., softcap=...)` or
`ops.resolve("adamw_update")`; nothing else dispatches. With the numpy backend every name
runs the reference in `mini_encdec.nn` (what students read, edit and are graded on); with
the numba backend (the default, see `backend.py`) it runs the twin of the same name in
`mini_encdec.kernels`, which has the reference's exact signature and results.

The table is static and complete: every op has both halves. If the kernels cannot be
imported (Numba missing, a renamed helper), the numba backend fails loudly with the
reason and how to select the numpy backend; it never falls back to NumPy on its own.
A forward and its backward must run under the same backend (the cache formats differ),
which holds because the backend is fixed for a run.
"""

from __future__ import annotations

import contextlib
import importlib

from .backend import get_backend
from .nn import adamw, attention, embedding, linear, loss, mlp, rmsnorm, rope

# op name -> the NumPy reference; the twin is `mini_encdec.kernels.<op name>`.
REFERENCE = {
    "linear_forward": linear.linear_forward,
    "attention_core_forward": attention.attention_core_forward,
    "attention_core_backward": attention.attention_core_backward,
    "rope_forward": rope.rope_forward,
    "rope_backward": rope.rope_backward,
    "rmsnorm_forward": rmsnorm.rmsnorm_forward,
    "rmsnorm_backward": rmsnorm.rmsnorm_backward,
    "geglu_act_forward": mlp.geglu_act_forward,
    "geglu_act_backward": mlp.geglu_act_backward,
    "softcap_cross_entropy_forward": loss.softcap_cross_entropy_forward,
    "softcap_cross_entropy_backward": loss.softcap_cross_entropy_backward,
    "embedding_backward": embedding.embedding_backward,
    "adamw_update": adamw.adamw_update,
}


class KernelImportError(ImportError):
    """The numba backend is selected but its kernels cannot be imported."""


_twins: dict = {}  # filled by the first successful twins() call


def twins() -> dict:
    """name -> Numba twin, for every op in REFERENCE (imports `mini_encdec.kernels`)."""
    if _twins:
        return _twins
    try:
        kernels = importlib.import_module("mini_encdec.kernels")
    except ImportError as e:
        raise KernelImportError(
            f"the numba backend needs mini_encdec.kernels, which failed to import ({e}); "
            f"install numba (requirements.txt) or select the NumPy reference with "
            f"MINI_ENCDEC_BACKEND=numpy") from e
    missing = [name for name in REFERENCE if not callable(getattr(kernels, name, None))]
    if missing:
        raise KernelImportError(f"mini_encdec.kernels has no twin for {missing}; every op in "
                                f"ops.REFERENCE needs one (or run with MINI_ENCDEC_BACKEND=numpy)")
    _twins.update((name, getattr(kernels, name)) for name in REFERENCE)
    return _twins


def resolve(name: str, backend: str | None = None):
    """The function implementing op `name` under `backend` (default: the current one)."""
    if name not in REFERENCE:
        raise ValueError(f"ops.resolve: unknown op {name!r}; known: {sorted(REFERENCE)}")
    backend = backend or get_backend()
    if backend == "numpy":
        return REFERENCE[name]
    return twins()[name]


SERIAL_ROWS = 4  # a decoding step with fewer rows than this may run on one thread...
SERIAL_BYTES = 16 << 20  # ...when the weights it reads are fewer bytes than this


def serial(rows: int = 1, weight_bytes: int = 0):
    """A context manager for a decoding step of `rows` rows that reads `weight_bytes` of
    weights, under the numba backend. A small step (fewer than SERIAL_ROWS rows, weights
    that stay in the CPU's cache) runs single-threaded (kernels/threads.py: BLAS and Numba
    at one thread; too little work to split, and on a busy machine a second thread would
    make every matmul wait for it). Otherwise the thread policy re-measures the load first
    (the step's small kernels would not) and the step uses the threads it allows: more
    rows are more arithmetic, and weights that do not fit in the cache stream from memory,
    where a second thread adds bandwidth (measured: the `small` decoder's 25 MB per step,
    batch 1, 277-322 tokens/s on one thread, 393-480 on two). A no-op under numpy."""
    if get_backend() == "numba":
        twins()  # the kernels (and their thread policy) are importable, or a loud error
        threads = importlib.import_module("mini_encdec.kernels.threads")
        if rows < SERIAL_ROWS and weight_bytes < SERIAL_BYTES:
            return threads.serial()
        threads.current()
    return contextlib.nullcontext()


def __getattr__(name: str):
    if name in REFERENCE:
        return lambda *a, **k: resolve(name)(*a, **k)
    raise AttributeError(name)
