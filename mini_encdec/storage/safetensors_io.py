"""Reading and writing `.safetensors` files tensor by tensor, bfloat16 included.

Why our own reader: released Gemma checkpoints are bfloat16, which NumPy has no dtype for
(`safetensors.numpy` refuses them), and adapting a 2B model must stream one tensor at a
time instead of holding whole files in memory. The format is small enough to read by hand:

    bytes 0..8        N, the header length, unsigned 64-bit little-endian
    bytes 8..8+N      a JSON object: {name: {"dtype": "BF16", "shape": [..],
                      "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
                      (padded with spaces; we pad it to a multiple of 8 bytes)
    bytes 8+N..       the data buffer; each tensor is C-order little-endian bytes at
                      [begin, end) of the buffer; tensors tile the buffer with no gaps

bfloat16 is the top half of a float32: widening is a 16-bit shift, exact. Narrowing
float32 -> bfloat16 rounds to nearest, ties to even (as PyTorch does); NaN stays NaN.

    f = SafetensorsFile(path)             header only; tensors read on demand
    f.keys(), f.dtype(name), f.shape(name), f.metadata
    f.read(name)                          np.float32 for float tensors (bf16/f16 upcast)
    f.read_raw(name)                      the stored values (bf16 as uint16 bit patterns)
    f.iter_bytes(name, chunk)             the stored bytes, a chunk at a time (views of one
                                          reused buffer: constant memory)

    w = SafetensorsWriter(path, [(name, "BF16", shape), ...], metadata)   header written now
    w.write(name, array)                  in the declared order; floats converted
    w.write_bytes(name, chunk)            raw bytes, appended (streaming copies)
    w.close()                             checks every tensor was written in full

    save_tensors(path, {name: array}, dtype="F32")   one call for small dicts
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]

# dtype code -> little-endian NumPy storage dtype (BF16 is stored as its uint16 bits).
STORAGE = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
# the names `transformers` writes into config.json "dtype"
TORCH_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_MAX_HEADER = 100_000_000  # the limit the reference implementation enforces


def dtype_code(dtype) -> str:
    """"F32", "F16", "BF16" or "F64" from a code, a torch-style name or a NumPy dtype."""
    if isinstance(dtype, str):
        s = dtype.strip()
        if s.upper() in FLOAT_CODES:
            return s.upper()
        for code, name in TORCH_NAMES.items():
            if s.lower() in (name, "torch." + name):
                return code
    else:
        try:
            d = np.dtype(dtype)
        except TypeError:
            d = None
        for code in ("F64", "F32", "F16"):
            if d == STORAGE[code].newbyteorder("="):
                return code
    raise ValueError(f"dtype: expected one of float32, float16, bfloat16, float64 (or "
                     f"F32, F16, BF16, F64), got {dtype!r}")


# --- bfloat16 ------------------------------------------------------------------------------------

def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 values (exact): the bits become the high half."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values -> uint16 bfloat16 bit patterns, round to nearest even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    # adding 0x7FFF plus the lowest kept bit rounds half-way cases to the even neighbour;
    # overflow past the largest finite value correctly carries into the infinity pattern
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    out = ((u + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # the addition could carry a NaN's payload into the sign bit
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out


def to_storage(array: np.ndarray, code: str) -> np.ndarray:
    """`array` converted to the storage dtype of `code` (C-contiguous, little-endian)."""
    if code == "BF16":
        if array.dtype == np.uint16:  # already bit patterns
            return np.ascontiguousarray(array)
        return f32_to_bf16(np.asarray(array, dtype=np.float32))
    return np.ascontiguousarray(array, dtype=STORAGE[code])


def from_storage(raw: np.ndarray, code: str, dtype=np.float32) -> np.ndarray:
    """Stored values -> `dtype` (floats are widened exactly; bf16 via its bits)."""
    if code == "BF16":
        return bf16_to_f32(raw).astype(dtype, copy=False)
    return raw.astype(dtype, copy=False)


# --- reading -------------------------------------------------------------------------------------

class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file (or a tensor that is not in it)."""


