"""KV-cached decoding, for both models: the cache and the incremental decoder step.

Inference only, and kept apart from the training path (blocks.py) so that one
reads like the paper and this one can be fast. `cached_block_forward` writes each decoder
layer's equations line for line as blocks.py does, and the tests check every layer's
output against blocks.py's block functions (and the logits against the full forward),
with four differences: no backward caches; the unchecked `nn` helpers
(`apply_rope_unchecked`, `geglu_unchecked`, ...), since `generate` validates its inputs
once per request; fused weights (the cache's own copies), so q, k, v come from one
matmul and so do gate and up; and the matmuls go through
`ops.project`, whose Numba twin multiplies the few rows of a decoding step without
BLAS's packing of the whole weight matrix (kernels/linear.py).

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

The plan of a request. A step of one token does little arithmetic (at batch 1 a few
matrix-vector products), so what it looks up costs as much as what it computes. Whatever
does not change between the steps of one request is therefore looked up once, by
`init_planned_cache(model, B, ..., max_len=N)` (what `generate` runs), into a
DecodingPlan on the cache: the op functions of the backend (`ops.resolve`), each layer's
weights by role (`plan.layers[i]["qkv"]`, ...), the RoPE (cos, sin) table of positions
0 .. N - 1 (a step takes the rows of its positions), and the buffers allocated for N
tokens. A one-token step takes its masks from the cached validity (see
`DecodingPlan.masks`) and soft-caps its logits in place. `init_cache` makes a cache
without a plan: its steps look everything up at every call (the ops through
`mini_encdec.ops`, masks and RoPE from the positions, as the full forward does), the
reference the tests hold the plan to, bit for bit.

A planned step of one token per row runs `one_token_layers`: the same equations, with the
work between the matmuls grouped into three ops (nn/decode_step.py; one Numba call each):
RoPE of q and k with k and v written straight into the cache (`rope_append`), attention
over the cache (`attend`), and each sublayer's post-norm and residual together with the
next sublayer's pre-norm (`residual_norm`). Not for Gemma 3's q/k norms or T5Gemma 2's
merged attention, which keep `cached_block_forward`.

Shapes: B rows, Tn new tokens, Tc cached tokens, S encoder tokens, D width, H/K query/kv
heads, Dh head size, F MLP width, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from .. import ops
from ..config import SLIDING
from ..nn.attention import merge_heads, split_heads
from ..nn.embedding import embed_unchecked, embedding_scale
from ..nn.mlp import geglu_unchecked
from ..nn.rope import apply_rope_unchecked
from ..validate import check_positive_int
from .encdec import EncDecLM
from .gemma import GemmaLM
from .blocks import norm_keys
from .inputs import layer_type_mask, memory_mask, merge_masks, positions_from_mask, rope_for
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
        self.plan: Optional[DecodingPlan] = None  # the request's plan (init_planned_cache)

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

    def claim_kv(self, i: int, like: np.ndarray) -> tuple:
        """Room for layer i's keys and values of one new token per row, written by the
        caller (ops.rope_append stores them as it computes them): (k_buf, v_buf, lo, slot)
        with the new token's entries at [:, :, slot] of both buffers (B, K, capacity, Dh)
        and the keys its query sees at [:, :, lo:slot + 1] (what add_kv would return).
        like: an array with the keys' (B, K, ., Dh) shape and dtype."""
        k_buf, lo, hi = self._k[i].claim(1, like)
        v_buf, _, _ = self._v[i].claim(1, like)
        return k_buf, v_buf, lo, hi - 1

    def reserve(self, n: int, kv_like: np.ndarray) -> None:
        """Room for n more tokens per row in every buffer (a merged global layer's beside
        its encoder keys), allocated now: the appends of a request of at most n tokens
        never grow them. kv_like: an array with the keys' (B, K, ., Dh) shape and dtype."""
        for b in self._k + self._v:
            b.reserve(b.end - b.start + n, kv_like)
        for b in list(self._pos.values()) + list(self._valid.values()):
            b.reserve(b.end - b.start + n, b.buf)

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


def _linear(x: np.ndarray, W: np.ndarray, op=None) -> np.ndarray:
    """y = x W^T (..., In) @ (In, Out) -> (..., Out), through the ops dispatch (op: the
    backend's project, looked up once by a DecodingPlan)."""
    return (op or ops.project)(x, W)


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


