"""Checkpoints: safetensors weights + JSON, written atomically, loaded with clear errors.

A model directory (what `adapt` writes, what `generate`/`evaluate` read):

    config.json              the model config (GemmaConfig or EncDecConfig .to_dict())
    model.safetensors        the parameters, Hugging Face keys (SPEC 5), weights [out, in]

A training checkpoint is a model directory plus the training state:

    <run>/checkpoints/step_000120/
        config.json, model.safetensors
        optimizer.safetensors    AdamW moments "m.<name>", "v.<name>"
        trainer_state.json       step, per-parameter update counts, RNG state, data
                                 position, metrics, run config, and the size and sha256
                                 of every other file (written last)

Atomicity. Every file is written to a temporary name, flushed, fsync'ed and renamed.
A checkpoint is assembled in a temporary directory `.tmp-step_000120-<pid>` next to the
others and renamed to `step_000120` in one `os.rename`, after which the parent directory
is fsync'ed; only then are older checkpoints beyond `keep` deleted. A process killed at
any moment leaves either the new complete directory or none, and the previous checkpoint
untouched. Leftover temporary directories are ignored by the loader and removed by the
next save. Replacing an existing directory of the same name (re-saving a step, or
`save_model` over an old model) renames the old one aside first, then the new one in.

Loading checks everything and raises `CheckpointError` (a ValueError) naming the file:
missing files, truncated or altered files (size and sha256 recorded at save time), files
safetensors cannot parse, parameters that do not fit the config.

When the latest checkpoint of a run is damaged, `newest_good_checkpoint` finds the newest
one that loads and `set_aside` renames the damaged ones to `step_NNNNNN.corrupt` (kept,
ignored by the loader): what `--resume --resume-from-good` does.

Commands write model directories through safe_output (a new directory renamed into place
as a whole) with `write_model_files`; `save_model` replaces a directory in place and is for
library use.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple, Optional, Union

import numpy as np

from ..config import config_from_dict
from .safe_output import fsync_dir

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")
FORMAT_VERSION = 1

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint or model file is missing, truncated, corrupt or does not match."""


# --- atomic file writing -------------------------------------------------------------------------

def _write_synced(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # write() and fsync() name no file: say which one
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one: write a
    temporary file in the same directory, fsync it, rename it over `path`, fsync the
    directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def atomic_write_json(path: PathLike, obj) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safetensors_bytes(arrays: dict, what: str) -> bytes:
    """The safetensors bytes of `arrays` (`what`, "model" or "optimizer", names the file
    in messages only). One metadata key: the safetensors library writes metadata in hash
    order, which changes between processes, so two keys would make the same weights give
    other bytes (and other sha256) in every run."""
    from safetensors.numpy import save
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata={"format": "np"})


# --- directory-level atomic writes ----------------------------------------------------------------

def _write_dir_atomically(target: Path, files: dict) -> None:
    """Create directory `target` holding `files` ({name: bytes}, written in order) in one
    rename. An existing `target` is renamed aside first and deleted afterwards."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_synced(tmp / name, data)
        fsync_dir(tmp)
    except OSError as e:  # the partial directory goes: a full disk stays usable for resume
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            need = sum(len(d) for d in files.values())
            free = shutil.disk_usage(parent).free
            raise OSError(errno.ENOSPC, f"No space left on device: writing {target.name} "
                          f"needs {need / 2**20:.1f} MB, {free / 2**20:.1f} MB are free",
                          str(parent)) from None
        raise
    old = None
    if target.exists():
        old = parent / f".old-{target.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(parent)
    if old is not None:  # what was there: a directory, or a file in the way
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def _model_files(config, params: dict) -> dict:
    return {MODEL_FILE: _safetensors_bytes(params, "model"),
            CONFIG_FILE: _json_bytes(config.to_dict())}


def save_model(directory: PathLike, config, params: dict) -> Path:
    """Write config.json + model.safetensors as one directory, atomically (an existing
    directory of that name is replaced; commands use safe_output and write_model_files)."""
    directory = Path(directory)
    _write_dir_atomically(directory, _model_files(config, params))
    return directory


def write_model_files(directory: PathLike, config, params: dict) -> Path:
    """Write config.json + model.safetensors into an existing, new directory (e.g. the
    temporary one of safe_output.new_output_dir, which is renamed into place as a whole)."""
    directory = Path(directory)
    for name, data in _model_files(config, params).items():
        _write_synced(directory / name, data)
    return directory


# --- training checkpoints -------------------------------------------------------------------------

def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(root: PathLike) -> list:
    """[(step, path)] of the complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def set_aside(path: PathLike, suffix: str = "corrupt") -> Path:
    """Rename checkpoint directory `path` to `<name>.<suffix>` (or `<name>.<suffix>-2`, ...)
    beside it, where the loader no longer sees it but nothing is lost; return the new
    path."""
    path = Path(path)
    for n in range(1, 1000):
        new = path.with_name(f"{path.name}.{suffix}" + (f"-{n}" if n > 1 else ""))
        if not os.path.lexists(new):
            os.rename(path, new)
            fsync_dir(path.parent)
            return new
    raise CheckpointError(f"{path}: cannot set it aside, too many {suffix} copies beside it")


