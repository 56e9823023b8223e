"""Classroom assignments: property-based grading tests, one pytest marker per task.

    python -m pytest -m task1_1            grade one task
    python -m pytest tests/test_assignments.py -v      grade everything

The tasks, the functions a student writes for each, and how a teacher blanks them out are
in tutorials/assignments/README.md (the list itself: tutorials/assignments/blank.py).
Every test calls the NumPy reference functions in mini_encdec (under the numpy backend,
so a student's code is what runs) and compares them with the equations written plainly
here, or checks a property the equations imply. The hypothesis strategies come from
tests/strategies.py.

The last section checks the checks: a few famous bugs (a `w` instead of `(1 + w)` norm,
an off-by-one sliding window, interleaved RoPE, a dropped soft-cap, ordinary ids reused
as sentinels) must each be rejected by the property that grades them.
"""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.backend import use_backend
from mini_encdec.nn import attention as attn
from mini_encdec.nn import masks, mlp, rmsnorm, rope, softcap
from mini_encdec.nn.gradcheck import numerical_grad, random_cotangent, rel_error

from .strategies import (attention_dims, attention_masks, batch_sizes, float_dtypes,
                         gemma_configs, head_dims, heads, key_paddings, seeds, seq_lens,
                         widths, windows)

# the objectives package re-exports functions named like their modules: import the modules
sc = importlib.import_module("mini_encdec.objectives.span_corruption")
prefix_mod = importlib.import_module("mini_encdec.objectives.prefix_lm")
ul2 = importlib.import_module("mini_encdec.objectives.ul2")

GRAD_TOL = 1e-6  # float64, fourth-order differences: as tests/test_nn_gradcheck.py


@pytest.fixture(autouse=True)
def numpy_backend():
    """Grade the NumPy code: with the numba backend the hot ops would run the jitted twins."""
    with use_backend("numpy"):
        yield


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def grad_error(forward, backward, inputs, rng):
    """Largest relative error between backward's gradients of L = sum(out * R) and central
    differences, over every array in `inputs` (float64, in backward's return order)."""
    out, cache = forward(*inputs)
    R = random_cotangent(out, rng)
    grads = backward(R, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(inputs)

    def loss():
        return float(np.sum(forward(*inputs)[0] * R))

    return max(rel_error(g, numerical_grad(loss, x)) for g, x in zip(grads, inputs))


# === Task 1.1: RMSNorm with (1 + w) ======================================================

def rmsnorm_by_the_equation(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1 + w)


def check_rmsnorm_forward(forward, x, w):
    y, _ = forward(x, w)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_allclose(y, rmsnorm_by_the_equation(x, w), **tol(x.dtype))


rms_shapes = st.tuples(st.lists(st.integers(1, 3), min_size=0, max_size=2), widths)


@pytest.mark.task1_1
@given(shape=rms_shapes, dtype=float_dtypes, seed=seeds, scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_rmsnorm_forward_is_the_equation(shape, dtype, seed, scale):
    lead, D = shape
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((*lead, D))).astype(dtype)
    w = rng.standard_normal(D).astype(dtype)
    check_rmsnorm_forward(rmsnorm.rmsnorm_forward, x, w)


@pytest.mark.task1_1
@given(shape=rms_shapes, seed=seeds, a=st.floats(0.5, 100.0))
def test_rmsnorm_fresh_weight_gives_unit_rms_and_ignores_scale(shape, seed, a):
    lead, D = shape
    rng = np.random.default_rng(seed)
    # entries of magnitude in [0.5, 2]: the eps inside the root changes results by < 1e-5
    x = rng.uniform(0.5, 2.0, (*lead, D)) * rng.choice([-1.0, 1.0], (*lead, D))
    w0 = np.zeros(D)  # a fresh norm: the offset w is 0, the scale (1 + w) is 1
    y, _ = rmsnorm.rmsnorm_forward(x, w0)
    np.testing.assert_allclose(np.sqrt(np.mean(y * y, axis=-1)), 1.0, rtol=1e-4)
    y_scaled, _ = rmsnorm.rmsnorm_forward(a * x, w0)
    np.testing.assert_allclose(y_scaled, y, rtol=1e-4, atol=1e-6)


@pytest.mark.task1_1
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), D=st.integers(2, 6), seed=seeds)
def test_rmsnorm_backward_matches_finite_differences(lead, D, seed):
    # (D = 1 is degenerate: y = sign(x) (1 + w), and dx is of the order of eps)
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((*lead, D)), 0.5 * rng.standard_normal(D)
    assert grad_error(rmsnorm.rmsnorm_forward, rmsnorm.rmsnorm_backward, (x, w), rng) < GRAD_TOL


# === Task 1.2: rotary position embeddings (rotate-half) ==================================

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


