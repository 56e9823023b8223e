"""Model configurations: one Gemma 2 stack, and an encoder-decoder made of two stacks.

Field names follow the Hugging Face `Gemma2Config` so that `config.json` files map one to
one (SPEC.md section 5). Every config is a frozen dataclass validated on construction: a bad
value raises `ValueError` naming the field, the expected and the actual value.

Presets by name (`preset("tiny")`, `encdec_preset("9b-2b")`):
  tiny, small         our own sizes for training on a 2-core CPU (vocabulary of the
                      shipped SentencePiece model, 8192)
  S, B, L, XL         the paper's mT5-shaped suite (SPEC.md section 6), vocabulary 256,000
  2b, 9b              Gemma 2 2B and 9B shapes, vocabulary 256,000
  gemma3_tiny         a Gemma 3 of our own size (decoder-only; q/k norms, 5 local : 1 global)
  gemma3_270m,        Gemma 3 270M and 1B text shapes, vocabulary 262,144 (decoder-only)
  gemma3_1b
  gemma3_4b           Gemma 3 4B's text model (vocabulary 262,208, global RoPE scaled by 8)
Encoder-decoder presets (`encdec_preset`): "NAME" (balanced) or "ENC-DEC" from the above,
and T5Gemma 2 (`t5gemma2_config` of a Gemma 3 stack):
  t5gemma2_tiny       gemma3_tiny as encoder and decoder
  t5gemma2_270m-270m  gemma3_270m's shape in both stacks with T5Gemma2TextConfig's
                      vocabulary, 262,208 (the text model of google/t5gemma-2-270m-270m)
  t5gemma2_1b-1b,     the same from gemma3_1b and gemma3_4b (the released T5Gemma 2
  t5gemma2_4b-4b      sizes)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from .validate import check_bool, check_int, check_known_fields, check_number, invalid

SLIDING = "sliding_attention"  # layer type name used by transformers
FULL = "full_attention"
LAYER_TYPES = (SLIDING, FULL)
# How a bidirectional (encoder) local layer reads its window W, with d = q - k:
SYMMETRIC = "symmetric"  # |d| < W (T5Gemma, SPEC 2): up to 2W - 1 keys
SPLIT = "split"          # T5Gemma 2 (transformers): 0 <= d < (W + 1) // 2 or
                         # 0 < -d < W // 2 + 1, i.e. about W keys, one more on the right
WINDOW_KINDS = (SYMMETRIC, SPLIT)


def alternating_layer_types(num_layers: int) -> tuple[str, ...]:
    """Gemma 2's pattern: layer i is local (sliding window) when i is even, global when odd."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))


