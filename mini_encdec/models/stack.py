"""A stack of Gemma 2 blocks with the "sandwich" norms, forward and backward (SPEC 1, 2).

Every sublayer f is wrapped the same way, each output normalised before the residual add:

    x = x + post_norm( f( pre_norm(x) ) )

    decoder-only / encoder block:   f = self-attention, then f = GeGLU MLP
    encoder-decoder decoder block:  f = causal self-attention, cross-attention, MLP
    merged-attention decoder block: f = one attention over [decoder ; encoder], MLP

and the stack ends with its own final RMSNorm. Layer i uses `masks[cfg.layer_types[i]]`,
so local (sliding window) and global layers alternate as the config says.

Shapes: B batch, T tokens of this stack, D its width, S encoder tokens, De encoder width.
The stack takes already-embedded inputs; embeddings and logits belong to the models.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..nn.mlp import _geglu, geglu_backward, geglu_forward
from .attention import attention_backward, attention_forward, attention_weights, fuse_qkv
from .params import CROSS_NORMS, FFW_NORMS, StackSpec


def _add(grads: dict, key: str, g: np.ndarray) -> None:
    if key in grads:
        grads[key] = grads[key] + g
    else:
        grads[key] = g


def stack_forward(params: dict, spec: StackSpec, x: np.ndarray, *, masks: dict, rope=None,
                  cross_mask=None, memory=None, memory_kv=None, past=None, fast=False,
                  fused=None):
    """Run all blocks and the final norm.

    x (B, T, D) embedded inputs; masks: layer type -> bool mask (B|1, 1, T, keys) of the
    self (or merged) attention; rope (cos, sin) for the positions of x; cross_mask
    (B, 1, 1|T, S) for cross-attention; memory (B, S, De) encoder output (training; its
    gradient is returned by the backward) or memory_kv: per layer (k, v) projected once
    (generation); past: per layer (k, v) of earlier tokens (KV cache) or None.
    fast=True: inference only (KV-cached decoding): unchecked nn helpers, and the returned
    cache holds no per-layer backward caches (stack_backward cannot run on it); it needs
    fused: per layer {"qkv": fuse_qkv(self-attention weights), "gate_up": [Wg ; Wu]}
    (fuse_weights, built once per generation request).

    Returns (h (B, T, D) final-normed, cache, new_kv) with new_kv[i] = (k, v) (B, K, T, Dh)
    of x's own tokens in self-attention of layer i, post-RoPE.
    """
    cfg = spec.cfg
    eps = cfg.rms_norm_eps
    pre_attn, post_attn = spec.attn_norms
    layer_caches, new_kv = [], []
    for i in range(cfg.num_hidden_layers):
        p = spec.layer(i)
        lc = {}
        mem_kw = {}
        if spec.merged:
            mem_kw = {"memory": memory} if memory is not None else \
                {"memory_kv": memory_kv[i]}
        # h = x + post_attn_norm( self_attn( pre_attn_norm(x) ) )
        n, lc["pre_attn"] = ops.rmsnorm_forward(x, params[f"{p}{pre_attn}.weight"], eps)
        a, lc["attn"], kv = attention_forward(
            attention_weights(params, p + "self_attn"), cfg, n, mask=masks[cfg.layer_types[i]],
            rope=rope, self_kv=True, past=None if past is None else past[i], fast=fast,
            Wqkv=fused[i]["qkv"] if fast else None, **mem_kw)
        m, lc["post_attn"] = ops.rmsnorm_forward(a, params[f"{p}{post_attn}.weight"], eps)
        x = x + m
        new_kv.append(kv)
        if spec.cross:
            # h = h + post_cross_norm( cross_attn( pre_cross_norm(h), enc_out ) )
            mem_kw = {"memory": memory} if memory is not None else {"memory_kv": memory_kv[i]}
            n, lc["pre_cross"] = ops.rmsnorm_forward(x, params[f"{p}{CROSS_NORMS[0]}.weight"], eps)
            a, lc["cross"], _ = attention_forward(
                attention_weights(params, p + "cross_attn"), cfg, n, mask=cross_mask,
                rope=None, self_kv=False, fast=fast, **mem_kw)
            m, lc["post_cross"] = ops.rmsnorm_forward(a, params[f"{p}{CROSS_NORMS[1]}.weight"], eps)
            x = x + m
        # y = h + post_ffw_norm( mlp( pre_ffw_norm(h) ) )
        n, lc["pre_ffw"] = ops.rmsnorm_forward(x, params[f"{p}{FFW_NORMS[0]}.weight"], eps)
        if fast:
            f = _geglu(n, fused[i]["gate_up"], params[p + "mlp.down_proj.weight"],
                       act=ops.geglu_act_forward)
        else:
            f, lc["mlp"] = geglu_forward(n, params[p + "mlp.gate_proj.weight"],
                                         params[p + "mlp.up_proj.weight"],
                                         params[p + "mlp.down_proj.weight"],
                                         act=(ops.geglu_act_forward, ops.geglu_act_backward))
        m, lc["post_ffw"] = ops.rmsnorm_forward(f, params[f"{p}{FFW_NORMS[1]}.weight"], eps)
        x = x + m
        if not fast:
            layer_caches.append(lc)
    # h = final_norm(x)
    h, c_final = ops.rmsnorm_forward(x, params[spec.norm_key], eps)
    return h, {"spec": spec, "layers": layer_caches, "final": c_final}, new_kv


def fuse_weights(params: dict, spec: StackSpec) -> list:
    """Per layer {"qkv": [Wq ; Wk ; Wv] of the self (or merged) attention, "gate_up":
    [Wg ; Wu] (2F, D)}: the concatenated projections stack_forward(fast=True) runs as one
    matmul each (built once per generation request)."""
    out = []
    for i in range(spec.cfg.num_hidden_layers):
        p = spec.layer(i)
        out.append({"qkv": fuse_qkv(attention_weights(params, p + "self_attn")),
                    "gate_up": np.concatenate([params[p + "mlp.gate_proj.weight"],
                                               params[p + "mlp.up_proj.weight"]], axis=0)})
    return out


def _attention_grads(grads: dict, name: str, dW) -> None:
    for w, g in zip("qkvo", dW):
        _add(grads, f"{name}.{w}_proj.weight", g)


def stack_backward(dh: np.ndarray, cache: dict, grads: dict):
    """Gradients of stack_forward (trained with `memory`, not `memory_kv`/`past`).

    Adds the parameter gradients into `grads` (keyed like params) and returns
    (dx (B, T, D), dmemory (B, S, De) or None).
    """
    spec: StackSpec = cache["spec"]
    pre_attn, post_attn = spec.attn_norms
    # h = final_norm(x)
    dx, dw = ops.rmsnorm_backward(dh, cache["final"])
    _add(grads, spec.norm_key, dw)
    dmemory = None
    for i in reversed(range(spec.cfg.num_hidden_layers)):
        p, lc = spec.layer(i), cache["layers"][i]
        # y = h + post_ffw_norm( mlp( pre_ffw_norm(h) ) )
        df, dw = ops.rmsnorm_backward(dx, lc["post_ffw"])
        _add(grads, f"{p}{FFW_NORMS[1]}.weight", dw)
        dn, dWg, dWu, dWd = geglu_backward(df, lc["mlp"])
        _add(grads, p + "mlp.gate_proj.weight", dWg)
        _add(grads, p + "mlp.up_proj.weight", dWu)
        _add(grads, p + "mlp.down_proj.weight", dWd)
        dres, dw = ops.rmsnorm_backward(dn, lc["pre_ffw"])
        _add(grads, f"{p}{FFW_NORMS[0]}.weight", dw)
        dx = dx + dres
        if spec.cross:
            # h = h + post_cross_norm( cross_attn( pre_cross_norm(h), enc_out ) )
            da, dw = ops.rmsnorm_backward(dx, lc["post_cross"])
            _add(grads, f"{p}{CROSS_NORMS[1]}.weight", dw)
            dn, dmem, dW = attention_backward(da, lc["cross"])
            _attention_grads(grads, p + "cross_attn", dW)
            dmemory = dmem if dmemory is None else dmemory + dmem
            dres, dw = ops.rmsnorm_backward(dn, lc["pre_cross"])
            _add(grads, f"{p}{CROSS_NORMS[0]}.weight", dw)
            dx = dx + dres
        # h = x + post_attn_norm( self_attn( pre_attn_norm(x) ) )
        da, dw = ops.rmsnorm_backward(dx, lc["post_attn"])
        _add(grads, f"{p}{post_attn}.weight", dw)
        dn, dmem, dW = attention_backward(da, lc["attn"])
        _attention_grads(grads, p + "self_attn", dW)
        if dmem is not None:
            dmemory = dmem if dmemory is None else dmemory + dmem
        dres, dw = ops.rmsnorm_backward(dn, lc["pre_attn"])
        _add(grads, f"{p}{pre_attn}.weight", dw)
        dx = dx + dres
    return dx, dmemory