def check_rope(apply, x, positions):
    """apply(x (1, N, T, Dh), positions (T,)) -> rotated x."""
    y = apply(x[None], positions)[0]
    np.testing.assert_allclose(y, rope_by_the_equation(x, positions), rtol=1e-9, atol=1e-9)


def library_rope(x, positions):
    cos, sin = rope.rope_cos_sin(positions, x.shape[-1], dtype=x.dtype)
    return rope.rope_forward(x, cos, sin)[0]


@pytest.mark.task1_2
@given(N=st.integers(1, 3), T=seq_lens, Dh=st.sampled_from([2, 4, 8]), seed=seeds,
       offset=st.integers(0, 5000))
def test_rope_is_the_pairwise_rotation(N, T, Dh, seed, offset):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T, Dh))
    positions = offset + np.arange(T)
    check_rope(library_rope, x, positions)


@pytest.mark.task1_2
def test_rotate_half_and_tables_literal():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(rope.rotate_half(x), [-3.0, -4.0, 1.0, 2.0])
    cos, sin = rope.rope_cos_sin(np.array([0, 1, 2]), 4, theta=100.0, dtype=np.float64)
    angles = np.array([0, 1, 2])[:, None] * np.array([1.0, 0.1, 1.0, 0.1])  # 100^(-2i/4)
    np.testing.assert_allclose(cos, np.cos(angles), rtol=1e-12)
    np.testing.assert_allclose(sin, np.sin(angles), rtol=1e-12)
    cos_b, _ = rope.rope_cos_sin(np.array([[0, 1, 2], [5, 6, 7]]), 4, dtype=np.float32)
    assert cos_b.shape == (2, 3, 4) and cos_b.dtype == np.float32


@pytest.mark.task1_2
@given(Dh=st.sampled_from([2, 4, 8]), seed=seeds, m=st.integers(0, 200), n=st.integers(0, 200),
       shift=st.integers(-100, 1000))
def test_rope_scores_depend_only_on_the_offset(Dh, seed, m, n, shift):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, 1, 1, Dh)), rng.standard_normal((1, 1, 1, Dh))
    shift = max(shift, -min(m, n))  # positions stay >= 0

    def score(pq, pk):
        return float(np.sum(library_rope(q, np.array([pq])) * library_rope(k, np.array([pk]))))

    assert math.isclose(score(m, n), score(m + shift, n + shift), rel_tol=1e-8, abs_tol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(library_rope(q, np.array([m]))),
                               np.linalg.norm(q), rtol=1e-12)


@pytest.mark.task1_2
@given(B=batch_sizes, N=st.integers(1, 2), T=seq_lens, Dh=head_dims, seed=seeds,
       batched=st.booleans())
def test_rope_backward_matches_finite_differences(B, N, T, Dh, seed, batched):
    rng = np.random.default_rng(seed)
    positions = rng.integers(0, 50, size=(B, T) if batched else (T,))
    cos, sin = rope.rope_cos_sin(positions, Dh, dtype=np.float64)
    x = rng.standard_normal((B, N, T, Dh))
    err = grad_error(lambda x_: rope.rope_forward(x_, cos, sin), rope.rope_backward, (x,), rng)
    assert err < GRAD_TOL


# === Task 1.3: soft-cap and the tanh GELU ================================================

@pytest.mark.task1_3
@given(seed=seeds, cap=st.sampled_from([1.0, 30.0, 50.0]), spread=st.sampled_from([1.0, 1e3]),
       dtype=float_dtypes)
def test_softcap_is_c_tanh_x_over_c_and_bounded(seed, cap, spread, dtype):
    x = (spread * np.random.default_rng(seed).standard_normal((3, 5))).astype(dtype)
    y, _ = softcap.softcap_forward(x, cap)
    np.testing.assert_allclose(y, cap * np.tanh(x.astype(np.float64) / cap), **tol(dtype))
    assert np.all(np.abs(y) <= cap) and y.dtype == x.dtype
    y_none, _ = softcap.softcap_forward(x, None)  # None: no cap at all
    np.testing.assert_array_equal(y_none, x)


@pytest.mark.task1_3
@given(seed=seeds, dtype=float_dtypes)
def test_gelu_tanh_is_the_formula(seed, dtype):
    u = (3 * np.random.default_rng(seed).standard_normal((4, 6))).astype(dtype)
    g, _ = mlp.gelu_tanh_forward(u)
    u64 = u.astype(np.float64)
    want = 0.5 * u64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (u64 + 0.044715 * u64**3)))
    np.testing.assert_allclose(g, want, **tol(dtype))


