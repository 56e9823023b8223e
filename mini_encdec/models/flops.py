"""Analytic FLOPs of both models: a training step, a forward pass, one generated token.

Conventions:
- Matmul FLOPs only, 2 per multiply-add (`(m, k) @ (k, n)` costs 2 m k n). Norms,
  soft-caps, softmax, GeGLU's activation and RoPE are elementwise, O(T D) against the
  matmuls' O(T D^2), and are not counted. Embedding lookups are free; the tied output
  matrix costs 2 D V per position.
- A training step costs 3x its forward: the backward computes two matmuls (input and
  weight gradients) for each forward matmul. The encoder costs no logits.
- Attention scores and weighted sums cost 4 H Dh per (query, key) pair. `attention=`
  "allowed" (default) counts only the pairs the masks allow (causal: T(T+1)/2 for a
  global layer; local: at most W keys per query, or 2W-1 in the encoder, W in T5Gemma 2's
  split encoder window), the work an
  ideal kernel does; "dense" counts every pair (T^2, T*S), what the NumPy reference
  computes. Sequences are assumed unpadded.
- Generation with the KV cache: one new decoder token at `context` tokens already cached
  projects only itself, attends to min(context + 1, W) keys in a local layer and
  context + 1 in a global layer (+ S encoder keys in cross/merged attention). The encoder
  and the cross-attention key/value projections run once per request:
  `encode_flops(config, S)`.

Shape letters: T decoder (or decoder-only) tokens, S encoder tokens, B batch.
"""

from __future__ import annotations

from typing import Optional

from ..config import SLIDING, EncDecConfig, GemmaConfig

ATTENTION_COUNTS = ("allowed", "dense")


