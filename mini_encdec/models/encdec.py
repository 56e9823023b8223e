"""The encoder-decoder language model, T5Gemma (SPEC.md section 2).

    enc    = enc_final_norm( encoder_blocks( Ee[input_ids] * sqrt(De) ) )     (B, S, De)
             bidirectional self-attention; local layers see |q - k| < W
    h      = dec_final_norm( decoder_blocks( Ed[decoder_input_ids] * sqrt(Dd), enc ) )
             each block: causal self-attention, cross-attention over enc, MLP
             (merged_attention: one attention over [decoder ; enc] instead of the two)
    logits = 30 * tanh( (h Ed^T) / 30 )                                         (B, T, V)
    loss   = mean CE(logits, labels) over labels != -100

Embeddings: separate encoder (Ee) and decoder (Ed) tables, the output matrix tied to Ed.
With `tie_all_embeddings` one table, stored as `model.encoder.embed_tokens.weight`, serves
all three uses and its gradient is the sum of the three.
T5Gemma 2's `eoi_token_id`: that token's input embedding (encoder and decoder) is the
vector `model.encoder.embed_tokens.eoi_embedding` instead (`blocks.embed`).

Encoder padding: `attention_mask` (B, S), 1 for real tokens; padding keys are masked in
the encoder self-attention and in cross-attention, and encoder positions count real tokens
(`inputs.py`), so right (or left) padding leaves the real tokens' outputs unchanged.
The decoder is causal: right padding of decoder_input_ids needs no mask (give the padded
positions the label -100).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import ops
from ..config import EncDecConfig
from ..nn.linear import linear_backward, linear_forward
from ..nn.softcap import softcap_backward, softcap_forward
from ..validate import check_float, check_ids, check_mask, check_shape
from .blocks import embed, stack_forward, trunk_backward, trunk_forward
from .inputs import (IGNORE_INDEX, check_batch, memory_mask, merge_masks, positions_from_mask,
                     rope_for, self_attention_masks)
from .params import check_params, decoder_spec, encoder_spec

_GROUPS = {"input_ids": "source", "attention_mask": "source",
           "decoder_input_ids": "target", "labels": "target"}


class EncDecLM:
    """T5Gemma encoder-decoder LM over a flat dict of parameters with Hugging Face keys."""

    def __init__(self, config: EncDecConfig, params: dict):
        if not isinstance(config, EncDecConfig):
            raise ValueError(f"EncDecLM: argument 'config': expected an EncDecConfig, got "
                             f"{type(config).__name__}")
        self.dtype = check_params(config, params)
        self.config = config
        self.params = params
        self.enc_spec = encoder_spec(config)
        self.dec_spec = decoder_spec(config)

    @property
    def encoder_embed_key(self) -> str:
        return self.enc_spec.embed_key

    @property
    def decoder_embed_key(self) -> str:
        """The decoder input table, also the output matrix (the encoder's when tied-all)."""
        return self.enc_spec.embed_key if self.config.tie_all_embeddings \
            else self.dec_spec.embed_key

    @property
    def causal_encoder(self) -> bool:
        """The causal-encoder ablation, `config.causal_encoder` (saved with the config).
        Setting it replaces the config by a copy with the field changed."""
        return self.config.causal_encoder

    @causal_encoder.setter
    def causal_encoder(self, value: bool) -> None:
        self.config = self.config.replace(causal_encoder=value)

    # --- batch handling -------------------------------------------------------------------
    def _check(self, batch, *, labels: bool, fn: str) -> dict:
        required = ("input_ids", "decoder_input_ids") + (("labels",) if labels else ())
        optional = ("attention_mask",) + (() if labels else ("labels",))
        return check_batch(batch, required=required, optional=optional,
                           vocab_size=self.config.vocab_size, fn=fn, groups=_GROUPS)

    # --- encoder ----------------------------------------------------------------------------
    def _encode(self, input_ids: np.ndarray, attention_mask, causal: bool = False):
        """(B, S) ids -> (B, S, De) encoder output and its cache (x = Ee[ids] * sqrt(De),
        blocks, final norm: `blocks.trunk_forward`)."""
        return trunk_forward(self.params, self.enc_spec, input_ids, attention_mask,
                             causal=causal or self.config.causal_encoder)

    def encode(self, input_ids: np.ndarray, attention_mask: Optional[np.ndarray] = None, *,
               causal: bool = False) -> np.ndarray:
        """Encoder output (B, S, De), final-normed.

        causal=True runs the encoder with the decoder-style masks (k <= q; local layers
        0 <= q - k < W) instead of bidirectional ones: an encoder adapted from a
        decoder-only model then reproduces that model's final hidden states (SPEC.md section 3).
        """
        b = check_batch({"input_ids": input_ids, "attention_mask": attention_mask},
                        required=("input_ids",), optional=("attention_mask",),
                        vocab_size=self.config.vocab_size, fn="EncDecLM.encode")
        if not isinstance(causal, bool):
            raise ValueError(f"EncDecLM.encode: argument 'causal': expected True or False, "
                             f"got {causal!r}")
        return self._encode(b["input_ids"], b.get("attention_mask"), causal)[0]

    # --- decoder ----------------------------------------------------------------------------
    def _decode(self, decoder_input_ids: np.ndarray, enc: np.ndarray, enc_mask,
                decoder_mask=None):
        """(B, T) ids -> (B, T, Dd) final-normed decoder states and their cache.
        decoder_mask: optional bool (B, T) key padding of the decoder self-attention
        (the classifier's shifted inputs); positions then count its real tokens."""
        cfg, P = self.config.decoder, self.params
        B, T = decoder_input_ids.shape
        S = enc.shape[1]
        # y = Ed[ids] * sqrt(Dd)
        y, c_emb = embed(P, self.decoder_embed_key, self.dec_spec.eoi,
                         decoder_input_ids)  # (B, T, Dd)
        # (T,) 0..T-1 without a mask: the decoder counts from 0 on its own; else (B, T)
        pos = positions_from_mask(decoder_mask, T)
        masks = self_attention_masks(cfg, pos, pos, causal=True, key_padding=decoder_mask)
        mem_mask = memory_mask(enc_mask, S)  # (B|1, 1, 1, S)
        if self.dec_spec.merged:
            masks = merge_masks(masks, mem_mask, B)  # (B, 1, T, T + S)
        h, c_stack = stack_forward(P, self.dec_spec, y, masks=masks,
                                   rope=rope_for(cfg, pos, self.dtype), memory=enc,
                                   memory_mask=mem_mask)
        return h, {"emb": c_emb, "stack": c_stack}

    def decode(self, decoder_input_ids: np.ndarray, encoder_output: np.ndarray,
               attention_mask: Optional[np.ndarray] = None) -> np.ndarray:
        """Soft-capped logits (B, T, V) of the decoder run on a given encoder output
        (B, S, De); attention_mask (B, S) marks its real tokens."""
        fn = "EncDecLM.decode"
        check_ids(decoder_input_ids, "decoder_input_ids", self.config.vocab_size, ndim=2, fn=fn)
        B = decoder_input_ids.shape[0]
        check_float(encoder_output, "encoder_output", ndim=3, fn=fn)
        check_shape(encoder_output, "encoder_output",
                    (B, None, self.config.encoder.hidden_size), fn=fn)
        if encoder_output.dtype != self.dtype:
            raise ValueError(f"{fn}: argument 'encoder_output': expected dtype {self.dtype}, "
                             f"got {encoder_output.dtype}")
        if attention_mask is not None:
            attention_mask = check_mask(attention_mask, "attention_mask",
                                        encoder_output.shape[:2], fn=fn)
        h, _ = self._decode(decoder_input_ids, encoder_output, attention_mask)
        z, _ = linear_forward(h, self.params[self.decoder_embed_key])  # (B, T, V)
        return softcap_forward(z, self.config.decoder.final_logit_softcapping)[0]

    # --- whole model --------------------------------------------------------------------------
    def _trunk(self, b: dict):
        enc_mask = b.get("attention_mask")
        enc, c_enc = self._encode(b["input_ids"], enc_mask)
        h, c_dec = self._decode(b["decoder_input_ids"], enc, enc_mask)
        return h, {"enc": c_enc, "dec": c_dec}

    def forward(self, batch: dict, return_cache: bool = False):
        """Soft-capped logits (B, T, V); with return_cache also the cache for `backward`."""
        b = self._check(batch, labels=False, fn="EncDecLM.forward")
        h, cache = self._trunk(b)
        # z = h Ed^T: (B, T, Dd) @ (Dd, V) -> (B, T, V)
        z, cache["logits"] = linear_forward(h, self.params[self.decoder_embed_key])
        # logits = cap * tanh(z / cap)
        logits, cache["cap"] = softcap_forward(z, self.config.decoder.final_logit_softcapping)
        return (logits, cache) if return_cache else logits

    def backward(self, dlogits: np.ndarray, cache: dict) -> dict:
        """Parameter gradients given d(objective)/d(soft-capped logits) (B, T, V)."""
        # logits = cap * tanh(z / cap)
        dz = softcap_backward(dlogits, cache["cap"])
        return self._backward_from_z(dz, cache)

    def _backward_from_z(self, dz: np.ndarray, cache: dict) -> dict:
        # z = h Ed^T  (the output matrix use of Ed)
        dh, dE_out = linear_backward(dz, cache["logits"])
        return self._backward_from_hidden(dh, cache, dE_out)

    def _backward_from_hidden(self, dh: np.ndarray, cache: dict, dE_out=None) -> dict:
        """Parameter gradients given d(objective)/d(final decoder states) (B, T, Dd) and
        the output-matrix gradient dE_out (V, Dd) (None: the objective does not use it)."""
        grads: dict = {}
        # h = dec_final_norm( decoder_blocks( Ed[decoder_input_ids] * sqrt(Dd), enc ) )
        dE_dec, denc = trunk_backward(dh, cache["dec"], grads)
        # enc = enc_final_norm( encoder_blocks( Ee[input_ids] * sqrt(De) ) )
        dE_enc, _ = trunk_backward(denc, cache["enc"], grads)
        if dE_out is not None:
            dE_dec = dE_out + dE_dec
        if self.config.tie_all_embeddings:  # one table, three uses
            grads[self.encoder_embed_key] = dE_dec + dE_enc
        else:
            grads[self.decoder_embed_key] = dE_dec
            grads[self.encoder_embed_key] = dE_enc
        return grads

    def loss(self, batch: dict) -> float:
        b = self._check(batch, labels=True, fn="EncDecLM.loss")
        h, _ = self._trunk(b)
        z, _ = linear_forward(h, self.params[self.decoder_embed_key])  # (B, T, V)
        # loss = mean CE(cap * tanh(z / cap), labels), the soft-capped logits never stored
        return ops.softcap_cross_entropy_forward(
            z, b["labels"], self.config.decoder.final_logit_softcapping, IGNORE_INDEX)[0]

    def loss_and_grads(self, batch: dict):
        """(mean cross-entropy, gradients keyed like params)."""
        b = self._check(batch, labels=True, fn="EncDecLM.loss_and_grads")
        h, cache = self._trunk(b)
        # loss = mean CE(cap * tanh(h Ed^T / cap), labels) and its gradients wrt h and Ed,
        # a block of rows at a time: the (B, T, V) logits are never stored whole
        loss, dh, dE_out, _ = ops.output_loss_and_grads(
            h, self.params[self.decoder_embed_key], b["labels"],
            self.config.decoder.final_logit_softcapping, IGNORE_INDEX)
        return loss, self._backward_from_hidden(dh, cache, dE_out)

    def distill_loss_and_grads(self, batch: dict, teacher_probs: np.ndarray, *,
                               alpha: float, temperature: float = 1.0):
        """(alpha * soft + (1 - alpha) * ce, gradients, {"ce", "soft"}) against the
        teacher's probabilities (B, T, V) (training/distill.py), the logits never stored."""
        b = self._check(batch, labels=True, fn="EncDecLM.distill_loss_and_grads")
        h, cache = self._trunk(b)
        loss, dh, dE_out, parts = ops.output_loss_and_grads(
            h, self.params[self.decoder_embed_key], b["labels"],
            self.config.decoder.final_logit_softcapping, IGNORE_INDEX, teacher_probs, alpha,
            temperature)
        return loss, self._backward_from_hidden(dh, cache, dE_out), parts
