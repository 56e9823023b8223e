"""A growable array that is appended to along one axis in place: the KV cache's storage.

    buf = WindowBuffer(axis=2, keep=None)   # keep every entry (global attention layers)
    buf = WindowBuffer(axis=2, keep=W - 1)  # keep only the last W - 1 (sliding window)
    buf.append(new)                         # new (..., Tn, ...) along `axis`
    buf.claim(n, like)                      # room for n new entries, written by the caller
    buf.view()                              # the kept entries, (..., Tc, ...), a view
    buf.reserve(n, like)                    # room for n entries now: no growing later

np.concatenate copies everything already stored on every append (O(context) per token);
here the entries live in a preallocated array whose capacity doubles when full, so an
append copies only the new entries (amortised O(Tn)); `reserve` allocates at once what a
request of known length needs, so its appends never grow the array. With `keep`, the kept entries are
the last `keep` ones: [start, end) of the array; when the array's end is reached they are
moved back to its front (every capacity - keep appended entries, O(keep) each time).

`append` returns a view of the entries kept before it plus the new ones: the keys a new
query may need, read in place (no copy). A view stays valid until the next append (it may
move the entries).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

MIN_CAPACITY = 64  # entries allocated at the first append (at least)


class WindowBuffer:
    """Entries along `axis`, appended in place; only the last `keep` kept (None: all)."""

    def __init__(self, axis: int, keep: Optional[int] = None, initial=None):
        self.axis, self.keep = axis, keep
        self.buf: Optional[np.ndarray] = None
        self.start = self.end = 0  # the kept entries are buf[start:end] along axis
        if initial is not None:
            self.append(initial)

    def _slice(self, a: int, b: int) -> tuple:
        return (slice(None),) * self.axis + (slice(a, b),)

    def view(self) -> Optional[np.ndarray]:
        """The kept entries (a view into the buffer), or None before the first append."""
        return None if self.buf is None else self.buf[self._slice(self.start, self.end)]

    def append(self, new: np.ndarray) -> np.ndarray:
        """Add `new` along the axis; returns the view [entries kept before ; new]."""
        n = new.shape[self.axis]
        buf, lo, hi = self.claim(n, new)
        buf[self._slice(hi - n, hi)] = new
        return buf[self._slice(lo, hi)]

    def claim(self, n: int, like: np.ndarray) -> tuple:
        """Room for n new entries, for the caller to write: (buf, lo, hi) with the new
        entries at buf[hi - n:hi] along the axis (unwritten) and the view append returns
        at buf[lo:hi]. like: an array with the entries' shape and dtype (used only when
        nothing is allocated yet). Valid until the next claim (it may move the entries)."""
        before = self.end - self.start
        if self.buf is None:
            shape = list(like.shape)
            shape[self.axis] = max(MIN_CAPACITY, 2 * n)
            self.buf = np.empty(shape, dtype=like.dtype)
        capacity = self.buf.shape[self.axis]
        if self.end + n > capacity:  # full: move the kept entries to the front, maybe grow
            live = self.end - self.start
            kept = self.buf[self._slice(self.start, self.end)]
            if live + n > capacity // 2:  # keep at least half the capacity free: grow
                shape = list(self.buf.shape)
                shape[self.axis] = max(2 * capacity, 2 * (live + n))
                buf = np.empty(shape, dtype=self.buf.dtype)
            else:
                buf, kept = self.buf, kept.copy()  # the ranges may overlap
            buf[self._slice(0, live)] = kept
            self.buf, self.start, self.end = buf, 0, live
        self.end += n
        lo = self.end - before - n
        if self.keep is not None:
            self.start = max(self.start, self.end - self.keep)
        return self.buf, lo, self.end

    def reserve(self, n: int, like: np.ndarray) -> None:
        """Room for n entries (the kept ones included) from now on, allocated now, the kept
        entries moved to the front; like: an array with the entries' shape and dtype (its
        size along the axis does not matter). Appends beyond n still grow the array."""
        live = self.end - self.start
        shape = list(like.shape)
        shape[self.axis] = max(n, live)
        buf = np.empty(shape, dtype=like.dtype)
        if live:
            buf[self._slice(0, live)] = self.view()
        self.buf, self.start, self.end = buf, 0, live

    def take_rows(self, rows: np.ndarray) -> None:
        """Keep rows `rows` of axis 0 (the batch), in that order (a compact copy)."""
        if self.buf is not None:
            kept = self.view()[rows]
            self.buf, self.start, self.end = None, 0, 0
            self.append(kept)