@pytest.mark.task1_3
@given(seed=seeds, cap=st.sampled_from([None, 1.0, 5.0]), shape=st.sampled_from([(3,), (2, 4)]))
def test_softcap_and_gelu_backward_match_finite_differences(seed, cap, shape):
    rng = np.random.default_rng(seed)
    x = 3 * rng.standard_normal(shape)
    assert grad_error(lambda x_: softcap.softcap_forward(x_, cap), softcap.softcap_backward,
                      (x,), rng) < GRAD_TOL
    assert grad_error(mlp.gelu_tanh_forward, mlp.gelu_tanh_backward, (x,), rng) < GRAD_TOL


# === Task 1.4: the GeGLU feed-forward ====================================================

@pytest.mark.task1_4
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), D=widths, F=widths,
       seed=seeds)
def test_geglu_is_down_of_gelu_gate_times_up(lead, D, F, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, D))
    Wg, Wu, Wd = rng.standard_normal((F, D)), rng.standard_normal((F, D)), rng.standard_normal((D, F))
    y, _ = mlp.geglu_forward(x, Wg, Wu, Wd)
    gate, up = x @ Wg.T, x @ Wu.T  # weights [out, in]: y = x W^T
    gelu = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    np.testing.assert_allclose(y, (gelu * up) @ Wd.T, rtol=1e-10, atol=1e-12)


@pytest.mark.task1_4
@given(lead=st.lists(st.integers(1, 2), min_size=1, max_size=2), D=st.integers(1, 4),
       F=st.integers(1, 4), seed=seeds)
def test_geglu_backward_matches_finite_differences(lead, D, F, seed):
    rng = np.random.default_rng(seed)
    arrays = (rng.standard_normal((*lead, D)), rng.standard_normal((F, D)),
              rng.standard_normal((F, D)), rng.standard_normal((D, F)))
    assert grad_error(mlp.geglu_forward, mlp.geglu_backward, arrays, rng) < GRAD_TOL


# === Task 2.1: attention masks ===========================================================

def mask_by_the_definition(q_pos, k_pos, causal, window, key_padding):
    """(B, 1, Tq, Tk) with loops; q_pos/k_pos (B, T), key_padding (B, Tk) or None."""
    B, Tq, Tk = q_pos.shape[0], q_pos.shape[1], k_pos.shape[1]
    out = np.zeros((B, 1, Tq, Tk), dtype=bool)
    for b in range(B):
        for i in range(Tq):
            for j in range(Tk):
                d = int(q_pos[b, i]) - int(k_pos[b, j])
                if causal:
                    ok = 0 <= d and (window is None or d < window)
                else:
                    ok = window is None or abs(d) < window
                out[b, 0, i, j] = ok and (key_padding is None or bool(key_padding[b, j]))
    return out


def check_mask(make_mask, q_pos, k_pos, causal, window, key_padding):
    got = make_mask(q_pos, k_pos, causal=causal, window=window, key_padding=key_padding)
    want = mask_by_the_definition(q_pos, k_pos, causal, window, key_padding)
    assert got.dtype == np.bool_ and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.task2_1
@given(data=st.data(), B=batch_sizes, Tq=seq_lens, Tk=seq_lens, causal=st.booleans(),
       window=st.none() | windows, offset=st.integers(0, 6))
def test_masks_follow_the_definitions(data, B, Tq, Tk, causal, window, offset):
    # decoding against a cache: queries sit after `offset` earlier keys
    q_pos = np.tile(offset + np.arange(Tq), (B, 1))
    k_pos = np.tile(np.arange(Tk), (B, 1))
    pad = data.draw(st.none() | key_paddings(B, Tk))
    check_mask(masks.attention_mask, q_pos, k_pos, causal, window, pad)


