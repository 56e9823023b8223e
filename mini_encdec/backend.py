"""The one switch that picks the compute backend for a whole run.

`numpy` is the readable reference (`mini_encdec.nn`); `numba` runs the jitted twins in
`mini_encdec.kernels` for the hot ops, falling back to NumPy for anything not twinned.
Select with the environment variable MINI_ENCDEC_BACKEND or `set_backend(name)`;
`use_backend(name)` is a context manager for tests. Default: numba.
"""

from __future__ import annotations

import contextlib
import os

BACKENDS = ("numpy", "numba")
_ENV = "MINI_ENCDEC_BACKEND"


def _from_env() -> str:
    name = os.environ.get(_ENV, "numba").strip().lower() or "numba"
    if name not in BACKENDS:
        raise ValueError(f"{_ENV}: expected one of {BACKENDS}, got {name!r}")
    return name


_current = _from_env()


def get_backend() -> str:
    """The backend in force: "numpy" or "numba"."""
    return _current


def set_backend(name: str) -> None:
    """Select the backend for everything that runs after this call."""
    global _current
    if name not in BACKENDS:
        raise ValueError(f"set_backend: expected one of {BACKENDS}, got {name!r}")
    _current = name


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block with another backend, restoring the previous one afterwards."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
