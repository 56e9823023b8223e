"""The decoder-only Gemma 2 language model (SPEC.md section 1), and Gemma 3, which is the
same model with its config fields set (q/k norms, a RoPE base per layer type, its layer
pattern, no soft-caps: SPEC.md section 1, "Gemma 3").

    x      = E[input_ids] * sqrt(D)                        (B, T, D)
    h      = final_norm( blocks(x) )                       causal, local/global alternating
    logits = 30 * tanh( (h E^T) / 30 )                     (B, T, V), E tied
    loss   = mean CE(logits[b, t], labels[b, t]) over labels != -100

`labels[:, t]` is the target of position t (already shifted by the caller: for plain
next-token prediction labels[:, t] = input_ids[:, t + 1]).

Padded batches: the optional `attention_mask` (B, T), 1 for real tokens, 0 for padding.
Padding keys are never attended to, and positions count real tokens only (see
`inputs.py`), so a left- or right-padded sequence gives the same logits on its real tokens
as the sequence alone. Logits at padding positions are meaningless; give those positions
the label -100.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..config import GemmaConfig
from ..nn.linear import linear_backward, linear_forward
from ..nn.softcap import softcap_backward, softcap_forward
from .blocks import trunk_backward, trunk_forward
from .inputs import IGNORE_INDEX, check_batch
from .params import check_params, gemma_spec


class GemmaLM:
    """Gemma 2 decoder-only LM over a flat dict of parameters with Hugging Face keys."""

    def __init__(self, config: GemmaConfig, params: dict):
        if not isinstance(config, GemmaConfig):
            raise ValueError(f"GemmaLM: argument 'config': expected a GemmaConfig, got "
                             f"{type(config).__name__}")
        self.dtype = check_params(config, params)
        self.config = config
        self.params = params
        self.spec = gemma_spec(config)

    # --- batch handling -------------------------------------------------------------------
    def _check(self, batch, *, labels: bool, fn: str) -> dict:
        required = ("input_ids", "labels") if labels else ("input_ids",)
        optional = ("attention_mask",) if labels else ("attention_mask", "labels")
        return check_batch(batch, required=required, optional=optional,
                           vocab_size=self.config.vocab_size, fn=fn,
                           groups={k: "tokens" for k in ("input_ids", "attention_mask", "labels")})

    @property
    def embed_key(self) -> str:
        return self.spec.embed_key

    # --- the network ----------------------------------------------------------------------
    def _trunk(self, input_ids: np.ndarray, attention_mask):
        """Embedding and all blocks: (B, T) ids -> (B, T, D) final-normed hidden states."""
        return trunk_forward(self.params, self.spec, input_ids, attention_mask, causal=True)

    def hidden_states(self, batch: dict) -> np.ndarray:
        """Final-normed hidden states (B, T, D) (the input of the output matrix)."""
        b = self._check(batch, labels=False, fn="GemmaLM.hidden_states")
        return self._trunk(b["input_ids"], b.get("attention_mask"))[0]

    def forward(self, batch: dict, return_cache: bool = False):
        """Soft-capped logits (B, T, V); with return_cache also the cache for `backward`."""
        b = self._check(batch, labels=False, fn="GemmaLM.forward")
        h, cache = self._trunk(b["input_ids"], b.get("attention_mask"))
        z, cache["logits"] = linear_forward(h, self.params[self.embed_key])  # (B,T,D)@(D,V)
        # logits = cap * tanh(z / cap)
        logits, cache["cap"] = softcap_forward(z, self.config.final_logit_softcapping)
        return (logits, cache) if return_cache else logits

    def backward(self, dlogits: np.ndarray, cache: dict) -> dict:
        """Parameter gradients given d(objective)/d(soft-capped logits) (B, T, V), for
        objectives other than the built-in cross-entropy (e.g. distillation)."""
        # logits = cap * tanh(z / cap)
        dz = softcap_backward(dlogits, cache["cap"])
        return self._backward_from_z(dz, cache)

    def _backward_from_z(self, dz: np.ndarray, cache: dict) -> dict:
        # z = h E^T  (first use of E: the output matrix)
        dh, dE_out = linear_backward(dz, cache["logits"])
        return self._backward_from_hidden(dh, cache, dE_out)

    def _backward_from_hidden(self, dh: np.ndarray, cache: dict, dE_out: np.ndarray) -> dict:
        """Parameter gradients given d(objective)/d(final hidden states) (B, T, D) and the
        output-matrix use's gradient dE_out (V, D)."""
        grads: dict = {}
        # h = final_norm( blocks( E[ids] * sqrt(D) ) )  (second use of E: the input embedding)
        dE_in, _ = trunk_backward(dh, cache, grads)
        grads[self.embed_key] = dE_out + dE_in
        return grads

    def loss(self, batch: dict) -> float:
        b = self._check(batch, labels=True, fn="GemmaLM.loss")
        h, _ = self._trunk(b["input_ids"], b.get("attention_mask"))
        z, _ = linear_forward(h, self.params[self.embed_key])  # (B, T, V)
        # loss = mean CE(cap * tanh(z / cap), labels), the soft-capped logits never stored
        return ops.softcap_cross_entropy_forward(z, b["labels"],
                                                 self.config.final_logit_softcapping,
                                                 IGNORE_INDEX)[0]

    def loss_and_grads(self, batch: dict):
        """(mean cross-entropy, gradients keyed like params)."""
        b = self._check(batch, labels=True, fn="GemmaLM.loss_and_grads")
        h, cache = self._trunk(b["input_ids"], b.get("attention_mask"))
        # loss = mean CE(cap * tanh(h E^T / cap), labels) and its gradients wrt h and E,
        # a block of rows at a time: the (B, T, V) logits are never stored whole
        loss, dh, dE_out, _ = ops.output_loss_and_grads(
            h, self.params[self.embed_key], b["labels"], self.config.final_logit_softcapping,
            IGNORE_INDEX)
        return loss, self._backward_from_hidden(dh, cache, dE_out)

    def distill_loss_and_grads(self, batch: dict, teacher_probs: np.ndarray, *,
                               alpha: float, temperature: float = 1.0):
        """(alpha * soft + (1 - alpha) * ce, gradients, {"ce", "soft"}) against the
        teacher's probabilities (B, T, V) (training/distill.py), the logits never stored."""
        b = self._check(batch, labels=True, fn="GemmaLM.distill_loss_and_grads")
        h, cache = self._trunk(b["input_ids"], b.get("attention_mask"))
        loss, dh, dE_out, parts = ops.output_loss_and_grads(
            h, self.params[self.embed_key], b["labels"], self.config.final_logit_softcapping,
            IGNORE_INDEX, teacher_probs, alpha, temperature)
        return loss, self._backward_from_hidden(dh, cache, dE_out), parts
