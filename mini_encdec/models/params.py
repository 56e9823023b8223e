"""Parameter names, shapes and fresh initialisation (SPEC.md sections 1, 2 and 5).

Parameters are one flat `dict[str, np.ndarray]` keyed by the Hugging Face names, weights
stored `[out, in]` (`y = x W^T`). A stack (the decoder-only model, the encoder, or the
decoder) is described by a `StackSpec`: the key prefix, which norm names its attention
sublayer uses, and whether it has cross-attention or merged attention.

    decoder-only (Gemma2ForCausalLM)   prefix "model.",          norms input_layernorm /
                                                                  post_attention_layernorm
    encoder (T5Gemma)                  prefix "model.encoder.",  norms pre_self_attn_layernorm /
    decoder (T5Gemma)                  prefix "model.decoder.",  post_self_attn_layernorm
                                       the decoder adds cross_attn.{q,k,v,o}_proj and
                                       {pre,post}_cross_attn_layernorm (not when merged)
    Gemma 3 (Gemma3ForCausalLM)        as decoder-only, plus self_attn.{q,k}_norm (Dh,)
                                       per layer (cfg.qk_norm)

Tied output matrix: never stored. Decoder-only: `model.embed_tokens.weight` is both the
input embedding and the output matrix. Encoder-decoder: the output matrix is
`model.decoder.embed_tokens.weight`. With `tie_all_embeddings` a single table serves the
encoder input, the decoder input and the output; it is stored under
`model.encoder.embed_tokens.weight` (as T5Gemma 2 in `transformers` does: its decoder
embedding and lm_head are tied to the encoder's) and `model.decoder.embed_tokens.weight`
is absent.

T5Gemma 2 with `eoi_token_id`: `model.encoder.embed_tokens.eoi_embedding` (D,), the eoi
token's input vector (encoder and decoder), stored after the encoder's table; fresh 0.

Fresh initialisation: every linear and embedding weight N(0, 0.02), every RMSNorm weight 0
(the norm scales by (1 + w), so 0 is the identity). Entries are drawn in the order of
`param_shapes`, from one `np.random.Generator`, so a seed fixes the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import DECODER_ONLY, ENCODER_ONLY, ClassifierConfig, EncDecConfig, GemmaConfig

INIT_STD = 0.02  # standard deviation of fresh linear and embedding weights

# Classification heads (SPEC.md section 7), named as transformers names them.
GEMMA2_SCORE = "score.weight"              # Gemma2ForSequenceClassification, (C, D), no bias
T5GEMMA_SCORE = "score.out_proj.weight"    # T5GemmaForSequenceClassification, (C, D)
T5GEMMA_SCORE_BIAS = "score.out_proj.bias"  # (C,)
# T5Gemma 2: the input vector of EncDecConfig.eoi_token_id (encoder and decoder share it)
EOI_KEY = "model.encoder.embed_tokens.eoi_embedding"


@dataclass(frozen=True)
class StackSpec:
    """How one Gemma 2 stack is wired and named."""

    cfg: GemmaConfig
    # Key prefix: "model.", "model.encoder." or "model.decoder.".
    prefix: str
    # Names of the pre/post norms around self-attention.
    attn_norms: tuple
    # Each block has a separate cross-attention sublayer over the encoder output.
    cross: bool = False
    # Self-attention also attends to the encoder output (T5Gemma 2 merged attention).
    merged: bool = False
    # Width De of the encoder output read by cross/merged attention (None: no memory).
    memory_width: Optional[int] = None
    # T5Gemma 2: (token id, key of the (D,) vector that embeds it), or None
    eoi: Optional[tuple] = None

    @property
    def has_memory(self) -> bool:
        return self.cross or self.merged

    def layer(self, i: int) -> str:
        """Key prefix of block i, e.g. "model.decoder.layers.3."."""
        return f"{self.prefix}layers.{i}."

    @property
    def embed_key(self) -> str:
        return f"{self.prefix}embed_tokens.weight"

    @property
    def norm_key(self) -> str:
        return f"{self.prefix}norm.weight"


GEMMA_NORMS = ("input_layernorm", "post_attention_layernorm")
T5GEMMA_NORMS = ("pre_self_attn_layernorm", "post_self_attn_layernorm")
CROSS_NORMS = ("pre_cross_attn_layernorm", "post_cross_attn_layernorm")
FFW_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")


def gemma_spec(cfg: GemmaConfig) -> StackSpec:
    """The decoder-only Gemma 2 stack."""
    return StackSpec(cfg=cfg, prefix="model.", attn_norms=GEMMA_NORMS)


def _eoi(config: EncDecConfig):
    return None if config.eoi_token_id is None else (config.eoi_token_id, EOI_KEY)


def encoder_spec(config: EncDecConfig) -> StackSpec:
    return StackSpec(cfg=config.encoder, prefix="model.encoder.",
                     attn_norms=T5GEMMA_NORMS, eoi=_eoi(config))


def decoder_spec(config: EncDecConfig) -> StackSpec:
    return StackSpec(cfg=config.decoder, prefix="model.decoder.",
                     attn_norms=T5GEMMA_NORMS, cross=not config.merged_attention,
                     merged=config.merged_attention,
                     memory_width=config.encoder.hidden_size, eoi=_eoi(config))


def _attention_shapes(name: str, cfg: GemmaConfig, d_kv: int) -> dict:
    D, H, K, Dh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return {f"{name}.q_proj.weight": (H * Dh, D), f"{name}.k_proj.weight": (K * Dh, d_kv),
            f"{name}.v_proj.weight": (K * Dh, d_kv), f"{name}.o_proj.weight": (D, H * Dh)}


def stack_shapes(spec: StackSpec, *, embedding: bool = True) -> dict:
    """Parameter shapes of one stack, in a fixed order (embedding, layers, final norm)."""
    cfg = spec.cfg
    D, F = cfg.hidden_size, cfg.intermediate_size
    shapes = {}
    if embedding:
        shapes[spec.embed_key] = (cfg.vocab_size, D)
        if spec.eoi is not None:  # T5Gemma 2's eoi vector, stored beside the table
            shapes[spec.eoi[1]] = (D,)
    for i in range(cfg.num_hidden_layers):
        p = spec.layer(i)
        shapes.update(_attention_shapes(p + "self_attn", cfg, D))
        if cfg.qk_norm:  # Gemma 3: RMSNorm of each query / key head, weights over Dh
            shapes.update({p + "self_attn.q_norm.weight": (cfg.head_dim,),
                           p + "self_attn.k_norm.weight": (cfg.head_dim,)})
        if spec.cross:
            shapes.update(_attention_shapes(p + "cross_attn", cfg, spec.memory_width))
        shapes.update({p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                       p + "mlp.down_proj.weight": (D, F)})
        norms = spec.attn_norms + (CROSS_NORMS if spec.cross else ()) + FFW_NORMS
        shapes.update({f"{p}{n}.weight": (D,) for n in norms})
    shapes[spec.norm_key] = (D,)
    return shapes


def head_shapes(config: ClassifierConfig) -> dict:
    """The classification head's keys -> shapes."""
    C, D = config.num_labels, config.hidden_size
    if config.mode == DECODER_ONLY:
        return {GEMMA2_SCORE: (C, D)}
    return {T5GEMMA_SCORE: (C, D), T5GEMMA_SCORE_BIAS: (C,)}


