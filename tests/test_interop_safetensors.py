"""safetensors_io: our tensor-by-tensor reader/writer, bfloat16 conversion, bad files."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mini_encdec.storage.safetensors_io import (SafetensorsError, SafetensorsFile, SafetensorsWriter,
                                        bf16_to_f32, dtype_code, f32_to_bf16, save_tensors)

finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def test_bf16_literal_bit_patterns():
    x = np.array([1.0, -2.0, 0.0, np.inf, -np.inf,
                  1 + 2 ** -8,       # exactly half-way between 1 and 1 + 2^-7: even is 1
                  1 + 3 * 2 ** -8,   # half-way between 1 + 2^-7 and 1 + 2^-6: even is the latter
                  1 + 2 ** -8 + 2 ** -20,  # just above half-way: rounds up
                  3.4e38],           # above bf16's largest finite value: rounds to inf
                 dtype=np.float32)
    bits = f32_to_bf16(x)
    assert [hex(b) for b in bits] == ["0x3f80", "0xc000", "0x0", "0x7f80", "0xff80",
                                      "0x3f80", "0x3f82", "0x3f81", "0x7f80"]
    nan = f32_to_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(bf16_to_f32(nan)).all()


@given(arrays(np.float32, st.integers(1, 50), elements=finite_f32))
def test_bf16_rounds_to_nearest(x):
    r = bf16_to_f32(f32_to_bf16(x)).astype(np.float64)
    assert np.array_equal(bf16_to_f32(f32_to_bf16(r.astype(np.float32))), r)  # idempotent
    finite = np.isfinite(r)
    # nearest: the error is at most half a bf16 ulp (8 significant bits; subnormals below
    # 2^-126 share the smallest normal ulp)
    ulp = np.exp2(np.floor(np.log2(np.maximum(np.abs(x[finite]), 2.0 ** -126))) - 7)
    assert (np.abs(r[finite] - x[finite]) <= ulp / 2 + 1e-45).all()


@given(st.sampled_from(["F32", "F16", "BF16", "F64"]),
       st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5)), min_size=1, max_size=4))
def test_write_read_roundtrip(code, shapes):
    import tempfile
    rng = np.random.default_rng(0)
    tensors = {f"t{i}.weight": rng.standard_normal(s).astype(np.float32)
               for i, s in enumerate(shapes)}
    with tempfile.TemporaryDirectory() as d:
        path = save_tensors(f"{d}/x.safetensors", tensors, dtype=code, metadata={"a": "b"})
        f = SafetensorsFile(path)
        assert f.keys() == list(tensors) and f.metadata == {"a": "b"}
        for k, v in tensors.items():
            got = f.read(k)
            assert got.dtype == np.float32 and got.shape == v.shape and f.dtype(k) == code
            if code in ("F32", "F64"):
                np.testing.assert_array_equal(got, v)
            else:
                rel = 2 ** -8 if code == "BF16" else 2 ** -11
                np.testing.assert_allclose(got, v, rtol=rel, atol=1e-6)
            chunks = b"".join(bytes(c) for c in f.iter_bytes(k, chunk_bytes=7))
            assert chunks == f.read_raw(k).tobytes()


def test_reference_library_reads_our_files_and_we_read_its(tmp_path):
    from safetensors.numpy import load_file, save_file
    rng = np.random.default_rng(1)
    t = {"a": rng.standard_normal((3, 4)).astype(np.float32),
         "b": rng.standard_normal(5).astype(np.float16), "c": np.arange(6, dtype=np.int64)}
    save_file(t, tmp_path / "ref.safetensors")
    f = SafetensorsFile(tmp_path / "ref.safetensors")
    for k, v in t.items():
        np.testing.assert_array_equal(f.read_raw(k), v)
    save_tensors(tmp_path / "ours.safetensors", {"a": t["a"]}, dtype="F32")
    np.testing.assert_array_equal(load_file(tmp_path / "ours.safetensors")["a"], t["a"])
    raw = (tmp_path / "ours.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and json.loads(raw[8:8 + n])["a"]["data_offsets"] == [0, 48]


def test_writer_streams_bytes_in_declared_order(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    w = SafetensorsWriter(tmp_path / "s.safetensors", [("x", "F32", (3, 4)), ("y", "F32", (2,))])
    with pytest.raises(ValueError, match="expected tensor 'x' next"):
        w.write("y", np.zeros(2, np.float32))
    data = x.tobytes()
    w.write_bytes("x", data[:10])
    w.write_bytes("x", data[10:])
    with pytest.raises(ValueError, match="never written"):
        w.close()  # y missing: the file is not created
    assert not (tmp_path / "s.safetensors").exists()
    assert not list(tmp_path.iterdir())  # and no temporary left behind


def test_bad_files_raise_clear_errors(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": np.ones((4, 4), np.float32)})
    data = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-8])
    with pytest.raises(SafetensorsError, match="truncated or corrupt"):
        SafetensorsFile(tmp_path / "trunc.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="too short"):
        SafetensorsFile(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 8)
    with pytest.raises(SafetensorsError, match="unreadable header"):
        SafetensorsFile(tmp_path / "junk.safetensors")
    with pytest.raises(SafetensorsError, match="no tensor named 'b'"):
        SafetensorsFile(p).read("b")
    with pytest.raises(SafetensorsError, match="no such file"):
        SafetensorsFile(tmp_path / "missing.safetensors")


def test_dtype_names():
    assert dtype_code("bfloat16") == "BF16" and dtype_code("torch.float16") == "F16"
    assert dtype_code(np.float32) == "F32" and dtype_code("bf16") == "BF16"
    with pytest.raises(ValueError, match="expected one of float32"):
        dtype_code("int8")
