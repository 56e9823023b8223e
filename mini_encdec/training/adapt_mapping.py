"""The adaptation mapping: which decoder-only weight initialises each T5Gemma weight (SPEC.md
section 3).

Every weight of the encoder-decoder starts from the most similar weight of the source:

  balanced, one source M (encoder and decoder both from M):
    model.{encoder,decoder}.embed_tokens          <- M model.embed_tokens (two copies)
    model.{encoder,decoder}.layers.i.self_attn.*  <- M model.layers.i.self_attn.*
    model.{encoder,decoder}.layers.i.mlp.*        <- M model.layers.i.mlp.*
      .pre_self_attn_layernorm                    <- M .input_layernorm
      .post_self_attn_layernorm                   <- M .post_attention_layernorm
      .{pre,post}_feedforward_layernorm           <- M the same names
    model.decoder.layers.i.cross_attn.{q,k,v,o}   <- M model.layers.i.self_attn.{q,k,v,o}
      .pre_cross_attn_layernorm                   <- M .input_layernorm      (our choice;
      .post_cross_attn_layernorm                  <- M .post_attention_layernorm  the paper
    model.{encoder,decoder}.norm                  <- M model.norm             is silent)

  unbalanced, encoder from A (larger), decoder from B (smaller), same vocabulary:
    model.encoder.*  <- A as above;   model.decoder.* except cross-attention <- B as above
    cross_attn.{q,k,v,o}_proj  fresh N(0, 0.02) from an explicit np.random.Generator
                               (k/v read the encoder width, A's hidden_size)
    {pre,post}_cross_attn_layernorm  fresh 0 (the identity, since norms scale by 1 + w)
    EncDecConfig.cross_attn_warmup_steps = K: the trainer updates only cross-attention
    for the first K steps, then everything (the paper: K = 1000 at 9B-2B).

  T5Gemma 2, from Gemma 3 source(s) (cfg.qk_norm; `adapted_config` then returns
  `config.t5gemma2_config(A, B)`): the same lines, with no cross-attention and one table:
    model.encoder.embed_tokens                    <- A model.embed_tokens (the only table:
                                                     decoder input and output are tied to it)
    model.{encoder,decoder}.layers.i.self_attn.*  <- the source's self_attn.*, q_norm and
                                                     k_norm included; the decoder's merged
                                                     attention over [decoder ; encoder] keys
                                                     uses these weights for both key sets
    model.encoder.embed_tokens.eoi_embedding      fresh zeros (when the vocabulary holds
                                                     the eoi id; transformers' init)
    encoder and decoder widths must be equal (one table, merged attention); no
    cross-attention is fresh, so there is no warmup (cross_attn_warmup_steps 0).

Why it works: the adapted decoder with its cross-attention output zeroed IS the source
model, and the adapted encoder run with causal masks IS the source model too (tests).
T5Gemma 2: the encoder with causal masks IS the source; the decoder whose merged attention
sees no encoder key (every encoder token masked) IS the source.

API (pure functions of configs and key names; no tensor is read here, see adapt.py)
    origin = _origin(target_key, balanced)        the Origin of one target tensor
    plan = adaptation_plan(config, balanced)      target key -> Origin, in file order
    config = adapted_config(A_config, B_config, warmup_steps)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from ..config import EncDecConfig, GemmaConfig, t5gemma2_config
from ..models.params import INIT_STD, param_shapes


class AdaptError(ValueError):
    """Sources that cannot be adapted together (vocabularies, special ids, tokenizers)."""


# --- where every target tensor comes from ------------------------------------------------------

@dataclass(frozen=True)
class Origin:
    """The initialiser of one target tensor: a source tensor, or a fresh draw."""

    # "A" (the encoder's source; the only source when balanced), "B" (the decoder's
    # source when unbalanced), or None for a fresh tensor.
    source: Optional[str]
    # The source tensor's key (Gemma2ForCausalLM naming), None when fresh.
    key: Optional[str] = None
    # Fresh tensors: "normal" (N(0, 0.02)) or "zeros" (norm weights).
    init: Optional[str] = None

    def __str__(self) -> str:
        if self.source is not None:
            return f"{self.source}:{self.key}"
        return f"fresh N(0, {INIT_STD})" if self.init == "normal" else "fresh zeros"


# T5Gemma layer-piece name -> Gemma 2 layer-piece name
_NORM_SOURCE = {
    "pre_self_attn_layernorm": "input_layernorm",
    "post_self_attn_layernorm": "post_attention_layernorm",
    "pre_feedforward_layernorm": "pre_feedforward_layernorm",
    "post_feedforward_layernorm": "post_feedforward_layernorm",
    # cross-attention norms (balanced only): the self-attention norms of the same layer
    "pre_cross_attn_layernorm": "input_layernorm",
    "post_cross_attn_layernorm": "post_attention_layernorm",
}
_TARGET = re.compile(r"^model\.(encoder|decoder)\.(?:layers\.(\d+)\.)?(.+)$")


def _origin(target: str, balanced: bool) -> Origin:
    """The initialiser of the encoder-decoder tensor `target` (T5Gemma naming, e.g.
    "model.decoder.layers.1.cross_attn.q_proj.weight"), SPEC.md section 3.

    Returns Origin(source, key) for a copy, or Origin(None, init=...) for a fresh tensor:
    - source: "A" for every encoder tensor, and for every decoder tensor when `balanced`
      (one source model); "B" for the decoder's tensors when not balanced (two sources).
    - key: the Gemma2ForCausalLM key of the same layer: "model.embed_tokens.weight" and
      "model.norm.weight" for the layer-less tensors; self_attn.* and mlp.* keep their
      names; the norms are renamed (pre_self_attn_layernorm <- input_layernorm,
      post_self_attn_layernorm <- post_attention_layernorm, the feed-forward norms keep
      theirs); balanced, cross_attn.X copies self_attn.X and the cross-attention norms copy
      the self-attention norms of the same layer.
    - unbalanced (balanced False), the cross-attention has no source of the right shape:
      cross_attn.* is fresh, Origin(None, init="normal"), and pre/post_cross_attn_layernorm
      are fresh zeros, Origin(None, init="zeros").
    A target that does not match model.(encoder|decoder).[layers.N.]piece raises AdaptError.
    """
    m = _TARGET.match(target)
    if m is None:
        raise AdaptError(f"adaptation_plan: unexpected target key {target!r}")
    part, layer, piece = m.groups()
    source = "A" if (part == "encoder" or balanced) else "B"
    if piece == "embed_tokens.eoi_embedding":  # T5Gemma 2's eoi input vector: no source
        return Origin(None, init="zeros")
    if layer is None:  # embed_tokens.weight or norm.weight
        return Origin(source, f"model.{piece}")
    prefix = f"model.layers.{layer}."
    name = piece[:-len(".weight")]
    if piece.startswith("cross_attn."):
        if not balanced:
            return Origin(None, init="normal")
        return Origin(source, prefix + "self_attn." + piece[len("cross_attn."):])
    if name in _NORM_SOURCE:
        if "cross" in name and not balanced:
            return Origin(None, init="zeros")
        return Origin(source, prefix + _NORM_SOURCE[name] + ".weight")
    return Origin(source, prefix + piece)  # self_attn.* and mlp.* keep their names


def adaptation_plan(config: EncDecConfig, balanced: bool) -> dict:
    """Target key -> Origin for every parameter of `config`, in `param_shapes` order
    (the order fresh tensors are drawn in, and the order files are written in)."""
    if not isinstance(config, EncDecConfig):
        raise AdaptError(f"adaptation_plan: expected an EncDecConfig, got "
                         f"{type(config).__name__}")
    t5g2 = config.merged_attention and config.tie_all_embeddings and config.decoder.qk_norm
    if (config.merged_attention or config.tie_all_embeddings) and not t5g2:
        raise AdaptError("adaptation_plan: SPEC.md section 3 adapts into separate "
                         "cross-attention and separate embeddings (merged_attention and "
                         "tie_all_embeddings False), or from Gemma 3 into T5Gemma 2 "
                         "(config.t5gemma2_config)")
    return {k: _origin(k, balanced) for k in param_shapes(config)}


def adapted_config(encoder_source: GemmaConfig, decoder_source: GemmaConfig,
                   warmup_steps: int = 0) -> EncDecConfig:
    """The encoder-decoder config: encoder shaped like A, decoder like B (or both like M);
    from Gemma 3 sources (qk_norm) T5Gemma 2's (`t5gemma2_config`)."""
    for name, c in (("encoder source", encoder_source), ("decoder source", decoder_source)):
        if not isinstance(c, GemmaConfig):
            raise AdaptError(f"adapt: the {name} must be a decoder-only Gemma 2 model "
                             f"(GemmaConfig), got {type(c).__name__}")
    if encoder_source.vocab_size != decoder_source.vocab_size:
        raise AdaptError(f"adapt: the encoder source has a vocabulary of "
                         f"{encoder_source.vocab_size} tokens and the decoder source "
                         f"{decoder_source.vocab_size}; both must share one vocabulary")
    for f in ("pad_token_id", "eos_token_id", "bos_token_id"):
        a, b = getattr(encoder_source, f), getattr(decoder_source, f)
        if a != b:
            raise AdaptError(f"adapt: {f} is {a} in the encoder source and {b} in the decoder "
                             f"source; both must share one tokenizer")
    if encoder_source.qk_norm != decoder_source.qk_norm:
        raise AdaptError("adapt: one source is Gemma 3 (qk_norm) and the other is not; "
                         "adapt Gemma 2 sources into T5Gemma, or Gemma 3 ones into T5Gemma 2")
    if not encoder_source.qk_norm:
        return EncDecConfig(encoder=encoder_source, decoder=decoder_source,
                            cross_attn_warmup_steps=warmup_steps)
    if encoder_source.hidden_size != decoder_source.hidden_size:
        raise AdaptError(f"adapt: T5Gemma 2 (from Gemma 3) ties one embedding table and "
                         f"merges attention, so both sources need one width; got "
                         f"{encoder_source.hidden_size} and {decoder_source.hidden_size}")
    if warmup_steps:
        raise AdaptError(f"adapt: cross_attn_warmup_steps={warmup_steps}, but T5Gemma 2 has "
                         f"no cross-attention to warm up (merged attention); use 0")
    return t5gemma2_config(encoder_source, decoder_source)
