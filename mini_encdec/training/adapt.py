"""Adaptation: decoder-only Gemma 2 checkpoint(s) -> a T5Gemma encoder-decoder (SPEC.md section 3);
Gemma 3 checkpoint(s) -> a T5Gemma 2 (adapt_mapping.py).

Which source weight initialises each encoder-decoder weight (the paper's mapping, balanced
and unbalanced) is decided in adapt_mapping.py; this module reads the sources, checks they
fit together, and produces the tensors, in memory or streamed into a directory.

API
    plan = adaptation_plan(config, balanced)      target key -> Origin, in file order
    mapping = adaptation_mapping(encoder_from, decoder_from=None)
                                                  target key -> "A:model.layers.0...." /
                                                  "fresh N(0, 0.02)" / "fresh zeros"
    config, params = adapt_params(encoder_from, decoder_from=None, rng=..., warmup_steps=...)
    model = adapt(encoder_from, decoder_from=None, ...)          (models.build_model)
    adapt_command(encoder_from, decoder_from, out, warmup_steps=None, seed=0, ...)
                                                  what `python -m mini_encdec adapt` runs

A source ("encoder_from" / "decoder_from") is a GemmaLM, a (GemmaConfig, params) pair,
our own model/checkpoint/run directory (checkpoint.py), or a Hugging Face Gemma 2 or
Gemma 3 directory (e.g. a downloaded google/gemma-2-2b or google/gemma-3-270m; of a
multimodal Gemma 3 the text model). Giving no decoder source, or the same
one twice, means balanced. Hugging Face sources are streamed: `adapt_command` writes the
T5Gemma directory tensor by tensor, a 64 MiB chunk at a time, copying stored bytes
(bfloat16 stays bfloat16) or converting chunk by chunk, so peak memory stays far below
one copy of the output weights (mini_encdec/tools/measure_adapt_memory.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from tqdm import tqdm

from ..config import EncDecConfig, GemmaConfig
from ..models import build_model
from ..models.params import INIT_STD, check_params, param_shapes
from ..storage import checkpoint, interop
from ..storage.safe_output import check_output, new_output_dir
from ..storage.safetensors_io import STORAGE, dtype_code, from_storage, to_storage
from .adapt_mapping import AdaptError, adaptation_plan, adapted_config

PathLike = Union[str, Path]

# The paper's warmup for unbalanced adaptation (K = 1000 at 9B-2B); the default when two
# different sources are given and no warmup_steps is.
DEFAULT_UNBALANCED_WARMUP = 1000
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
_COMPARED_TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
# Bytes read per step when streaming a tensor between files (a multiple of every itemsize,
# so each chunk holds whole elements).
COPY_CHUNK_BYTES = 64 << 20


# --- sources --------------------------------------------------------------------------------------

class Source:
    """A decoder-only model's tensors, in memory or in a directory (read on demand)."""

    def __init__(self, config: GemmaConfig, description: str, *, params=None, weights=None,
                 directory: Optional[Path] = None):
        self.config = config
        self.description = description  # printed in the CLI legend
        self.params = params            # dict of arrays, or None
        self.weights = weights          # interop.HFWeights, or None
        self.directory = directory      # where tokenizer files may be

    @property
    def is_hf(self) -> bool:
        return self.weights is not None

    def shape(self, key: str) -> tuple:
        return self.weights.shape(key) if self.is_hf else self.params[key].shape

    def stored_code(self, key: str) -> str:
        if self.is_hf:
            return self.weights.dtype(key)
        return {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}[self.params[key].dtype]

    def read(self, key: str, dtype=np.float32) -> np.ndarray:
        if self.is_hf:
            return self.weights.read(key, dtype)
        return self.params[key].astype(dtype, copy=False)

    def fill(self, key: str, out_key: str):
        """A writer callback for interop.write_hf_dir: copy this tensor into `out_key`.
        From a file it streams a chunk of bytes at a time (converted chunk by chunk when
        the output dtype differs), so no whole tensor is ever in memory."""
        def fill(w, _k, code):
            if not self.is_hf:
                w.write(out_key, self.params[key])
                return
            src = self.weights.dtype(key)
            f = self.weights.file(key)
            for chunk in f.iter_bytes(key, COPY_CHUNK_BYTES):  # whole elements per chunk
                if src != code:
                    values = from_storage(np.frombuffer(chunk, STORAGE[src]), src)
                    chunk = memoryview(to_storage(values, code)).cast("B")
                w.write_bytes(out_key, chunk)
        return fill


