"""Hugging Face configs: a transformers config.json dict <-> our config (SPEC 5).

    config_from_hf(d)     GemmaConfig (Gemma2ForCausalLM, Gemma3ForCausalLM, or the text
                          part of Gemma3ForConditionalGeneration), EncDecConfig
                          (T5GemmaForConditionalGeneration, or the text model of
                          T5Gemma2ForConditionalGeneration) or a ClassifierConfig around one
                          (Gemma2/T5Gemma/T5Gemma2ForSequenceClassification, SPEC 7)
    hf_config(config)     the config.json dict transformers expects for ours
    generation_config(c)  the generation_config.json dict

Parameter names are the Hugging Face keys already (SPEC.md section 5), so only the config
needs translating; the tensors are read and written by `interop`.

What a config.json may hold, and how it is read:
  - `rope_theta` at the top level (transformers 4.x) or under `rope_parameters` (5.x)
  - T5Gemma: the top-level `vocab_size` overrides both halves (as transformers 4.x did;
    5.x no longer propagates it, so we write all three equal)
  - eos_token_id given as a list (instruction-tuned configs): its first entry is used
  - Gemma 3 ("gemma3_text", or a multimodal "gemma3" whose `text_config` is read): fields
    left out take Gemma3TextConfig's defaults; RoPE per layer type either as transformers
    5 writes it, `rope_parameters` {"sliding_attention": {...}, "full_attention": {...}},
    or as 4.x did, `rope_theta` (global), `rope_local_base_freq` (local) and `rope_scaling`
    (global only); rope types "default" and "linear" (global layers) are supported;
    `layer_types`, else `sliding_window_pattern` (6): 5 local layers, then 1 global;
    `attn_logit_softcapping` is read as None whatever it says, because transformers'
    Gemma 3 attention never applies it (final_logit_softcapping it does apply)

T5Gemma 2 ("t5gemma2"): the encoder's stack is `encoder.text_config`, the decoder's
`decoder`, both read as Gemma 3 stacks (T5Gemma2TextConfig has Gemma3TextConfig's
defaults; its attention never applies attn_logit_softcapping either, so it is read as None);
the result is `config.t5gemma2_config(encoder, decoder)`: the encoder's split local window
(transformers' `sliding_window_mask_function(W, is_causal=False)`), merged attention, one
embedding table, and `eoi_token_index` (default 256,000) as `eoi_token_id` when the
vocabulary holds it (None otherwise: the id never occurs). `encoder.vision_config` is not
read (text only). Written back: the same layout, with a placeholder vision tower
(T5GEMMA2_VISION: no layers, one 14x14 patch, width 4; its tensors and the projector all
zeros) so that `from_pretrained` finds every key.

What is written: the fields transformers 5 reads (rope_theta is written both ways, so 4.x
reads it too; Gemma 3 also gets 4.x's rope_local_base_freq and rope_scaling). A config
with qk_norm is written as Gemma3ForCausalLM ("gemma3_text"), one without as
Gemma2ForCausalLM; a Gemma 2 config whose local and global RoPE differ cannot be saved. EncDecConfig.cross_attn_warmup_steps travels in an extra "mini_encdec" entry
(transformers keeps unknown entries and ignores them).

Classifiers (T5Gemma2ForSequenceClassification: mode "encoder_decoder" only, as
transformers allows): the backbone's config plus `architectures`, `id2label`/`label2id` (the number
of classes), `problem_type` "single_label_classification" and, for T5Gemma,
`is_encoder_decoder` (false: the encoder-only probe, whose directory holds no decoder
weights) and `classifier_dropout_rate` 0.0 (ignored on load: no dropout here).

Differences from transformers that a user should know (see the tests and README):
  - transformers >= 5 masks T5Gemma's encoder local layers as |q - k| <= W; SPEC 2 and
    transformers 4.53 use |q - k| < W. The number W is written unchanged, so with
    transformers >= 5 the encoder's local layers see one more key on each side when the
    input is longer than W.
  - transformers requires an integer query_pre_attn_scalar; a fractional one cannot be saved.
  - T5Gemma 2's encoder (and the decoder of its classifier) count positions 0, 1, ...
    whatever the padding, and its classifier's decoder masks no padding key; ours count
    real tokens and mask padding. Equal for right padding (what the parity tests use);
    a left-padded source computes differently in transformers.
"""

from __future__ import annotations

from ..config import (DECODER_ONLY, ENCODER_DECODER, ENCODER_ONLY, FULL, SLIDING,
                     ClassifierConfig, EncDecConfig, GemmaConfig, patterned_layer_types,
                     t5gemma2_config)