def _pairs(n_q: int, n_k: int, *, causal: bool, window: Optional[int], attention: str,
           q_offset: int = 0, split: bool = False) -> int:
    """(query, key) pairs attended: queries at positions q_offset .. q_offset + n_q - 1,
    keys at 0 .. n_k - 1 (self-attention: q_offset = n_k - n_q). split: T5Gemma 2's
    encoder window, (W + 1) // 2 keys back (the query included) and W // 2 ahead."""
    if attention == "dense":
        return n_q * n_k
    total = 0
    for q in range(q_offset, q_offset + n_q):
        if causal:
            lo = 0 if window is None else max(0, q - window + 1)
            total += min(q, n_k - 1) - lo + 1
        else:
            back, ahead = ((window + 1) // 2 - 1, window // 2) if split and window else \
                (None if window is None else window - 1,) * 2
            lo = 0 if window is None else max(0, q - back)
            hi = n_k - 1 if window is None else min(n_k - 1, q + ahead)
            total += hi - lo + 1
    return total


def _proj_q_o(cfg: GemmaConfig, n: int) -> int:
    """q and o projections of n tokens: 2 n D (H Dh) each."""
    return 2 * 2 * n * cfg.hidden_size * cfg.num_attention_heads * cfg.head_dim


def _proj_kv(cfg: GemmaConfig, n: int, d_in: int) -> int:
    """k and v projections of n tokens of width d_in: 2 n d_in (K Dh) each."""
    return 2 * 2 * n * d_in * cfg.num_key_value_heads * cfg.head_dim


def _attend(cfg: GemmaConfig, pairs: int) -> int:
    """scores (q . k) and weighted sum (p v): 2 Dh per pair each, for H heads."""
    return 4 * cfg.num_attention_heads * cfg.head_dim * pairs


def _mlp(cfg: GemmaConfig, n: int) -> int:
    """gate, up (D -> F) and down (F -> D): 3 matmuls of 2 n D F."""
    return 3 * 2 * n * cfg.hidden_size * cfg.intermediate_size


def _window(cfg: GemmaConfig, layer: int) -> Optional[int]:
    return cfg.sliding_window if cfg.layer_types[layer] == SLIDING else None


def stack_forward_flops(cfg: GemmaConfig, T: int, *, causal: bool, attention: str = "allowed",
                        memory: Optional[int] = None, memory_width: Optional[int] = None,
                        merged: bool = False) -> int:
    """One stack's blocks on T tokens of one sequence (no embedding, no logits).
    memory: S encoder tokens read by cross-attention (or merged attention)."""
    total = 0
    for i in range(cfg.num_hidden_layers):
        w = _window(cfg, i)
        pairs = _pairs(T, T, causal=causal, window=w, attention=attention,
                       split=cfg.bidirectional_window == "split")
        total += _proj_q_o(cfg, T) + _proj_kv(cfg, T, cfg.hidden_size)
        if memory is not None:  # keys/values of the S encoder tokens, every pair allowed
            total += _proj_kv(cfg, memory, memory_width)
            pairs_mem = T * memory
            if merged:
                pairs += pairs_mem
            else:  # a separate cross-attention with its own q and o projections
                total += _proj_q_o(cfg, T) + _attend(cfg, pairs_mem)
        total += _attend(cfg, pairs) + _mlp(cfg, T)
    return total


def _logits(cfg: GemmaConfig, n: int) -> int:
    return 2 * n * cfg.hidden_size * cfg.vocab_size


def _check(config, attention):
    if not isinstance(config, (GemmaConfig, EncDecConfig)):
        raise ValueError(f"flops: argument 'config': expected a GemmaConfig or EncDecConfig, "
                         f"got {type(config).__name__}")
    if attention not in ATTENTION_COUNTS:
        raise ValueError(f"flops: argument 'attention': expected one of {ATTENTION_COUNTS}, "
                         f"got {attention!r}")


def _check_len(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"flops: argument {name!r}: expected an integer >= {minimum}, got {v!r}")
    return v


def forward_flops(config, T: int, S: Optional[int] = None, *, attention: str = "allowed") -> int:
    """FLOPs of one forward pass of ONE sequence: T decoder (or decoder-only) tokens, and
    for an encoder-decoder S encoder tokens. Includes the logits of all T positions."""
    _check(config, attention)
    T = _check_len("T", T)
    if isinstance(config, GemmaConfig):
        return stack_forward_flops(config, T, causal=True, attention=attention) + \
            _logits(config, T)
    S = _check_len("S", S)
    enc, dec = config.encoder, config.decoder
    return (stack_forward_flops(enc, S, causal=False, attention=attention)
            + stack_forward_flops(dec, T, causal=True, attention=attention, memory=S,
                                  memory_width=enc.hidden_size, merged=config.merged_attention)
            + _logits(dec, T))


def train_step_flops(config, batch_size: int, T: int, S: Optional[int] = None, *,
                     attention: str = "allowed") -> int:
    """FLOPs of one training step (forward + backward = 3 x forward) on a batch."""
    batch_size = _check_len("batch_size", batch_size)
    return 3 * batch_size * forward_flops(config, T, S, attention=attention)


def prefill_flops(config: GemmaConfig, T: int, *, attention: str = "allowed") -> int:
    """Once per decoder-only generation request: the model on a T-token prompt, filling
    the KV cache, with the logits of the last position only (what `generate` computes:
    the next token needs no others)."""
    _check(config, attention)
    if not isinstance(config, GemmaConfig):
        raise ValueError("prefill_flops: argument 'config': expected a GemmaConfig")
    T = _check_len("T", T)
    return stack_forward_flops(config, T, causal=True, attention=attention) + _logits(config, 1)


def encode_flops(config: EncDecConfig, S: int, *, attention: str = "allowed") -> int:
    """Once per generation request: the encoder on S tokens, plus every decoder layer's
    cross (or merged) attention key/value projection of the encoder output."""
    _check(config, attention)
    if not isinstance(config, EncDecConfig):
        raise ValueError("encode_flops: argument 'config': expected an EncDecConfig")
    S = _check_len("S", S)
    enc, dec = config.encoder, config.decoder
    return (stack_forward_flops(enc, S, causal=False, attention=attention)
            + dec.num_hidden_layers * _proj_kv(dec, S, enc.hidden_size))


def token_flops(config, context: int, S: Optional[int] = None) -> int:
    """FLOPs of generating ONE token with the KV cache, for one sequence: the decoder on
    the new token with `context` tokens already cached (S encoder tokens for an
    encoder-decoder, whose keys/values are already projected), plus its logits."""
    _check(config, "allowed")
    context = _check_len("context", context, minimum=0)
    dec = config if isinstance(config, GemmaConfig) else config.decoder
    if isinstance(config, EncDecConfig):
        S = _check_len("S", S)
    total = 0
    for i in range(dec.num_hidden_layers):
        w = _window(dec, i)
        keys = context + 1 if w is None else min(context + 1, w)
        total += _proj_q_o(dec, 1) + _proj_kv(dec, 1, dec.hidden_size) + _mlp(dec, 1)
        if isinstance(config, EncDecConfig):
            if config.merged_attention:
                keys += S
            else:
                total += _proj_q_o(dec, 1) + _attend(dec, S)
        total += _attend(dec, keys)
    return total + _logits(dec, 1)


def decode_step_bytes(config, context: int, S: Optional[int] = None, *, batch: int = 1,
                      itemsize: int = 4) -> int:
    """Bytes one KV-cached decoding step must read, for `batch` rows with `context`
    tokens already cached (S encoder tokens for an encoder-decoder), at `itemsize` bytes
    per number (4: float32): the floor of a step whose data does not stay in the CPU's
    caches is these bytes over the memory bandwidth.

        weights   every decoder layer's matrices and norm weights (not the cross-attention
                  key/value projections: the encoder output is projected once per
                  request), the final norm and the tied embedding/output table (V, D),
                  read once per step whatever the batch (`decoding.step_weight_bytes`)
        KV cache  per row and layer the keys and values the new token attends to (K Dh
                  numbers each): min(context + 1, W) in a local layer, context + 1 in a
                  global one, + S encoder keys in cross (or merged) attention

    The activations (a few rows of width D or F) and the B rows of the input embedding
    are left out: they are small beside these."""
    _check(config, "allowed")
    context = _check_len("context", context, minimum=0)
    batch = _check_len("batch", batch)
    itemsize = _check_len("itemsize", itemsize)
    dec = config if isinstance(config, GemmaConfig) else config.decoder
    cross = isinstance(config, EncDecConfig) and not config.merged_attention
    if isinstance(config, EncDecConfig):
        S = _check_len("S", S)
    D, H, K, Dh, F = (dec.hidden_size, dec.num_attention_heads, dec.num_key_value_heads,
                      dec.head_dim, dec.intermediate_size)
    per_layer = ((H + 2 * K) * Dh * D + H * Dh * D  # q, k, v and o projections
                 + 3 * D * F  # gate, up, down
                 + 4 * D  # pre/post norms of attention and MLP
                 + (2 * Dh if dec.qk_norm else 0))  # Gemma 3's q/k norms
    if cross:  # the cross-attention's q and o projections and its two norms
        per_layer += 2 * H * Dh * D + 2 * D
    weights = dec.num_hidden_layers * per_layer + D + dec.vocab_size * D
    keys = 0
    for i in range(dec.num_hidden_layers):
        w = _window(dec, i)
        keys += (context + 1 if w is None else min(context + 1, w)) + (S or 0)
    return itemsize * (weights + batch * keys * 2 * K * Dh)