def newest_good_checkpoint(root: PathLike) -> tuple:
    """((path, step) of the newest checkpoint under `root` that loads completely, or None;
    [(path, reason)] of the newer ones that do not, newest first). Checkpoints are
    verified newest first, so an intact latest one costs one load."""
    bad = []
    for step, path in reversed(list_checkpoints(root)):
        try:
            load_checkpoint(path, require_optimizer=True)
        except CheckpointError as e:
            bad.append((path, str(e)))
            continue
        return (path, step), bad
    return None, bad


def latest_checkpoint(root: PathLike) -> Optional[Path]:
    """The newest complete checkpoint under `root` (a run's checkpoints/ directory), or None."""
    ckpts = list_checkpoints(root)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(root: PathLike, step: int, *, config, params: dict,
                    optimizer_arrays: Optional[dict] = None, state: Optional[dict] = None,
                    keep: Optional[int] = 2) -> Path:
    """Write checkpoint `root/step_{step:06d}` atomically and keep the newest `keep`
    (None: all). `state` must be JSON-serialisable; it is stored with the step and the
    sizes/hashes of the weight files in trainer_state.json, which is written last."""
    root = Path(root)
    files = _model_files(config, params)
    if optimizer_arrays is not None:
        files[OPTIMIZER_FILE] = _safetensors_bytes(optimizer_arrays, "optimizer")
    record = {"format_version": FORMAT_VERSION, "step": int(step),
              "files": {n: {"bytes": len(b), "sha256": _sha256(b)} for n, b in files.items()},
              "state": state or {}}
    files[STATE_FILE] = _json_bytes(record)
    target = root / step_dir_name(step)
    _write_dir_atomically(target, files)
    # only now, with the new checkpoint durable, drop old ones and stale temporaries
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".old-")):  # one writer per run directory
            shutil.rmtree(p, ignore_errors=True)
    if keep is not None:
        for _, p in list_checkpoints(root)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return target


# --- loading --------------------------------------------------------------------------------------

def _read(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path}: file missing (incomplete checkpoint or not a "
                              f"checkpoint directory)")
    return path.read_bytes()


def _read_json(path: Path) -> dict:
    data = _read(path)
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON, the file is truncated or corrupt "
                              f"({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a config") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _read_safetensors(path: Path, expected: Optional[dict] = None) -> dict:
    if path.is_file():  # the header first: a file that is not safetensors is not read whole
        from .safetensors_io import SafetensorsError, SafetensorsFile
        try:
            SafetensorsFile(path)
        except SafetensorsError as e:
            raise CheckpointError(f"{path}: not a readable safetensors file, it is truncated "
                                  f"or corrupt ({str(e).removeprefix(f'{path}: ')})") from None
        if expected is not None and path.stat().st_size != expected.get("bytes"):
            raise CheckpointError(f"{path}: truncated or corrupt: expected "
                                  f"{expected.get('bytes')} bytes, got {path.stat().st_size}")
    data = _read(path)
    if expected is not None:
        if len(data) != expected.get("bytes") or _sha256(data) != expected.get("sha256"):
            raise CheckpointError(f"{path}: truncated or corrupt: expected {expected.get('bytes')}"
                                  f" bytes with sha256 {str(expected.get('sha256'))[:12]}..., "
                                  f"got {len(data)} bytes with sha256 {_sha256(data)[:12]}...")
    from safetensors.numpy import load
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error type on bad bytes
        raise CheckpointError(f"{path}: not a readable safetensors file, it is truncated or "
                              f"corrupt ({type(e).__name__}: {e})") from None