from .safetensors_io import TORCH_NAMES, dtype_code

CONFIG_FILE = "config.json"
GEMMA2_ARCH = "Gemma2ForCausalLM"
GEMMA3_ARCH = "Gemma3ForCausalLM"  # model_type "gemma3_text"
GEMMA3_MM_ARCH = "Gemma3ForConditionalGeneration"  # model_type "gemma3": text + vision
T5GEMMA_ARCH = "T5GemmaForConditionalGeneration"
T5GEMMA2_ARCH = "T5Gemma2ForConditionalGeneration"  # model_type "t5gemma2": text + vision
T5GEMMA2_CLS_ARCH = "T5Gemma2ForSequenceClassification"
# T5Gemma2Config's defaults for the image tokens (ids the text model never treats specially
# here; transformers replaces the input embedding of eoi_token_index by a learned vector)
T5GEMMA2_TOKENS = {"boi_token_index": 255_999, "eoi_token_index": 256_000,
                   "image_token_index": 256_001}
# the smallest SigLIP tower transformers builds: written by save_hf so that a text-only
# T5Gemma 2 directory loads with no missing keys (its weights all zero, never used for text)
T5GEMMA2_VISION = {"model_type": "siglip_vision_model", "hidden_size": 4,
                   "intermediate_size": 4, "num_hidden_layers": 0, "num_attention_heads": 1,
                   "num_channels": 1, "image_size": 14, "patch_size": 14,
                   "layer_norm_eps": 1e-6, "vision_use_head": False,
                   "hidden_act": "gelu_pytorch_tanh"}
# the sequence-classification heads (SPEC 7, models/classifier.py)
GEMMA2_CLS_ARCH = "Gemma2ForSequenceClassification"
T5GEMMA_CLS_ARCH = "T5GemmaForSequenceClassification"
_ACTIVATIONS = ("gelu_pytorch_tanh",)  # the tanh approximation of SPEC 1
_DEFAULT_MAX_POSITIONS = 8192


class InteropError(ValueError):
    """A directory or config that cannot be read as (or written to) a Gemma 2 / T5Gemma
    checkpoint."""


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


# Gemma3TextConfig's defaults (transformers 5), for the fields a Gemma 3 config.json may omit
GEMMA3_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "rms_norm_eps": 1e-6, "final_logit_softcapping": None, "attn_logit_softcapping": None}
_GEMMA3_THETA = {FULL: 1_000_000.0, SLIDING: 10_000.0}
_ROPE_TYPES = ("default", "linear")


def _gemma3_rope(d: dict, where: str) -> dict:
    """rope_theta, rope_local_theta, rope_scaling_factor of a Gemma 3 text config, from
    `rope_parameters` per layer type (transformers 5) or rope_theta / rope_local_base_freq /
    rope_scaling (4.x). Linear scaling is supported on the global layers only."""
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and (FULL in rp or SLIDING in rp):
        per_type = {lt: dict(rp.get(lt) or {}) for lt in (FULL, SLIDING)}
    else:  # 4.x: one scaling dict, for the global layers
        scaling = d.get("rope_scaling") or (rp if isinstance(rp, dict) else None) or {}
        per_type = {FULL: {**scaling, "rope_theta": d.get("rope_theta", _GEMMA3_THETA[FULL])},
                    SLIDING: {"rope_theta": d.get("rope_local_base_freq",
                                                  _GEMMA3_THETA[SLIDING])}}
    theta, factor = {}, {}
    for lt, p in per_type.items():
        kind = p.get("rope_type", p.get("type", "default"))
        if kind not in _ROPE_TYPES or (kind == "linear" and lt == SLIDING):
            raise InteropError(f"{where}: rope type {kind!r} of the {lt} layers is not "
                               f"supported (expected 'default', or 'linear' on full_attention)")
        theta[lt] = float(p.get("rope_theta", _GEMMA3_THETA[lt]))
        factor[lt] = float(p.get("factor", 1.0)) if kind == "linear" else 1.0
    return {"rope_theta": theta[FULL], "rope_local_theta": theta[SLIDING],
            "rope_scaling_factor": factor[FULL]}


def _token_id(d: dict, name: str, default: int) -> int:
    v = d.get(name, default)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else default
    return default if v is None else int(v)


