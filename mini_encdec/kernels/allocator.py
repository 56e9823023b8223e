"""Keep freed memory for the next step: how the numba backend sets glibc's allocator.

Why. A training step allocates the same big arrays every time (the logits of a `small`
batch are (1024, 8192) float32 = 32 MiB; activations and gradients of a few MiB each)
and frees them at the end. glibc's malloc hands blocks above its mmap threshold (128 KiB
at first, raised automatically up to 32 MiB) to the kernel with mmap and gives them back
with munmap when freed, and it trims the top of its heap whenever more than the trim
threshold is free there. Either way the next step's arrays land on fresh pages, and the
kernel zero-fills every 4 KiB page on its first touch (a page fault each): CPU time that
is neither arithmetic nor memory traffic. Keeping the memory makes a training step
faster and halves the system CPU time (the numbers: MEASUREMENTS.md beside this file).

What is set (glibc only, once, when the process opted in with
`mini_encdec.ops.tune_process()`, as the command line does, and the kernels are
imported, i.e. the numba backend is used; a library user's process is left alone):
- M_MMAP_THRESHOLD = 1 GiB: arrays below 1 GiB come from malloc's heap, not from mmap;
- M_TRIM_THRESHOLD = 2 GiB: freed memory stays in the heap for reuse instead of being
  returned to the kernel at once.
The cost: the process keeps the memory of its largest step after the step (its peak
resident set stays where it was; it does not grow step after step, since freed blocks
are reused). Memory is returned when the process ends.

How to override: MINI_ENCDEC_MALLOC=system leaves glibc's defaults alone (`keep`, the
default, applies the settings). Setting any of glibc's own variables
(MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, GLIBC_TUNABLES) also
leaves the allocator to them. Without glibc (macOS, Windows, musl) nothing is set.
`describe()` says what is in force (the benchmark prints it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "MINI_ENCDEC_MALLOC"
CHOICES = ("keep", "system")
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
             "GLIBC_TUNABLES")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 1 << 31

_state = {"setting": None, "applied": False, "reason": "not yet applied"}


def _setting(environ) -> str:
    value = environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={environ.get(ENV)!r}: expected one of {', '.join(CHOICES)}")
    return value


def _glibc():
    """The C library if it is glibc (it has mallopt and gnu_get_libc_version), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def apply(environ=None) -> dict:
    """Apply the setting (see the module docstring); the first call of the process
    decides, later calls only return describe()."""
    if _state["setting"] is not None:
        return describe()
    env = os.environ if environ is None else environ
    setting = _setting(env)
    _state["setting"] = setting
    own = [k for k in GLIBC_ENV if k in env]
    libc = None if setting == "system" or own else _glibc()
    if setting == "system":
        _state["reason"] = f"{ENV}=system: glibc's defaults"
    elif own:
        _state["reason"] = f"{', '.join(own)} set: left to glibc"
    elif libc is None:
        _state["reason"] = "not glibc: nothing set"
    elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and \
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _state.update(applied=True, reason="freed memory kept for reuse (M_MMAP_THRESHOLD "
                                           "1 GiB, M_TRIM_THRESHOLD 2 GiB)")
    else:
        _state["reason"] = "mallopt refused the settings: glibc's defaults"
    return describe()


def describe() -> dict:
    """What is in force: {"setting", "applied", "reason"}."""
    return dict(_state)