def backbone_shapes(config: ClassifierConfig) -> dict:
    """The backbone keys a classifier stores: all of them, except in encoder-only mode,
    where (as in transformers) only the encoder's."""
    if config.mode == ENCODER_ONLY:
        return stack_shapes(encoder_spec(config.backbone))
    return param_shapes(config.backbone)


def param_shapes(config) -> dict:
    """Every stored parameter key -> shape, in initialisation order."""
    if isinstance(config, ClassifierConfig):
        return {**backbone_shapes(config), **head_shapes(config)}
    if isinstance(config, GemmaConfig):
        return stack_shapes(gemma_spec(config))
    if isinstance(config, EncDecConfig):
        shapes = stack_shapes(encoder_spec(config))
        shapes.update(stack_shapes(decoder_spec(config),
                                   embedding=not config.tie_all_embeddings))
        return shapes
    raise ValueError(f"param_shapes: argument 'config': expected a GemmaConfig, "
                     f"EncDecConfig or ClassifierConfig, got {type(config).__name__}")


def is_norm_key(key: str) -> bool:
    """RMSNorm weights (initialised to 0) end in "norm.weight" / "layernorm.weight"."""
    return key.endswith("norm.weight")


def init_tensor(key: str, shape: tuple, rng: np.random.Generator, dtype) -> np.ndarray:
    """One fresh parameter: norm weights, biases and T5Gemma 2's eoi vector 0 (as
    transformers initialises it); T5Gemma's classification head
    N(0, 0.02^2 / C) (as transformers initialises it); every other weight N(0, 0.02^2)."""
    if is_norm_key(key) or key.endswith(".bias") or key == EOI_KEY:
        return np.zeros(shape, dtype=dtype)
    std = INIT_STD / np.sqrt(shape[0]) if key == T5GEMMA_SCORE else INIT_STD
    return (rng.standard_normal(shape) * std).astype(dtype)


def init_params(config, seed: int = 0, dtype=np.float32,
                rng: Optional[np.random.Generator] = None) -> dict:
    """Fresh parameters (`init_tensor`), drawn in `param_shapes` order: a classifier's
    backbone gets the same weights as the backbone model built from the same seed."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"init_params: argument 'dtype': expected float32 or float64, "
                         f"got {dtype}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    return {key: init_tensor(key, shape, rng, dtype)
            for key, shape in param_shapes(config).items()}


def check_params(config, params) -> np.dtype:
    """params must hold exactly the keys of `param_shapes(config)`, each a float array of the
    right shape, all of one dtype. Returns that dtype."""
    fn = "build_model"
    if not isinstance(params, dict):
        raise ValueError(f"{fn}: argument 'params': expected a dict of arrays, got "
                         f"{type(params).__name__}")
    shapes = param_shapes(config)
    missing = [k for k in shapes if k not in params]
    extra = sorted(k for k in params if k not in shapes)
    if missing:
        raise ValueError(f"{fn}: argument 'params': missing keys {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
    if extra:
        raise ValueError(f"{fn}: argument 'params': unexpected keys {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''} ({len(extra)} in all)")
    dtypes = set()
    for k, shape in shapes.items():
        v = params[k]
        if not isinstance(v, np.ndarray) or v.dtype not in (np.float32, np.float64):
            raise ValueError(f"{fn}: params[{k!r}]: expected a float32 or float64 array, got "
                             f"{getattr(v, 'dtype', type(v).__name__)}")
        if v.shape != tuple(shape):
            raise ValueError(f"{fn}: params[{k!r}]: expected shape {tuple(shape)}, "
                             f"got {v.shape}")
        dtypes.add(v.dtype)
    if len(dtypes) > 1:
        raise ValueError(f"{fn}: argument 'params': expected one dtype, got "
                         f"{sorted(map(str, dtypes))}")
    return dtypes.pop()