def gemma_config_from_hf(d: dict, where: str = CONFIG_FILE, *,
                         gemma3: bool = False) -> GemmaConfig:
    """One Gemma 2 stack from a Gemma2Config / T5GemmaModuleConfig dict, or (gemma3=True)
    a Gemma 3 one from a Gemma3TextConfig dict (q/k norms, RoPE per layer type)."""
    if gemma3:  # transformers' Gemma3Attention never applies attn_logit_softcapping
        d = {**GEMMA3_DEFAULTS, **{k: v for k, v in d.items() if v is not None},
             "attn_logit_softcapping": None}
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
        layer_types = d.get("layer_types") or (
            patterned_layer_types(layers, int(d.get("sliding_window_pattern") or 6)) if gemma3
            else [SLIDING if i % 2 == 0 else FULL for i in range(layers)])
        rope = _gemma3_rope(d, where) if gemma3 else {"rope_theta": _rope_theta(d, where)}
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
            **rope, qk_norm=gemma3, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
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
    """"gemma2", "t5gemma", "gemma3_text" (Gemma 3, text only) or "gemma3" (Gemma 3 with
    a vision tower, of which only the text model is read) from a config dict (model_type,
    else architectures)."""
    kind = d.get("model_type")
    archs = d.get("architectures") or []
    if kind in ("gemma2", "t5gemma", "gemma3_text", "gemma3", "t5gemma2"):
        return kind
    for arch, name in ((GEMMA2_ARCH, "gemma2"), (T5GEMMA_ARCH, "t5gemma"),
                       (GEMMA3_ARCH, "gemma3_text"), (GEMMA3_MM_ARCH, "gemma3"),
                       (T5GEMMA2_ARCH, "t5gemma2"), (T5GEMMA2_CLS_ARCH, "t5gemma2")):
        if arch in archs:
            return name
    raise InteropError(f"{where}: expected a Gemma 2 (model_type 'gemma2'), Gemma 3 "
                       f"('gemma3_text' or 'gemma3'), T5Gemma ('t5gemma') or T5Gemma 2 "
                       f"('t5gemma2') config, got model_type {kind!r}, architectures {archs}")


def config_from_hf(d: dict, where: str = CONFIG_FILE):
    """GemmaConfig (Gemma 2), EncDecConfig (T5Gemma) or, for a *ForSequenceClassification
    directory, a ClassifierConfig around one, from a transformers config dict."""
    backbone = backbone_config_from_hf(d, where)
    archs = d.get("architectures") or []
    unsupported = [a for a in archs if a.startswith("Gemma3") and
                   a.endswith("ForSequenceClassification")]
    if unsupported:
        raise InteropError(f"{where}: architecture {unsupported[0]} is not supported (Gemma 3 "
                           f"loads as Gemma3ForCausalLM only)")
    if not {GEMMA2_CLS_ARCH, T5GEMMA_CLS_ARCH, T5GEMMA2_CLS_ARCH} & set(archs):
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
        if is_t5gemma2(backbone) and mode != ENCODER_DECODER:
            raise InteropError(f"{where}: is_encoder_decoder=false: transformers' T5Gemma 2 "
                               f"classifier is encoder-decoder only")
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
    kind = model_kind(d, where)
    if kind == "gemma2":
        return gemma_config_from_hf(d, where)
    if kind == "gemma3_text":
        return gemma_config_from_hf(d, where, gemma3=True)
    if kind == "gemma3":  # the multimodal directory: its language model only
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise InteropError(f"{where}: Gemma 3 config without a 'text_config' section")
        return gemma_config_from_hf(text, f"{where} [text_config]", gemma3=True)
    if kind == "t5gemma2":
        return t5gemma2_config_from_hf(d, where)
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


def t5gemma2_config_from_hf(d: dict, where: str = CONFIG_FILE) -> EncDecConfig:
    """The text model of a T5Gemma2Config dict: encoder.text_config and decoder as Gemma 3
    stacks, put together by `t5gemma2_config` (split encoder window, merged attention, tied
    embeddings)."""
    enc, dec = d.get("encoder"), d.get("decoder")
    text = enc.get("text_config") if isinstance(enc, dict) else None
    if not isinstance(text, dict) or not isinstance(dec, dict):
        raise InteropError(f"{where}: T5Gemma 2 config without 'encoder.text_config' and "
                           f"'decoder' sections")
    if d.get("tie_word_embeddings") is False:
        raise InteropError(f"{where}: tie_word_embeddings=false is not supported (T5Gemma 2 "
                           f"ties encoder, decoder and output embeddings)")
    stacks = [gemma_config_from_hf(text, f"{where} [encoder.text_config]", gemma3=True),
              gemma_config_from_hf(dec, f"{where} [decoder]", gemma3=True)]
    extra = d.get("mini_encdec") or {}
    eoi = d.get("eoi_token_index", enc.get("eoi_token_index"))
    eoi = T5GEMMA2_TOKENS["eoi_token_index"] if eoi is None else int(eoi)
    try:
        return t5gemma2_config(*stacks, cross_attn_warmup_steps=int(
            extra.get("cross_attn_warmup_steps", 0)),  # an eoi id outside the vocabulary
            eoi_token_id=eoi if 0 <= eoi < stacks[0].vocab_size else None)  # never occurs
    except ValueError as e:
        raise InteropError(f"{where}: {e}") from None