def load_source(x, label: str = "source") -> Source:
    """A Source from a GemmaLM, a (GemmaConfig, params) pair, or a directory."""
    if isinstance(x, Source):
        return x
    if isinstance(x, (str, Path)):
        path = Path(x)
        if interop.is_hf_dir(path):
            config, weights, kind = interop.open_hf(path)
            if kind not in ("gemma2", "gemma3_text", "gemma3"):
                raise AdaptError(f"{path}: the {label} must be a decoder-only Gemma 2 or "
                                 f"Gemma 3 checkpoint, got a {kind} one")
            if not isinstance(config, GemmaConfig):
                raise AdaptError(f"{path}: the {label} must be a Gemma 2 language model, "
                                 f"got a sequence classifier")
            return Source(config, str(path), weights=weights, directory=path)
        ck = checkpoint.load_checkpoint(path)
        if not isinstance(ck.config, GemmaConfig):
            what = "an encoder-decoder" if isinstance(ck.config, EncDecConfig) \
                else "a sequence classifier"
            raise AdaptError(f"{ck.path}: the {label} must be a decoder-only model, got "
                             f"{what}")
        return Source(ck.config, str(ck.path), params=ck.params, directory=ck.path)
    if isinstance(x, tuple) and len(x) == 2:
        config, params = x
    elif hasattr(x, "config") and hasattr(x, "params"):
        config, params = x.config, x.params
    else:
        raise AdaptError(f"adapt: the {label} must be a GemmaLM, a (GemmaConfig, params) "
                         f"pair or a directory, got {type(x).__name__}")
    if not isinstance(config, GemmaConfig):
        raise AdaptError(f"adapt: the {label} must be a decoder-only Gemma 2 model "
                         f"(GemmaConfig), got {type(config).__name__}")
    check_params(config, params)
    return Source(config, f"in-memory {label}", params=params)


def _same_source(a, b) -> bool:
    if b is None or a is b:
        return True
    if isinstance(a, (str, Path)) and isinstance(b, (str, Path)):
        return Path(a).resolve() == Path(b).resolve()
    return False


def _check_tokenizers(a: Source, b: Source) -> None:
    """Two directories holding tokenizer files must hold the same ones."""
    if a.directory is None or b.directory is None:
        return
    for name in _COMPARED_TOKENIZER_FILES:
        fa, fb = a.directory / name, b.directory / name
        if fa.is_file() and fb.is_file() and fa.read_bytes() != fb.read_bytes():
            raise AdaptError(f"adapt: {fa} and {fb} differ; the encoder and decoder sources "
                             f"must share one tokenizer")


@dataclass
class Adaptation:
    """Everything decided before any tensor is produced."""

    config: EncDecConfig
    plan: dict            # target key -> Origin
    sources: dict         # "A" / "B" -> Source
    balanced: bool

    @property
    def mapping(self) -> dict:
        return {k: str(o) for k, o in self.plan.items()}


def prepare(encoder_from, decoder_from=None, warmup_steps: Optional[int] = None) -> Adaptation:
    """Resolve the sources, check they fit together, build the config and the plan."""
    balanced = _same_source(encoder_from, decoder_from)
    a = load_source(encoder_from, "encoder source")
    b = a if balanced else load_source(decoder_from, "decoder source")
    if warmup_steps is None:  # T5Gemma 2 (Gemma 3 sources): no cross-attention to warm up
        warmup_steps = 0 if balanced or a.config.qk_norm else DEFAULT_UNBALANCED_WARMUP
    if not balanced:
        _check_tokenizers(a, b)
    config = adapted_config(a.config, b.config, warmup_steps)
    plan = adaptation_plan(config, balanced)
    shapes = param_shapes(config)
    sources = {"A": a, "B": b}
    for k, o in plan.items():
        if o.source is not None and tuple(sources[o.source].shape(o.key)) != tuple(shapes[k]):
            raise AdaptError(f"adapt: {k} needs shape {tuple(shapes[k])} but {o} has "
                             f"{tuple(sources[o.source].shape(o.key))}")
    return Adaptation(config, plan, sources if not balanced else {"A": a}, balanced)


