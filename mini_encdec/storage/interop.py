"""Hugging Face interop: load Gemma 2 / T5Gemma directories, write them back (SPEC 5).

    model = load_hf(path)                 a transformers `save_pretrained` directory of a
                                          Gemma2ForCausalLM (-> GemmaLM) or a
                                          T5GemmaForConditionalGeneration (-> EncDecLM), or
                                          of a Gemma2/T5GemmaForSequenceClassification
                                          (-> SequenceClassifier, SPEC 7)
    save_hf(model, path, dtype="float32") a directory `from_pretrained` loads with no
                                          missing or unexpected keys

Classifiers: config.json is the backbone's plus `architectures`, `id2label`/`label2id`
(the number of classes), `problem_type` "single_label_classification" and, for T5Gemma,
`is_encoder_decoder` (false: the encoder-only probe, whose directory holds no decoder
weights) and `classifier_dropout_rate` 0.0 (ignored on load: no dropout here).

Parameter names are the Hugging Face keys already (SPEC.md section 5), so weights pass through
unchanged; only the config needs translating. Never imports torch: tensors are read and
written by `safetensors_io`, which handles bfloat16 (upcast to float32 on load, exactly).

What a directory may hold, and how it is read:
  - config.json; model.safetensors, or shards listed in model.safetensors.index.json
  - tensors in float32, float16 or bfloat16 (-> float32, or the dtype asked for)
  - the tied output matrix (`lm_head.weight`, `lm_head.out_proj.weight`) absent or equal to
    the embedding; a different one is an error (these models tie it)
  - `rope_theta` at the top level (transformers 4.x) or under `rope_parameters` (5.x)
  - T5Gemma: the top-level `vocab_size` overrides both halves (as transformers 4.x did;
    5.x no longer propagates it, so we write all three equal)
  - eos_token_id given as a list (instruction-tuned configs): its first entry is used

What is written: config.json with the fields transformers 5 reads (rope_theta is written
both ways, so 4.x reads it too), generation_config.json, one model.safetensors.
EncDecConfig.cross_attn_warmup_steps travels in an extra "mini_encdec" entry of
config.json (transformers keeps unknown entries and ignores them).

Differences from transformers that a user should know (see the tests and README):
  - transformers >= 5 masks T5Gemma's encoder local layers as |q - k| <= W; SPEC 2 and
    transformers 4.53 use |q - k| < W. The number W is written unchanged, so with
    transformers >= 5 the encoder's local layers see one more key on each side when the
    input is longer than W.
  - transformers requires an integer query_pre_attn_scalar; a fractional one cannot be saved.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np

from ..config import (DECODER_ONLY, ENCODER_DECODER, ENCODER_ONLY, FULL, SLIDING,
                     ClassifierConfig, EncDecConfig, GemmaConfig)
from .safetensors_io import (SafetensorsFile, SafetensorsWriter, TORCH_NAMES, dtype_code)

PathLike = Union[str, Path]

CONFIG_FILE = "config.json"
GENERATION_FILE = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
GEMMA2_ARCH = "Gemma2ForCausalLM"
T5GEMMA_ARCH = "T5GemmaForConditionalGeneration"
# the sequence-classification heads (SPEC 7, models/classifier.py)
GEMMA2_CLS_ARCH = "Gemma2ForSequenceClassification"
T5GEMMA_CLS_ARCH = "T5GemmaForSequenceClassification"
# the tied output matrix, stored by some writers, never by us
TIED_HEADS = {"gemma2": ("lm_head.weight", "model.embed_tokens.weight"),
              "t5gemma": ("lm_head.out_proj.weight", "model.decoder.embed_tokens.weight")}
_ACTIVATIONS = ("gelu_pytorch_tanh",)  # the tanh approximation of SPEC 1
_DEFAULT_MAX_POSITIONS = 8192


class InteropError(ValueError):
    """A directory or config that cannot be read as (or written to) a Gemma 2 / T5Gemma
    checkpoint."""


# --- config translation -------------------------------------------------------------------------

def _rope_theta(d: dict, where: str) -> float:
    """theta from `rope_parameters` (transformers 5) or top-level `rope_theta` (4.x)."""
    rp = d.get("rope_parameters") or d.get("rope_scaling")
    if isinstance(rp, dict):
        kind = rp.get("rope_type", rp.get("type", "default"))
        if kind != "default":
            raise InteropError(f"{where}: rope type {kind!r} is not supported (expected "
                               f"'default', plain RoPE)")
        if "rope_theta" in rp:
            return float(rp["rope_theta"])
    return float(d.get("rope_theta", 10000.0))


def _token_id(d: dict, name: str, default: int) -> int:
    v = d.get(name, default)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else default
    return default if v is None else int(v)


def gemma_config_from_hf(d: dict, where: str = CONFIG_FILE) -> GemmaConfig:
    """One Gemma 2 stack from a Gemma2Config / T5GemmaModuleConfig dict."""
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _ACTIVATIONS:
        raise InteropError(f"{where}: hidden_activation {act!r} is not supported (expected "
                           f"one of {_ACTIVATIONS}, GeGLU with the tanh GELU)")
    if d.get("attention_bias"):
        raise InteropError(f"{where}: attention_bias=true is not supported (Gemma 2 has no "
                           f"biases)")
    if d.get("use_bidirectional_attention"):
        raise InteropError(f"{where}: use_bidirectional_attention=true is not supported")
    try:
        layers = int(d["num_hidden_layers"])
        heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        layer_types = d.get("layer_types") or \
            [SLIDING if i % 2 == 0 else FULL for i in range(layers)]
        window = d.get("sliding_window")
        if window is None:
            if SLIDING in layer_types:
                raise InteropError(f"{where}: sliding_window is null but some layers are "
                                   f"{SLIDING!r}")
            window = int(d.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS)
        cfg = GemmaConfig(
            vocab_size=int(d["vocab_size"]), hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads),
            intermediate_size=int(d["intermediate_size"]), sliding_window=int(window),
            layer_types=tuple(layer_types),
            attn_logit_softcapping=d.get("attn_logit_softcapping"),
            final_logit_softcapping=d.get("final_logit_softcapping"),
            query_pre_attn_scalar=d.get("query_pre_attn_scalar"),
            rope_theta=_rope_theta(d, where), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            pad_token_id=_token_id(d, "pad_token_id", 0),
            eos_token_id=_token_id(d, "eos_token_id", 1),
            bos_token_id=_token_id(d, "bos_token_id", 2))
    except KeyError as e:
        raise InteropError(f"{where}: missing config field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, InteropError):
            raise
        raise InteropError(f"{where}: {e}") from None
    return cfg


def model_kind(d: dict, where: str = CONFIG_FILE) -> str:
    """"gemma2" or "t5gemma" from a config dict (model_type, else architectures)."""
    kind = d.get("model_type")
    archs = d.get("architectures") or []
    if kind in ("gemma2", "t5gemma"):
        return kind
    if GEMMA2_ARCH in archs:
        return "gemma2"
    if T5GEMMA_ARCH in archs:
        return "t5gemma"
    raise InteropError(f"{where}: expected a Gemma 2 (model_type 'gemma2') or T5Gemma "
                       f"(model_type 't5gemma') config, got model_type {kind!r}, "
                       f"architectures {archs}")


def config_from_hf(d: dict, where: str = CONFIG_FILE):
    """GemmaConfig (Gemma 2), EncDecConfig (T5Gemma) or, for a *ForSequenceClassification
    directory, a ClassifierConfig around one, from a transformers config dict."""
    backbone = backbone_config_from_hf(d, where)
    archs = d.get("architectures") or []
    if GEMMA2_CLS_ARCH not in archs and T5GEMMA_CLS_ARCH not in archs:
        return backbone
    return classifier_config_from_hf(d, backbone, where)


def classifier_config_from_hf(d: dict, backbone, where: str = CONFIG_FILE) -> ClassifierConfig:
    """The head of Gemma2/T5GemmaForSequenceClassification: classes from id2label (else
    num_labels), mode from is_encoder_decoder (transformers' default: true).
    classifier_dropout_rate is ignored (no dropout here; inactive at inference anyway)."""
    problem = d.get("problem_type")
    if problem not in (None, "single_label_classification"):
        raise InteropError(f"{where}: problem_type {problem!r} is not supported (expected "
                           f"'single_label_classification': cross-entropy over classes)")
    id2label = d.get("id2label")
    names = ()
    if id2label:
        try:
            ids = sorted(int(k) for k in id2label)
        except (TypeError, ValueError):
            raise InteropError(f"{where}: id2label keys must be class ids, got "
                               f"{list(id2label)}") from None
        if ids != list(range(len(ids))):
            raise InteropError(f"{where}: id2label must name classes 0..{len(ids) - 1}, "
                               f"got ids {ids}")
        names = tuple(str(id2label.get(str(i), id2label.get(i))) for i in ids)
    num_labels = len(names) if names else d.get("num_labels", 2)
    if isinstance(backbone, GemmaConfig):
        mode, pad = DECODER_ONLY, backbone.pad_token_id
    else:
        mode = ENCODER_DECODER if d.get("is_encoder_decoder", True) else ENCODER_ONLY
        pad = backbone.decoder.pad_token_id
    if d.get("pad_token_id") is not None and _token_id(d, "pad_token_id", pad) != pad:
        raise InteropError(f"{where}: pad_token_id={d['pad_token_id']} differs from the "
                           f"stacks' {pad} (the head finds the last token by it)")
    try:
        return ClassifierConfig(backbone=backbone, num_labels=num_labels, mode=mode,
                                label_names=names)
    except ValueError as e:
        raise InteropError(f"{where}: {e}") from None


def backbone_config_from_hf(d: dict, where: str = CONFIG_FILE):
    """GemmaConfig (Gemma 2) or EncDecConfig (T5Gemma) from a transformers config dict."""
    if model_kind(d, where) == "gemma2":
        return gemma_config_from_hf(d, where)
    halves = {}
    for part in ("encoder", "decoder"):
        sub = d.get(part)
        if not isinstance(sub, dict):
            raise InteropError(f"{where}: T5Gemma config without an {part!r} section")
        sub = dict(sub)
        if d.get("vocab_size") is not None:  # the top-level vocabulary overrides both
            sub["vocab_size"] = d["vocab_size"]
        halves[part] = gemma_config_from_hf(sub, f"{where} [{part}]")
    cross = d["decoder"].get("cross_attention_hidden_size")
    if cross is not None and int(cross) != halves["encoder"].hidden_size:
        raise InteropError(f"{where}: decoder.cross_attention_hidden_size={cross} differs "
                           f"from encoder.hidden_size={halves['encoder'].hidden_size}")
    if d.get("tie_word_embeddings") is False:
        raise InteropError(f"{where}: tie_word_embeddings=false is not supported (the "
                           f"output matrix is the decoder embedding)")
    extra = d.get("mini_encdec") or {}
    try:
        return EncDecConfig(encoder=halves["encoder"], decoder=halves["decoder"],
                            cross_attn_warmup_steps=int(extra.get("cross_attn_warmup_steps", 0)))
    except ValueError as e:
        raise InteropError(f"{where}: {e}") from None


def _qpas(cfg: GemmaConfig, where: str) -> int:
    q = cfg.query_pre_attn_scalar
    if float(q) != int(q):
        raise InteropError(f"{where}: query_pre_attn_scalar={q} cannot be saved: "
                           f"transformers' config requires an integer")
    return int(q)


def _stack_dict(cfg: GemmaConfig, where: str) -> dict:
    """The fields of Gemma2Config / T5GemmaModuleConfig that describe one stack."""
    return {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": max(_DEFAULT_MAX_POSITIONS, cfg.sliding_window),
        "initializer_range": 0.02, "rms_norm_eps": cfg.rms_norm_eps, "use_cache": True,
        "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
        "bos_token_id": cfg.bos_token_id, "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_theta": float(cfg.rope_theta),  # transformers 4.x reads this one
        "attention_bias": False, "attention_dropout": 0.0,
        "query_pre_attn_scalar": _qpas(cfg, where), "sliding_window": cfg.sliding_window,
        "layer_types": list(cfg.layer_types),
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": cfg.attn_logit_softcapping,
    }


def hf_config(config, dtype="float32") -> dict:
    """The config.json dict transformers expects for our config."""
    torch_dtype = TORCH_NAMES[dtype_code(dtype)]
    if isinstance(config, ClassifierConfig):  # the backbone's, with the head's fields
        d = hf_config(config.backbone, dtype)
        d["architectures"] = [GEMMA2_CLS_ARCH if config.mode == DECODER_ONLY
                              else T5GEMMA_CLS_ARCH]
        d["id2label"] = {str(i): name for i, name in enumerate(config.label_names)}
        d["label2id"] = {name: i for i, name in enumerate(config.label_names)}
        d["problem_type"] = "single_label_classification"
        if config.mode != DECODER_ONLY:
            d["is_encoder_decoder"] = config.mode == ENCODER_DECODER
            d["classifier_dropout_rate"] = 0.0
        return d
    if isinstance(config, GemmaConfig):
        d = {"architectures": [GEMMA2_ARCH], "model_type": "gemma2"}
        d.update(_stack_dict(config, "save_hf"))
        d["use_bidirectional_attention"] = None
        d["dtype"] = torch_dtype
        return d
    if not isinstance(config, EncDecConfig):
        raise InteropError(f"hf_config: expected a GemmaConfig or EncDecConfig, got "
                           f"{type(config).__name__}")
    if config.merged_attention:
        raise InteropError("save_hf: merged_attention (T5Gemma 2) cannot be written as a "
                           "T5Gemma checkpoint")
    if config.tie_all_embeddings:
        raise InteropError("save_hf: tie_all_embeddings (T5Gemma 2) cannot be written as a "
                           "T5Gemma checkpoint")
    if config.causal_encoder:
        raise InteropError("save_hf: causal_encoder (the paper's ablation) cannot be written "
                           "as a T5Gemma checkpoint: transformers' T5Gemma encoder is always "
                           "bidirectional; save it with our own format instead")
    enc = _stack_dict(config.encoder, "save_hf [encoder]")
    enc.update({"model_type": "t5_gemma_module", "is_decoder": False, "dropout_rate": 0.0})
    dec = _stack_dict(config.decoder, "save_hf [decoder]")
    dec.update({"model_type": "t5_gemma_module", "is_decoder": True, "dropout_rate": 0.0,
                "cross_attention_hidden_size": config.encoder.hidden_size})
    c = config.decoder
    return {"architectures": [T5GEMMA_ARCH], "model_type": "t5gemma",
            "encoder": enc, "decoder": dec, "is_encoder_decoder": True,
            "vocab_size": config.vocab_size, "tie_word_embeddings": True,
            "dropout_rate": 0.0, "classifier_dropout_rate": 0.0, "attention_dropout": 0.0,
            "initializer_range": 0.02, "pad_token_id": c.pad_token_id,
            "eos_token_id": c.eos_token_id, "bos_token_id": c.bos_token_id,
            "dtype": torch_dtype,
            "mini_encdec": {"cross_attn_warmup_steps": config.cross_attn_warmup_steps}}


def generation_config(config) -> dict:
    if isinstance(config, ClassifierConfig):  # the backbone's special tokens
        config = config.backbone
    c = config if isinstance(config, GemmaConfig) else config.decoder
    d = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
         "pad_token_id": c.pad_token_id}
    if isinstance(config, EncDecConfig):
        d["decoder_start_token_id"] = c.bos_token_id  # the decoder starts from BOS
    return d


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

    def keys(self) -> list:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def file(self, key: str) -> SafetensorsFile:
        if key not in self._where:
            raise InteropError(f"{self.path}: no tensor {key!r}")
        return self._where[key]

    def shape(self, key: str) -> tuple:
        return self.file(key).shape(key)

    def dtype(self, key: str) -> str:
        return self.file(key).dtype(key)

    def read(self, key: str, dtype=np.float32) -> np.ndarray:
        return self.file(key).read(key, dtype)


def check_hf_weights(weights: HFWeights, config, kind: str) -> list:
    """Stored keys must be exactly the model's (plus an optional tied head equal to the
    embedding), with the right shapes. Returns the keys to load, in param_shapes order."""
    from ..models.params import param_shapes
    shapes = param_shapes(config)
    where = weights.path
    missing = [k for k in shapes if k not in weights]
    if missing:
        raise InteropError(f"{where}: missing tensors {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    head, table = TIED_HEADS[kind]
    extra = sorted(k for k in weights.keys() if k not in shapes and k != head)
    if extra:
        raise InteropError(f"{where}: unexpected tensors {extra[:5]}"
                           f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all)")
    for k, shape in shapes.items():
        if weights.shape(k) != tuple(shape):
            raise InteropError(f"{where}: tensor {k!r} has shape {weights.shape(k)}, the "
                               f"config implies {tuple(shape)}")
    if head in weights:
        if not _same_tensor(weights, head, table):
            raise InteropError(f"{where}: {head!r} differs from {table!r}; untied output "
                               f"matrices are not supported")
    return list(shapes)


def _same_tensor(weights: HFWeights, a: str, b: str) -> bool:
    """Equal shapes and values; compared a chunk of bytes at a time when stored alike."""
    if weights.shape(a) != weights.shape(b):
        return False
    if weights.dtype(a) != weights.dtype(b):
        return bool(np.array_equal(weights.read(a), weights.read(b)))
    chunks_b = weights.file(b).iter_bytes(b)
    return all(ca == next(chunks_b) for ca in weights.file(a).iter_bytes(a))


def open_hf(path: PathLike):
    """(config, HFWeights, kind) of a transformers directory, checked, nothing loaded."""
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path}: expected a directory written by save_pretrained")
    d = read_json(path / CONFIG_FILE)
    kind = model_kind(d, str(path / CONFIG_FILE))
    config = config_from_hf(d, str(path / CONFIG_FILE))
    weights = HFWeights(path)
    check_hf_weights(weights, config, kind)
    return config, weights, kind


def load_hf_params(path: PathLike, dtype=np.float32):
    """(config, params) of a transformers directory; tensors upcast to `dtype`."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InteropError(f"load_hf: argument 'dtype': expected float32 or float64, got {dtype}")
    config, weights, _ = open_hf(path)
    from ..models.params import param_shapes
    params = {k: weights.read(k, dtype) for k in param_shapes(config)}
    return config, params


