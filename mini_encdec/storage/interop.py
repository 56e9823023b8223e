"""Hugging Face weights: load Gemma 2 / T5Gemma directories, write them back (SPEC 5).

    model = load_hf(path)                 a transformers `save_pretrained` directory of a
                                          Gemma2ForCausalLM or Gemma3ForCausalLM (-> GemmaLM;
                                          also the text model of a multimodal
                                          Gemma3ForConditionalGeneration) or a
                                          T5GemmaForConditionalGeneration (-> EncDecLM; also
                                          the text model of a
                                          T5Gemma2ForConditionalGeneration), or of a
                                          Gemma2/T5Gemma/T5Gemma2ForSequenceClassification
                                          (-> SequenceClassifier, SPEC 7)
    save_hf(model, path, dtype="float32") a directory `from_pretrained` loads with no
                                          missing or unexpected keys

Parameter names are the Hugging Face keys already (SPEC.md section 5), so weights pass through
unchanged; only the config needs translating, which `hf_config` does (its names are
re-exported here: `config_from_hf`, `hf_config`, `InteropError`). Never imports torch:
tensors are read and written by `safetensors_io`, which handles bfloat16 (upcast to float32
on load, exactly).

What a directory may hold, and how it is read:
  - config.json (read by `hf_config`); model.safetensors, or shards listed in
    model.safetensors.index.json
  - tensors in float32, float16 or bfloat16 (-> float32, or the dtype asked for)
  - the tied output matrix (`lm_head.weight`, `lm_head.out_proj.weight`) absent or equal to
    the embedding; a different one is an error (these models tie it)

  - T5Gemma 2: the text model's keys are ours (transformers 5 writes
    `model.encoder.embed_tokens.weight`, ...; its module names `model.encoder.text_model.`
    are read too); the vision tower and projector are skipped with one printed line; the
    tied copies (decoder embedding, lm_head) must equal the encoder's table if stored.
    `embed_tokens.eoi_embedding` (the input vector of token eoi_token_index, 256,000 by
    default) is read when the vocabulary holds that id (EncDecConfig.eoi_token_id), else
    skipped.

What is written: config.json (`hf_config.hf_config`), generation_config.json, one
model.safetensors (T5Gemma 2: also zeros for eoi_embedding and a placeholder vision
tower, `hf_config.t5gemma2_extra_shapes`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np

from ..models import build_model
from ..models.params import check_params, param_shapes
from .hf_config import (CONFIG_FILE, InteropError, config_from_hf, generation_config,
                        hf_config, model_kind, t5gemma2_extra_shapes)
from .safe_output import new_output_dir
from .safetensors_io import SafetensorsFile, SafetensorsWriter, dtype_code

PathLike = Union[str, Path]

GENERATION_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# the tied copies (output matrix; T5Gemma 2's decoder table), stored by some writers, never
# by us: (copy, the table it must equal)
TIED_HEADS = {"gemma2": (("lm_head.weight", "model.embed_tokens.weight"),),
              "gemma3_text": (("lm_head.weight", "model.embed_tokens.weight"),),
              "gemma3": (("lm_head.weight", "model.embed_tokens.weight"),),
              "t5gemma": (("lm_head.out_proj.weight", "model.decoder.embed_tokens.weight"),),
              "t5gemma2": (("lm_head.out_proj.weight", "model.encoder.embed_tokens.weight"),
                           ("model.decoder.embed_tokens.weight",
                            "model.encoder.embed_tokens.weight"),
                           ("model.decoder.embed_tokens.eoi_embedding",
                            "model.encoder.embed_tokens.eoi_embedding"))}


# --- reading directories ----------------------------------------------------------------------

def read_json(path: Path) -> dict:
    if not path.is_file():
        raise InteropError(f"{path}: file missing")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise InteropError(f"{path}: JSON nested too deeply to be a config") from None
    if not isinstance(d, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return d


def is_hf_dir(path: PathLike) -> bool:
    """True for a transformers directory (config.json with a model_type)."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        return False
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(d, dict) and "model_type" in d


