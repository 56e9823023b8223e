"""Models: the decoder-only Gemma 2 LM and the T5Gemma encoder-decoder LM.

The API everything after the models codes against:

    model = build_model(config, params=None, seed=0, dtype=np.float32)
        GemmaLM for a GemmaConfig, EncDecLM for an EncDecConfig. params: flat dict with
        Hugging Face keys (SPEC.md section 5); None initialises freshly from the seed.
    model.config, model.params
    model.forward(batch) -> logits (B, T, V), soft-capped
    model.loss_and_grads(batch) -> (loss: float, grads: dict with the keys of params)
    model.loss(batch) -> float
    EncDecLM.encode(input_ids, attention_mask=None) -> (B, S, De) encoder output (normed)

A batch is a dict of NumPy arrays:
    decoder-only:    input_ids (B, T), optional attention_mask (B, T), labels (B, T)
                     where labels[:, t] is the target of position t (-100 ignored)
    encoder-decoder: input_ids (B, S), attention_mask (B, S), decoder_input_ids (B, T),
                     labels (B, T)

Beyond that core:
    model.forward(batch, return_cache=True) -> (logits, cache)
    model.backward(dlogits, cache) -> grads      for any objective on the soft-capped
                                                 logits
    model.distill_loss_and_grads(batch, teacher_probs (B, T, V), alpha=, temperature=)
        -> (loss, grads, {"ce", "soft"})         PrefixLM + KD (training/distill.py);
                                                 like loss_and_grads, it never stores
                                                 the logits (ops.output_loss_and_grads)
    GemmaLM.hidden_states(batch) -> (B, T, D)    final-normed hidden states
    EncDecLM.encode(input_ids, attention_mask=None, causal=True)
                                                 the encoder with decoder-style causal
                                                 masks (adaptation checks, SPEC.md section 3)
    EncDecConfig(causal_encoder=True)            the paper's causal-encoder ablation
                                                 everywhere (saved with the config;
                                                 EncDecLM.causal_encoder reads and sets it)
    EncDecLM.decode(decoder_input_ids, encoder_output, attention_mask=None) -> logits
    EncDecLM.encoder_embed_key / decoder_embed_key   (with tie_all_embeddings both are
                                                 "model.encoder.embed_tokens.weight")
    params.param_shapes(config), params.init_params(config, seed, dtype)

Padding convention (inputs.py): attention_mask is 1 for real tokens; positions count real
tokens only, so left and right padding both leave real tokens' results unchanged.
Batch errors (missing key, wrong shape, id out of range, non-0/1 mask) raise ValueError
naming the key. Generation: `mini_encdec.models.generate`; FLOPs: `mini_encdec.models.flops`.

Classification (SPEC.md section 7): `build_model(ClassifierConfig(...))` or
`SequenceClassifier.from_backbone(model, num_labels, mode)` -> a SequenceClassifier with
forward(batch) -> (B, C) logits, loss, loss_and_grads, predict; batch labels are (B,)
class ids (`mini_encdec.models.classifier`).
"""

from __future__ import annotations

import numpy as np

from ..config import ClassifierConfig, EncDecConfig, GemmaConfig
from .classifier import SequenceClassifier
from .encdec import EncDecLM
from .gemma import GemmaLM
from .params import init_params, param_shapes

__all__ = ["build_model", "GemmaLM", "EncDecLM", "SequenceClassifier", "init_params",
           "param_shapes"]


def build_model(config, params=None, seed: int = 0, dtype=np.float32):
    """GemmaLM for a GemmaConfig, EncDecLM for an EncDecConfig, SequenceClassifier for a
    ClassifierConfig.

    params: flat dict with Hugging Face keys (checked: exact key set, shapes, one float
    dtype; the arrays are used as given, not copied). None: fresh init from `seed` in
    `dtype` (linear/embedding weights N(0, 0.02), norm weights 0).
    """
    if not isinstance(config, (GemmaConfig, EncDecConfig, ClassifierConfig)):
        raise ValueError(f"build_model: argument 'config': expected a GemmaConfig, "
                         f"EncDecConfig or ClassifierConfig, got {type(config).__name__}")
    if params is None:
        params = init_params(config, seed=seed, dtype=dtype)
    if isinstance(config, GemmaConfig):
        return GemmaLM(config, params)
    if isinstance(config, ClassifierConfig):
        return SequenceClassifier(config, params)
    return EncDecLM(config, params)
