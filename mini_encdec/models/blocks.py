"""The Gemma 2 / T5Gemma blocks and the stacks built from them, forward and backward
(SPEC.md sections 1 and 2).

Gemma 2 wraps every sublayer f in two RMSNorms before the residual add,
`x = x + post_norm( f( pre_norm(x) ) )`. Each block below is that line written out once
per sublayer, with a name for every intermediate; its backward undoes the same lines in
reverse order, one gradient line per forward line:

    encoder block (also the decoder-only Gemma 2 block; the mask says causal or not)
        x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    decoder block (T5Gemma)
        x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )       causal
        x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    merged decoder block (T5Gemma 2)
        x = x + post_self_attn_norm( attn over [x ; enc]( pre_self_attn_norm(x) ) )
        x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )

    stack:  h = final_norm( block_{L-1}( ... block_0(x) ) ), layer i with the mask of
            its type (local: sliding window; global: all allowed keys)
    trunk:  h = stack( E[input_ids] * sqrt(D) ), the positions and masks from the padding

Gemma 3 runs the same blocks: its differences are config fields read elsewhere (q/k
norms inside the attention layer when cfg.qk_norm, a RoPE base per layer type in
`inputs.rope_for`, its layer pattern and soft-caps off in the config).

The attention and MLP are the `nn` layers (`nn/attention.py`, `nn/mlp.py`), the functions
the assignments grade; the hot pieces inside them (attention core, RoPE, GeGLU
activation, RMSNorm) run through `mini_encdec.ops`, the one dispatch point. KV-cached
decoding (`decoding.py`) runs these same blocks' equations on cached keys; a test
checks it layer by layer against `encoder_block_forward` / `decoder_block_forward`.

Shapes: B batch, T tokens, D width of this stack, S encoder tokens, De encoder width.
`P` holds the parameters, `p` is the block's key prefix (e.g. "model.decoder.layers.3."),
`norms` the names of its self-attention norms (Gemma 2 and T5Gemma name them
differently, params.py).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import ops
from ..config import GemmaConfig
from ..nn.attention import attention_backward, attention_forward
from ..nn.embedding import embedding_forward
from ..nn.mlp import geglu_backward, geglu_forward
from .inputs import positions_from_mask, rope_for, self_attention_masks
from .params import CROSS_NORMS, FFW_NORMS, StackSpec


def add_grad(grads: dict, key: str, g: np.ndarray) -> None:
    """grads[key] += g (a parameter used twice gets the sum of both gradients)."""
    grads[key] = grads[key] + g if key in grads else g


def norm_keys(p: str, names: tuple) -> tuple:
    """The (pre, post) RMSNorm weight keys of one sublayer of block `p`."""
    return tuple(f"{p}{name}.weight" for name in names)


# --- the sublayers, with this block's weights --------------------------------------------------

def norm(P: dict, key: str, x: np.ndarray, eps: float):
    """RMSNorm with weight P[key]: (B, T, D) -> (y, cache)."""
    return ops.rmsnorm_forward(x, P[key], eps)


def norm_grads(dy: np.ndarray, cache: dict, grads: dict, key: str) -> np.ndarray:
    """Adds the weight gradient of `norm` into grads[key]; returns dx (B, T, D)."""
    dx, dw = ops.rmsnorm_backward(dy, cache)
    add_grad(grads, key, dw)
    return dx


def attention(cfg: GemmaConfig, P: dict, name: str, x_q, x_kv, mask, rope_q, rope_k):
    """The nn attention layer with the weights `name`.{q,k,v,o}_proj (and, when cfg.qk_norm,
    Gemma 3's `name`.{q,k}_norm) and cfg's heads, query scalar and soft-cap; its core, RoPE
    and norms dispatched by ops. Returns (y (B, Tq, D), cache)."""
    qk_norm = (P[f"{name}.q_norm.weight"], P[f"{name}.k_norm.weight"]) if cfg.qk_norm \
        else (None, None)
    return attention_forward(
        x_q, x_kv, P[f"{name}.q_proj.weight"], P[f"{name}.k_proj.weight"],
        P[f"{name}.v_proj.weight"], P[f"{name}.o_proj.weight"],
        num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, scale=float(cfg.query_pre_attn_scalar) ** -0.5,
        softcap=cfg.attn_logit_softcapping, mask=mask, rope_q=rope_q, rope_k=rope_k,
        core=(ops.attention_core_forward, ops.attention_core_backward),
        rope=(ops.rope_forward, ops.rope_backward),
        q_norm=qk_norm[0], k_norm=qk_norm[1], norm_eps=cfg.rms_norm_eps,
        norm=(ops.rmsnorm_forward, ops.rmsnorm_backward),
        linear=(ops.linear_forward, ops.linear_backward))


def attention_grads(dy, cache: dict, grads: dict, name: str):
    """Adds dW{q,k,v,o} of `name` (and Gemma 3's q/k norm weights) into grads; returns
    (dx_q, dx_kv)."""
    dx_q, dx_kv, dWq, dWk, dWv, dWo, *dnorms = attention_backward(dy, cache)
    add_grad(grads, f"{name}.q_proj.weight", dWq)
    add_grad(grads, f"{name}.k_proj.weight", dWk)
    add_grad(grads, f"{name}.v_proj.weight", dWv)
    add_grad(grads, f"{name}.o_proj.weight", dWo)
    if dnorms:  # Gemma 3: q = rmsnorm(q, q_norm), k = rmsnorm(k, k_norm)
        add_grad(grads, f"{name}.q_norm.weight", dnorms[0])
        add_grad(grads, f"{name}.k_norm.weight", dnorms[1])
    return dx_q, dx_kv


def mlp(P: dict, p: str, x):
    """The GeGLU MLP of block p, down( gelu(gate(x)) * up(x) ). Returns (y, cache)."""
    return geglu_forward(x, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"],
                         P[p + "mlp.down_proj.weight"],
                         act=(ops.geglu_act_forward, ops.geglu_act_backward),
                         linear=(ops.linear_forward, ops.linear_backward))


def mlp_grads(dy, cache: dict, grads: dict, p: str):
    """Adds dW{gate,up,down} of block p into grads; returns dx."""
    dx, dWg, dWu, dWd = geglu_backward(dy, cache)
    add_grad(grads, p + "mlp.gate_proj.weight", dWg)
    add_grad(grads, p + "mlp.up_proj.weight", dWu)
    add_grad(grads, p + "mlp.down_proj.weight", dWd)
    return dx


def identity_rope(rope, S: int):
    """Extend (cos, sin) of T positions by S rows of cos 1, sin 0: RoPE leaves the S
    encoder keys of merged attention unrotated. (T|B,T, Dh) -> (T + S|B,T + S, Dh)."""
    cos, sin = rope
    pad = cos.shape[:-2] + (S, cos.shape[-1])
    return (np.concatenate([cos, np.ones(pad, cos.dtype)], axis=-2),
            np.concatenate([sin, np.zeros(pad, sin.dtype)], axis=-2))


# --- the blocks ---------------------------------------------------------------------------------

def encoder_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope):
    """x (B, T, D) -> (B, T, D). mask (B|1, 1, T, T) of this layer (bidirectional in the
    encoder, causal in Gemma 2); rope (cos, sin) for x's positions. Returns (x, cache)."""
    eps = cfg.rms_norm_eps
    pre_attn, post_attn = norm_keys(p, norms)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
    n_attn, c_pre_attn = norm(P, pre_attn, x, eps)
    attn, c_attn = attention(cfg, P, p + "self_attn", n_attn, n_attn, mask, rope, rope)
    m_attn, c_post_attn = norm(P, post_attn, attn, eps)
    x = x + m_attn
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    n_ffw, c_pre_ffw = norm(P, pre_ffw, x, eps)
    ffw, c_ffw = mlp(P, p, n_ffw)
    m_ffw, c_post_ffw = norm(P, post_ffw, ffw, eps)
    x = x + m_ffw
    return x, {"pre_attn": c_pre_attn, "attn": c_attn, "post_attn": c_post_attn,
               "pre_ffw": c_pre_ffw, "ffw": c_ffw, "post_ffw": c_post_ffw}


def encoder_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Adds the block's parameter gradients into grads; returns dx (B, T, D)."""
    pre_attn, post_attn = norm_keys(p, norms)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    dffw = norm_grads(dx, c["post_ffw"], grads, post_ffw)
    dn_ffw = mlp_grads(dffw, c["ffw"], grads, p)
    dx = dx + norm_grads(dn_ffw, c["pre_ffw"], grads, pre_ffw)
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) ): x gives the
    # queries and the keys/values, so its gradient is the sum of both
    dattn = norm_grads(dx, c["post_attn"], grads, post_attn)
    dn_q, dn_kv = attention_grads(dattn, c["attn"], grads, p + "self_attn")
    dx = dx + norm_grads(dn_q + dn_kv, c["pre_attn"], grads, pre_attn)
    return dx


