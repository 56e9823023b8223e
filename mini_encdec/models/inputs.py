"""Batches in, positions and attention masks out.

A batch is a dict of integer NumPy arrays (see `mini_encdec.models`). `check_batch`
validates it: a missing key, a wrong shape or dtype, an id outside [0, V) or a mask that
is not 0/1 raises `ValueError` naming the key, what was expected and what was given.

Padding and positions (our convention, used everywhere including generation):
    positions = cumsum(attention_mask) - 1 (clipped at 0), i.e. every real token's
    position counts the real tokens before it. Right padding therefore gives positions
    0, 1, 2, ... exactly as `transformers` does; left padding (used by decoder-only
    generation) gives the real tokens the same positions they would have unpadded, so a
    padded sequence computes exactly what it computes alone. Padding tokens are never
    attended to (key padding), and a padding query with no real key before it outputs 0.
Without an attention_mask the positions are 0..T-1, shared by the batch.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..config import SLIDING, SPLIT, GemmaConfig
from ..nn.masks import allowed_mask_unchecked, attention_mask
from ..nn.rope import rope_tables_unchecked, rope_cos_sin
from ..validate import check_ids, check_mask

IGNORE_INDEX = -100  # labels equal to this are not counted by the loss


def check_batch(batch, *, required: tuple, optional: tuple = (), vocab_size: int,
                fn: str, groups: Optional[dict] = None) -> dict:
    """Validate a batch dict; returns {key: array} with masks converted to bool.

    required/optional: key names. Keys ending in "attention_mask" are 0/1 masks; "labels"
    may hold -100; everything else is token ids. groups: key -> group name; keys of one
    group must have the same (B, T) shape; all keys share B.
    """
    if not isinstance(batch, dict):
        raise ValueError(f"{fn}: argument 'batch': expected a dict of numpy arrays, got "
                         f"{type(batch).__name__}")
    out = {}
    for key in required:
        if key not in batch or batch[key] is None:
            raise ValueError(f"{fn}: batch is missing key {key!r} (expected keys "
                             f"{list(required)}, optional {list(optional)}; got {sorted(batch)})")
    shapes = {}
    for key in tuple(required) + tuple(optional):
        if batch.get(key) is None:
            continue
        arr = batch[key]
        where = f"batch[{key!r}]"
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{fn}: {where}: expected a numpy array, got {type(arr).__name__}")
        if arr.ndim != 2:
            raise ValueError(f"{fn}: {where}: expected shape (B, T) (2 dimensions), "
                             f"got shape {arr.shape}")
        if key.endswith("attention_mask"):
            arr = check_mask(arr, where, arr.shape, fn=fn)
        else:
            allow = (IGNORE_INDEX,) if key == "labels" else ()
            check_ids(arr, where, vocab_size, fn=fn, allow=allow)
        out[key] = arr
        shapes[key] = arr.shape
    batch_sizes = {k: s[0] for k, s in shapes.items()}
    if len(set(batch_sizes.values())) > 1:
        raise ValueError(f"{fn}: expected one batch size B for every key, got "
                         f"{', '.join(f'{k}: {v}' for k, v in batch_sizes.items())}")
    groups = groups or {}
    by_group: dict = {}
    for key, shape in shapes.items():
        by_group.setdefault(groups.get(key, key), []).append((key, shape))
    for members in by_group.values():
        key0, shape0 = members[0]
        for key, shape in members[1:]:
            if shape != shape0:
                raise ValueError(f"{fn}: batch[{key!r}]: expected shape {shape0} "
                                 f"(the shape of batch[{key0!r}]), got {shape}")
    return out


def positions_from_mask(mask: Optional[np.ndarray], T: int) -> np.ndarray:
    """Token positions: (T,) 0..T-1 without a mask, else (B, T) cumsum(mask) - 1 clipped at 0."""
    if mask is None:
        return np.arange(T, dtype=np.int64)
    return np.maximum(np.cumsum(mask, axis=1, dtype=np.int64) - 1, 0)  # (B, T)


def rope_for(cfg: GemmaConfig, positions: np.ndarray, dtype, *, fast: bool = False) -> dict:
    """One (cos, sin) pair per layer type the config uses (layer i reads
    rope[cfg.layer_types[i]]), each (T, Dh) or (B, T, Dh) for the positions. The type's
    base and linear scaling come from `cfg.rope_base` (Gemma 2: one base for all; Gemma 3:
    a local and a global base, the global angles divided by rope_scaling_factor). fast=True
    skips the checks (KV-cached decoding: positions built internally, the config validated)."""
    tables = rope_tables_unchecked if fast else rope_cos_sin
    out = {}
    for lt in sorted(set(cfg.layer_types)):
        theta, factor = cfg.rope_base(lt)
        out[lt] = tables(positions, cfg.head_dim, theta, dtype, scale=1.0 / factor)
    return out


def layer_type_mask(cfg: GemmaConfig, layer_type: str, q_pos, k_pos, *, causal: bool,
                    key_padding=None, fast: bool = False) -> np.ndarray:
    """The self-attention mask (B|1, 1, Tq, Tk) of one layer type: local layers get the
    sliding window (causal: 0 <= q - k < W; bidirectional: |q - k| < W, or T5Gemma 2's
    split window when cfg.bidirectional_window == "split"). fast=True skips
    the checks (KV-cached decoding: positions and bool key_padding built internally)."""
    window = cfg.sliding_window if layer_type == SLIDING else None
    make = allowed_mask_unchecked if fast else attention_mask
    split = not causal and cfg.bidirectional_window == SPLIT
    return make(q_pos, k_pos, causal=causal, window=window, key_padding=key_padding,
                split=split)


def self_attention_masks(cfg: GemmaConfig, q_pos, k_pos, *, causal: bool,
                         key_padding=None) -> dict:
    """One mask per layer type the config uses (layer i reads masks[cfg.layer_types[i]])."""
    return {lt: layer_type_mask(cfg, lt, q_pos, k_pos, causal=causal, key_padding=key_padding)
            for lt in sorted(set(cfg.layer_types))}


def memory_mask(memory_padding: Optional[np.ndarray], S: int) -> np.ndarray:
    """The encoder part of cross/merged attention: every real encoder token, any query.
    (B|1, 1, 1, S) bool, broadcasting over queries."""
    return attention_mask(np.zeros(1, dtype=np.int64), np.arange(S, dtype=np.int64),
                          causal=False, key_padding=memory_padding)


def merge_masks(self_masks: dict, mem_mask: np.ndarray, B: int,
                memory_first: bool = False) -> dict:
    """Merged attention: [self keys ; encoder keys] -> (B, 1, Tq, Tk + S) per layer type
    (memory_first: [encoder keys ; self keys], the order of the decoding cache)."""
    out = {}
    for lt, m in self_masks.items():
        Tq = m.shape[2]
        a = np.broadcast_to(m, (B, 1, Tq, m.shape[3]))  # (B|1,1,Tq,Tk) -> (B,1,Tq,Tk)
        b = np.broadcast_to(mem_mask, (B, 1, Tq, mem_mask.shape[3]))  # -> (B,1,Tq,S)
        out[lt] = np.concatenate([b, a] if memory_first else [a, b], axis=3)
    return out
