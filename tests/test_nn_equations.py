"""Each nn/ layer equals its equation (SPEC.md section 1), written plainly here: loops, no tricks.

The nn functions run as written (called directly, not through the backend dispatcher),
on inputs drawn by hypothesis, and must match the equation. Each `check_*` helper is
also run against a famous wrong version (a norm scaled by `w` instead of `(1 + w)`,
interleaved RoPE, an attention without its soft-cap), which it must reject: a check that
passes everything grades nothing. The backward passes are graded by the finite
differences of tests/test_nn_gradcheck.py, the properties the equations imply (RoPE
offsets, GQA, masked keys, soft-cap bounds) by tests/test_nn_properties.py.

Markers task1_1 ... task2_4, task6_2: the classroom assignments
(tutorials/assignments/README.md).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.nn import attention as attn
from mini_encdec.nn import loss, masks, mlp, rmsnorm, rope, softcap

from .assertions import assert_close
from .strategies import (attention_dims, attention_masks, batch_sizes, float_dtypes,
                         head_dims, heads, seeds, seq_lens, widths, windows)


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def _rng():
    return np.random.default_rng(1)


# --- RMSNorm with (1 + w) ----------------------------------------------------------------

def rmsnorm_by_the_equation(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1 + w)


def check_rmsnorm_forward(forward, x, w):
    y, _ = forward(x, w)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_close(y, rmsnorm_by_the_equation(x, w), **tol(x.dtype))


@pytest.mark.task1_1
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), D=widths, dtype=float_dtypes,
       seed=seeds, scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_rmsnorm_is_the_equation(lead, D, dtype, seed, scale):
    """y = x / sqrt(mean(x^2) + eps) * (1 + w) over the last axis, Gemma's (1 + w) convention,
    in float32 and float64."""
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((*lead, D))).astype(dtype)
    w = rng.standard_normal(D).astype(dtype)
    check_rmsnorm_forward(rmsnorm.rmsnorm_forward, x, w)


@pytest.mark.task1_1
def test_check_rejects_a_norm_without_the_one_plus():
    """Your rmsnorm_forward passes the equation check, and the same check rejects a norm scaled
    by w instead of (1 + w)."""
    x, w = _rng().standard_normal((2, 4)), 0.1 * _rng().standard_normal(4)

    def w_instead_of_one_plus_w(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w, None

    check_rmsnorm_forward(rmsnorm.rmsnorm_forward, x, w)
    with pytest.raises(AssertionError):
        check_rmsnorm_forward(w_instead_of_one_plus_w, x, w)


# --- rotary position embeddings (rotate-half) ------------------------------------------------

def rope_by_the_equation(x, positions, theta=10000.0):
    """Rotate the pair (x[i], x[i + Dh/2]) by the angle pos * theta^(-2i/Dh), with loops.
    x (N, T, Dh), positions (T,)."""
    N, T, Dh = x.shape
    h = Dh // 2
    y = np.empty_like(x)
    for t in range(T):
        for i in range(h):
            a = positions[t] * theta ** (-2.0 * i / Dh)
            c, s = math.cos(a), math.sin(a)
            y[:, t, i] = x[:, t, i] * c - x[:, t, i + h] * s
            y[:, t, i + h] = x[:, t, i + h] * c + x[:, t, i] * s
    return y


def library_rope(x, positions, theta=10000.0):
    """nn's RoPE on x (..., T, Dh) at positions (T,)."""
    cos, sin = rope.rope_cos_sin(positions, x.shape[-1], theta=theta, dtype=x.dtype)
    return rope.rope_forward(x, cos, sin)[0]


def check_rope(apply, x, positions, theta=10000.0):
    """apply(x (1, N, T, Dh), positions (T,), theta) -> rotated x."""
    y = apply(x[None], positions, theta)[0]
    assert_close(y, rope_by_the_equation(x, positions, theta), rtol=1e-9, atol=1e-9)


@pytest.mark.task1_2
@given(N=st.integers(1, 3), T=seq_lens, Dh=st.sampled_from([2, 4, 8]), seed=seeds,
       offset=st.integers(0, 5000), theta=st.sampled_from([100.0, 10000.0]))
def test_rope_is_the_pairwise_rotation(N, T, Dh, seed, offset, theta):
    x = np.random.default_rng(seed).standard_normal((N, T, Dh))
    check_rope(library_rope, x, offset + np.arange(T), theta)


@pytest.mark.task1_2
def test_check_rejects_interleaved_rope():
    x, positions = _rng().standard_normal((1, 3, 4)), np.arange(3)

    def interleaved(x, positions, theta):  # rotates (x[2i], x[2i+1]), not (x[i], x[i+h])
        perm = np.array([0, 2, 1, 3])  # rotate-half layout <-> interleaved layout
        return library_rope(x[..., perm], positions, theta)[..., perm]

    check_rope(library_rope, x, positions)
    with pytest.raises(AssertionError):
        check_rope(interleaved, x, positions)


