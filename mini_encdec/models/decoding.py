"""KV-cached decoding, for both models: the cache and the incremental decoder step.

Inference only, and kept apart from the training path (blocks.py) so that one
reads like the paper and this one can be fast. `cached_block_forward` writes each decoder
layer's equations line for line as blocks.py does, and the tests check every layer's
output against blocks.py's block functions (and the logits against the full forward),
with four differences: no backward caches; the unchecked `nn` helpers
(`apply_rope_unchecked`, `geglu_unchecked`, ...), since `generate` validates its inputs
once per request; fused weights (the cache's own copies), so q, k, v come from one
matmul and so do gate and up; and the matmuls go through
`ops.linear_forward`, whose Numba twin multiplies the few rows of a decoding step
without BLAS's packing of the whole weight matrix (kernels/linear.py).

What is cached, per decoder layer:
    self-attention   the post-RoPE keys and values of every token seen so far (Gemma 3:
                     normalised by k_norm before RoPE, so cached keys are final),
                     (B, K, Tc, Dh); a local (sliding-window) layer keeps only the last
                     W - 1 of them, all a future query can reach (0 <= q - k < W)
    cross-attention  the encoder output's keys and values (B, K, S, Dh), projected ONCE
                     per request by `init_cache`
    merged attention the encoder output's keys and values, projected once with the
                     self_attn weights. A global layer stores them FIRST in its
                     self-attention buffers, [encoder ; decoder keys], so one view holds
                     every key a query sees; a local layer keeps them apart and puts
                     them in front of its last W - 1 decoder keys and the new one at each
                     step (a copy of S + W keys, bounded; only the allowed pairs are
                     computed)
Plus, per layer type, the positions and validity (not padding) of the cached keys, and
each row's next position.
Everything is stored in WindowBuffers (window_buffer.py): appending a token copies only
that token's entries, and the step appends the new keys first and then attends over the
buffer's view of [cached ; new] (merged: [encoder ; cached ; new]), so the cached keys
are read in place, never copied (except a merged local layer's bounded S + W).

`decoder_step(model, cache, ids, valid)` runs the decoder on new tokens ids (B, Tn) (a
whole left-padded prompt, or one token per row) against the cache, appends their keys and
values, and returns the soft-capped logits (B, Tn, V) (last_only=True: (B, 1, V), what
generation needs). Positions follow the models' convention (`inputs.py`): a row's
position advances only on valid tokens, so a left-padded prompt gives exactly the logits
of the full forward with attention_mask.

Shapes: B rows, Tn new tokens, Tc cached tokens, S encoder tokens, D width, H/K query/kv
heads, Dh head size, F MLP width, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import ops
from ..config import SLIDING
from ..nn.attention import merge_heads, split_heads
from ..nn.embedding import embed_unchecked, embedding_scale
from ..nn.mlp import geglu_unchecked
from ..nn.rope import apply_rope_unchecked
from ..nn.softcap import softcap_unchecked
from .encdec import EncDecLM
from .gemma import GemmaLM
from .inputs import layer_type_mask, memory_mask, merge_masks, positions_from_mask, rope_for
from .blocks import norm_keys
from .params import CROSS_NORMS, FFW_NORMS, StackSpec
from .window_buffer import WindowBuffer


def decoder_parts(model):
    """(stack spec, embedding/output table key) of the model's decoder."""
    if isinstance(model, GemmaLM):
        return model.spec, model.embed_key
    if isinstance(model, EncDecLM):
        return model.dec_spec, model.decoder_embed_key
    raise ValueError(f"generation: argument 'model': expected a GemmaLM or EncDecLM, got "
                     f"{type(model).__name__}")