def is_t5gemma2(config) -> bool:
    """An EncDecConfig written as T5Gemma 2 (merged attention), not T5Gemma."""
    return isinstance(config, EncDecConfig) and config.merged_attention


def _t5gemma2_dict(config: EncDecConfig, torch_dtype: str) -> dict:
    """T5Gemma2Config's dict for the text model, with the placeholder vision tower."""
    want = t5gemma2_config(config.encoder, config.decoder, eoi_token_id=config.eoi_token_id,
                           cross_attn_warmup_steps=config.cross_attn_warmup_steps)
    if config.replace(causal_encoder=False) != want:
        raise InteropError("save_hf: an encoder-decoder with merged_attention=True is written "
                           "as T5Gemma 2, which needs config.t5gemma2_config's fields: q/k "
                           "norms in both stacks, the encoder's split window, "
                           "tie_all_embeddings")
    if config.causal_encoder:
        raise InteropError("save_hf: causal_encoder (the paper's ablation) cannot be written "
                           "as a T5Gemma 2 checkpoint: transformers' encoder is bidirectional")
    halves = {}
    for part in ("encoder", "decoder"):
        cfg = getattr(config, part)
        where = f"save_hf [{part}]"
        if cfg.attn_logit_softcapping is not None:
            raise InteropError(f"{where}: attn_logit_softcapping={cfg.attn_logit_softcapping} "
                               f"cannot be saved as T5Gemma 2: transformers ignores it")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise InteropError(f"{where}: transformers' T5Gemma 2 needs hidden_size "
                               f"({cfg.hidden_size}) divisible by num_attention_heads "
                               f"({cfg.num_attention_heads})")
        halves[part] = {**_gemma3_dict(cfg, where), "dropout_rate": 0.0}
    c = config.decoder
    text = {**halves["encoder"], "model_type": "t5gemma2_text"}
    tokens = dict(T5GEMMA2_TOKENS)
    if config.eoi_token_id is not None:
        tokens["eoi_token_index"] = config.eoi_token_id
    return {"architectures": [T5GEMMA2_ARCH], "model_type": "t5gemma2",
            "encoder": {"model_type": "t5gemma2_encoder", "text_config": text,
                        "vision_config": dict(T5GEMMA2_VISION), "mm_tokens_per_image": 1,
                        "tie_word_embeddings": True, "initializer_range": 0.02, **tokens},
            "decoder": {**halves["decoder"], "model_type": "t5gemma2_decoder"},
            "is_encoder_decoder": True, "vocab_size": config.vocab_size,
            "tie_word_embeddings": True, "dropout_rate": 0.0, "attention_dropout": 0.0,
            "classifier_dropout_rate": 0.0, "initializer_range": 0.02,
            "eoi_token_index": tokens["eoi_token_index"],
            "image_token_index": tokens["image_token_index"],
            "pad_token_id": c.pad_token_id, "eos_token_id": c.eos_token_id,
            "bos_token_id": c.bos_token_id, "dtype": torch_dtype,
            "mini_encdec": {"cross_attn_warmup_steps": config.cross_attn_warmup_steps}}