# --- soft-cap and the tanh GELU --------------------------------------------------------------

@pytest.mark.task1_3
@given(seed=seeds, cap=st.sampled_from([1.0, 30.0, 50.0]), spread=st.sampled_from([1.0, 1e3]),
       dtype=float_dtypes)
def test_softcap_is_c_tanh_x_over_c(seed, cap, spread, dtype):
    x = (spread * np.random.default_rng(seed).standard_normal((3, 5))).astype(dtype)
    y, _ = softcap.softcap_forward(x, cap)
    assert y.dtype == x.dtype
    assert_close(y, cap * np.tanh(x.astype(np.float64) / cap), **tol(dtype))


@pytest.mark.task1_3
@given(seed=seeds, dtype=float_dtypes)
def test_gelu_tanh_is_the_formula(seed, dtype):
    u = (3 * np.random.default_rng(seed).standard_normal((4, 6))).astype(dtype)
    g, _ = mlp.gelu_tanh_forward(u)
    u64 = u.astype(np.float64)
    want = 0.5 * u64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (u64 + 0.044715 * u64**3)))
    assert g.dtype == dtype
    assert_close(g, want, **tol(dtype))


# --- the GeGLU feed-forward ------------------------------------------------------------------

@pytest.mark.task1_4
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), D=widths, F=widths,
       seed=seeds)
def test_geglu_is_down_of_gelu_gate_times_up(lead, D, F, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, D))
    Wg, Wu, Wd = (rng.standard_normal(shape) for shape in ((F, D), (F, D), (D, F)))
    y, _ = mlp.geglu_forward(x, Wg, Wu, Wd)
    gate, up = x @ Wg.T, x @ Wu.T  # weights [out, in]: y = x W^T
    gelu = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    assert_close(y, (gelu * up) @ Wd.T, rtol=1e-10, atol=1e-12)


# --- the attention core: GQA, query scalar, soft-cap, mask, softmax --------------------------