def init_planned_cache(model, B: int, encoder_output: Optional[np.ndarray] = None,
                       encoder_mask: Optional[np.ndarray] = None, *, max_len: int) -> KVCache:
    """init_cache's cache for a request of at most max_len tokens per row (its prompt,
    padding included, and its new tokens; more still works, a little slower): its buffers
    allocated for them at once (KVCache.reserve) and its plan (DecodingPlan: the ops, the
    weights by role and the RoPE table looked up once), which decoder_step then runs."""
    max_len = check_positive_int(max_len, "max_len", fn="init_planned_cache")
    cache = init_cache(model, B, encoder_output, encoder_mask)
    cache.plan = DecodingPlan(model, cache, max_len)
    cfg = cache.plan.cfg
    cache.reserve(max_len, np.empty((B, cfg.num_key_value_heads, 0, cfg.head_dim),
                                    cache.plan.embed.dtype))  # (B, K, 0, Dh)
    return cache


def _norm(x, P: dict, key: str, eps: float):
    return ops.rmsnorm_forward(x, P[key], eps)[0]


# --- the plan of one request: everything its steps share, looked up once ------------------------

STEP_OPS = ("project", "rmsnorm_forward", "attention_core_forward", "geglu_act_forward",
            "rope_append", "attend", "residual_norm")


def layer_weights(spec: StackSpec, P: dict, i: int, fused: dict) -> dict:
    """Decoder layer i's weights by role: "pre_attn"/"post_attn", "pre_ffw"/"post_ffw"
    (and "pre_cross"/"post_cross") the RMSNorm weights around each sublayer, "qkv" and
    "gate_up" the fused matrices (the cache's, fused_weights), "o" and "down", Gemma 3's
    "q_norm"/"k_norm", the cross-attention's "cross_q"/"cross_o" (its keys and values are
    projected once, by init_cache)."""
    p = spec.layer(i)
    w = {"qkv": fused["qkv"], "o": P[p + "self_attn.o_proj.weight"],
         "gate_up": fused["gate_up"], "down": P[p + "mlp.down_proj.weight"]}
    sublayers = [("attn", spec.attn_norms), ("ffw", FFW_NORMS)]
    if spec.cross:
        sublayers.append(("cross", CROSS_NORMS))
        w["cross_q"] = P[p + "cross_attn.q_proj.weight"]
        w["cross_o"] = P[p + "cross_attn.o_proj.weight"]
    for role, names in sublayers:
        pre, post = norm_keys(p, names)
        w["pre_" + role], w["post_" + role] = P[pre], P[post]
    if spec.cfg.qk_norm:
        w["q_norm"] = P[p + "self_attn.q_norm.weight"]
        w["k_norm"] = P[p + "self_attn.k_norm.weight"]
    return w