@pytest.mark.task2_1
def test_masks_literal_T5_W2():
    p = np.arange(5)
    causal_local = masks.attention_mask(p, p, causal=True, window=2)[0, 0].astype(int)
    symmetric_local = masks.attention_mask(p, p, causal=False, window=2)[0, 0].astype(int)
    np.testing.assert_array_equal(causal_local, [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0],
                                                 [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(symmetric_local, [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                    [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                                                    [0, 0, 0, 1, 1]])
    full = masks.attention_mask(p, p, causal=False)
    assert full.shape == (1, 1, 5, 5) and full.all()


# === Task 2.2: the attention core, forward ===============================================

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
                allowed = np.ones(k.shape[2], bool) if mask is None else mask[min(b, len(mask) - 1), 0, i]
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
    np.testing.assert_allclose(o, want, **tol(q.dtype))


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
    rng = np.random.default_rng(seed)
    q, k, v = attention_inputs(dims, rng, dtype, spread)
    mask = data.draw(attention_masks(dims["B"], dims["Tq"], dims["Tk"]))
    check_attention_forward(attn.attention_core_forward, q, k, v, mask, query_scalar ** -0.5, cap)


@pytest.mark.task2_2
@given(dims=attention_dims(), seed=seeds)
def test_gqa_is_mha_with_repeated_kv_heads(dims, seed):
    rng = np.random.default_rng(seed)
    q, k, v = attention_inputs(dims, rng)
    G = dims["H"] // dims["K"]
    o, _ = attn.attention_core_forward(q, k, v, None, scale=0.5, softcap=50.0)
    o_mha, _ = attn.attention_core_forward(q, np.repeat(k, G, axis=1), np.repeat(v, G, axis=1),
                                           None, scale=0.5, softcap=50.0)
    np.testing.assert_allclose(o, o_mha, rtol=1e-12, atol=1e-12)


@pytest.mark.task2_2
@given(data=st.data(), dims=attention_dims(), seed=seeds)
def test_masked_keys_have_no_influence_and_empty_rows_are_zero(data, dims, seed):
    rng = np.random.default_rng(seed)
    q, k, v = attention_inputs(dims, rng)
    B, Tq, Tk = dims["B"], dims["Tq"], dims["Tk"]
    mask = data.draw(attention_masks(B, Tq, Tk))
    mask = np.ones((1, 1, Tq, Tk), bool) if mask is None else mask
    o, _ = attn.attention_core_forward(q, k, v, mask, scale=0.5, softcap=20.0)
    # change every key and value no query may see: nothing changes
    never_seen = ~np.broadcast_to(mask, (B, 1, Tq, Tk)).any(axis=(1, 2))  # (B, Tk)
    k2, v2 = k.copy(), v.copy()
    k2[never_seen[:, None, :].repeat(dims["K"], 1)] = 100.0
    v2[never_seen[:, None, :].repeat(dims["K"], 1)] = -100.0
    o2, _ = attn.attention_core_forward(q, k2, v2, mask, scale=0.5, softcap=20.0)
    np.testing.assert_allclose(o2, o, rtol=1e-12, atol=1e-12)
    empty = ~np.broadcast_to(mask, (B, 1, Tq, Tk)).any(axis=-1)  # (B, 1, Tq)
    assert np.all(np.isfinite(o))
    assert np.all(o[np.broadcast_to(empty, (B, dims["H"], Tq))] == 0)


# === Task 2.3: the attention core, backward ==============================================

@pytest.mark.task2_3
@given(data=st.data(), dims=attention_dims(), seed=seeds, cap=st.sampled_from([None, 1.0]))
def test_attention_core_backward_matches_finite_differences(data, dims, seed, cap):
    rng = np.random.default_rng(seed)
    q, k, v = attention_inputs(dims, rng)
    mask = data.draw(attention_masks(dims["B"], dims["Tq"], dims["Tk"]))

    def forward(q_, k_, v_):
        return attn.attention_core_forward(q_, k_, v_, mask, scale=0.7, softcap=cap)

    assert grad_error(forward, attn.attention_core_backward, (q, k, v), rng) < GRAD_TOL


@pytest.mark.task2_3
def test_empty_rows_get_zero_gradient():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 1, 3, 4)), \
        rng.standard_normal((1, 1, 3, 4))
    mask = np.ones((1, 1, 3, 3), bool)
    mask[0, 0, 1] = False  # query 1 sees nothing
    o, cache = attn.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    dq, dk, dv = attn.attention_core_backward(np.ones_like(o), cache)
    assert np.all(dq[:, :, 1] == 0) and all(np.all(np.isfinite(g)) for g in (dq, dk, dv))


# === Task 2.4: the attention layer (projections, RoPE, GQA, output) ======================

@pytest.mark.task2_4
@given(hk=heads(), B=batch_sizes, T=st.integers(1, 4), Dh=head_dims, D=st.integers(1, 4),
       causal=st.booleans(), window=st.none() | windows, seed=seeds)
def test_attention_layer_forward_and_backward(hk, B, T, Dh, D, causal, window, seed):
    H, K = hk
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, D))
    Wq, Wk, Wv = (0.5 * rng.standard_normal((n * Dh, D)) for n in (H, K, K))
    Wo = 0.5 * rng.standard_normal((D, H * Dh))
    cs = rope.rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
    mask = masks.attention_mask(np.arange(T), np.arange(T), causal=causal, window=window)
    kw = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=Dh ** -0.5, softcap=50.0,
              mask=mask, rope_q=cs, rope_k=cs)
    y, _ = attn.attention_forward(x, x, Wq, Wk, Wv, Wo, **kw)
    # the layer is: project, split heads, RoPE on q and k, the core, merge heads, Wo
    q = (x @ Wq.T).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # (B, T, H*Dh) -> (B, H, T, Dh)
    k = (x @ Wk.T).reshape(B, T, K, Dh).transpose(0, 2, 1, 3)  # (B, T, K*Dh) -> (B, K, T, Dh)
    v = (x @ Wv.T).reshape(B, T, K, Dh).transpose(0, 2, 1, 3)
    q = np.stack([rope_by_the_equation(q[b], np.arange(T)) for b in range(B)])
    k = np.stack([rope_by_the_equation(k[b], np.arange(T)) for b in range(B)])
    o = attention_by_the_equation(q, k, v, mask, Dh ** -0.5, 50.0)
    want = o.transpose(0, 2, 1, 3).reshape(B, T, H * Dh) @ Wo.T  # (B, H, T, Dh) -> (B, T, H*Dh)
    np.testing.assert_allclose(y, want, rtol=1e-9, atol=1e-10)

    def forward(x_, Wq_, Wk_, Wv_, Wo_):  # self-attention: x is both the queries and keys
        return attn.attention_forward(x_, x_, Wq_, Wk_, Wv_, Wo_, **kw)

    def backward(dy, cache):
        dx_q, dx_kv, *dW = attn.attention_backward(dy, cache)
        return (dx_q + dx_kv, *dW)

    assert grad_error(forward, backward, (x, Wq, Wk, Wv, Wo), rng) < GRAD_TOL