def attention_by_the_equation(q, k, v, mask, scale, cap):
    """Loops over batch, heads and queries. mask (B|1, 1, Tq, Tk) or None."""
    B, H, Tq, Dh = q.shape
    G = H // k.shape[1]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                s = (k[b, h // G] @ q[b, h, i]) * scale              # (Tk,)
                if cap is not None:
                    s = cap * np.tanh(s / cap)
                if mask is None:
                    allowed = np.ones(k.shape[2], bool)
                else:
                    allowed = mask[min(b, len(mask) - 1), 0, i]       # (Tk,), batch 1 broadcasts
                if not allowed.any():
                    continue                                          # no key: zeros
                e = np.exp(s[allowed] - s[allowed].max())
                out[b, h, i] = (e / e.sum()) @ v[b, h // G][allowed]
    return out


def check_attention_forward(core, q, k, v, mask, scale, cap):
    o, _ = core(q, k, v, mask, scale=scale, softcap=cap)
    assert o.shape == q.shape and o.dtype == q.dtype
    want = attention_by_the_equation(q.astype(np.float64), k.astype(np.float64),
                                     v.astype(np.float64), mask, scale, cap)
    assert_close(o, want, **tol(q.dtype))


def attention_inputs(dims, rng, dtype=np.float64, spread=1.0):
    B, H, K, Tq, Tk, Dh = (dims[n] for n in ("B", "H", "K", "Tq", "Tk", "Dh"))
    return (spread * rng.standard_normal((B, H, Tq, Dh))).astype(dtype), \
        (spread * rng.standard_normal((B, K, Tk, Dh))).astype(dtype), \
        rng.standard_normal((B, K, Tk, Dh)).astype(dtype)


@pytest.mark.task2_2
@given(data=st.data(), dims=attention_dims(), seed=seeds, dtype=float_dtypes,
       query_scalar=st.sampled_from([4.0, 144.0]), cap=st.sampled_from([None, 1.0, 50.0]),
       spread=st.sampled_from([1.0, 10.0]))
def test_attention_core_is_the_equation(data, dims, seed, dtype, query_scalar, cap, spread):
    """The output is softmax(mask(softcap(scale * q k^T))) v computed with loops, query head h
    reading key/value head h // (H/K), and zeros for a row that allows no key."""
    rng = np.random.default_rng(seed)
    q, k, v = attention_inputs(dims, rng, dtype, spread)
    mask = data.draw(attention_masks(dims["B"], dims["Tq"], dims["Tk"]))
    check_attention_forward(attn.attention_core_forward, q, k, v, mask, query_scalar ** -0.5, cap)


@pytest.mark.task2_2
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_core_large_scores_do_not_overflow_the_softmax(dtype):
    """Scores in the hundreds (no soft-cap): exp overflows unless the softmax subtracts
    each row's maximum first; the output still equals the equation."""
    dims = dict(B=1, H=2, K=1, Tq=3, Tk=4, Dh=8)
    q, k, v = attention_inputs(dims, _rng(), dtype, spread=30.0 if dtype == np.float32 else 100.0)
    check_attention_forward(attn.attention_core_forward, q, k, v, None, 1.0, None)


@pytest.mark.task2_2
def test_check_rejects_a_dropped_softcap():
    """Your attention_core_forward passes the equation check with a soft-cap, and the same check
    rejects a core that drops the soft-cap."""
    q, k, v = attention_inputs(dict(B=1, H=2, K=1, Tq=3, Tk=3, Dh=4), _rng(), spread=5.0)

    def no_softcap(q, k, v, mask, *, scale, softcap):
        return attn.attention_core_forward(q, k, v, mask, scale=scale, softcap=None)

    check_attention_forward(attn.attention_core_forward, q, k, v, None, 0.5, 1.0)
    with pytest.raises(AssertionError):
        check_attention_forward(no_softcap, q, k, v, None, 0.5, 1.0)


# --- the attention layer: projections, RoPE, core, output projection -------------------------

@pytest.mark.task2_4
@given(hk=heads(), B=batch_sizes, T=st.integers(1, 4), Dh=head_dims, D=st.integers(1, 4),
       causal=st.booleans(), window=st.none() | windows, seed=seeds)
def test_attention_layer_is_projections_rope_core_output(hk, B, T, Dh, D, causal, window, seed):
    H, K = hk
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D))
    Wq, Wk, Wv = (0.5 * rng.standard_normal((n * Dh, D)) for n in (H, K, K))
    Wo = 0.5 * rng.standard_normal((D, H * Dh))
    cs = rope.rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
    mask = masks.attention_mask(np.arange(T), np.arange(T), causal=causal, window=window)
    y, _ = attn.attention_forward(x, x, Wq, Wk, Wv, Wo, num_heads=H, num_kv_heads=K,
                                  head_dim=Dh, scale=Dh ** -0.5, softcap=50.0, mask=mask,
                                  rope_q=cs, rope_k=cs)
    # the layer is: project, split heads, RoPE on q and k, the core, merge heads, Wo
    q = (x @ Wq.T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # (B, T, H*Dh) -> (B, H, T, Dh)
    k = (x @ Wk.T).reshape(B, T, K, Dh).transpose(0, 2, 1, 3)  # (B, T, K*Dh) -> (B, K, T, Dh)
    v = (x @ Wv.T).reshape(B, T, K, Dh).transpose(0, 2, 1, 3)
    q = np.stack([rope_by_the_equation(q[b], np.arange(T)) for b in range(B)])
    k = np.stack([rope_by_the_equation(k[b], np.arange(T)) for b in range(B)])
    o = attention_by_the_equation(q, k, v, mask, Dh ** -0.5, 50.0)
    want = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh) @ Wo.T  # (B, H, T, Dh) -> (B, T, H*Dh)
    assert_close(y, want, rtol=1e-9, atol=1e-10)


# --- the distillation loss: soft cross-entropy against the teacher ---------------------------

def distillation_by_the_equation(logits, teacher_probs, mask, T):
    """mean over positions n with mask[n] of -sum_v tp[n, v] * log softmax(logits[n] / T)[v],
    with loops; logits, teacher_probs (N, V), mask (N,)."""
    total, count = 0.0, 0
    for n in range(logits.shape[0]):
        if not mask[n]:
            continue
        z = logits[n] / T
        log_q = z - (z.max() + math.log(np.exp(z - z.max()).sum()))
        total += -sum(teacher_probs[n, v] * log_q[v] for v in range(logits.shape[1]))
        count += 1
    return total / count if count else 0.0


@pytest.mark.task6_2
@given(seed=seeds, N=st.integers(1, 6), V=st.integers(1, 6),
       temperature=st.sampled_from([0.5, 1.0, 3.0]), p_mask=st.sampled_from([0.0, 0.6, 1.0]),
       spread=st.sampled_from([1.0, 20.0]))
def test_distillation_is_the_soft_cross_entropy(seed, N, V, temperature, p_mask, spread):
    rng = np.random.default_rng(seed)
    logits = spread * rng.standard_normal((N, V))
    t = rng.standard_normal((N, V))
    tp = np.exp(t) / np.exp(t).sum(-1, keepdims=True)  # the teacher's probabilities
    mask = rng.random(N) < p_mask
    got, _ = loss.distillation_forward(logits, tp, mask, temperature)
    want = distillation_by_the_equation(logits, tp, mask, temperature)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12), \
        f"distillation loss {got!r}, the equation gives {want!r}"
