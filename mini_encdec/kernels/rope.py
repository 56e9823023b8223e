"""Numba twin of rotary position embedding (`mini_encdec.nn.rope.rope_*`), rotate-half:
`y = x * cos + rotate_half(x) * sin`, rotate_half([x1, x2]) = [-x2, x1].

Per pair i < h = Dh/2 of a row, with c = cos[t, i] (= cos[t, i + h]) and s likewise:
    forward   y[i] = x[i] c - x[i+h] s        y[i+h] = x[i+h] c + x[i] s
    backward  dx[i] = dy[i] c + dy[i+h] s     dx[i+h] = dy[i+h] c - dy[i] s
(the backward is the transposed rotation: rotate_half^T([a1, a2]) = [a2, -a1]).

Checklist
- Fused: one pass reads x (or dy) and the tables once and writes the result; NumPy makes
  five passes (two products, a negated half, a concatenation, a sum) and four
  temporaries of the size of x.
- Layouts: x comes as split_heads' view (B, N, T, Dh) of a (B, T, N*Dh) projection and is
  read through its strides, not copied. The forward writes y C-contiguous (B, N, T, Dh),
  the layout the attention core reads. The backward writes dx into a (B, T, N, Dh)
  array and returns its (B, N, T, Dh) view, so the merge_heads that follows is a free
  reshape instead of a copy (same values as the reference; only the strides differ).
- Parallel: rows (b, n, t) in chunks (prange); every row is independent.
- Memory: the output only; the cache keeps references to the tables.
- dtypes: float32 and float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..nn.rope import check_rope_table
from ..nn.rope import rope_backward as _reference_backward
from ..validate import check_float, check_shape
from ._runtime import JIT, parallel_chunks, same_float_arrays


@njit(**JIT)
def _rotate_rows(r0, r1, x, cos, sin, out, sign):
    """Rows r = (b*N + n)*T + t in [r0, r1): out[b, n, t] = rotation of x[b, n, t] by the
    angle at (b, t) (sign +1: forward; -1: the transposed rotation, the backward).
    cos, sin (Bc, T, Dh) with Bc = 1 (shared by the batch) or B."""
    B, N, T, Dh = x.shape
    h = Dh // 2
    for r in range(r0, r1):
        t = r % T
        n = (r // T) % N
        b = r // (T * N)
        bc = b if cos.shape[0] > 1 else 0
        for i in range(h):
            c, s = cos[bc, t, i], sin[bc, t, i] * sign
            a, z = x[b, n, t, i], x[b, n, t, i + h]
            out[b, n, t, i] = a * c - z * s
            out[b, n, t, i + h] = z * c + a * s


@njit(parallel=True, **JIT)
def _rotate_parallel(nchunks, x, cos, sin, out, sign):
    R = x.shape[0] * x.shape[1] * x.shape[2]
    for c in prange(nchunks):
        _rotate_rows((c * R) // nchunks, ((c + 1) * R) // nchunks, x, cos, sin, out, sign)


def _table3(c):
    """A table (T, Dh) or (B, 1, T, Dh) as (1|B, T, Dh)."""
    return c[None] if c.ndim == 2 else c[:, 0]


def _rotate(x, cos, sin, out, sign):
    """out = the rotation of x (B, N, T, Dh) (see _rotate_rows); returns out."""
    B, N, T, _ = x.shape
    nchunks = parallel_chunks(x.size, B * N * T)
    args = (x, _table3(cos), _table3(sin), out, x.dtype.type(sign))
    if nchunks:
        _rotate_parallel(nchunks, *args)
    else:
        _rotate_rows(0, B * N * T, *args)
    return out


def rope_forward(x, cos, sin):
    """Twin of nn.rope.rope_forward: y = x * cos + rotate_half(x) * sin -> (y, cache)."""
    fn = "rope_forward"
    fast = (same_float_arrays(x, cos, sin) and x.ndim == 4 and x.shape[-1] % 2 == 0
            and cos.shape == sin.shape
            and cos.shape in (x.shape[2:], (x.shape[0],) + x.shape[2:]))
    if fast:  # (T, Dh) or (B, T, Dh) -> (T, Dh) or (B, 1, T, Dh), as check_rope_table does
        c, s = (t if t.ndim == 2 else t[:, None] for t in (cos, sin))
    else:  # the reference's checks, in its order
        check_float(x, "x", ndim=4, fn=fn)
        if x.shape[-1] % 2:
            raise ValueError(f"{fn}: argument 'x': expected an even head size (last axis), "
                             f"got shape {x.shape}")
        c, s = check_rope_table(x, cos, "cos", fn), check_rope_table(x, sin, "sin", fn)
    y = _rotate(x, c, s, np.empty(x.shape, dtype=x.dtype), 1)  # (B, N, T, Dh)
    return y, {"cos": c, "sin": s, "shape": x.shape}


def rope_backward(dy, cache):
    """Twin of nn.rope.rope_backward: dx = dy * cos + rotate_half^T(dy * sin)."""
    check_float(dy, "dy", fn="rope_backward")
    check_shape(dy, "dy", cache["shape"], fn="rope_backward")
    if dy.dtype != cache["cos"].dtype:  # mixed precision: the reference's promotion
        return _reference_backward(dy, cache)
    B, N, T, Dh = cache["shape"]
    dx = np.empty((B, T, N, Dh), dtype=dy.dtype).transpose(0, 2, 1, 3)  # (B, N, T, Dh) view
    return _rotate(dy, cache["cos"], cache["sin"], dx, -1)