# === Task 3.1: span corruption counts and the length helper ==============================

lengths_ = st.integers(2, 600)
densities = st.sampled_from([0.01, 0.15, 0.2, 0.25, 0.5, 0.75, 0.99])
mean_spans = st.sampled_from([1.0, 2.0, 3.0, 8.0, 64.0, math.inf])


@pytest.mark.task3_1
@given(L=lengths_, d=densities, m=mean_spans)
def test_noise_counts_follow_the_rules(L, d, m):
    n_noise, n_spans = sc.noise_counts(L, d, m)
    product = float(np.float32(L) * np.float32(d))  # float32, as in the T5 reference
    want_noise = min(max(round(product), 1), L - 1)  # Python's round: half to even
    assert n_noise == want_noise
    assert n_spans == max(1, round(float(np.float32(n_noise) / np.float32(m))))


@pytest.mark.task3_1
def test_noise_counts_literal():
    assert sc.noise_counts(10, 0.25, 1) == (2, 2)   # 2.5 -> 2 (half to even)
    assert sc.noise_counts(14, 0.25, 1) == (4, 4)   # 3.5 -> 4
    assert sc.noise_counts(10, 0.01, 3) == (1, 1)   # at least one noise token
    assert sc.noise_counts(4, 0.99, 1) == (3, 3)    # at most L - 1
    assert sc.noise_counts(100, 0.15, math.inf) == (15, 1)


@pytest.mark.task3_1
@pytest.mark.parametrize("args, want", [((64, 0.2, 2), (70, 22)), ((64, 0.2, 1), (63, 27)),
                                        ((512, 0.15, 3), (568, 114))])
def test_length_helper_reproduces_t5(args, want):
    assert sc.span_corruption_lengths(*args) == want


@pytest.mark.task3_1
@given(S=st.integers(3, 300), d=densities, m=mean_spans)
def test_length_helper_is_the_largest_fitting_length(S, d, m):
    raw, targets = sc.span_corruption_lengths(S, d, m)

    def lengths(L):  # inputs = kept + one sentinel per span + EOS; targets = noise + same
        n, s = sc.noise_counts(L, d, m)
        return L - n + s + 1, n + s + 1

    assert lengths(raw)[0] <= S < lengths(raw + 1)[0]
    assert targets == lengths(raw)[1]
    assert sc.corrupted_lengths(raw, d, m) == lengths(raw)


# === Task 3.2: random compositions and the noise mask ====================================

@pytest.mark.task3_2
@given(n=st.integers(1, 40), data=st.data(), seed=seeds)
def test_composition_is_positive_and_sums_to_n(n, data, seed):
    parts = data.draw(st.integers(1, n))
    c = sc.random_composition(n, parts, np.random.default_rng(seed))
    assert c.shape == (parts,) and c.sum() == n and np.all(c >= 1)


@pytest.mark.task3_2
@pytest.mark.parametrize("n, parts", [(5, 3), (6, 2)])
def test_composition_is_uniform(n, parts):
    """Every composition has probability 1 / C(n-1, parts-1)."""
    draws = 3000
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(draws):
        key = tuple(sc.random_composition(n, parts, rng))
        counts[key] = counts.get(key, 0) + 1
    total = math.comb(n - 1, parts - 1)
    assert len(counts) == total  # every composition shows up
    p = 1 / total
    sd = math.sqrt(p * (1 - p) / draws)
    assert all(abs(c / draws - p) < 5 * sd for c in counts.values())