class DecodingPlan:
    """What the steps of one request share, so that a step does only its own work.

    Planned (`init_planned_cache(..., max_len=N)`, what `generate` runs; `cache.plan`):
        ops       the step's op functions (STEP_OPS: `project`, `rmsnorm_forward`,
                  `attention_core_forward`, `geglu_act_forward`) of the current backend,
                  looked up once with `ops.resolve(name)`
        layers    per decoder layer its weights by role (layer_weights)
        rope      per layer type the (cos, sin) table of positions 0 .. N - 1, computed
                  once; a step takes the rows of its positions (the table grows if a
                  step goes past it)
        masks     a step of one token per row takes its mask from the cached validity
                  (`masks`); longer steps (a prompt) build it from the positions
    Unplanned (`decoder_step` on a cache without a plan builds one per call): the ops
    are `mini_encdec.ops`' own functions, which look the backend up at every call, and
    the RoPE tables and masks are computed from the positions at every step with
    `inputs.rope_for` and `inputs.layer_type_mask`, as the full forward does. The tests
    check that both give the same logits.
    """

    def __init__(self, model, cache: KVCache, max_len: Optional[int] = None):
        spec, embed_key = decoder_parts(model)
        cfg, P = spec.cfg, model.params
        self.spec, self.cfg, self.eps = spec, cfg, cfg.rms_norm_eps
        self.H, self.K, self.Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.scale = float(cfg.query_pre_attn_scalar) ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        self.planned = max_len is not None
        if self.planned:  # the functions of the current backend, looked up once
            ops_ = {name: ops.resolve(name) for name in STEP_OPS}
            self.linear = functools.partial(_linear, op=ops_["project"])
        else:  # mini_encdec.ops' dispatching functions (and _linear through them)
            ops_ = {name: getattr(ops, name) for name in STEP_OPS}
            self.linear = _linear
        self.rmsnorm_forward = ops_["rmsnorm_forward"]
        self.attention_core_forward = ops_["attention_core_forward"]
        self.geglu_act_forward = ops_["geglu_act_forward"]
        # one token per row: the step's pieces grouped (nn/decode_step.py), for the layers
        # they cover (not T5Gemma 2's merged attention, not Gemma 3's q/k norms)
        self.one_token = self.planned and not spec.merged and not cfg.qk_norm
        self.rope_append, self.attend = ops_["rope_append"], ops_["attend"]
        self.residual_norm = ops_["residual_norm"]
        self.layers = [layer_weights(spec, P, i, cache.fused[i])
                       for i in range(cfg.num_hidden_layers)]
        self.embed, self.final_norm = P[embed_key], P[spec.norm_key]  # E (V, D), (D,)
        self.embed_factor = embedding_scale(self.embed.shape[1], self.embed.dtype)  # sqrt(D)
        self.eoi = None if spec.eoi is None else (spec.eoi[0], P[spec.eoi[1]])
        self.rope_len = max_len or 0  # positions 0 .. rope_len - 1 in rope_table
        self.rope_table = self._rope_table(max_len) if self.planned else None

    def norm(self, x, w):
        """RMSNorm with weight w (D,) over the last axis: (..., D) -> (..., D)."""
        return self.rmsnorm_forward(x, w, self.eps)[0]

    def attention_core(self, q, k, v, mask):
        """q (B, H, Tn, Dh) over k/v (B, K, keys, Dh) with the config's query scalar and
        soft-cap -> o (B, H, Tn, Dh)."""
        return self.attention_core_forward(q, k, v, mask, scale=self.scale,
                                           softcap=self.softcap)[0]

    def _rope_table(self, n: int) -> dict:
        """Per layer type (cos, sin) (n, Dh) of positions 0 .. n - 1."""
        return rope_for(self.cfg, np.arange(n, dtype=np.int64), self.embed.dtype, fast=True)

    def rope(self, q_pos: np.ndarray) -> dict:
        """Per layer type (cos, sin) (B, 1, Tn, Dh) of the positions q_pos (B, Tn), shared
        by the heads."""
        if not self.planned:
            tables = rope_for(self.cfg, q_pos, self.embed.dtype, fast=True)  # (B, Tn, Dh)
        else:
            if q_pos.max() >= self.rope_len:  # past the planned length: a longer table
                self.rope_len = max(2 * self.rope_len, int(q_pos.max()) + 1)
                self.rope_table = self._rope_table(self.rope_len)
            # the rows of the positions: (n, Dh)[(B, Tn)] -> (B, Tn, Dh)
            tables = {lt: (cos[q_pos], sin[q_pos]) for lt, (cos, sin) in self.rope_table.items()}
        return {lt: (cos[:, None], sin[:, None]) for lt, (cos, sin) in tables.items()}

    def masks(self, q_pos: np.ndarray, k_pos: dict, k_valid: dict,
              memory_mask: Optional[np.ndarray]) -> dict:
        """Per layer type the mask (B, 1, Tn, keys) of the new queries at q_pos (B, Tn) over
        the cached and new keys at k_pos, k_valid (B, Tc + Tn) (merged attention:
        [encoder ; cached ; new], memory_mask (B|1, 1, 1, S) the encoder's part)."""
        B, Tn = q_pos.shape
        if self.planned and Tn == 1:
            # One new token per row: every cached key comes before it, and a local layer
            # keeps only its last W - 1 keys, all within the window (a row's position
            # advances by at most one per token), so the mask is the keys' validity.
            # (B, Tc + 1) -> (B, 1, 1, Tc + 1)
            masks = {lt: valid[:, None, None, :] for lt, valid in k_valid.items()}
        else:
            masks = {lt: layer_type_mask(self.cfg, lt, q_pos, k_pos[lt], causal=True,
                                         key_padding=k_valid[lt], fast=True)
                     for lt in k_pos}  # (B, 1, Tn, Tc + Tn)
        if self.spec.merged:  # the cache's order: (B, 1, Tn, S + Tc + Tn)
            masks = merge_masks(masks, memory_mask, B, memory_first=True)
        return masks