def decoder_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope,
                          memory, memory_mask):
    """x (B, T, D), memory (B, S, De) the encoder output -> (B, T, D). mask (B|1, 1, T, T)
    causal; memory_mask (B|1, 1, 1, S) the encoder's real tokens. Returns (x, cache)."""
    eps = cfg.rms_norm_eps
    pre_attn, post_attn = norm_keys(p, norms)
    pre_cross, post_cross = norm_keys(p, CROSS_NORMS)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )      causal
    n_attn, c_pre_attn = norm(P, pre_attn, x, eps)
    attn, c_attn = attention(cfg, P, p + "self_attn", n_attn, n_attn, mask, rope, rope)
    m_attn, c_post_attn = norm(P, post_attn, attn, eps)
    x = x + m_attn
    # x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )   no RoPE
    n_cross, c_pre_cross = norm(P, pre_cross, x, eps)
    cross, c_cross = attention(cfg, P, p + "cross_attn", n_cross, memory, memory_mask, None, None)
    m_cross, c_post_cross = norm(P, post_cross, cross, eps)
    x = x + m_cross
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    n_ffw, c_pre_ffw = norm(P, pre_ffw, x, eps)
    ffw, c_ffw = mlp(P, p, n_ffw)
    m_ffw, c_post_ffw = norm(P, post_ffw, ffw, eps)
    x = x + m_ffw
    return x, {"pre_attn": c_pre_attn, "attn": c_attn, "post_attn": c_post_attn,
               "pre_cross": c_pre_cross, "cross": c_cross, "post_cross": c_post_cross,
               "pre_ffw": c_pre_ffw, "ffw": c_ffw, "post_ffw": c_post_ffw}