@pytest.mark.task3_2
@given(L=st.integers(2, 300), d=densities, m=mean_spans, seed=seeds)
def test_noise_mask_alternates_kept_and_noise(L, d, m, seed):
    n_noise, n_spans = sc.noise_counts(L, d, m)
    if n_spans > L - n_noise:  # not enough kept tokens to separate the spans: an error
        with pytest.raises(ValueError):
            sc.noise_mask(L, d, m, np.random.default_rng(seed))
        return
    mask = sc.noise_mask(L, d, m, np.random.default_rng(seed))
    assert mask.shape == (L,) and mask.dtype == np.bool_
    assert mask.sum() == n_noise
    assert not mask[0] and mask[-1]  # starts with kept tokens, ends with noise
    span_starts = np.flatnonzero(mask[1:] & ~mask[:-1]) + 1
    assert len(span_starts) == n_spans


# === Task 3.3: span corruption inputs and targets ========================================

SENTINELS = np.arange(1000, 1300)  # clearly not ordinary ids (those are < 1000 below)
EOS = 1


def reassemble(inputs, targets, sentinels):
    """The original segment from inputs and targets (each sentinel -> its span)."""
    spans, cur = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            cur = int(t)
            spans[cur] = []
        else:
            spans[cur].append(int(t))
    return [x for t in inputs[:-1] for x in (spans[int(t)] if t in sentinels else [int(t)])]


def check_span_corruption(corrupt, tokens, d, m, seed, sentinels=SENTINELS):
    ex = corrupt(tokens, np.random.default_rng(seed), density=d, mean_span=m,
                 sentinel_ids=sentinels, eos_id=EOS)
    n_noise, n_spans = sc.noise_counts(len(tokens), d, m)
    assert ex.inputs[-1] == EOS and ex.targets[-1] == EOS
    assert len(ex.inputs) == len(tokens) - n_noise + n_spans + 1
    assert len(ex.targets) == n_noise + n_spans + 1
    # sentinels <s0>, <s1>, ... in order, the same ones in inputs and targets
    s_in = [int(t) for t in ex.inputs if t in sentinels]
    s_out = [int(t) for t in ex.targets if t in sentinels]
    assert s_in == s_out == [int(s) for s in sentinels[:n_spans]]
    assert ex.targets[0] == sentinels[0]                    # targets start with <s0>
    assert ex.inputs[0] not in sentinels and ex.inputs[-2] in sentinels  # kept first, noise last
    assert reassemble(ex.inputs, ex.targets, set(int(s) for s in sentinels)) == list(tokens)


@pytest.mark.task3_3
@given(L=st.integers(2, 200), d=densities, m=mean_spans, seed=seeds, data=st.data())
def test_span_corruption_inputs_and_targets(L, d, m, seed, data):
    n_noise, n_spans = sc.noise_counts(L, d, m)
    if n_spans > L - n_noise:
        return  # impossible layout, covered by task 3.2
    tokens = np.array(data.draw(st.lists(st.integers(10, 999), min_size=L, max_size=L)))
    check_span_corruption(sc.span_corruption, tokens, d, m, seed)


@pytest.mark.task3_3
def test_span_corruption_is_seeded_and_refuses_too_few_sentinels():
    tokens = np.arange(10, 110)
    a = sc.span_corruption(tokens, np.random.default_rng(3), density=0.15, mean_span=3,
                           sentinel_ids=SENTINELS, eos_id=EOS)
    b = sc.span_corruption(tokens, np.random.default_rng(3), density=0.15, mean_span=3,
                           sentinel_ids=SENTINELS, eos_id=EOS)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)
    with pytest.raises(ValueError):  # 5 spans, 2 sentinels: an error, not a reuse of ids
        sc.span_corruption(tokens, np.random.default_rng(3), density=0.15, mean_span=3,
                           sentinel_ids=SENTINELS[:2], eos_id=EOS)


# === Task 3.4: PrefixLM and the UL2 S-denoiser ===========================================

@pytest.mark.task3_4
@given(n=st.integers(1, 50), seed=seeds)
def test_prefix_lm_halves(n, seed):
    tokens = np.random.default_rng(seed).integers(10, 1000, size=2 * n)
    ex = prefix_mod.prefix_lm(tokens)
    np.testing.assert_array_equal(ex.inputs, tokens[:n])
    np.testing.assert_array_equal(ex.targets, tokens[n:])
    with pytest.raises(ValueError):
        prefix_mod.prefix_lm(tokens[:-1])  # odd length


@pytest.mark.task3_4
@given(L=st.integers(2, 300), r=st.sampled_from([0.0, 0.25, 0.5]), seed=seeds)
def test_sequential_denoiser_splits_in_the_allowed_range(L, r, seed):
    lo, hi = ul2.sequential_prefix_bounds(L, r)
    assert (lo, hi) == (min(max(1, round((1 - 2 * r) * (L - 1))), L - 1), L - 1)
    tokens = np.arange(10, 10 + L)
    ex = ul2.sequential_denoise(tokens, np.random.default_rng(seed), r=r)
    assert lo <= len(ex.inputs) <= hi
    np.testing.assert_array_equal(np.concatenate([ex.inputs, ex.targets]), tokens)