def resolve_checkpoint(path: PathLike) -> Path:
    """The model or checkpoint directory that loading `path` reads (the latest checkpoint
    of a run directory)."""
    return _resolve(path)


def _resolve(path: PathLike) -> Path:
    """A model/checkpoint directory from a run directory, a checkpoints/ directory or the
    directory itself."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, model or run directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a directory (holding {CONFIG_FILE} and "
                              f"{MODEL_FILE}), got a file")
    if (path / CONFIG_FILE).exists() or (path / MODEL_FILE).exists():
        return path
    for root in (path / CHECKPOINTS_DIR, path):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise CheckpointError(f"{path}: no {CONFIG_FILE}/{MODEL_FILE} and no checkpoints "
                          f"(step_NNNNNN directories) inside")


def _load_config(path: Path):
    d = _read_json(path)
    try:
        return config_from_dict(d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid model config ({e})") from None


def _check_params(config, params: dict, path: Path, dtype=None) -> dict:
    from ..models.params import check_params
    try:
        check_params(config, params)
    except ValueError as e:
        raise CheckpointError(f"{path}: the weights do not match the config ({e})") from None
    bad = next((k for k, v in params.items() if not np.isfinite(v).all()), None)
    if bad is not None:
        n = int(np.size(params[bad]) - np.isfinite(params[bad]).sum())
        raise CheckpointError(f"{path}: tensor {bad!r} holds {n} non-finite value(s) (NaN or "
                              f"inf); the model diverged or the file was altered")
    if dtype is not None:
        params = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    return params


class Checkpoint(NamedTuple):
    path: Path                  # the checkpoint directory
    config: object              # GemmaConfig or EncDecConfig
    params: dict                # name -> array
    optimizer_arrays: Optional[dict]  # "m.<name>"/"v.<name>" -> array, None if absent
    step: int
    state: dict                 # the JSON state given to save_checkpoint


def load_checkpoint(path: PathLike, *, require_optimizer: bool = False) -> Checkpoint:
    """Load and verify a checkpoint (path: a step directory, a run directory, or a
    checkpoints/ directory, the latest then). Errors name the offending file."""
    path = _resolve(path)
    record = _read_json(path / STATE_FILE) if (path / STATE_FILE).exists() or \
        require_optimizer else None
    files = record.get("files", {}) if record else {}
    if record is not None:
        if record.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(f"{path / STATE_FILE}: format_version "
                                  f"{record.get('format_version')!r}, this code reads "
                                  f"{FORMAT_VERSION}")
        cfg_bytes = _read(path / CONFIG_FILE)
        exp = files.get(CONFIG_FILE)
        if exp and (len(cfg_bytes) != exp["bytes"] or _sha256(cfg_bytes) != exp["sha256"]):
            raise CheckpointError(f"{path / CONFIG_FILE}: altered or corrupt (size/sha256 "
                                  f"differ from {STATE_FILE})")
    config = _load_config(path / CONFIG_FILE)
    params = _read_safetensors(path / MODEL_FILE, files.get(MODEL_FILE))
    params = _check_params(config, params, path / MODEL_FILE)
    opt = None
    if (record and OPTIMIZER_FILE in files) or require_optimizer:
        opt = _read_safetensors(path / OPTIMIZER_FILE, files.get(OPTIMIZER_FILE))
    step = int(record["step"]) if record else 0
    return Checkpoint(path, config, params, opt, step, record.get("state", {}) if record else {})


def load_model(path: PathLike, dtype=None):
    """A model (GemmaLM or EncDecLM) from a model directory, a checkpoint, a run directory
    (its latest checkpoint) or a Hugging Face directory (interop.load_hf). dtype: cast
    the weights (e.g. np.float64)."""
    from ..models import build_model
    if Path(path).is_dir():
        from . import interop
        if interop.is_hf_dir(path):  # a transformers directory (config.json has model_type)
            return interop.load_hf(path, dtype or np.float32)
    ck = load_checkpoint(path)
    params = ck.params if dtype is None else {k: v.astype(dtype) for k, v in ck.params.items()}
    return build_model(ck.config, params)