def patterned_layer_types(num_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's pattern: pattern - 1 local layers, then one global, repeated (layer i is
    global when (i + 1) % pattern == 0; transformers' `sliding_window_pattern`, 6)."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


@dataclass(frozen=True)
class GemmaConfig:
    """One Gemma 2 stack (a decoder-only LM, or one half of an encoder-decoder)."""

    # V: number of token ids (embedding rows and output logits).
    vocab_size: int = 8192
    # D: model width (residual stream size).
    hidden_size: int = 128
    # L: number of transformer blocks.
    num_hidden_layers: int = 2
    # H: query heads per attention layer.
    num_attention_heads: int = 4
    # K: key/value heads (grouped-query attention); H must be a multiple of K.
    num_key_value_heads: int = 2
    # Dh: size of one head (even, because RoPE rotates pairs of halves).
    head_dim: int = 32
    # F: width of the GeGLU feed-forward layer.
    intermediate_size: int = 512
    # W: sliding-window size of local layers (causal: 0 <= q-k < W; encoder: |q-k| < W,
    # or T5Gemma 2's split window, see bidirectional_window).
    sliding_window: int = 32
    # How bidirectional (encoder) local layers read W: "symmetric" |q-k| < W (Gemma 2 /
    # T5Gemma) or "split" (T5Gemma 2: 0 <= q-k < (W+1)//2 or 0 < k-q < W//2 + 1).
    # Causal masks ignore it.
    bidirectional_window: str = SYMMETRIC
    # Per-layer attention kind, "sliding_attention" or "full_attention"; empty means
    # Gemma 2's alternation (even layers local, odd layers global), filled in on creation.
    layer_types: tuple = ()
    # c in the attention-score soft-cap s = c * tanh(s / c); None disables it.
    attn_logit_softcapping: Optional[float] = 50.0
    # c in the output-logit soft-cap z = c * tanh(z / c); None disables it.
    final_logit_softcapping: Optional[float] = 30.0
    # Scores are multiplied by query_pre_attn_scalar ** -0.5; None means head_dim.
    query_pre_attn_scalar: Optional[float] = None
    # RoPE base theta: inv_freq[i] = theta ** (-2i / Dh) (Gemma 3: of the global layers).
    rope_theta: float = 10000.0
    # Gemma 3: the RoPE base of the local (sliding) layers; None means rope_theta.
    rope_local_theta: Optional[float] = None
    # Gemma 3 (4B and larger): linear RoPE scaling of the global layers, angles
    # position / factor * inv_freq; 1.0 is plain RoPE.
    rope_scaling_factor: float = 1.0
    # Gemma 3: RMSNorm (1 + w) of every query and key head over Dh, after the projection and
    # before RoPE (weights self_attn.q_norm / k_norm, shape (Dh,)).
    qk_norm: bool = False
    # Epsilon inside the RMSNorm square root.
    rms_norm_eps: float = 1e-6
    # Special token ids (Gemma convention): padding, end of sequence, beginning of sequence.
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "intermediate_size", "sliding_window"):
            check_int(getattr(self, f), f"{name}.{f}", low=1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise invalid(f"{name}.num_attention_heads",
                          f"a multiple of num_key_value_heads={self.num_key_value_heads}",
                          self.num_attention_heads)
        if self.head_dim % 2:
            raise invalid(f"{name}.head_dim", "an even number (RoPE rotates two halves)",
                          self.head_dim)
        for f in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"):
            check_number(getattr(self, f), f"{name}.{f}", low=0, low_open=True,
                         allow_none=True)
        if self.query_pre_attn_scalar is None:
            object.__setattr__(self, "query_pre_attn_scalar", float(self.head_dim))
        for f in ("rope_theta", "rms_norm_eps", "rope_scaling_factor"):
            check_number(getattr(self, f), f"{name}.{f}", low=0, low_open=True)
        check_number(self.rope_local_theta, f"{name}.rope_local_theta", low=0, low_open=True,
                     allow_none=True)
        check_bool(self.qk_norm, f"{name}.qk_norm")
        if self.bidirectional_window not in WINDOW_KINDS:
            raise invalid(f"{name}.bidirectional_window", f"one of {WINDOW_KINDS}",
                          self.bidirectional_window)
        for f in ("pad_token_id", "eos_token_id", "bos_token_id"):
            check_int(getattr(self, f), f"{name}.{f}", low=0, high=self.vocab_size - 1)
        lt = tuple(self.layer_types) if self.layer_types else \
            alternating_layer_types(self.num_hidden_layers)
        if len(lt) != self.num_hidden_layers:
            raise invalid(f"{name}.layer_types",
                          f"{self.num_hidden_layers} entries (one per layer)", lt)
        for t in lt:
            if t not in LAYER_TYPES:
                raise invalid(f"{name}.layer_types", f"entries in {LAYER_TYPES}", t)
        object.__setattr__(self, "layer_types", lt)

    # --- derived quantities -------------------------------------------------------------
    @property
    def num_queries_per_kv(self) -> int:
        """H / K: how many query heads share one key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    def is_local(self, layer: int) -> bool:
        """True when block `layer` uses the sliding window."""
        return self.layer_types[layer] == SLIDING

    def rope_base(self, layer_type: str) -> tuple:
        """(theta, linear scaling factor) of the RoPE of one layer type: Gemma 2 uses
        (rope_theta, 1) everywhere; Gemma 3's local layers (rope_local_theta, 1) and its
        global layers (rope_theta, rope_scaling_factor)."""
        if layer_type == SLIDING:
            local = self.rope_theta if self.rope_local_theta is None else self.rope_local_theta
            return float(local), 1.0
        return float(self.rope_theta), float(self.rope_scaling_factor)

    def replace(self, **changes: Any) -> "GemmaConfig":
        """A copy with some fields changed (validated again). Changing the depth without
        giving layer_types re-derives the alternation."""
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = ()
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GemmaConfig":
        d = check_known_fields(cls, d)
        if "layer_types" in d and d["layer_types"] is not None:
            d["layer_types"] = tuple(d["layer_types"])
        return cls(**d)


@dataclass(frozen=True)
class EncDecConfig:
    """An encoder-decoder (T5Gemma): two Gemma 2 stacks plus cross-attention.

    Cross-attention uses the decoder's heads (H, K, Dh); its key/value projections read
    the encoder width, so the encoder and decoder may differ in width, depth and heads.
    """

    # The encoder stack (bidirectional self-attention; local layers use |q-k| < W).
    encoder: GemmaConfig = field(default_factory=GemmaConfig)
    # The decoder stack (causal self-attention, then cross-attention, then MLP).
    decoder: GemmaConfig = field(default_factory=GemmaConfig)
    # T5Gemma 2 option: one embedding table for encoder input, decoder input and output.
    tie_all_embeddings: bool = False
    # T5Gemma 2 option: one attention per decoder block over [decoder ; encoder] tokens
    # instead of separate self- and cross-attention (needs equal encoder/decoder widths).
    merged_attention: bool = False
    # Steps at the start of training in which only cross-attention trains (the paper's
    # warmup for unbalanced adaptation, K = 1000 at 9B-2B); 0 disables it.
    cross_attn_warmup_steps: int = 0
    # The paper's causal-encoder ablation: the encoder runs with decoder-style causal masks
    # (k <= q; local layers 0 <= q - k < W) everywhere (training, generation, a probe built
    # on it). No released checkpoint has it, and transformers' T5Gemma cannot express it.
    causal_encoder: bool = False
    # T5Gemma 2 (needs tie_all_embeddings): the input embedding of this token id, in the
    # encoder and the decoder, is the learned vector `model.encoder.embed_tokens.eoi_embedding`
    # (D,), unscaled, instead of E[id] * sqrt(D) (transformers' eoi_token_index, 256,000:
    # the end-of-image token); the output matrix still uses E's row. None: no such token.
    eoi_token_id: Optional[int] = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("encoder", "decoder"):
            if not isinstance(getattr(self, f), GemmaConfig):
                raise invalid(f"{name}.{f}", "a GemmaConfig", getattr(self, f))
        for f in ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self.encoder, f) != getattr(self.decoder, f):
                raise invalid(f"{name}.decoder.{f}", f"the encoder's {f}="
                              f"{getattr(self.encoder, f)}", getattr(self.decoder, f))
        for f in ("tie_all_embeddings", "merged_attention"):
            check_bool(getattr(self, f), f"{name}.{f}")
            if getattr(self, f) and self.encoder.hidden_size != self.decoder.hidden_size:
                raise invalid(f"{name}.{f}", "False when encoder and decoder widths differ",
                              f"True (widths {self.encoder.hidden_size} vs "
                              f"{self.decoder.hidden_size})")
        check_int(self.cross_attn_warmup_steps, f"{name}.cross_attn_warmup_steps", low=0)
        check_bool(self.causal_encoder, f"{name}.causal_encoder")
        if self.eoi_token_id is not None:
            check_int(self.eoi_token_id, f"{name}.eoi_token_id", low=0,
                      high=self.encoder.vocab_size - 1)
            if not self.tie_all_embeddings:
                raise invalid(f"{name}.eoi_token_id", "None unless tie_all_embeddings=True "
                              "(T5Gemma 2)", self.eoi_token_id)
        # Gemma 3's q/k norms (T5Gemma 2): the decoder's only with merged attention (a
        # separate cross-attention would need norms of its own, which no model has)
        if self.decoder.qk_norm and not self.merged_attention:
            raise invalid(f"{name}.decoder.qk_norm", "False unless merged_attention=True "
                          "(T5Gemma 2)", True)

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def is_balanced(self) -> bool:
        return self.encoder == self.decoder

    def replace(self, **changes: Any) -> "EncDecConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"encoder": self.encoder.to_dict(), "decoder": self.decoder.to_dict(),
                "tie_all_embeddings": self.tie_all_embeddings,
                "merged_attention": self.merged_attention,
                "cross_attn_warmup_steps": self.cross_attn_warmup_steps,
                "causal_encoder": self.causal_encoder, "eoi_token_id": self.eoi_token_id}

    @classmethod
    def from_dict(cls, d: dict) -> "EncDecConfig":
        d = check_known_fields(cls, d)
        for f in ("encoder", "decoder"):
            if f not in d:
                raise ValueError(f"EncDecConfig: missing config field {f!r}")
            d[f] = GemmaConfig.from_dict(d[f])
        return cls(**d)


T5GEMMA2_EOI = 256_000  # transformers' default eoi_token_index (T5Gemma2Config)


def t5gemma2_config(stack: GemmaConfig, decoder: Optional[GemmaConfig] = None,
                    **changes: Any) -> EncDecConfig:
    """A T5Gemma 2 encoder-decoder from Gemma 3 stack(s): the encoder with transformers'
    split local window, the decoder (default: the same stack) with merged attention, and
    one embedding table for encoder input, decoder input and output. `changes` apply to the
    EncDecConfig (e.g. cross_attn_warmup_steps); eoi_token_id defaults to transformers'
    256,000 when the vocabulary holds it, else None."""
    dec = stack if decoder is None else decoder
    changes.setdefault("eoi_token_id",
                       T5GEMMA2_EOI if stack.vocab_size > T5GEMMA2_EOI else None)
    return EncDecConfig(encoder=stack.replace(bidirectional_window=SPLIT),
                        decoder=dec.replace(bidirectional_window=SYMMETRIC),
                        merged_attention=True, tie_all_embeddings=True, **changes)


# Classifier modes (SPEC.md section 7): which hidden state the head reads.
DECODER_ONLY = "decoder"            # Gemma2ForSequenceClassification: last real token
ENCODER_ONLY = "encoder"            # T5GemmaForSequenceClassification, is_encoder_decoder=False
ENCODER_DECODER = "encoder_decoder"  # T5GemmaForSequenceClassification, is_encoder_decoder=True
CLASSIFIER_MODES = (DECODER_ONLY, ENCODER_ONLY, ENCODER_DECODER)


@dataclass(frozen=True)
class ClassifierConfig:
    """A sequence classifier: a backbone plus a linear head on one token's hidden state
    (`mini_encdec.models.classifier`, SPEC.md section 7)."""

    # The backbone: a GemmaConfig (decoder-only) or an EncDecConfig (T5Gemma).
    backbone: Any = field(default_factory=GemmaConfig)
    # C: number of classes (>= 2; transformers treats 1 as regression, not supported here).
    num_labels: int = 2
    # "decoder" for a GemmaConfig; "encoder" (the paper's probe, the default) or
    # "encoder_decoder" for an EncDecConfig. None picks the default.
    mode: Optional[str] = None
    # Class names (transformers' id2label); empty means "LABEL_0", "LABEL_1", ...
    label_names: tuple = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.backbone, (GemmaConfig, EncDecConfig)):
            raise invalid(f"{name}.backbone", "a GemmaConfig or EncDecConfig", self.backbone)
        n = check_int(self.num_labels, f"{name}.num_labels", low=2)
        allowed = (DECODER_ONLY,) if isinstance(self.backbone, GemmaConfig) \
            else (ENCODER_ONLY, ENCODER_DECODER)
        mode = allowed[0] if self.mode is None else self.mode
        if mode not in allowed:
            raise invalid(f"{name}.mode", f"one of {allowed} for a "
                          f"{type(self.backbone).__name__} backbone", mode)
        object.__setattr__(self, "mode", mode)
        labels = tuple(self.label_names) if self.label_names else \
            tuple(f"LABEL_{i}" for i in range(n))
        if len(labels) != n or not all(isinstance(x, str) and x for x in labels) \
                or len(set(labels)) != n:
            raise invalid(f"{name}.label_names", f"{n} distinct non-empty strings (one per "
                          f"class)", self.label_names)
        object.__setattr__(self, "label_names", labels)

    @property
    def vocab_size(self) -> int:
        return self.backbone.vocab_size

    @property
    def pad_token_id(self) -> int:
        b = self.backbone
        return (b if isinstance(b, GemmaConfig) else b.decoder).pad_token_id

    @property
    def hidden_size(self) -> int:
        """Width of the hidden state the head reads."""
        b = self.backbone
        if self.mode == DECODER_ONLY:
            return b.hidden_size
        return (b.encoder if self.mode == ENCODER_ONLY else b.decoder).hidden_size

    def replace(self, **changes: Any) -> "ClassifierConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"backbone": self.backbone.to_dict(), "num_labels": self.num_labels,
                "mode": self.mode, "label_names": list(self.label_names)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        d = check_known_fields(cls, d)
        if "backbone" not in d:
            raise ValueError("ClassifierConfig: missing config field 'backbone'")
        d["backbone"] = config_from_dict(d["backbone"])
        if d.get("label_names") is not None:
            d["label_names"] = tuple(d["label_names"])
        return cls(**d)


def config_from_dict(d: dict):
    """GemmaConfig, EncDecConfig or ClassifierConfig, whichever the dict describes."""
    if isinstance(d, dict) and "backbone" in d:
        return ClassifierConfig.from_dict(d)
    return EncDecConfig.from_dict(d) if "encoder" in d else GemmaConfig.from_dict(d)


# --- presets -----------------------------------------------------------------------------

_BIG_VOCAB = 256_000  # Gemma's SentencePiece vocabulary
_GEMMA3_VOCAB = 262_144  # Gemma 3's (text checkpoints; the multimodal ones have 262,208)
# what every Gemma 3 preset shares
_GEMMA3 = dict(qk_norm=True, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
               attn_logit_softcapping=None, final_logit_softcapping=None)

PRESETS: dict[str, dict] = {
    # Ours: trains in minutes on 2 cores with the shipped 8k tokenizer.
    "tiny": dict(vocab_size=8192, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, intermediate_size=384, sliding_window=32),
    "small": dict(vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, intermediate_size=1024, sliding_window=64),
    # The speed targets' larger shape (D512 x6; `bench --presets medium`).
    "medium": dict(vocab_size=8192, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                   num_key_value_heads=4, head_dim=64, intermediate_size=2048,
                   sliding_window=128),
    # The paper's mT5-shaped suite (multi-head attention, Dh 64).
    "S": dict(vocab_size=_BIG_VOCAB, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
              num_key_value_heads=8, head_dim=64, intermediate_size=1024, sliding_window=4096),
    "B": dict(vocab_size=_BIG_VOCAB, hidden_size=768, num_hidden_layers=12,
              num_attention_heads=12, num_key_value_heads=12, head_dim=64,
              intermediate_size=2048, sliding_window=4096),
    "L": dict(vocab_size=_BIG_VOCAB, hidden_size=1024, num_hidden_layers=24,
              num_attention_heads=16, num_key_value_heads=16, head_dim=64,
              intermediate_size=2816, sliding_window=4096),
    "XL": dict(vocab_size=_BIG_VOCAB, hidden_size=2048, num_hidden_layers=24,
               num_attention_heads=32, num_key_value_heads=32, head_dim=64,
               intermediate_size=5120, sliding_window=4096),
    # Gemma 2 shapes.
    "2b": dict(vocab_size=_BIG_VOCAB, hidden_size=2304, num_hidden_layers=26,
               num_attention_heads=8, num_key_value_heads=4, head_dim=256,
               intermediate_size=9216, sliding_window=4096, query_pre_attn_scalar=256),
    "9b": dict(vocab_size=_BIG_VOCAB, hidden_size=3584, num_hidden_layers=42,
               num_attention_heads=16, num_key_value_heads=8, head_dim=256,
               intermediate_size=14336, sliding_window=4096, query_pre_attn_scalar=256),
    # Gemma 3, decoder-only (Gemma3ForCausalLM): q/k norms, 5 local layers then 1 global,
    # RoPE base 10,000 local / 1,000,000 global, no soft-caps.
    "gemma3_tiny": dict(_GEMMA3, vocab_size=8192, hidden_size=128, num_hidden_layers=6,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                        intermediate_size=384, sliding_window=32, query_pre_attn_scalar=32,
                        layer_types=patterned_layer_types(6)),
    # the text shapes of google/gemma-3-270m and google/gemma-3-1b-pt, as transformers
    # configures them (vocabulary 262,144)
    "gemma3_270m": dict(_GEMMA3, vocab_size=_GEMMA3_VOCAB, hidden_size=640,
                        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                        head_dim=256, intermediate_size=2048, sliding_window=512,
                        query_pre_attn_scalar=256, layer_types=patterned_layer_types(18)),
    "gemma3_1b": dict(_GEMMA3, vocab_size=_GEMMA3_VOCAB, hidden_size=1152,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1,
                      head_dim=256, intermediate_size=6912, sliding_window=512,
                      query_pre_attn_scalar=256, layer_types=patterned_layer_types(26)),
    # the text model of google/gemma-3-4b-pt (a multimodal checkpoint: vocabulary 262,208),
    # its global layers' RoPE positions scaled linearly by 8 (the 128K-context models)
    "gemma3_4b": dict(_GEMMA3, vocab_size=262_208, hidden_size=2560, num_hidden_layers=34,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                      intermediate_size=10240, sliding_window=1024, query_pre_attn_scalar=256,
                      rope_scaling_factor=8.0, layer_types=patterned_layer_types(34)),
}


def _preset_key(name: str) -> str:
    for k in PRESETS:
        if k.lower() == name.lower():
            return k
    raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")


def preset(name: str, **overrides: Any) -> GemmaConfig:
    """A decoder-only Gemma 2 (or, gemma3_*, Gemma 3) config by preset name
    (case-insensitive), with overrides."""
    base = dict(PRESETS[_preset_key(name)])
    base.update(overrides)
    return GemmaConfig(**base)


# T5Gemma 2 presets: name -> (the Gemma 3 preset of both stacks, its changes)
T5GEMMA2_PRESETS = {"t5gemma2_tiny": ("gemma3_tiny", {}),
                    "t5gemma2_270m-270m": ("gemma3_270m", {"vocab_size": 262_208}),
                    "t5gemma2_1b-1b": ("gemma3_1b", {"vocab_size": 262_208}),
                    "t5gemma2_4b-4b": ("gemma3_4b", {})}


def encdec_preset(name: str, **overrides: Any) -> EncDecConfig:
    """An encoder-decoder config: "tiny" (balanced), "9b-2b" (encoder-decoder presets), or
    a T5Gemma 2 preset ("t5gemma2_tiny", "t5gemma2_270m-270m").

    Overrides apply to both stacks, except the EncDecConfig fields (tie_all_embeddings,
    merged_attention, cross_attn_warmup_steps), which apply to the pair.
    """
    top = {k: overrides.pop(k) for k in ("tie_all_embeddings", "merged_attention",
                                          "cross_attn_warmup_steps") if k in overrides}
    if isinstance(name, str) and name.lower() in T5GEMMA2_PRESETS:
        base, changes = T5GEMMA2_PRESETS[name.lower()]
        if top.keys() - {"cross_attn_warmup_steps"}:
            raise ValueError(f"encdec_preset: {name!r} is T5Gemma 2 (merged attention, tied "
                             f"embeddings); got {sorted(top)}")
        return t5gemma2_config(preset(base, **{**changes, **overrides}), **top)
    parts = name.split("-")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise ValueError(f"encdec_preset: expected 'NAME' or 'ENC-DEC', got {name!r}")
    enc, dec = (preset(p, **overrides) for p in parts)
    return EncDecConfig(encoder=enc, decoder=dec, **top)


# --- parameter counting --------------------------------------------------------------------

def _attention_params(d_q: int, d_kv: int, cfg: GemmaConfig) -> int:
    h, k, dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    return d_q * h * dh + 2 * d_kv * k * dh + h * dh * d_q  # q, k, v, o


def _stack_params(cfg: GemmaConfig, *, norms_per_layer: int, embedding: bool) -> int:
    d = cfg.hidden_size
    per_layer = (_attention_params(d, d, cfg) + 3 * d * cfg.intermediate_size
                 + norms_per_layer * d + (2 * cfg.head_dim if cfg.qk_norm else 0))
    total = cfg.num_hidden_layers * per_layer + d  # + final norm
    if embedding:
        total += cfg.vocab_size * d
    return total


def count_parameters(config) -> int:
    """Number of distinct parameters, as `transformers` `model.num_parameters()` reports
    (the tied output matrix counted once)."""
    if isinstance(config, ClassifierConfig):  # T5Gemma's head has a bias, Gemma 2's not
        c, b = config, config.backbone
        head = c.num_labels * c.hidden_size + (c.num_labels if c.mode != DECODER_ONLY else 0)
        if c.mode == ENCODER_ONLY:  # transformers keeps only the encoder
            eoi = b.encoder.hidden_size if b.eoi_token_id is not None else 0
            return _stack_params(b.encoder, norms_per_layer=4, embedding=True) + head + eoi
        return count_parameters(b) + head
    if isinstance(config, GemmaConfig):
        return _stack_params(config, norms_per_layer=4, embedding=True)
    if not isinstance(config, EncDecConfig):
        raise ValueError(f"count_parameters: expected a GemmaConfig, EncDecConfig or "
                         f"ClassifierConfig, got {type(config).__name__}")
    enc, dec = config.encoder, config.decoder
    total = _stack_params(enc, norms_per_layer=4, embedding=True)
    total += _stack_params(dec, norms_per_layer=4, embedding=not config.tie_all_embeddings)
    if not config.merged_attention:
        cross = _attention_params(dec.hidden_size, enc.hidden_size, dec) + 2 * dec.hidden_size
        total += dec.num_hidden_layers * cross
    if config.eoi_token_id is not None:  # T5Gemma 2's eoi input vector
        total += enc.hidden_size
    return total