def _self_attention(plan: DecodingPlan, i: int, n, cache: KVCache, mask, rope):
    """The self (or merged) attention of layer i for the new tokens n (B, Tn, D), over
    [cached ; new ; (merged) encoder] keys; appends the new keys/values to the cache."""
    w, H, K, Dh = plan.layers[i], plan.H, plan.K, plan.Dh
    qkv = plan.linear(n, w["qkv"])  # (B, Tn, D) @ (D, (H + 2K)*Dh) -> (B, Tn, (H + 2K)*Dh)
    q = split_heads(qkv[..., :H * Dh], H)  # -> (B, H, Tn, Dh)
    k = split_heads(qkv[..., H * Dh:(H + K) * Dh], K)  # -> (B, K, Tn, Dh)
    v = split_heads(qkv[..., (H + K) * Dh:], K)  # -> (B, K, Tn, Dh)
    if plan.cfg.qk_norm:  # Gemma 3: q = rmsnorm(q, q_norm), k = rmsnorm(k, k_norm), per head
        q, k = plan.norm(q, w["q_norm"]), plan.norm(k, w["k_norm"])
    q, k = apply_rope_unchecked(q, *rope), apply_rope_unchecked(k, *rope)
    # (B, K, Tc + Tn, Dh) views of the cache (merged global layer: [encoder ; cached ; new])
    keys, values = cache.add_kv(i, k, v)
    if plan.spec.merged and cache.memory_kv[i] is not None:  # a merged local layer
        keys = np.concatenate([cache.memory_kv[i][0], keys], axis=2)  # [encoder ; window]
        values = np.concatenate([cache.memory_kv[i][1], values], axis=2)
    o = plan.attention_core(q, keys, values, mask)  # (B, H, Tn, Dh)
    return plan.linear(merge_heads(o), w["o"])  # (B, Tn, H*Dh) @ (H*Dh, D) -> (B, Tn, D)


def _cross_attention(plan: DecodingPlan, i: int, n, memory_kv, memory_mask):
    """Cross-attention of layer i: n (B, Tn, D) over the cached encoder keys, no RoPE."""
    w = plan.layers[i]
    q = split_heads(plan.linear(n, w["cross_q"]), plan.H)  # (B, Tn, D) -> (B, H, Tn, Dh)
    o = plan.attention_core(q, *memory_kv, memory_mask)  # (B, H, Tn, Dh)
    return plan.linear(merge_heads(o), w["cross_o"])  # (B, Tn, H*Dh) @ (H*Dh, D) -> (B, Tn, D)


def cached_block_forward(spec: StackSpec, plan: DecodingPlan, i: int, x, cache: KVCache,
                         mask, rope):
    """Decoder layer i on the new tokens x (B, Tn, D) against the cache -> (B, Tn, D): the
    equations of blocks.py's encoder block (decoder-only Gemma 2), decoder block (T5Gemma)
    or merged block (T5Gemma 2), line for line; tests/test_generate.py checks every layer's
    output against those functions. The weights and ops come from the plan; mask: this
    layer type's (B, 1, Tn, keys), rope its (cos, sin) (B, 1, Tn, Dh)."""
    w = plan.layers[i]  # this layer's weights by role
    # x = x + post_self_attn_norm( self_attn( pre_self_attn_norm(x) ) )   (merged: over [enc ; x])
    n_attn = plan.norm(x, w["pre_attn"])
    attn = _self_attention(plan, i, n_attn, cache, mask, rope)
    x = x + plan.norm(attn, w["post_attn"])
    if spec.cross:
        # x = x + post_cross_attn_norm( cross_attn( pre_cross_attn_norm(x), enc ) )
        n_cross = plan.norm(x, w["pre_cross"])
        cross = _cross_attention(plan, i, n_cross, cache.memory_kv[i], cache.memory_mask)
        x = x + plan.norm(cross, w["post_cross"])
    # x = x + post_ffw_norm( mlp( pre_ffw_norm(x) ) )
    n_ffw = plan.norm(x, w["pre_ffw"])
    ffw = geglu_unchecked(n_ffw, w["gate_up"], w["down"], act=plan.geglu_act_forward,
                          linear=plan.linear)
    return x + plan.norm(ffw, w["post_ffw"])