def adaptation_mapping(encoder_from, decoder_from=None) -> dict:
    """Target key -> the source tensor that initialises it ("A:<key>", "B:<key>") or
    "fresh N(0, 0.02)" / "fresh zeros"."""
    return prepare(encoder_from, decoder_from, warmup_steps=0).mapping


def _fresh(shape: tuple, init: str, rng: np.random.Generator) -> np.ndarray:
    """A fresh float32 tensor; the draw depends only on `rng` and `shape`."""
    if init == "zeros":
        return np.zeros(shape, dtype=np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)


def _check_rng(rng, seed) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(seed)
    if not isinstance(rng, np.random.Generator):
        raise AdaptError(f"adapt: argument 'rng': expected an np.random.Generator, got "
                         f"{type(rng).__name__}")
    return rng


def materialise(ad: Adaptation, rng: np.random.Generator, dtype=np.float32) -> dict:
    """The adapted parameters in memory (copies: the sources are never aliased)."""
    shapes = param_shapes(ad.config)
    params = {}
    for k, o in ad.plan.items():
        if o.source is None:
            params[k] = _fresh(shapes[k], o.init, rng).astype(dtype, copy=False)
        else:
            params[k] = np.array(ad.sources[o.source].read(o.key, dtype), dtype=dtype)
    return params


def adapt_params(encoder_from, decoder_from=None, *, rng: Optional[np.random.Generator] = None,
                 seed: int = 0, warmup_steps: Optional[int] = None, dtype=np.float32):
    """(EncDecConfig, params) adapted from one source (balanced) or two (unbalanced).

    rng draws the fresh cross-attention of an unbalanced adaptation (default:
    np.random.default_rng(seed)); warmup_steps defaults to 0 when balanced and
    DEFAULT_UNBALANCED_WARMUP otherwise.
    """
    rng = _check_rng(rng, seed)
    ad = prepare(encoder_from, decoder_from, warmup_steps)
    return ad.config, materialise(ad, rng, dtype)


def adapt(encoder_from, decoder_from=None, *, rng: Optional[np.random.Generator] = None,
          seed: int = 0, warmup_steps: Optional[int] = None, dtype=np.float32):
    """The adapted EncDecLM (see adapt_params)."""
    config, params = adapt_params(encoder_from, decoder_from, rng=rng, seed=seed,
                                  warmup_steps=warmup_steps, dtype=dtype)
    return build_model(config, params)


# --- writing: the command -------------------------------------------------------------------------

def _output_dtype(ad: Adaptation) -> str:
    """The stored dtype shared by every copied source tensor (F32, F16 or BF16), else F32."""
    codes = {ad.sources[o.source].stored_code(o.key) for o in ad.plan.values()
             if o.source is not None}
    return codes.pop() if len(codes) == 1 and codes <= {"F32", "F16", "BF16"} else "F32"


def write_hf(ad: Adaptation, out: PathLike, rng: np.random.Generator, dtype=None,
             progress: bool = False) -> Path:
    """Stream the adaptation into a T5Gemma directory, one tensor at a time."""
    shapes = param_shapes(ad.config)
    code = _output_dtype(ad) if dtype is None else dtype

    def fresh_fill(shape, init):
        def fill(w, k, _code):
            w.write(k, _fresh(shape, init, rng))
        return fill

    tensors = []
    for k, o in ad.plan.items():
        if o.source is None:
            tensors.append((k, shapes[k], fresh_fill(shapes[k], o.init)))
        else:
            tensors.append((k, shapes[k], ad.sources[o.source].fill(o.key, k)))
    if progress:
        bar = tqdm(total=len(tensors), desc="adapt", unit="tensor")

        def ticking(fill):
            def f(w, k, c):
                fill(w, k, c)
                bar.update(1)
            return f
        tensors = [(k, s, ticking(f)) for k, s, f in tensors]
    a = ad.sources["A"]
    extra = [a.directory / n for n in TOKENIZER_FILES
             if a.directory is not None and (a.directory / n).is_file()]
    try:
        return interop.write_hf_dir(out, ad.config, tensors, code, extra_files=extra)
    finally:
        if progress:
            bar.close()