class KVCache:
    """Keys/values of one batch of decoder rows (see the module docstring). Stored in
    WindowBuffers (appends copy only the new entries); `kv`, `pos`, `valid` are views."""

    def __init__(self, num_layers: int, B: int, layer_types: tuple, windows: dict):
        self.layer_types = layer_types
        self.windows = windows  # layer type -> keys kept (W - 1) or None (all)
        # per layer: keys and values, (B, K, Tc, Dh) along axis 2
        self._k = [WindowBuffer(2, windows[lt]) for lt in layer_types]
        self._v = [WindowBuffer(2, windows[lt]) for lt in layer_types]
        # per layer type: positions (B, Tc) and validity (not padding) of the cached keys
        self._pos = {lt: WindowBuffer(1, windows[lt], np.zeros((B, 0), np.int64))
                     for lt in set(layer_types)}
        self._valid = {lt: WindowBuffer(1, windows[lt], np.zeros((B, 0), bool))
                       for lt in set(layer_types)}
        self.next_pos = np.zeros(B, np.int64)  # (B,) position of each row's next token
        # per layer the encoder output's (k, v) (B, K, S, Dh) for the cross-attention
        # (merged attention: for local layers; None where they open the buffers)
        self.memory_kv: Optional[list] = None
        self.memory_mask: Optional[np.ndarray] = None  # (B|1, 1, 1, S) bool
        self.fused: list = []  # fused_weights(model): this cache's own copies

    @property
    def batch_size(self) -> int:
        return self.next_pos.shape[0]

    @property
    def kv(self) -> list:
        """Per layer (k, v) (B, K, Tc, Dh) views of the cached keys/values, or None."""
        return [None if k.buf is None else (k.view(), v.view())
                for k, v in zip(self._k, self._v)]

    @property
    def pos(self) -> dict:
        """Per layer type the positions (B, Tc) of the cached keys (a view)."""
        return {lt: b.view() for lt, b in self._pos.items()}

    @property
    def valid(self) -> dict:
        """Per layer type whether each cached key is a real token (B, Tc) bool (a view)."""
        return {lt: b.view() for lt, b in self._valid.items()}

    def add_positions(self, q_pos: np.ndarray, valid: np.ndarray) -> tuple:
        """Append the new tokens' positions and validity (B, Tn) and advance next_pos.
        Returns per layer type the views (B, Tc + Tn) of [cached ; new]: the keys the new
        queries may see."""
        k_pos = {lt: b.append(q_pos) for lt, b in self._pos.items()}
        k_valid = {lt: b.append(valid) for lt, b in self._valid.items()}
        self.next_pos = self.next_pos + valid.sum(axis=1)
        return k_pos, k_valid

    def add_kv(self, i: int, k: np.ndarray, v: np.ndarray) -> tuple:
        """Append layer i's new keys and values (B, K, Tn, Dh); returns the views
        (B, K, Tc + Tn, Dh) of [cached ; new], read in place (local layers then keep
        only the last W - 1; W = 1: none)."""
        return self._k[i].append(k), self._v[i].append(v)

    def reorder(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (B',) of the batch, in that order (beam search: gather the
        surviving beams; may repeat rows to expand one prompt into several beams)."""
        for b in self._k + self._v + list(self._pos.values()) + list(self._valid.values()):
            b.take_rows(rows)
        self.next_pos = self.next_pos[rows]
        if self.memory_kv is not None:
            self.memory_kv = [None if kv is None else (kv[0][rows], kv[1][rows])
                              for kv in self.memory_kv]
        if self.memory_mask is not None and self.memory_mask.shape[0] > 1:
            self.memory_mask = self.memory_mask[rows]



def _weights(P: dict, name: str) -> tuple:
    """(Wq, Wk, Wv, Wo) of the attention whose keys start with `name`."""
    return tuple(P[f"{name}.{w}_proj.weight"] for w in "qkvo")


def _linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T (..., In) @ (In, Out) -> (..., Out), through the ops dispatch."""
    return ops.linear_forward(x, W)[0]


def project_memory(memory: np.ndarray, Wk: np.ndarray, Wv: np.ndarray, K: int):
    """Keys and values of the encoder output, no RoPE: (B, S, De) -> k, v (B, K, S, Dh)."""
    return split_heads(_linear(memory, Wk), K), split_heads(_linear(memory, Wv), K)


def fused_weights(model) -> list:
    """Per decoder layer {"qkv": [Wq ; Wk ; Wv] ((H + 2K)*Dh, D), "gate_up": [Wg ; Wu]
    (2F, D)}: one matmul each instead of three and two. New arrays (copies of the current
    parameters), owned by the cache of one request (`init_cache`); model.params is not
    touched, so a training step between two requests is seen by the next one."""
    spec, _ = decoder_parts(model)
    P = model.params
    fused = []
    for i in range(spec.cfg.num_hidden_layers):
        p = spec.layer(i)
        fused.append({
            "qkv": np.concatenate([P[f"{p}self_attn.{w}_proj.weight"] for w in "qkv"], axis=0),
            "gate_up": np.concatenate([P[f"{p}mlp.gate_proj.weight"],
                                       P[f"{p}mlp.up_proj.weight"]], axis=0)})
    return fused


def step_weight_bytes(model) -> int:
    """Bytes of weights one decoding step reads: the decoder's layers (not the
    cross-attention keys/values, projected once per request), its final norm and the
    embedding/output table."""
    spec, embed_key = decoder_parts(model)
    prefixes = tuple(spec.layer(i) for i in range(spec.cfg.num_hidden_layers))
    once = ("cross_attn.k_proj", "cross_attn.v_proj")
    return sum(w.nbytes for k, w in model.params.items()
               if k in (embed_key, spec.norm_key)
               or (k.startswith(prefixes) and not any(o in k for o in once)))


def init_cache(model, B: int, encoder_output: Optional[np.ndarray] = None,
               encoder_mask: Optional[np.ndarray] = None) -> KVCache:
    """An empty cache for B rows: per layer type, how many keys its buffers keep (a local
    layer W - 1, all a later query can reach; a global layer all), its own fused
    weights (fused_weights), and for the encoder-decoder the encoder output (B, S, De)
    projected into every layer's cross (or merged) keys/values once."""
    spec, _ = decoder_parts(model)
    cfg = spec.cfg
    windows = {lt: (cfg.sliding_window - 1 if lt == SLIDING else None)
               for lt in set(cfg.layer_types)}
    cache = KVCache(cfg.num_hidden_layers, B, cfg.layer_types, windows)
    cache.fused = fused_weights(model)  # the cache's own, built once per request
    if spec.has_memory:
        if encoder_output is None:
            raise ValueError("init_cache: argument 'encoder_output': required for an "
                             "encoder-decoder model")
        name = "cross_attn" if spec.cross else "self_attn"
        memory_kv = []
        for i in range(cfg.num_hidden_layers):
            _, Wk, Wv, _ = _weights(model.params, spec.layer(i) + name)
            k, v = project_memory(encoder_output, Wk, Wv,
                                  cfg.num_key_value_heads)  # (B, K, S, Dh)
            if spec.merged and cfg.qk_norm:  # T5Gemma 2: encoder keys k_norm-ed, no RoPE
                k = _norm(k, model.params, spec.layer(i) + "self_attn.k_norm.weight",
                          cfg.rms_norm_eps)
            memory_kv.append((k, v))
        if spec.merged:  # a global layer: first in its buffers, [encoder ; decoder keys]
            for i, kv in enumerate(memory_kv):
                if windows[cfg.layer_types[i]] is None:
                    cache.add_kv(i, *kv)
                    memory_kv[i] = None
        cache.memory_kv = memory_kv
        cache.memory_mask = memory_mask(encoder_mask, encoder_output.shape[1])
    return cache


def _norm(x, P: dict, key: str, eps: float):
    return ops.rmsnorm_forward(x, P[key], eps)[0]


def _self_attention(spec: StackSpec, P: dict, i: int, n, fused: dict, cache: KVCache,
                    mask, rope):
    """The self (or merged) attention of layer i for the new tokens n (B, Tn, D), over
    [cached ; new ; (merged) encoder] keys; appends the new keys/values to the cache."""
    cfg = spec.cfg
    H, K, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    qkv = _linear(n, fused["qkv"])  # (B, Tn, D) @ (D, (H + 2K)*Dh) -> (B, Tn, (H + 2K)*Dh)
    q = split_heads(qkv[..., :H * Dh], H)  # -> (B, H, Tn, Dh)
    k = split_heads(qkv[..., H * Dh:(H + K) * Dh], K)  # -> (B, K, Tn, Dh)
    v = split_heads(qkv[..., (H + K) * Dh:], K)  # -> (B, K, Tn, Dh)
    if cfg.qk_norm:  # Gemma 3: q = rmsnorm(q, q_norm), k = rmsnorm(k, k_norm), per head
        name = spec.layer(i) + "self_attn."
        q = _norm(q, P, name + "q_norm.weight", cfg.rms_norm_eps)
        k = _norm(k, P, name + "k_norm.weight", cfg.rms_norm_eps)
    q, k = apply_rope_unchecked(q, *rope), apply_rope_unchecked(k, *rope)
    # (B, K, Tc + Tn, Dh) views of the cache (merged global layer: [encoder ; cached ; new])
    keys, values = cache.add_kv(i, k, v)
    if spec.merged and cache.memory_kv[i] is not None:  # a merged local layer
        keys = np.concatenate([cache.memory_kv[i][0], keys], axis=2)  # [encoder ; window]
        values = np.concatenate([cache.memory_kv[i][1], values], axis=2)
    o, _ = ops.attention_core_forward(q, keys, values, mask,
                                      scale=float(cfg.query_pre_attn_scalar) ** -0.5,
                                      softcap=cfg.attn_logit_softcapping)  # (B, H, Tn, Dh)
    Wo = P[spec.layer(i) + "self_attn.o_proj.weight"]
    return _linear(merge_heads(o), Wo)  # (B, Tn, H*Dh) @ (H*Dh, D) -> (B, Tn, D)


def _cross_attention(spec: StackSpec, P: dict, i: int, n, memory_kv, memory_mask):
    """Cross-attention of layer i: n (B, Tn, D) over the cached encoder keys, no RoPE."""
    cfg = spec.cfg
    Wq, _, _, Wo = _weights(P, spec.layer(i) + "cross_attn")
    q = split_heads(_linear(n, Wq), cfg.num_attention_heads)  # (B, Tn, D) -> (B, H, Tn, Dh)
    o, _ = ops.attention_core_forward(q, *memory_kv, memory_mask,
                                      scale=float(cfg.query_pre_attn_scalar) ** -0.5,
                                      softcap=cfg.attn_logit_softcapping)  # (B, H, Tn, Dh)
    return _linear(merge_heads(o), Wo)  # (B, Tn, H*Dh) @ (H*Dh, D) -> (B, Tn, D)


def cached_block_forward(spec: StackSpec, P: dict, i: int, x, cache: KVCache, mask, rope):
    """Decoder layer i on the new tokens x (B, Tn, D) against the cache -> (B, Tn, D): the
    equations of blocks.py's encoder block (decoder-only Gemma 2), decoder block (T5Gemma)
    or merged block (T5Gemma 2), line for line; tests/test_generate.py checks every layer's
    output against those functions. mask: this layer type's (B, 1, Tn, keys)."""
    p, eps = spec.layer(i), spec.cfg.rms_norm_eps
    pre_attn, post_attn = norm_keys(p, spec.attn_norms)
    pre_cross, post_cross = norm_keys(p, CROSS_NORMS)
    pre_ffw, post_ffw = norm_keys(p, FFW_NORMS)
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )   (merged: over [enc ; x])
    n_attn = _norm(x, P, pre_attn, eps)
    attn = _self_attention(spec, P, i, n_attn, cache.fused[i], cache, mask, rope)
    x = x + _norm(attn, P, post_attn, eps)
    if spec.cross:
        # x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )
        n_cross = _norm(x, P, pre_cross, eps)
        cross = _cross_attention(spec, P, i, n_cross, cache.memory_kv[i], cache.memory_mask)
        x = x + _norm(cross, P, post_cross, eps)
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    n_ffw = _norm(x, P, pre_ffw, eps)
    ffw = geglu_unchecked(n_ffw, cache.fused[i]["gate_up"], P[p + "mlp.down_proj.weight"],
                          act=ops.geglu_act_forward, linear=_linear)
    return x + _norm(ffw, P, post_ffw, eps)


