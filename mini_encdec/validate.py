"""Input checks shared by every public function.

Each check raises `ValueError` naming the argument, what was expected and what was given,
so bad input never surfaces as a NaN or a broadcasting error from deep inside NumPy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def _where(fn: str, name: str) -> str:
    return f"{fn}: argument {name!r}" if fn else f"argument {name!r}"


def check_array(x, name: str, *, ndim: Optional[int] = None, fn: str = "") -> np.ndarray:
    """x must be a NumPy array (optionally of a given number of dimensions)."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{_where(fn, name)}: expected a numpy array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{_where(fn, name)}: expected {ndim} dimensions, got shape {x.shape}")
    return x


def check_float(x, name: str, *, ndim: Optional[int] = None, fn: str = "") -> np.ndarray:
    """x must be a float32 or float64 array."""
    check_array(x, name, ndim=ndim, fn=fn)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{_where(fn, name)}: expected dtype float32 or float64, got {x.dtype}")
    return x


def check_shape(x, name: str, shape: Sequence[Optional[int]], *, fn: str = "") -> np.ndarray:
    """x must have exactly `shape`; None entries match any size."""
    check_array(x, name, fn=fn)
    if x.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{_where(fn, name)}: expected shape {want}, got {x.shape}")
    return x


def check_same_dtype(fn: str, **arrays: np.ndarray) -> np.dtype:
    """All given float arrays share one dtype; returns it."""
    dtypes = {k: v.dtype for k, v in arrays.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in dtypes.items())
        raise ValueError(f"{fn}: expected one float dtype for all arguments, got {desc}")
    return next(iter(dtypes.values()))


def check_ids(ids, name: str, vocab_size: int, *, ndim: Optional[int] = None,
              fn: str = "", allow: Sequence[int] = ()) -> np.ndarray:
    """Integer token ids in [0, vocab_size) (plus any value listed in `allow`, e.g. -100)."""
    check_array(ids, name, ndim=ndim, fn=fn)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{_where(fn, name)}: expected an integer array, got dtype {ids.dtype}")
    if ids.size:
        bad = (ids < 0) | (ids >= vocab_size)
        for a in allow:
            bad &= ids != a
        if bad.any():
            v = int(ids[bad].flat[0])
            raise ValueError(f"{_where(fn, name)}: expected token ids in [0, {vocab_size}), "
                             f"got {v} at index {tuple(int(i) for i in np.argwhere(bad)[0])}")
    return ids


def check_mask(mask, name: str, shape: Sequence[Optional[int]], *, fn: str = "") -> np.ndarray:
    """A 0/1 or boolean mask of the given shape, returned as bool."""
    check_shape(mask, name, shape, fn=fn)
    if mask.dtype != np.bool_:
        if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
            raise ValueError(f"{_where(fn, name)}: expected a bool or 0/1 array, got dtype "
                             f"{mask.dtype}")
        if mask.size and not np.isin(mask, (0, 1)).all():
            v = mask[~np.isin(mask, (0, 1))].flat[0]
            raise ValueError(f"{_where(fn, name)}: expected only 0/1 values, got {v!r}")
        mask = mask.astype(bool)
    return mask


# --- added for nn/: scalars, optional floats, float pairs, broadcastable masks ------------

def _is_number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)))


def check_positive(value, name: str, *, fn: str = "", allow_none: bool = False):
    """A finite number > 0 (or None when allow_none); returns it as float (or None)."""
    if value is None and allow_none:
        return None
    if not _is_number(value) or not np.isfinite(value) or value <= 0:
        want = "a positive number or None" if allow_none else "a positive number"
        raise ValueError(f"{_where(fn, name)}: expected {want}, got {value!r}")
    return float(value)


def check_positive_int(value, name: str, *, fn: str = "", allow_none: bool = False):
    """An integer >= 1 (or None when allow_none); returns it as int (or None)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or value < 1:
        want = "an integer >= 1 or None" if allow_none else "an integer >= 1"
        raise ValueError(f"{_where(fn, name)}: expected {want}, got {value!r}")
    return int(value)


def check_int_array(x, name: str, *, ndims: Sequence[int] = (1, 2), fn: str = "") -> np.ndarray:
    """An integer array whose number of dimensions is one of `ndims` (e.g. positions)."""
    check_array(x, name, fn=fn)
    if x.ndim not in ndims:
        raise ValueError(f"{_where(fn, name)}: expected {' or '.join(map(str, ndims))} "
                         f"dimensions, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{_where(fn, name)}: expected an integer array, got dtype {x.dtype}")
    return x


def check_dtype(x: np.ndarray, name: str, dtype, *, fn: str = "") -> np.ndarray:
    """x must have exactly `dtype` (e.g. the dtype of the main input of an op)."""
    if x.dtype != np.dtype(dtype):
        raise ValueError(f"{_where(fn, name)}: expected dtype {np.dtype(dtype)}, got {x.dtype}")
    return x


def check_broadcast_mask(mask, name: str, shape: Sequence[int], *, fn: str = "") -> np.ndarray:
    """A bool/0-1 mask of the same rank as `shape` whose every axis is 1 or the full size
    (so it broadcasts to `shape`); returned as bool."""
    check_array(mask, name, fn=fn)
    ok = mask.ndim == len(shape) and all(a in (1, s) for a, s in zip(mask.shape, shape))
    if not ok:
        want = "(" + ", ".join(f"1|{s}" if s != 1 else "1" for s in shape) + ")"
        raise ValueError(f"{_where(fn, name)}: expected shape {want}, got {mask.shape}")
    return check_mask(mask, name, mask.shape, fn=fn)