class SafetensorsFile:
    """The header of one .safetensors file; tensors are read on demand, one at a time."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise SafetensorsError(f"{self.path}: no such file")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: too short to be a safetensors file "
                                       f"({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise SafetensorsError(f"{self.path}: header length {n} does not fit the "
                                       f"file ({size} bytes); truncated or not safetensors")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise SafetensorsError(f"{self.path}: unreadable header ({e})") from None
            except RecursionError:
                raise SafetensorsError(f"{self.path}: header JSON nested too deeply") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self._info = {}
        for name, info in header.items():
            try:
                code, shape = info["dtype"], tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError(f"{self.path}: bad header entry for {name!r}: "
                                       f"{info!r}") from None
            if code not in STORAGE:
                raise SafetensorsError(f"{self.path}: tensor {name!r} has dtype {code}, "
                                       f"expected one of {sorted(STORAGE)}")
            nbytes = int(np.prod(shape, dtype=np.int64)) * STORAGE[code].itemsize
            if end - begin != nbytes or begin < 0 or self.data_start + end > size:
                raise SafetensorsError(f"{self.path}: tensor {name!r} ({code}, {shape}) has "
                                       f"data_offsets [{begin}, {end}] that do not fit; the "
                                       f"file is truncated or corrupt")
            self._info[name] = (code, shape, self.data_start + begin, nbytes)

    def keys(self) -> list:
        return list(self._info)

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def _get(self, name: str):
        if name not in self._info:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        return self._info[name]

    def dtype(self, name: str) -> str:
        return self._get(name)[0]

    def shape(self, name: str) -> tuple:
        return self._get(name)[1]

    def nbytes(self, name: str) -> int:
        return self._get(name)[3]

    def read_raw(self, name: str) -> np.ndarray:
        """The stored values in their storage dtype (BF16: uint16 bits), shaped."""
        code, shape, offset, nbytes = self._get(name)
        buf = np.empty(nbytes, dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(buf))
        if got != nbytes:
            raise SafetensorsError(f"{self.path}: tensor {name!r} truncated ({got} of "
                                   f"{nbytes} bytes)")
        return buf.view(STORAGE[code]).reshape(shape)

    def read(self, name: str, dtype=np.float32) -> np.ndarray:
        """A float tensor widened to `dtype` (default float32); other dtypes as stored."""
        code = self.dtype(name)
        raw = self.read_raw(name)
        if code not in FLOAT_CODES:
            return raw
        return from_storage(raw, code, dtype)

    def iter_bytes(self, name: str, chunk_bytes: int = 64 << 20) -> Iterator[memoryview]:
        """The stored bytes of one tensor, `chunk_bytes` at a time (for streaming copies).

        Every chunk is a view of ONE reused buffer, valid until the next chunk is read:
        use it (write it, convert it) before advancing, or copy it with bytes(chunk).
        """
        _, _, offset, nbytes = self._get(name)
        buf = memoryview(bytearray(min(chunk_bytes, nbytes)))
        with open(self.path, "rb", buffering=0) as f:
            f.seek(offset)
            left = nbytes
            while left:
                view = buf[:min(len(buf), left)]
                got = 0
                while got < len(view):  # raw reads may return fewer bytes than asked
                    n = f.readinto(view[got:])
                    if not n:
                        raise SafetensorsError(f"{self.path}: tensor {name!r} truncated")
                    got += n
                left -= got
                yield view


# --- writing -------------------------------------------------------------------------------------

class SafetensorsWriter:
    """Write a .safetensors file tensor by tensor; the header is fixed up front.

    specs: [(name, dtype code, shape)] in the order the tensors will be written.
    The file is written under a temporary name and renamed into place by `close()`, so an
    interrupted run never leaves a file that looks complete.
    """

    def __init__(self, path: PathLike, specs: Sequence, metadata: Optional[dict] = None):
        self.path = Path(path)
        header, self._order, offset = {}, [], 0
        for name, code, shape in specs:
            if code not in STORAGE:
                raise ValueError(f"SafetensorsWriter: tensor {name!r}: expected a dtype code "
                                 f"in {sorted(STORAGE)}, got {code!r}")
            if name in header or name == "__metadata__":
                raise ValueError(f"SafetensorsWriter: duplicate tensor name {name!r}")
            shape = tuple(int(s) for s in shape)
            nbytes = int(np.prod(shape, dtype=np.int64)) * STORAGE[code].itemsize
            header[name] = {"dtype": code, "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, code, shape, nbytes))
            offset += nbytes
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(text)))
        self._f.write(text)
        self._index = 0      # the tensor being written
        self._written = 0    # its bytes written so far

    def _current(self, name: str):
        if self._index >= len(self._order):
            raise ValueError(f"SafetensorsWriter: {name!r} written after all declared tensors")
        cur = self._order[self._index]
        if cur[0] != name:
            raise ValueError(f"SafetensorsWriter: expected tensor {cur[0]!r} next (declared "
                             f"order), got {name!r}")
        return cur

    def write_bytes(self, name: str, chunk: bytes) -> None:
        """Append raw stored bytes of tensor `name` (may be called several times)."""
        _, _, _, nbytes = self._current(name)
        if self._written + len(chunk) > nbytes:
            raise ValueError(f"SafetensorsWriter: tensor {name!r}: more than its "
                             f"{nbytes} bytes")
        self._f.write(chunk)
        self._written += len(chunk)
        if self._written == nbytes:
            self._index, self._written = self._index + 1, 0

    def write(self, name: str, array: np.ndarray) -> None:
        """Write a whole tensor, converting floats to the declared dtype."""
        _, code, shape, _ = self._current(name)
        if tuple(array.shape) != shape:
            raise ValueError(f"SafetensorsWriter: tensor {name!r}: expected shape {shape}, "
                             f"got {tuple(array.shape)}")
        if self._written:
            raise ValueError(f"SafetensorsWriter: tensor {name!r} already partly written")
        data = to_storage(array, code)
        if data.nbytes == 0:
            self._index += 1
            return
        self.write_bytes(name, memoryview(data.reshape(-1)).cast("B"))

    def close(self) -> Path:
        if self._index != len(self._order):
            name = self._order[self._index][0]
            self.abort()
            raise ValueError(f"SafetensorsWriter: tensor {name!r} (and any after it) never "
                             f"written; {self.path} not created")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._f.closed:
            self._f.close()
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_tensors(path: PathLike, tensors: dict, dtype="F32",
                 metadata: Optional[dict] = None) -> Path:
    """Write a dict of float arrays as one file, every tensor converted to `dtype`."""
    code = dtype_code(dtype)
    specs = [(k, code, v.shape) for k, v in tensors.items()]
    with SafetensorsWriter(path, specs, metadata) as w:
        for k, v in tensors.items():
            w.write(k, v)
    return Path(path)