def decoder_step(model, cache: KVCache, ids: np.ndarray, valid: Optional[np.ndarray] = None,
                 *, last_only: bool = False):
    """Soft-capped logits (B, Tn, V) of new tokens ids (B, Tn) (last_only: (B, 1, V));
    valid (B, Tn) bool marks real tokens (False: left padding of a prompt). Appends the
    tokens to the cache. ids and valid are trusted: the caller validated them."""
    spec, embed_key = decoder_parts(model)
    cfg, P, eps = spec.cfg, model.params, spec.cfg.rms_norm_eps
    B, Tn = ids.shape
    if valid is None:
        valid = np.ones((B, Tn), bool)
    # positions advance on valid tokens only, continuing from each row's next position
    q_pos = cache.next_pos[:, None] + positions_from_mask(valid, Tn)  # (B, Tn)
    E = P[embed_key]
    x = embed_unchecked(ids, E, embedding_scale(E.shape[1], E.dtype))  # (B, Tn) -> (B, Tn, D)
    if spec.eoi is not None:  # T5Gemma 2: the eoi token's own input vector
        x[ids == spec.eoi[0]] = P[spec.eoi[1]]
    k_pos, k_valid = cache.add_positions(q_pos, valid)  # (B, Tc + Tn) per layer type
    masks = {lt: layer_type_mask(cfg, lt, q_pos, k_pos[lt], causal=True,
                                 key_padding=k_valid[lt], fast=True)  # (B, 1, Tn, Tc + Tn)
             for lt in k_pos}
    if spec.merged:  # the cache's order: (B, 1, Tn, S + Tc + Tn)
        masks = merge_masks(masks, cache.memory_mask, B, memory_first=True)
    # per layer type (cos, sin) (B, Tn, Dh) -> (B, 1, Tn, Dh): shared by the heads
    ropes = {lt: (cos[:, None], sin[:, None])
             for lt, (cos, sin) in rope_for(cfg, q_pos, x.dtype, fast=True).items()}
    for i in range(cfg.num_hidden_layers):
        lt = cfg.layer_types[i]
        x = cached_block_forward(spec, P, i, x, cache, masks[lt], ropes[lt])
    h = _norm(x[:, -1:] if last_only else x, P, spec.norm_key, eps)  # final norm
    # logits = softcap(h E^T): (B, Tn|1, D) @ (D, V) -> (B, Tn|1, V)
    return softcap_unchecked(_linear(h, E), cfg.final_logit_softcapping)
