"""Token ids -> final-normed hidden states of one self-attention stack, and back.

    x = E[input_ids] * sqrt(D)                       (B, T, D)
    h = final_norm( blocks(x) )                      (B, T, D)

This is the whole decoder-only Gemma 2 model without its output matrix (causal masks)
and the whole T5Gemma encoder (bidirectional masks): the two differ only in the key
names (the `StackSpec`) and in `causal`. Positions and masks follow `inputs.py`:
positions count real tokens, padding keys are never attended to.

    h, cache = trunk_forward(params, spec, input_ids, attention_mask, causal=True)
    dE, dmemory = trunk_backward(dh, cache, grads)

`trunk_backward` adds every block's and the final norm's gradients into `grads` and
returns the gradient of the embedding table through its input use (the caller adds the
output-matrix use, which only it knows about) and the gradient of the encoder output a
decoder stack read (None for a stack without memory). It also undoes the decoder of an
encoder-decoder, whose forward cache (`EncDecLM._decode`) has the same two parts.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import ops
from ..nn.embedding import embedding_forward
from .inputs import positions_from_mask, rope_for, self_attention_masks
from .params import StackSpec
from .stack import stack_backward, stack_forward


def trunk_forward(params: dict, spec: StackSpec, input_ids: np.ndarray,
                  attention_mask: Optional[np.ndarray], *, causal: bool):
    """(h (B, T, D) final-normed, cache). params: any dict holding the stack's keys;
    attention_mask: bool (B, T) or None (checked by the caller)."""
    cfg = spec.cfg
    T = input_ids.shape[1]
    # x = E[ids] * sqrt(D)
    x, c_emb = embedding_forward(input_ids, params[spec.embed_key])  # (B, T) -> (B, T, D)
    pos = positions_from_mask(attention_mask, T)  # (T,) or (B, T)
    masks = self_attention_masks(cfg, pos, pos, causal=causal, key_padding=attention_mask)
    h, c_stack = stack_forward(params, spec, x, masks=masks, rope=rope_for(cfg, pos, x.dtype))
    return h, {"emb": c_emb, "stack": c_stack}


def trunk_backward(dh: np.ndarray, cache: dict, grads: dict):
    """Block and final-norm gradients into `grads`; returns (dE (V, D) of the input
    embedding use, dmemory (B, S, De) or None)."""
    dx, dmemory = stack_backward(dh, cache["stack"], grads)
    # x = E[ids] * sqrt(D)
    dE = ops.embedding_backward(dx, cache["emb"])
    return dE, dmemory