class HFWeights:
    """The tensors of one directory, over one file or the shards of an index."""

    def __init__(self, path: PathLike):
        path = Path(path)
        self.path = path
        index = path / INDEX_FILE
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise InteropError(f"{index}: no 'weight_map' object")
            files = {name: SafetensorsFile(path / name)
                     for name in sorted(set(weight_map.values()))}
            self._where = {}
            for key, name in weight_map.items():
                if key not in files[name]:
                    raise InteropError(f"{index}: {key!r} listed in {name} but not stored there")
                self._where[key] = files[name]
        elif (path / WEIGHTS_FILE).is_file():
            f = SafetensorsFile(path / WEIGHTS_FILE)
            self._where = {k: f for k in f.keys()}
        else:
            raise InteropError(f"{path}: neither {WEIGHTS_FILE} nor {INDEX_FILE} found")
        self._stored = {}  # our key -> the name it is stored under, where they differ

    def rename(self, prefixes: tuple, drop: tuple = ()) -> int:
        """Read keys under other names: a stored "old..." becomes "new..." for each
        (old, new) of prefixes (the first that matches); stored keys starting with one of
        `drop` are left out. Returns how many were left out."""
        where, stored, dropped = {}, {}, 0
        for key, f in self._where.items():
            if key.startswith(drop):
                dropped += 1
                continue
            ours = next((new + key[len(old):] for old, new in prefixes if key.startswith(old)),
                        key)
            where[ours], stored[ours] = f, key
        self._where, self._stored = where, stored
        return dropped

    def name(self, key: str) -> str:
        """The name tensor `key` is stored under."""
        return self._stored.get(key, key)

    def iter_bytes(self, key: str):
        return self.file(key).iter_bytes(self.name(key))

    def keys(self) -> list:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def file(self, key: str) -> SafetensorsFile:
        if key not in self._where:
            raise InteropError(f"{self.path}: no tensor {key!r}")
        return self._where[key]

    def shape(self, key: str) -> tuple:
        return self.file(key).shape(self.name(key))

    def dtype(self, key: str) -> str:
        return self.file(key).dtype(self.name(key))

    def read(self, key: str, dtype=np.float32) -> np.ndarray:
        return self.file(key).read(self.name(key), dtype)


# Gemma3ForConditionalGeneration: where its language model's tensors are stored (the hub's
# files and save_pretrained, 4.x and 5.x: "language_model.model."; transformers 5's module
# names, which other writers may use: "model.language_model."), and the image parts, which
# a text model does not read
GEMMA3_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                        ("language_model.lm_head.", "lm_head."))
GEMMA3_IMAGE_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                         "model.multi_modal_projector.")


def gemma3_text_weights(weights: HFWeights, print_fn=print) -> HFWeights:
    """The language model of a multimodal Gemma 3 directory, under Gemma3ForCausalLM's keys;
    the vision tower and the projector are skipped (one printed line says how many)."""
    dropped = weights.rename(GEMMA3_TEXT_PREFIXES, drop=GEMMA3_IMAGE_PREFIXES)
    if print_fn is not None and dropped:
        print_fn(f"{weights.path}: Gemma 3 with a vision tower: reading the text model, "
                 f"skipping {dropped} vision_tower / multi_modal_projector tensors")
    return weights


# T5Gemma 2: transformers' module names of the text encoder, and what a text model skips
T5GEMMA2_TEXT_PREFIXES = (("model.encoder.text_model.", "model.encoder."),)
T5GEMMA2_IMAGE_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")
T5GEMMA2_EOI = ("model.encoder.embed_tokens.eoi_embedding",
                "model.encoder.text_model.embed_tokens.eoi_embedding",
                "model.decoder.embed_tokens.eoi_embedding")  # stored names


def t5gemma2_text_weights(weights: HFWeights, config, print_fn=print) -> HFWeights:
    """The text model of a T5Gemma 2 directory under our keys: the vision tower and the
    projector skipped (one printed line); the eoi input vector read when the config's
    eoi_token_id is in the vocabulary, else skipped too (that id never occurs)."""
    eoi = getattr(config, "backbone", config).eoi_token_id  # a classifier: its backbone's
    drop = T5GEMMA2_IMAGE_PREFIXES + (T5GEMMA2_EOI if eoi is None else ())
    dropped = weights.rename(T5GEMMA2_TEXT_PREFIXES, drop=drop)
    if print_fn is not None and dropped:
        print_fn(f"{weights.path}: T5Gemma 2: reading the text model, skipping "
                 f"{dropped} vision_tower / multi_modal_projector tensors"
                 f"{'' if eoi is not None else ' (and the unused eoi vector)'}")
    return weights


def check_hf_weights(weights: HFWeights, config, kind: str) -> list:
    """Stored keys must be exactly the model's (plus an optional tied head equal to the
    embedding), with the right shapes. Returns the keys to load, in param_shapes order."""
    shapes = param_shapes(config)
    where = weights.path
    missing = [k for k in shapes if k not in weights]
    if missing:
        raise InteropError(f"{where}: missing tensors {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    heads = dict(TIED_HEADS[kind])
    extra = sorted(k for k in weights.keys() if k not in shapes and k not in heads)
    if extra:
        raise InteropError(f"{where}: unexpected tensors {extra[:5]}"
                           f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all)")
    for k, shape in shapes.items():
        if weights.shape(k) != tuple(shape):
            raise InteropError(f"{where}: tensor {k!r} has shape {weights.shape(k)}, the "
                               f"config implies {tuple(shape)}")
    for head, table in heads.items():
        if head in weights and not _same_tensor(weights, head, table):
            raise InteropError(f"{where}: {head!r} differs from {table!r}; untied output "
                               f"matrices are not supported")
    return list(shapes)


def _same_tensor(weights: HFWeights, a: str, b: str) -> bool:
    """Equal shapes and values; compared a chunk of bytes at a time when stored alike."""
    if weights.shape(a) != weights.shape(b):
        return False
    if weights.dtype(a) != weights.dtype(b):
        return bool(np.array_equal(weights.read(a), weights.read(b)))
    chunks_b = weights.iter_bytes(b)
    return all(ca == next(chunks_b) for ca in weights.iter_bytes(a))


def open_hf(path: PathLike):
    """(config, HFWeights, kind) of a transformers directory, checked, nothing loaded."""
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path}: expected a directory written by save_pretrained")
    d = read_json(path / CONFIG_FILE)
    kind = model_kind(d, str(path / CONFIG_FILE))
    config = config_from_hf(d, str(path / CONFIG_FILE))
    weights = HFWeights(path)
    if kind == "gemma3":  # multimodal: its text model only
        weights = gemma3_text_weights(weights)
    if kind == "t5gemma2":  # text and vision: the text model only
        weights = t5gemma2_text_weights(weights, config)
    check_hf_weights(weights, config, kind)
    return config, weights, kind


