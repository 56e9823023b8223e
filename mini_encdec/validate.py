"""Input checks shared by every public function, config class and command.

Each check raises `ValueError` naming the argument (or config field), what was expected
and what was given, so bad input never surfaces as a NaN or a broadcasting error from deep
inside NumPy:

    arrays     check_array, check_float, check_shape, check_ids, check_mask, ...
    scalars    check_int, check_number, check_bool, check_choice (config fields and
               arguments; the command line's argument types build on them too)
    dicts      check_known_fields (a config's from_dict), with "did you mean"

This module imports nothing from the package but `usage` (did_you_mean).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from .usage import did_you_mean

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
    return check_number(value, _where(fn, name), low=0, low_open=True, allow_none=allow_none,
                        numpy=True)


def check_positive_int(value, name: str, *, fn: str = "", allow_none: bool = False):
    """An integer >= 1 (or None when allow_none); returns it as int (or None)."""
    return check_int(value, _where(fn, name), low=1, allow_none=allow_none, numpy=True)


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


# --- scalars and config fields: one wording for every config class and command -----------
# A message starts with a label: "GemmaConfig.head_dim" for a config field, argument(fn,
# name) for a function argument, "" when the caller adds its own (argparse does).

def argument(fn: str, name: str) -> str:
    """The label of argument `name` of function `fn`: "fn: argument 'name'"."""
    return _where(fn, name)


def invalid(label: str, expected: str, actual, hint: str = "") -> ValueError:
    """The error for a bad value, "<label>: expected <expected>, got <actual!r><hint>";
    raise it: `raise invalid("GemmaConfig.head_dim", "an even number", 31)`."""
    head = f"{label}: " if label else ""
    return ValueError(f"{head}expected {expected}, got {actual!r}{hint}")


def _bound(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_int(low: Optional[int] = None, high: Optional[int] = None) -> str:
    """"an integer >= 1", "an integer in [0, 9]", ...: what check_int expects."""
    if low is not None and high is not None:
        return f"an integer in [{low}, {high}]"
    if low is not None:
        return f"an integer >= {low}"
    return "an integer" if high is None else f"an integer <= {high}"


def describe_number(low=None, high=None, *, low_open: bool = False,
                    high_open: bool = False) -> str:
    """"a positive number", "a number in [0, 1)", ...: what check_number expects."""
    if high is None:
        if low is None:
            return "a number"
        if low == 0 and low_open:
            return "a positive number"
        return f"a number {'>' if low_open else '>='} {_bound(low)}"
    if low is None:
        return f"a number {'<' if high_open else '<='} {_bound(high)}"
    return (f"a number in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}"
            f"{')' if high_open else ']'}")


def check_int(value, label: str, *, low: Optional[int] = None, high: Optional[int] = None,
              allow_none: bool = False, numpy: bool = False) -> Optional[int]:
    """An integer (not bool) in [low, high] (bounds optional), or None when allow_none;
    returned as int (or None). A Python int; numpy=True also accepts NumPy integers (for
    function arguments; a config field is a plain Python value, it goes to JSON)."""
    if value is None and allow_none:
        return None
    kinds = (int, np.integer) if numpy else int
    ok = isinstance(value, kinds) and not isinstance(value, (bool, np.bool_)) \
        and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        raise invalid(label, describe_int(low, high) + (" or None" if allow_none else ""),
                      value)
    return int(value)


def check_number(value, label: str, *, low=None, high=None, low_open: bool = False,
                 high_open: bool = False, allow_none: bool = False,
                 numpy: bool = False) -> Optional[float]:
    """A finite number (int or float, not bool) between low and high (each bound
    optional, closed unless low_open / high_open), or None when allow_none; returned as
    float (or None). numpy=True also accepts NumPy scalars, as check_int."""
    if value is None and allow_none:
        return None
    plain = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = (_is_number(value) if numpy else plain) and bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        want = describe_number(low, high, low_open=low_open, high_open=high_open)
        raise invalid(label, want + (" or None" if allow_none else ""), value)
    return float(value)


def check_bool(value, label: str) -> bool:
    """True or False (not 0/1)."""
    if not isinstance(value, (bool, np.bool_)):
        raise invalid(label, "True or False", value)
    return bool(value)


def check_choice(value, label: str, choices: Sequence):
    """One of `choices`, with "did you mean" for a near miss."""
    if value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise invalid(label, f"one of {tuple(choices)}", value, hint)
    return value


def check_known_fields(cls, d) -> dict:
    """A copy of `d` after checking that every key is a field of dataclass `cls` (the
    from_dict of every config class), with "did you mean" for a near miss."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a dict of fields, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config fields {unknown}"
                         f"{did_you_mean(str(unknown[0]), names)}")
    return dict(d)