@pytest.mark.task3_4
def test_sequential_prefix_length_is_uniform():
    L, r = 21, 0.25
    lo, hi = ul2.sequential_prefix_bounds(L, r)  # [10, 20]
    rng = np.random.default_rng(0)
    k = [len(ul2.sequential_denoise(np.arange(L), rng, r=r).inputs) for _ in range(2200)]
    freq = np.bincount(k, minlength=hi + 1)[lo:] / len(k)
    assert (lo, hi) == (10, 20) and np.all(np.abs(freq - 1 / 11) < 0.03)


@pytest.mark.task3_4
@given(seed=seeds, which=st.integers(0, len(ul2.UL2_PAPER) - 1))
def test_denoise_prepends_the_mode_token(seed, which):
    den = ul2.UL2_PAPER[which]
    tokens = np.arange(10, 110)
    mode_id = {"[NLU]": 5, "[NLG]": 6, "[S2S]": 7}[den.mode]
    ex = ul2.denoise(tokens, np.random.default_rng(seed), den, mode_id=mode_id,
                     sentinel_ids=SENTINELS, eos_id=EOS)
    assert ex.inputs[0] == mode_id and mode_id not in ex.inputs[1:]


# === Task 4.1: adaptation, decoder-only -> encoder-decoder (SPEC 3) =====================

def expected_source_key(target):
    """SPEC 3, balanced: the source key each encoder-decoder weight is copied from."""
    norms = {"pre_self_attn_layernorm": "input_layernorm",
             "post_self_attn_layernorm": "post_attention_layernorm",
             "pre_cross_attn_layernorm": "input_layernorm",
             "post_cross_attn_layernorm": "post_attention_layernorm",
             "pre_feedforward_layernorm": "pre_feedforward_layernorm",
             "post_feedforward_layernorm": "post_feedforward_layernorm"}
    part = target.split(".")
    if part[2] != "layers":                   # model.{encoder,decoder}.{embed_tokens,norm}.weight
        return "model." + ".".join(part[2:])
    i, piece = part[3], part[4]
    if piece in norms:
        return f"model.layers.{i}.{norms[piece]}.weight"
    if piece == "cross_attn":                 # cross-attention <- the same layer's self-attention
        piece = "self_attn"
    return f"model.layers.{i}.{piece}." + ".".join(part[5:])


def _adapted(cfg, seed):
    from mini_encdec.training.adapt import adapt
    from mini_encdec.models import build_model
    source = build_model(cfg, seed=seed)
    return source, adapt(source)


@pytest.mark.task4_1
@given(cfg=gemma_configs(), seed=seeds)
def test_adapted_weights_come_from_the_most_similar_source_weight(cfg, seed):
    source, model = _adapted(cfg, seed)
    assert model.config.encoder == model.config.decoder == cfg
    for key, value in model.params.items():
        want = source.params[expected_source_key(key)]
        np.testing.assert_array_equal(value, want, err_msg=key)
        assert not np.shares_memory(value, want), f"{key} must be a copy"


@pytest.mark.task4_1
@given(cfg=gemma_configs(), seed=seeds, B=batch_sizes, T=seq_lens, S=seq_lens)
def test_adaptation_exact_checks(cfg, seed, B, T, S):
    from mini_encdec.models import build_model
    source, model = _adapted(cfg, seed)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, size=(B, T))
    # 1. the encoder with causal masks reproduces the source's final hidden states
    np.testing.assert_array_equal(model.encode(ids, causal=True),
                                  source.hidden_states({"input_ids": ids}))
    # 2. the decoder with cross-attention o_proj zeroed reproduces the source's logits
    params = {k: np.zeros_like(v) if "cross_attn.o_proj" in k else v
              for k, v in model.params.items()}
    no_cross = build_model(model.config, params)
    enc_ids = rng.integers(0, cfg.vocab_size, size=(B, S))
    np.testing.assert_array_equal(
        no_cross.forward({"input_ids": enc_ids, "decoder_input_ids": ids}),
        source.forward({"input_ids": ids}))


# === The checks catch the famous bugs ====================================================

def _rng():
    return np.random.default_rng(1)


