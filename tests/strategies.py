"""Hypothesis strategies shared by the tests, layered from sizes to shapes to arrays.

The hypothesis profiles (deterministic by default, a seed-hunting mode) live in
tests/conftest.py. Arrays are drawn from explicit seeded numpy Generators (`seeds`,
`rngs`), never from numpy's global random state, so a hypothesis example fixes them too.
"""

import numpy as np
from hypothesis import strategies as st

from mini_encdec.config import EncDecConfig, GemmaConfig

# --- layered strategies: sizes -> shapes -> arrays / masks -> configs -----------------------

# Sizes: small, so a float64 finite-difference check over every element stays cheap.
batch_sizes = st.integers(1, 2)
seq_lens = st.integers(1, 6)
widths = st.integers(1, 6)
head_dims = st.sampled_from([2, 4])  # even (RoPE rotates halves)
windows = st.integers(1, 4)
float_dtypes = st.sampled_from([np.float32, np.float64])
seeds = st.integers(0, 2**32 - 1)
rngs = seeds.map(np.random.default_rng)  # explicit Generators; no global random state


@st.composite
def heads(draw, max_kv=2, max_group=3):
    """(H, K): K key/value heads, H = K * G query heads."""
    K = draw(st.integers(1, max_kv))
    G = draw(st.integers(1, max_group))
    return K * G, K


@st.composite
def attention_dims(draw, cross=None):
    """Shapes for the attention core: dict B, H, K, Tq, Tk, Dh. `cross` None draws
    self- or cross-attention (Tk != Tq allowed); False forces Tk == Tq."""
    B = draw(batch_sizes)
    H, K = draw(heads())
    Tq = draw(seq_lens)
    is_cross = draw(st.booleans()) if cross is None else cross
    Tk = draw(seq_lens) if is_cross else Tq
    return dict(B=B, H=H, K=K, Tq=Tq, Tk=Tk, Dh=draw(head_dims))


@st.composite
def bool_masks(draw, shape, p_true=0.7):
    """A boolean array of `shape`, each entry True with probability about p_true."""
    n = int(np.prod(shape))
    bits = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    return np.array(bits, dtype=np.float64).reshape(shape) < p_true


@st.composite
def attention_masks(draw, B, Tq, Tk):
    """A mask (B|1, 1, Tq, Tk): None, random, or causal/windowed/padded from positions."""
    kind = draw(st.sampled_from(["none", "random", "positions"]))
    if kind == "none":
        return None
    if kind == "random":
        b = draw(st.sampled_from([1, B]))
        return draw(bool_masks((b, 1, Tq, Tk)))
    from mini_encdec.nn.masks import attention_mask
    causal = draw(st.booleans())
    window = draw(st.none() | windows)
    pad = draw(st.none() | key_paddings(B, Tk))
    return attention_mask(np.arange(Tq), np.arange(Tk), causal=causal, window=window,
                          key_padding=pad)


@st.composite
def key_paddings(draw, B, T):
    """(B, T) bool, True for real tokens, right-padded: each row keeps a prefix."""
    lens = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return np.arange(T)[None, :] < np.array(lens)[:, None]


@st.composite
def gemma_configs(draw, vocab_size=None):
    """Tiny but valid GemmaConfigs exercising GQA, windows, soft-caps and query scalars."""
    H, K = draw(heads())
    L = draw(st.integers(1, 3))
    return GemmaConfig(
        vocab_size=vocab_size or draw(st.integers(8, 24)),
        hidden_size=draw(st.integers(2, 8)),
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=K,
        head_dim=draw(head_dims),
        intermediate_size=draw(st.integers(2, 8)),
        sliding_window=draw(windows),
        attn_logit_softcapping=draw(st.none() | st.sampled_from([1.0, 50.0])),
        final_logit_softcapping=draw(st.none() | st.sampled_from([2.0, 30.0])),
        query_pre_attn_scalar=draw(st.none() | st.sampled_from([3.0, 16.0])),
    )


@st.composite
def encdec_configs(draw):
    """Tiny encoder-decoder configs: widths, depths and heads may differ; shared vocabulary."""
    V = draw(st.integers(8, 24))
    return EncDecConfig(encoder=draw(gemma_configs(vocab_size=V)),
                        decoder=draw(gemma_configs(vocab_size=V)))