def one_token_layers(spec: StackSpec, plan: DecodingPlan, x, cache: KVCache, masks: dict,
                     ropes: dict):
    """Every decoder layer on one new token per row x (B, 1, D) -> the final norm of the
    last layer's output (B, 1, D): cached_block_forward's equations, with the work between
    the matmuls grouped into the plan's step ops (nn/decode_step.py: rope_append, attend,
    residual_norm), which a planned step of one token runs. Each sublayer's post-norm and
    residual come with the next sublayer's pre-norm (the last: the final norm)."""
    H, L = plan.H, len(plan.layers)
    kv_like = np.empty((x.shape[0], plan.K, 0, plan.Dh), x.dtype)  # (B, K, 0, Dh)
    n = plan.norm(x, plan.layers[0]["pre_attn"])  # the first layer's pre_self_attn_norm
    for i, w in enumerate(plan.layers):
        lt = plan.cfg.layer_types[i]
        # self-attention: q, k, v from one matmul; RoPE; k, v into the cache; attend
        qkv = plan.linear(n, w["qkv"])  # (B, 1, D) @ (D, (H + 2K)*Dh) -> (B, 1, (H + 2K)*Dh)
        k_buf, v_buf, lo, slot = cache.claim_kv(i, kv_like)
        q = plan.rope_append(qkv, *ropes[lt], k_buf, v_buf, slot, H)  # (B, H, 1, Dh)
        o = plan.attend(q, k_buf, v_buf, lo, slot + 1, masks[lt], scale=plan.scale,
                        softcap=plan.softcap)  # (B, 1, H*Dh)
        attn = plan.linear(o, w["o"])  # (B, 1, H*Dh) @ (H*Dh, D) -> (B, 1, D)
        if spec.cross:
            # x = x + post_self_attn_norm(attn);  n = pre_cross_attn_norm(x)
            x, n = plan.residual_norm(x, attn, w["post_attn"], w["pre_cross"], plan.eps)
            cross = _cross_attention(plan, i, n, cache.memory_kv[i], cache.memory_mask)
            # x = x + post_cross_attn_norm(cross);  n = pre_ffw_norm(x)
            x, n = plan.residual_norm(x, cross, w["post_cross"], w["pre_ffw"], plan.eps)
        else:
            # x = x + post_self_attn_norm(attn);  n = pre_ffw_norm(x)
            x, n = plan.residual_norm(x, attn, w["post_attn"], w["pre_ffw"], plan.eps)
        ffw = geglu_unchecked(n, w["gate_up"], w["down"], act=plan.geglu_act_forward,
                              linear=plan.linear)
        # x = x + post_ffw_norm(ffw);  n = the next layer's pre_self_attn_norm(x) (the last
        # layer: the final norm)
        w_next = plan.layers[i + 1]["pre_attn"] if i + 1 < L else plan.final_norm
        x, n = plan.residual_norm(x, ffw, w["post_ffw"], w_next, plan.eps)
    return n


def _softcap_in_place(z: np.ndarray, cap) -> np.ndarray:
    """z <- cap * tanh(z / cap) (cap None: z as it is), with the roundings of
    nn.softcap.softcap_unchecked but no temporaries (the logits are a fresh array)."""
    if cap is not None:
        c = z.dtype.type(cap)
        with np.errstate(over="ignore"):  # |z| / cap beyond the float range: tanh = +-1
            np.divide(z, c, out=z)
        np.tanh(z, out=z)
        z *= c
    return z


def decoder_step(model, cache: KVCache, ids: np.ndarray, valid: Optional[np.ndarray] = None,
                 *, last_only: bool = False):
    """Soft-capped logits (B, Tn, V) of new tokens ids (B, Tn) (last_only: (B, 1, V));
    valid (B, Tn) bool marks real tokens (False: left padding of a prompt). Appends the
    tokens to the cache. ids and valid are trusted: the caller validated them. Runs the
    cache's plan (init_planned_cache), or without one an unplanned step."""
    plan = cache.plan or DecodingPlan(model, cache)  # unplanned: looked up for this step
    spec, cfg = plan.spec, plan.cfg
    B, Tn = ids.shape
    if valid is None:
        valid = np.ones((B, Tn), bool)
    # positions advance on valid tokens only, continuing from each row's next position
    q_pos = cache.next_pos[:, None] + positions_from_mask(valid, Tn)  # (B, Tn)
    x = embed_unchecked(ids, plan.embed, plan.embed_factor)  # (B, Tn) -> (B, Tn, D)
    if plan.eoi is not None:  # T5Gemma 2: the eoi token's own input vector
        x[ids == plan.eoi[0]] = plan.eoi[1]
    k_pos, k_valid = cache.add_positions(q_pos, valid)  # (B, Tc + Tn) per layer type
    masks = plan.masks(q_pos, k_pos, k_valid, cache.memory_mask)  # (B, 1, Tn, keys) per type
    ropes = plan.rope(q_pos)  # per layer type (cos, sin) (B, 1, Tn, Dh)
    if plan.one_token and Tn == 1:  # the step's pieces grouped; ends with the final norm
        h = one_token_layers(spec, plan, x, cache, masks, ropes)
    else:
        for i in range(cfg.num_hidden_layers):
            lt = cfg.layer_types[i]
            x = cached_block_forward(spec, plan, i, x, cache, masks[lt], ropes[lt])
        h = plan.norm(x[:, -1:] if last_only else x, plan.final_norm)  # final norm
    # logits = softcap(h E^T): (B, Tn|1, D) @ (D, V) -> (B, Tn|1, V)
    return _softcap_in_place(plan.linear(h, plan.embed), cfg.final_logit_softcapping)