def test_checks_reject_a_norm_without_the_one_plus():
    x, w = _rng().standard_normal((2, 4)), 0.1 * _rng().standard_normal(4)

    def w_instead_of_one_plus_w(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w, None

    check_rmsnorm_forward(rmsnorm.rmsnorm_forward, x, w)
    with pytest.raises(AssertionError):
        check_rmsnorm_forward(w_instead_of_one_plus_w, x, w)


def test_checks_reject_an_off_by_one_window():
    p = np.arange(6)[None]

    def window_off_by_one(q_pos, k_pos, *, causal, window=None, key_padding=None):
        d = q_pos[:, :, None] - k_pos[:, None, :]
        return ((d >= 0) & (d <= window))[:, None]  # W + 1 keys

    check_mask(masks.attention_mask, p, p, True, 2, None)
    with pytest.raises(AssertionError):
        check_mask(window_off_by_one, p, p, True, 2, None)


def test_checks_reject_interleaved_rope():
    x, positions = _rng().standard_normal((1, 3, 4)), np.arange(3)

    def interleaved(x, positions):  # rotates (x[2i], x[2i+1]) instead of (x[i], x[i+h])
        perm = np.array([0, 2, 1, 3])  # rotate-half layout <-> interleaved layout
        return library_rope(x[..., perm], positions)[..., perm]

    check_rope(library_rope, x, positions)
    with pytest.raises(AssertionError):
        check_rope(interleaved, x, positions)


def test_checks_reject_a_dropped_softcap():
    q, k, v = attention_inputs(dict(B=1, H=2, K=1, Tq=3, Tk=3, Dh=4), _rng(), spread=5.0)

    def no_softcap(q, k, v, mask, *, scale, softcap):
        return attn.attention_core_forward(q, k, v, mask, scale=scale, softcap=None)

    check_attention_forward(attn.attention_core_forward, q, k, v, None, 0.5, 1.0)
    with pytest.raises(AssertionError):
        check_attention_forward(no_softcap, q, k, v, None, 0.5, 1.0)


def test_checks_reject_ordinary_ids_as_sentinels():
    tokens = np.arange(10, 60)

    def reuses_ids(tokens, rng, *, sentinel_ids, **kw):  # "sentinels" from the vocabulary
        return sc.span_corruption(tokens, rng, sentinel_ids=np.arange(20, 320), **kw)

    check_span_corruption(sc.span_corruption, tokens, 0.15, 3.0, 0)
    with pytest.raises(AssertionError):
        check_span_corruption(reuses_ids, tokens, 0.15, 3.0, 0)


# === The task list, the markers and the blanking tool agree ==============================

BLANK = Path(__file__).resolve().parent.parent / "tutorials" / "assignments" / "blank.py"


def load_blank_tool():
    spec = importlib.util.spec_from_file_location("assignments_blank", BLANK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_task_has_functions_tests_and_a_registered_marker(pytestconfig):
    tool = load_blank_tool()
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    tested = {m.name for f in globals().values() if callable(f) and f.__name__.startswith("test_")
              for m in getattr(f, "pytestmark", [])}
    for task, (title, functions) in tool.TASKS.items():
        assert task in registered, f"marker {task} missing from pyproject.toml"
        assert task in tested, f"no test carries the marker {task}"
        for module, name in functions:
            mod = importlib.import_module(module)
            assert callable(getattr(mod, name)), f"{module}.{name}"
    assert {t for t in tested if t.startswith("task")} <= set(tool.TASKS)


def test_blanking_keeps_signature_and_docstring(tmp_path):
    tool = load_blank_tool()
    src = Path(rmsnorm.__file__).read_text(encoding="utf-8")
    out = tool.blank_source(src, ["rmsnorm_forward"], "task1_1")
    path = tmp_path / "student_rmsnorm.py"
    path.write_text(out.replace("from ..validate", "from mini_encdec.validate"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("student_rmsnorm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.rmsnorm_forward.__doc__ == rmsnorm.rmsnorm_forward.__doc__
    with pytest.raises(NotImplementedError, match="task1_1"):
        mod.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    # the other function of the module is untouched
    y, cache = rmsnorm.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    np.testing.assert_array_equal(mod.rmsnorm_backward(y, cache)[0],
                                  rmsnorm.rmsnorm_backward(y, cache)[0])


def test_student_copy_fails_exactly_the_blanked_task(tmp_path):
    """End to end: blank task 3.1 in a copy of the repository; its tests fail with
    NotImplementedError there, while another task's tests still pass."""
    import subprocess
    import sys
    tool = load_blank_tool()
    out = tmp_path / "student"
    done = tool.make_student_copy(out, ["task3_1"])
    assert {name for _, name in done} == {n for _, n in tool.TASKS["task3_1"][1]}
    assert not (out / "mini_encdec" / "kernels").exists()

    def grade(task):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "tests/test_assignments.py", "-m", task], cwd=out,
                              capture_output=True, text=True, timeout=600)

    blanked = grade("task3_1")
    assert blanked.returncode != 0 and "NotImplementedError" in blanked.stdout
    assert " passed" not in blanked.stdout.splitlines()[-1]
    other = grade("task1_1")
    assert other.returncode == 0, other.stdout[-2000:]