def t5gemma2_extra_shapes(config) -> dict:
    """Tensors a T5Gemma 2 directory holds beyond our parameters (written as zeros): the
    input-embedding vector of eoi_token_index when our config has none (that id is outside
    the vocabulary) and the placeholder vision tower."""
    if isinstance(config, ClassifierConfig):
        config = config.backbone
    if not is_t5gemma2(config):
        return {}
    D, v = config.encoder.hidden_size, T5GEMMA2_VISION
    Dv, p = v["hidden_size"], v["patch_size"]
    n = (v["image_size"] // p) ** 2
    e, t = "model.encoder.", "model.encoder.vision_tower."
    eoi = {} if config.eoi_token_id is not None else {e + "embed_tokens.eoi_embedding": (D,)}
    return {**eoi, t + "embeddings.patch_embedding.weight": (Dv, v["num_channels"], p, p),
            t + "embeddings.patch_embedding.bias": (Dv,),
            t + "embeddings.position_embedding.weight": (n, Dv),
            t + "post_layernorm.weight": (Dv,), t + "post_layernorm.bias": (Dv,),
            e + "multi_modal_projector.mm_input_projection_weight": (Dv, D),
            e + "multi_modal_projector.mm_soft_emb_norm.weight": (Dv,)}


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


def _gemma3_dict(cfg: GemmaConfig, where: str) -> dict:
    """Gemma3TextConfig's fields: Gemma 2's, with RoPE per layer type (5.x and 4.x forms)."""
    d = _stack_dict(cfg, where)
    local, _ = cfg.rope_base(SLIDING)
    theta, factor = cfg.rope_base(FULL)
    full = {"rope_type": "default", "rope_theta": theta}
    if factor != 1.0:
        full = {"rope_type": "linear", "rope_theta": theta, "factor": factor}
    d["rope_parameters"] = {SLIDING: {"rope_type": "default", "rope_theta": local},
                            FULL: full}
    d.update({"rope_theta": theta, "rope_local_base_freq": local,  # transformers 4.x
              "rope_scaling": None if factor == 1.0 else {"rope_type": "linear",
                                                          "factor": factor}})
    d["max_position_embeddings"] = max(32_768, cfg.sliding_window)
    return d


def hf_config(config, dtype="float32") -> dict:
    """The config.json dict transformers expects for our config."""
    torch_dtype = TORCH_NAMES[dtype_code(dtype)]
    if isinstance(config, ClassifierConfig) and getattr(config.backbone, "qk_norm", False) \
            and not is_t5gemma2(config.backbone):
        raise InteropError("save_hf: a classifier on a Gemma 3 backbone (qk_norm) cannot be "
                           "written as a transformers checkpoint")
    if isinstance(config, ClassifierConfig):  # the backbone's, with the head's fields
        d = hf_config(config.backbone, dtype)
        d["architectures"] = [GEMMA2_CLS_ARCH if config.mode == DECODER_ONLY
                              else T5GEMMA2_CLS_ARCH if is_t5gemma2(config.backbone)
                              else T5GEMMA_CLS_ARCH]
        d["id2label"] = {str(i): name for i, name in enumerate(config.label_names)}
        d["label2id"] = {name: i for i, name in enumerate(config.label_names)}
        d["problem_type"] = "single_label_classification"
        if is_t5gemma2(config.backbone) and config.mode != ENCODER_DECODER:
            raise InteropError("save_hf: T5Gemma2ForSequenceClassification is encoder-decoder "
                               "only; a classifier of mode 'encoder' on a T5Gemma 2 backbone "
                               "cannot be written as a transformers checkpoint")
        if config.mode != DECODER_ONLY:
            d["is_encoder_decoder"] = config.mode == ENCODER_DECODER
            d["classifier_dropout_rate"] = 0.0
        return d
    if isinstance(config, GemmaConfig) and config.qk_norm:
        if config.attn_logit_softcapping is not None:
            raise InteropError(f"save_hf: attn_logit_softcapping="
                               f"{config.attn_logit_softcapping} cannot be saved as Gemma 3: "
                               f"transformers' Gemma3 attention ignores it (set it to None)")
        d = {"architectures": [GEMMA3_ARCH], "model_type": "gemma3_text"}
        d.update(_gemma3_dict(config, "save_hf"))
        d["use_bidirectional_attention"] = False
        d["dtype"] = torch_dtype
        return d
    if isinstance(config, GemmaConfig):
        if config.rope_base(SLIDING) != config.rope_base(FULL):
            raise InteropError("save_hf: rope_local_theta / rope_scaling_factor need a Gemma 3 "
                               "checkpoint (qk_norm=True); Gemma 2 has one RoPE for all layers")
        d = {"architectures": [GEMMA2_ARCH], "model_type": "gemma2"}
        d.update(_stack_dict(config, "save_hf"))
        d["use_bidirectional_attention"] = None
        d["dtype"] = torch_dtype
        return d
    if not isinstance(config, EncDecConfig):
        raise InteropError(f"hf_config: expected a GemmaConfig or EncDecConfig, got "
                           f"{type(config).__name__}")
    if config.merged_attention:  # T5Gemma 2
        return _t5gemma2_dict(config, torch_dtype)
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
