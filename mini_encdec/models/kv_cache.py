"""The KV cache and the incremental decoder step, for both models (generation).

What is cached, per decoder layer:
    self-attention   the post-RoPE keys and values of every token seen so far,
                     (B, K, Tc, Dh); a local (sliding-window) layer keeps only the last
                     W - 1 of them, all a future query can reach (0 <= q - k < W)
    cross-attention  the encoder output's keys and values (B, K, S, Dh), projected ONCE
                     per request by `init_cache` (merged attention: with the self_attn
                     projections, appended after the decoder keys)
Plus, per layer type, the positions and validity (not padding) of the cached keys, and
each row's next position.
Everything is stored in WindowBuffers (window_buffer.py): appending a token copies only
that token's entries, not the whole cache.

`decoder_step(model, cache, ids, valid)` runs the decoder stack on new tokens ids (B, Tn)
(a whole left-padded prompt, or one token per row) against the cache, appends their keys
and values, and returns the soft-capped logits (B, Tn, V). Positions follow the models'
convention (`inputs.py`): a row's position advances only on valid tokens, so a
left-padded prompt gives exactly the logits of the full forward with attention_mask.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..config import SLIDING
from ..nn.embedding import _embed, embedding_forward, embedding_scale
from ..nn.linear import _linear
from ..nn.softcap import _softcap
from . import head
from .attention import attention_weights, project_memory
from .encdec import EncDecLM
from .gemma import GemmaLM
from .inputs import layer_type_mask, memory_mask, merge_masks, rope_for
from .stack import fuse_weights, stack_forward
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
        self.memory_kv: Optional[list] = None  # per layer (k, v) (B, K, S, Dh)
        self.memory_mask: Optional[np.ndarray] = None  # (B|1, 1, 1, S) bool
        self.fused: Optional[list] = None  # stack.fuse_weights, for decoder_step(fast=True)

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

    def append(self, new_kv: list, q_pos: np.ndarray, valid: np.ndarray) -> None:
        """Add the new tokens' keys/values (B, K, Tn, Dh) per layer, positions and validity
        (B, Tn); local layers keep only the last W - 1 (W = 1: none)."""
        for i, (k, v) in enumerate(new_kv):
            self._k[i].append(k)  # (B, K, Tc, Dh) ; (B, K, Tn, Dh) -> (B, K, Tc + Tn, Dh)
            self._v[i].append(v)
        for lt in self._pos:
            self._pos[lt].append(q_pos)  # (B, Tc) ; (B, Tn) -> (B, Tc + Tn)
            self._valid[lt].append(valid)

    def reorder(self, rows: np.ndarray) -> None:
        """Keep rows `rows` (B',) of the batch, in that order (beam search: gather the
        surviving beams; may repeat rows to expand one prompt into several beams)."""
        for b in self._k + self._v + list(self._pos.values()) + list(self._valid.values()):
            b.take_rows(rows)
        self.next_pos = self.next_pos[rows]
        if self.memory_kv is not None:
            self.memory_kv = [(k[rows], v[rows]) for k, v in self.memory_kv]
        if self.memory_mask is not None and self.memory_mask.shape[0] > 1:
            self.memory_mask = self.memory_mask[rows]


def init_cache(model, B: int, encoder_output: Optional[np.ndarray] = None,
               encoder_mask: Optional[np.ndarray] = None) -> KVCache:
    """An empty cache for B rows; for the encoder-decoder, project the encoder output
    (B, S, De) into every layer's cross (or merged) keys/values once."""
    spec, _ = decoder_parts(model)
    cfg = spec.cfg
    windows = {lt: (cfg.sliding_window - 1 if lt == SLIDING else None)
               for lt in set(cfg.layer_types)}
    cache = KVCache(cfg.num_hidden_layers, B, cfg.layer_types, windows)
    if spec.has_memory:
        if encoder_output is None:
            raise ValueError("init_cache: argument 'encoder_output': required for an "
                             "encoder-decoder model")
        name = "cross_attn" if spec.cross else "self_attn"
        cache.memory_kv = []
        for i in range(cfg.num_hidden_layers):
            _, Wk, Wv, _ = attention_weights(model.params, spec.layer(i) + name)
            k, v, _ = project_memory(encoder_output, Wk, Wv, cfg.num_key_value_heads)
            cache.memory_kv.append((k, v))  # (B, K, S, Dh) each
        cache.memory_mask = memory_mask(encoder_mask, encoder_output.shape[1])
    return cache


def decoder_step(model, cache: KVCache, ids: np.ndarray, valid: Optional[np.ndarray] = None,
                 *, fast: bool = False):
    """Soft-capped logits (B, Tn, V) of new tokens ids (B, Tn); valid (B, Tn) marks real
    tokens (False: left padding of a prompt). Appends the tokens to the cache.

    fast=True is generation's inner loop: ids (and a bool valid) are trusted (validated
    once per request), the unchecked nn helpers run, q/k/v and gate/up are one matmul
    each, and only the last position's logits are computed: (B, 1, V)."""
    spec, embed_key = decoder_parts(model)
    cfg, P = spec.cfg, model.params
    B, Tn = ids.shape
    if valid is None:
        valid = np.ones((B, Tn), bool)
    # positions advance on valid tokens only (as positions_from_mask does)
    q_pos = cache.next_pos[:, None] + np.maximum(np.cumsum(valid, axis=1) - 1, 0)  # (B, Tn)
    E = P[embed_key]
    if fast:
        if cache.fused is None:
            cache.fused = fuse_weights(P, spec)  # once per request (a copy of those weights)
        x = _embed(ids, E, embedding_scale(E.shape[1], E.dtype))  # (B, Tn) -> (B, Tn, D)
    else:
        x, _ = embedding_forward(ids, E)  # (B, Tn) -> (B, Tn, D)
    masks = {}
    for lt in cache.pos:
        k_pos = np.concatenate([cache.pos[lt], q_pos], axis=1)  # (B, Tc + Tn)
        k_valid = np.concatenate([cache.valid[lt], valid], axis=1)
        masks[lt] = layer_type_mask(cfg, lt, q_pos, k_pos, causal=True, key_padding=k_valid,
                                    fast=fast)
    if spec.merged:
        masks = merge_masks(masks, cache.memory_mask, B)  # (B, 1, Tn, Tc + Tn + S)
    rope = rope_for(cfg, q_pos, x.dtype, fast=fast)
    h, _, new_kv = stack_forward(P, spec, x, masks=masks, rope=rope,
                                 cross_mask=cache.memory_mask, memory_kv=cache.memory_kv,
                                 past=cache.kv, fast=fast, fused=cache.fused)
    cache.append(new_kv, q_pos, valid)
    cache.next_pos = cache.next_pos + valid.sum(axis=1)
    if fast:
        # logits = softcap(h_last E^T): (B, 1, D) @ (D, V) -> (B, 1, V)
        return _softcap(_linear(h[:, -1:], E), cfg.final_logit_softcapping)
    z, _ = head.raw_logits(h, E)  # (B, Tn, D) @ (D, V) -> (B, Tn, V)
    return head.capped_logits(z, cfg.final_logit_softcapping)[0]