def decoder_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Adds the block's parameter gradients into grads; returns (dx (B, T, D),
    dmemory (B, S, De))."""
    pre_attn, post_attn = norm_keys(p, norms)
    pre_cross, post_cross = norm_keys(p, CROSS_NORMS)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    dffw = norm_grads(dx, c["post_ffw"], grads, post_ffw)
    dn_ffw = mlp_grads(dffw, c["ffw"], grads, p)
    dx = dx + norm_grads(dn_ffw, c["pre_ffw"], grads, pre_ffw)
    # x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )
    dcross = norm_grads(dx, c["post_cross"], grads, post_cross)
    dn_cross, dmemory = attention_grads(dcross, c["cross"], grads, p + "cross_attn")
    dx = dx + norm_grads(dn_cross, c["pre_cross"], grads, pre_cross)
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )
    dattn = norm_grads(dx, c["post_attn"], grads, post_attn)
    dn_q, dn_kv = attention_grads(dattn, c["attn"], grads, p + "self_attn")
    dx = dx + norm_grads(dn_q + dn_kv, c["pre_attn"], grads, pre_attn)
    return dx, dmemory


def merged_block_forward(cfg: GemmaConfig, P: dict, p: str, norms: tuple, x, mask, rope,
                         memory):
    """x (B, T, D), memory (B, S, D) -> (B, T, D): one attention of x over [x ; memory]
    (one softmax over both), mask (B, 1, T, T + S) (inputs.merge_masks). Returns (x, cache)."""
    eps = cfg.rms_norm_eps
    pre_attn, post_attn = norm_keys(p, norms)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    rope_kv = identity_rope(rope, memory.shape[1])  # the encoder keys are not rotated
    # x = x + post_self_attn_norm( attn over [x ; enc]( pre_self_attn_norm(x) ) )
    n_attn, c_pre_attn = norm(P, pre_attn, x, eps)
    kv = np.concatenate([n_attn, memory], axis=1)  # (B, T + S, D)
    attn, c_attn = attention(cfg, P, p + "self_attn", n_attn, kv, mask, rope, rope_kv)
    m_attn, c_post_attn = norm(P, post_attn, attn, eps)
    x = x + m_attn
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    n_ffw, c_pre_ffw = norm(P, pre_ffw, x, eps)
    ffw, c_ffw = mlp(P, p, n_ffw)
    m_ffw, c_post_ffw = norm(P, post_ffw, ffw, eps)
    x = x + m_ffw
    return x, {"pre_attn": c_pre_attn, "attn": c_attn, "post_attn": c_post_attn,
               "pre_ffw": c_pre_ffw, "ffw": c_ffw, "post_ffw": c_post_ffw, "T": x.shape[1]}


def merged_block_backward(dx, c: dict, grads: dict, p: str, norms: tuple):
    """Adds the block's parameter gradients into grads; returns (dx (B, T, D),
    dmemory (B, S, D))."""
    pre_attn, post_attn = norm_keys(p, norms)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    T = c["T"]
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    dffw = norm_grads(dx, c["post_ffw"], grads, post_ffw)
    dn_ffw = mlp_grads(dffw, c["ffw"], grads, p)
    dx = dx + norm_grads(dn_ffw, c["pre_ffw"], grads, pre_ffw)
    # x = x + post_self_attn_norm( attn over [x ; enc]( pre_self_attn_norm(x) ) )
    dattn = norm_grads(dx, c["post_attn"], grads, post_attn)
    dn_q, dkv = attention_grads(dattn, c["attn"], grads, p + "self_attn")
    dmemory = dkv[:, T:]  # (B, T + S, D) -> the encoder part (B, S, D)
    dx = dx + norm_grads(dn_q + dkv[:, :T], c["pre_attn"], grads, pre_attn)
    return dx, dmemory


# --- a stack of blocks, and the trunk: embedding, positions, masks, stack -------------------------

def embed(params: dict, key: str, eoi, ids: np.ndarray):
    """x = E[ids] * sqrt(D) with E = params[key], (B, T) -> (B, T, D); T5Gemma 2 (eoi =
    (token id, vector key)): positions holding that token get the vector instead, unscaled.
    Returns (x, cache) for `embed_backward`."""
    x, c_emb = embedding_forward(ids, params[key])
    at = None
    if eoi is not None and (at := ids == eoi[0]).any():
        x[at] = params[eoi[1]]  # (n, D) <- (D,)
    return x, {"emb": c_emb, "eoi": (at, eoi)}


def embed_backward(dx: np.ndarray, cache: dict, grads: dict) -> np.ndarray:
    """Adds the eoi vector's gradient (the sum over its positions) into grads; returns dE
    (V, D) of the table, whose rows get nothing from the eoi positions."""
    at, eoi = cache["eoi"]
    if at is not None and at.any():
        add_grad(grads, eoi[1], dx[at].sum(axis=0))  # (n, D) -> (D,)
        dx = np.where(at[..., None], 0, dx)
    return ops.embedding_backward(dx, cache["emb"])


def stack_forward(params: dict, spec: StackSpec, x: np.ndarray, *, masks: dict, rope,
                  memory=None, memory_mask=None):
    """x (B, T, D) embedded inputs -> (h (B, T, D) final-normed, cache).

    Which block runs depends on the stack: the encoder and the decoder-only model the
    encoder block, the T5Gemma decoder the decoder block, the T5Gemma 2 decoder the merged
    block. masks: layer type -> bool mask (B|1, 1, T, keys) of the self (or merged)
    attention, layer i reads masks[cfg.layer_types[i]]; rope: layer type -> (cos, sin)
    for the positions of x (`inputs.rope_for`), read the same way; memory (B, S, De) the encoder output and memory_mask (B|1, 1, 1, S) its real
    tokens (decoder stacks only).
    """
    cfg = spec.cfg
    caches = []
    for i in range(cfg.num_hidden_layers):
        p, mask, rope_i = spec.layer(i), masks[cfg.layer_types[i]], rope[cfg.layer_types[i]]
        if spec.cross:
            x, c = decoder_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope_i,
                                         memory, memory_mask)
        elif spec.merged:
            x, c = merged_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope_i,
                                        memory)
        else:
            x, c = encoder_block_forward(cfg, params, p, spec.attn_norms, x, mask, rope_i)
        caches.append(c)
    # h = final_norm(x)
    h, c_final = norm(params, spec.norm_key, x, cfg.rms_norm_eps)
    return h, {"spec": spec, "layers": caches, "final": c_final}


def stack_backward(dh: np.ndarray, cache: dict, grads: dict):
    """Adds the parameter gradients into `grads` (keyed like params); returns
    (dx (B, T, D), dmemory (B, S, De) or None)."""
    spec: StackSpec = cache["spec"]
    # h = final_norm(x)
    dx = norm_grads(dh, cache["final"], grads, spec.norm_key)
    dmemory = None
    for i in reversed(range(spec.cfg.num_hidden_layers)):
        p, c = spec.layer(i), cache["layers"][i]
        if spec.cross:
            dx, dmem = decoder_block_backward(dx, c, grads, p, spec.attn_norms)
        elif spec.merged:
            dx, dmem = merged_block_backward(dx, c, grads, p, spec.attn_norms)
        else:
            dx, dmem = encoder_block_backward(dx, c, grads, p, spec.attn_norms), None
        if dmem is not None:  # every decoder layer reads the encoder output
            dmemory = dmem if dmemory is None else dmemory + dmem
    return dx, dmemory


def trunk_forward(params: dict, spec: StackSpec, input_ids: np.ndarray,
                  attention_mask: Optional[np.ndarray], *, causal: bool):
    """Token ids -> final-normed hidden states of one self-attention stack:

        x = E[input_ids] * sqrt(D)                       (B, T, D)
        h = final_norm( blocks(x) )                      (B, T, D)

    The whole decoder-only Gemma 2 model without its output matrix (causal masks) and the
    whole T5Gemma encoder (bidirectional masks, or causal for the causal-encoder
    ablation). Positions count real tokens, padding keys are never attended to
    (`inputs.py`). attention_mask: bool (B, T) or None (checked by the caller).
    Returns (h, cache)."""
    cfg = spec.cfg
    T = input_ids.shape[1]
    # x = E[ids] * sqrt(D)
    x, c_emb = embed(params, spec.embed_key, spec.eoi, input_ids)  # (B, T) -> (B, T, D)
    pos = positions_from_mask(attention_mask, T)  # (T,) or (B, T)
    masks = self_attention_masks(cfg, pos, pos, causal=causal, key_padding=attention_mask)
    h, c_stack = stack_forward(params, spec, x, masks=masks, rope=rope_for(cfg, pos, x.dtype))
    return h, {"emb": c_emb, "stack": c_stack}


def trunk_backward(dh: np.ndarray, cache: dict, grads: dict):
    """Block and final-norm gradients into `grads`; returns (dE (V, D) of the input
    embedding use, dmemory (B, S, De) or None). The caller adds the output-matrix use of
    E, which only it knows about. Also undoes the decoder of an encoder-decoder, whose
    forward cache (`EncDecLM._decode`) has the same two parts."""
    dx, dmemory = stack_backward(dh, cache["stack"], grads)
    # x = E[ids] * sqrt(D) (T5Gemma 2: the eoi vector where ids == eoi token)
    dE = embed_backward(dx, cache["emb"], grads)
    return dE, dmemory