def load_hf_params(path: PathLike, dtype=np.float32):
    """(config, params) of a transformers directory; tensors upcast to `dtype`."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InteropError(f"load_hf: argument 'dtype': expected float32 or float64, got {dtype}")
    config, weights, _ = open_hf(path)
    params = {k: weights.read(k, dtype) for k in param_shapes(config)}
    return config, params


def load_hf(path: PathLike, dtype=np.float32):
    """The mini_encdec model (GemmaLM, EncDecLM or SequenceClassifier) of a transformers
    directory."""
    config, params = load_hf_params(path, dtype)
    return build_model(config, params)


# --- writing directories ----------------------------------------------------------------------

# fill(writer, key, dtype_code) writes tensor `key` through the writer
Fill = Callable[[SafetensorsWriter, str, str], None]


def write_hf_dir(path: PathLike, config, tensors: Iterable, dtype="float32",
                 extra_files: Iterable = ()) -> Path:
    """Write a transformers directory tensor by tensor.

    tensors: (key, shape, fill) triples in file order; `fill(writer, key, code)` writes the
    tensor (from memory, by copying bytes from another file, or generating it), so at most
    one tensor needs to be in memory. extra_files: paths copied in unchanged (tokenizer).
    model.safetensors is written under a temporary name and renamed when complete;
    config.json is written last, so a directory with a config.json is complete.
    """
    path = Path(path)
    code = dtype_code(dtype)
    cfg_dict = hf_config(config, code)  # validates before anything is written
    path.mkdir(parents=True, exist_ok=True)
    for stale in (CONFIG_FILE, INDEX_FILE):
        if (path / stale).exists():
            (path / stale).unlink()
    tensors = list(tensors)
    have = {k for k, _, _ in tensors}

    def zeros(w, k, code, shapes=t5gemma2_extra_shapes(config)):
        w.write(k, np.zeros(shapes[k], np.float32))

    tensors += [(k, shape, zeros) for k, shape in t5gemma2_extra_shapes(config).items()
                if k not in have]  # T5Gemma 2: eoi vector, placeholder vision tower
    specs = [(k, code, shape) for k, shape, _ in tensors]
    with SafetensorsWriter(path / WEIGHTS_FILE, specs, {"format": "pt"}) as w:
        for k, _, fill in tensors:
            fill(w, k, code)
    for src in extra_files:
        src = Path(src)
        (path / src.name).write_bytes(src.read_bytes())
    (path / GENERATION_FILE).write_text(json.dumps(generation_config(config), indent=2) + "\n")
    tmp = path / f".{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path / CONFIG_FILE)
    return path


def save_hf_params(config, params: dict, path: PathLike, dtype="float32", *,
                   overwrite: bool = False) -> Path:
    """Write (config, params) as a transformers directory (Gemma 2 or T5Gemma).

    The directory is written beside `path` and renamed into place when complete
    (safe_output): an existing non-empty `path` is refused (OutputError, a ValueError)
    unless overwrite=True, and even then replaced only once the new one is complete."""
    check_params(config, params)
    shapes = param_shapes(config)

    def fill(w, k, code):
        w.write(k, params[k])

    with new_output_dir(path, overwrite=overwrite, what="save_hf: argument 'path'") as tmp:
        write_hf_dir(tmp, config, [(k, shapes[k], fill) for k in shapes], dtype)
    return Path(path)


def save_hf(model, path: PathLike, dtype="float32", *, overwrite: bool = False) -> Path:
    """Write a GemmaLM as a Gemma2ForCausalLM directory (Gemma3ForCausalLM when its config
    has qk_norm), an EncDecLM as a T5GemmaForConditionalGeneration directory
    (T5Gemma2ForConditionalGeneration when it has merged attention). dtype: float32, float16 or bfloat16.
    A non-empty `path` is refused unless overwrite=True (see save_hf_params)."""
    if not hasattr(model, "config") or not hasattr(model, "params"):
        raise InteropError(f"save_hf: argument 'model': expected a GemmaLM or EncDecLM, got "
                           f"{type(model).__name__}")
    return save_hf_params(model.config, model.params, path, dtype, overwrite=overwrite)