def adapt_command(encoder_from: PathLike, decoder_from: Optional[PathLike], out: PathLike, *,
                  warmup_steps: Optional[int] = None, seed: int = 0,
                  out_format: Optional[str] = None, dtype: Optional[str] = None,
                  print_fn: Optional[Callable] = print, progress: bool = True,
                  overwrite: bool = False, encoder_label: str = "--encoder-from") -> Path:
    """`python -m mini_encdec adapt --encoder-from A [--decoder-from B] --out C`
    (encoder_label: the spelling messages use for A, the flag the user typed).

    Writes C and prints which source tensor initialised every parameter (progress: a
    tqdm bar over the tensors while writing a Hugging Face directory). out_format:
    "hf" (a T5Gemma directory transformers loads; the default when a source is a Hugging
    Face directory) or "checkpoint" (our config.json + model.safetensors; the default for
    our own directories). dtype (hf only): the stored dtype, default the sources'.

    The output is written through safe_output.new_output_dir: into a new directory beside
    C, renamed to C when complete. An existing non-empty C, a source, a directory inside a
    source or one containing a source is refused (safe_output.OutputError, a ValueError)
    unless overwrite=True, and then replaced only once the new output is complete.
    """
    given = {encoder_label: encoder_from, "--decoder-from": decoder_from}
    paths = {k: v for k, v in given.items() if isinstance(v, (str, Path))}
    check_output(out, overwrite=overwrite, sources=paths, what="--out")  # before any work
    ad = prepare(encoder_from, decoder_from, warmup_steps)
    # the directories actually read (e.g. a run's latest checkpoint) count as sources too
    option = {"A": encoder_label, "B": "--decoder-from"}
    sources = list(paths.items()) + [(option.get(name, name), src.directory)
                                     for name, src in ad.sources.items()
                                     if src.directory is not None]
    rng = np.random.default_rng(seed)
    if out_format is None:
        out_format = "hf" if any(s.is_hf for s in ad.sources.values()) else "checkpoint"
    if out_format not in ("hf", "checkpoint"):
        raise AdaptError(f"adapt: argument 'out_format': expected 'hf' or 'checkpoint', got "
                         f"{out_format!r}")
    if dtype is not None and out_format != "hf":
        raise AdaptError("adapt: argument 'dtype' applies to out_format='hf' only "
                         "(checkpoints are float32)")
    if dtype is not None:
        dtype = dtype_code(dtype)  # a bad name fails here, before anything is written
    if print_fn is not None:
        kind = "balanced" if ad.balanced else "unbalanced"
        print_fn(f"adapt ({kind}): encoder {ad.config.encoder.hidden_size}x"
                 f"{ad.config.encoder.num_hidden_layers}, decoder "
                 f"{ad.config.decoder.hidden_size}x{ad.config.decoder.num_hidden_layers}, "
                 f"cross_attn_warmup_steps={ad.config.cross_attn_warmup_steps}")
        for name, src in ad.sources.items():
            print_fn(f"  {name} = {src.description}")
        width = max(len(k) for k in ad.plan)
        for k, o in ad.plan.items():
            print_fn(f"  {k:<{width}}  <- {o}")
    with new_output_dir(out, overwrite=overwrite, sources=sources, what="--out") as tmp:
        if out_format == "hf":
            write_hf(ad, tmp, rng, dtype, progress=progress)
        else:
            checkpoint.write_model_files(tmp, ad.config, materialise(ad, rng))
    if print_fn is not None:
        print_fn(f"wrote {out} ({out_format})")
    return Path(out)
