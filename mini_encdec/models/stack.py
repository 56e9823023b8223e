"""A stack of Gemma 2 blocks and its final norm, forward and backward (SPEC 1, 2).

    h = final_norm( block_{L-1}( ... block_0(x) ) )

Which block (blocks.py) depends on the stack: the encoder and the decoder-only model use
the encoder block (self-attention, MLP), the T5Gemma decoder the decoder block (adds
cross-attention), the T5Gemma 2 decoder the merged block. Layer i uses
`masks[cfg.layer_types[i]]`, so local (sliding window) and global layers alternate as the
config says. The stack takes already-embedded inputs; embeddings and logits belong to the
models. Training path only; KV-cached decoding is `decoding.py`.

Shapes: B batch, T tokens of this stack, D its width, S encoder tokens, De encoder width.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from .blocks import (add_grad, decoder_block_backward, decoder_block_forward,
                     encoder_block_backward, encoder_block_forward, merged_block_backward,
                     merged_block_forward)
from .params import StackSpec


def stack_forward(params: dict, spec: StackSpec, x: np.ndarray, *, masks: dict, rope,
                  memory=None, memory_mask=None):
    """x (B, T, D) embedded inputs -> (h (B, T, D) final-normed, cache).

    masks: layer type -> bool mask (B|1, 1, T, keys) of the self (or merged) attention;
    rope (cos, sin) for the positions of x; memory (B, S, De) the encoder output and
    memory_mask (B|1, 1, 1, S) its real tokens (decoder stacks only).
    """
    cfg = spec.cfg
    caches = []
    for i in range(cfg.num_hidden_layers):
        p, mask = spec.layer(i), masks[cfg.layer_types[i]]
        if spec.cross:
            x, c = decoder_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope,
                                         memory, memory_mask)
        elif spec.merged:
            x, c = merged_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope, memory)
        else:
            x, c = encoder_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope)
        caches.append(c)
    # h = final_norm(x)
    h, c_final = ops.rmsnorm_forward(x, params[spec.norm_key], cfg.rms_norm_eps)
    return h, {"spec": spec, "layers": caches, "final": c_final}


def stack_backward(dh: np.ndarray, cache: dict, grads: dict):
    """Adds the parameter gradients into `grads` (keyed like params); returns
    (dx (B, T, D), dmemory (B, S, De) or None)."""
    spec: StackSpec = cache["spec"]
    # h = final_norm(x)
    dx, dw = ops.rmsnorm_backward(dh, cache["final"])
    add_grad(grads, spec.norm_key, dw)
    dmemory = None
    for i in reversed(range(spec.cfg.num_hidden_layers)):
        p, c = spec.layer(i), cache["layers"][i]
        if spec.has_memory:
            block_backward = decoder_block_backward if spec.cross else merged_block_backward
            dx, dmem = block_backward(dx, c, grads, p, spec.attn_norms)
            dmemory = dmem if dmemory is None else dmemory + dmem
        else:
            dx = encoder_block_backward(dx, c, grads, p, spec.attn_norms)
    return dx, dmemory