def load_hf(path: PathLike, dtype=np.float32):
    """The mini_encdec model (GemmaLM, EncDecLM or SequenceClassifier) of a transformers
    directory."""
    from ..models import build_model
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
    from ..models.params import check_params, param_shapes
    from .safe_output import new_output_dir
    check_params(config, params)
    shapes = param_shapes(config)

    def fill(w, k, code):
        w.write(k, params[k])

    with new_output_dir(path, overwrite=overwrite, what="save_hf: argument 'path'") as tmp:
        write_hf_dir(tmp, config, [(k, shapes[k], fill) for k in shapes], dtype)
    return Path(path)


def save_hf(model, path: PathLike, dtype="float32", *, overwrite: bool = False) -> Path:
    """Write a GemmaLM as a Gemma2ForCausalLM directory, an EncDecLM as a
    T5GemmaForConditionalGeneration directory. dtype: float32, float16 or bfloat16.
    A non-empty `path` is refused unless overwrite=True (see save_hf_params)."""
    if not hasattr(model, "config") or not hasattr(model, "params"):
        raise InteropError(f"save_hf: argument 'model': expected a GemmaLM or EncDecLM, got "
                           f"{type(model).__name__}")
    return save_hf_params(model.config, model.params, path, dtype, overwrite=overwrite)
