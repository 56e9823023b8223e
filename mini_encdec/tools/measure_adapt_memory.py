"""Measure the peak memory of `adapt` on a synthetic Gemma 2 2B-shaped checkpoint.

    python -m mini_encdec.tools.measure_adapt_memory [--dir /tmp/adapt_mem] [--dtype bfloat16]
                                                     [--keep]

1. Writes a Hugging Face Gemma 2 directory with the 2B shape (26 layers, D 2304, F 9216,
   8/4 heads, Dh 256, V 256,000) and random N(0, 0.02) weights, tensor by tensor and a
   chunk of rows at a time, sharded with a model.safetensors.index.json like the released
   checkpoint (about 5.2 GB in bfloat16).
2. Runs `adapt_command(src, None, out)` (balanced 2B-2B, streamed) in a fresh Python
   process and reports that process's peak resident memory (VmHWM), next to
   its resident memory right after the imports and the size of the output weights
   (about 11 GB in bfloat16).
3. Checks the output header (every key, shape and dtype) and compares a few tensors with
   their sources byte for byte, then deletes everything unless --keep.

A one-off measurement (a few minutes, ~16 GB of disk), not a test (tests run it with
--preset tiny). Measured on the 2-core development machine: README "Interop".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..config import preset
from ..storage.interop import CONFIG_FILE, INDEX_FILE, hf_config
from ..models.params import param_shapes
from ..storage.safetensors_io import (STORAGE, SafetensorsFile, SafetensorsWriter, dtype_code,
                              to_storage)

SHARD_BYTES = 2 << 30      # about the shard size of the released checkpoints
CHUNK_VALUES = 1 << 24     # values drawn per chunk while writing the synthetic model

_CHILD = r"""
import json, sys, time
import numpy as np
import mini_encdec.training.adapt as adapt_mod

def vm(field):  # kiB, from /proc/self/status (Linux)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

base = vm("VmRSS")
t0 = time.time()
adapt_mod.adapt_command(sys.argv[1], None, sys.argv[2], print_fn=None, progress=False,
                        dtype=sys.argv[3] if len(sys.argv) > 3 else None)
# VmHWM, the peak resident set of this process's own address space. (ru_maxrss is not
# used: Linux carries the parent's high-water mark across fork + exec into it.)
peak = vm("VmHWM")
print(json.dumps({"rss_after_imports_kib": base, "peak_rss_kib": peak,
                  "seconds": time.time() - t0}))
"""


def write_synthetic(path: Path, code: str, seed: int = 0, name: str = "2b") -> int:
    """The synthetic Gemma 2 directory of preset `name`; returns the bytes of weights."""
    cfg = preset(name)
    shapes = param_shapes(cfg)
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    item = STORAGE[code].itemsize
    shards, current, size = [], [], 0
    for k, shape in shapes.items():  # group tensors into ~SHARD_BYTES files
        n = int(np.prod(shape)) * item
        if current and size + n > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(k)
        size += n
    shards.append(current)
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        specs = [(k, code, shapes[k]) for k in keys]
        with SafetensorsWriter(path / name, specs, {"format": "pt"}) as w:
            for k in keys:
                shape = shapes[k]
                rows_per_chunk = max(1, CHUNK_VALUES // int(np.prod(shape[1:], dtype=np.int64)))
                for r in range(0, shape[0], rows_per_chunk):  # a block of rows at a time
                    rows = min(rows_per_chunk, shape[0] - r)
                    block = rng.standard_normal((rows,) + tuple(shape[1:]), dtype=np.float32)
                    block *= np.float32(0.02)
                    w.write_bytes(k, memoryview(to_storage(block, code).reshape(-1)).cast("B"))
                weight_map[k] = name
                total += int(np.prod(shape)) * item
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total},
                                               "weight_map": weight_map}, indent=1))
    (path / CONFIG_FILE).write_text(json.dumps(hf_config(cfg, code), indent=2))
    return total


def check_output(src: Path, out: Path, code: str, name: str = "2b") -> None:
    """Every key/shape/dtype of the output header, and some tensors (byte for byte when
    stored alike, else as values)."""
    from ..training.adapt import adaptation_mapping
    from ..config import EncDecConfig
    f = SafetensorsFile(out / "model.safetensors")
    config = EncDecConfig(encoder=preset(name), decoder=preset(name))
    shapes = param_shapes(config)
    if f.keys() != list(shapes):
        raise RuntimeError("output keys differ from the T5Gemma keys of the config")
    for k, s in shapes.items():
        if f.shape(k) != tuple(s) or f.dtype(k) != code:
            raise RuntimeError(f"{k}: stored {f.dtype(k)} {f.shape(k)}, expected {code} {s}")
    mapping = adaptation_mapping(src)
    index = json.loads((src / INDEX_FILE).read_text())["weight_map"]
    last = config.decoder.num_hidden_layers - 1
    for k in (f"model.decoder.layers.{last}.cross_attn.k_proj.weight",
              "model.encoder.layers.0.mlp.down_proj.weight", "model.decoder.norm.weight"):
        skey = mapping[k][2:]
        sf = SafetensorsFile(src / index[skey])
        if f.dtype(k) == sf.dtype(skey):
            if f.read_raw(k).tobytes() != sf.read_raw(skey).tobytes():
                raise RuntimeError(f"{k}: bytes differ from its source {skey}")
        else:
            tol = {"F32": 0, "F64": 0, "F16": 1e-3, "BF16": 8e-3}[code]
            np.testing.assert_allclose(f.read(k), sf.read(skey), rtol=tol, atol=1e-6)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/tmp/mini_encdec_adapt_memory", type=Path)
    p.add_argument("--dtype", default="bfloat16", help="bfloat16, float16 or float32")
    p.add_argument("--out-dtype", default=None,
                   help="stored dtype of the output (default: the source's, a byte copy; "
                        "another dtype converts one whole tensor at a time)")
    p.add_argument("--keep", action="store_true", help="keep the written directories")
    p.add_argument("--preset", default="2b", help="model shape (config preset), default 2b")
    args = p.parse_args(argv)
    code = dtype_code(args.dtype)
    src = args.dir / f"gemma2-{args.preset}-synthetic"
    out = args.dir / f"t5gemma-{args.preset}-{args.preset}"
    try:
        t0 = time.time()
        src_bytes = write_synthetic(src, code, name=args.preset)
        print(f"synthetic Gemma 2 {args.preset} ({args.dtype}): {src_bytes / 2**30:.2f} GiB in "
              f"{time.time() - t0:.0f} s -> {src}", flush=True)
        out_code = code if args.out_dtype is None else dtype_code(args.out_dtype)
        cmd = [sys.executable, "-c", _CHILD, str(src), str(out)]
        if args.out_dtype is not None:
            cmd.append(args.out_dtype)
        res = subprocess.run(cmd,
                             capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        out_bytes = (out / "model.safetensors").stat().st_size
        check_output(src, out, out_code, args.preset)
        print(f"adapt (balanced {args.preset}-{args.preset}, streamed) took "
              f"{m['seconds']:.0f} s; output weights "
              f"{out_bytes / 2**30:.2f} GiB ({out_code})")
        print(f"peak RSS of the adapt process: {m['peak_rss_kib'] / 2**20:.3f} GiB "
              f"(resident after imports: {m['rss_after_imports_kib'] / 2**20:.3f} GiB), i.e. "
              f"{m['peak_rss_kib'] * 1024 / out_bytes:.1%} of one copy of the output weights")
        print("output header and sampled tensors verified")
    finally:
        if not args.keep and args.dir.exists():
            shutil.rmtree(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
