"""Properties of the nn/ layers (SPEC.md sections 1 and 2): causality, window locality, RoPE
relativity, GQA = MHA with repeated heads, masked keys have no influence, empty rows give
zeros, soft-cap bounds, RMSNorm scale invariance, float32 agreement with float64, loss
identities.

The equations themselves are checked in tests/test_nn_equations.py, the gradients in
tests/test_nn_gradcheck.py. Markers task1_1 ... task2_4: the classroom assignments
(tutorials/assignments/README.md); a test carries the task of the function it grades, and
uses only that task and earlier ones (the attention core's forward properties are task
2.2, its backward ones task 2.3).
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mini_encdec import ops
from mini_encdec.nn import attention as attn
from mini_encdec.nn.attention import attention_backward, attention_forward
from mini_encdec.nn.embedding import embedding_forward
from mini_encdec.nn.linear import linear_backward, linear_forward
from mini_encdec.nn.loss import (cross_entropy_backward, cross_entropy_forward,
                                 distillation_backward, distillation_forward)
from mini_encdec.nn.masks import attention_mask
from mini_encdec.nn.mlp import (geglu_backward, geglu_forward, gelu_tanh_backward,
                                gelu_tanh_forward)
from mini_encdec.nn.rope import rope_backward, rope_cos_sin, rope_forward
from mini_encdec.nn.softcap import softcap_backward, softcap_forward

from .assertions import assert_close
from .strategies import (attention_dims, attention_masks, batch_sizes, bool_masks, heads,
                         head_dims, key_paddings, seeds, widths, windows)

few = settings(max_examples=15)


def tol(dtype):
    return dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
fixture_ok = settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])


def randn(rng, *shape, scale=1.0, dtype=np.float64):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _self_attn(rng, B, T, D, H, K, Dh):
    W = dict(Wq=randn(rng, H * Dh, D, scale=0.5), Wk=randn(rng, K * Dh, D, scale=0.5),
             Wv=randn(rng, K * Dh, D, scale=0.5), Wo=randn(rng, D, H * Dh, scale=0.5))
    rope = rope_cos_sin(np.arange(T), Dh, dtype=np.float64)
    return W, rope


# --- causality and windows -----------------------------------------------------------------

@pytest.mark.task2_4
@few
@given(seed=seeds, hk=heads(), B=batch_sizes, T=st.integers(2, 7), D=widths, Dh=head_dims,
       window=st.none() | windows, data=st.data())
def test_future_tokens_do_not_change_causal_outputs(seed, hk, B, T, D, Dh, window, data):
    rng = np.random.default_rng(seed)
    H, K = hk
    W, rope = _self_attn(rng, B, T, D, H, K, Dh)
    pos = np.arange(T)
    mask = attention_mask(pos, pos, causal=True, window=window)
    kw = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=0.4, softcap=50.0, mask=mask,
              rope_q=rope, rope_k=rope)
    x = randn(rng, B, T, D)
    t = data.draw(st.integers(0, T - 2))  # keep positions <= t, change the rest
    x2 = x.copy()
    x2[:, t + 1:] = randn(rng, B, T - t - 1, D, scale=3.0)
    y, _ = attention_forward(x, x, **W, **kw)
    y2, _ = attention_forward(x2, x2, **W, **kw)
    assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y2[:, t + 1:], y[:, t + 1:])  # the later outputs do change


@pytest.mark.task2_3
@fixture_ok
@given(seed=seeds, dims=attention_dims(cross=False), causal=st.booleans(), window=windows)
def test_keys_outside_the_window_have_no_influence(backend, seed, dims, causal, window):
    """Per query row: replacing every key/value the window forbids leaves the row unchanged,
    and the row's gradient reaches no forbidden key."""
    rng = np.random.default_rng(seed)
    B, H, K, T, Dh = (dims[k] for k in ("B", "H", "K", "Tq", "Dh"))
    pos = np.arange(T)
    mask = attention_mask(pos, pos, causal=causal, window=window)  # (1, 1, T, T)
    q, k, v = randn(rng, B, H, T, Dh), randn(rng, B, K, T, Dh), randn(rng, B, K, T, Dh)
    o, _ = ops.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    for i in range(T):
        far = (np.abs(pos - i) >= window) | ((pos > i) if causal else False)
        np.testing.assert_array_equal(~mask[0, 0, i], far)  # the window of SPEC.md section 8
        k2, v2 = k.copy(), v.copy()
        k2[:, :, far] = randn(rng, B, K, int(far.sum()), Dh, scale=5.0)
        v2[:, :, far] = randn(rng, B, K, int(far.sum()), Dh, scale=5.0)
        o2, cache = ops.attention_core_forward(q, k2, v2, mask, scale=0.5, softcap=50.0)
        assert_close(o2[:, :, i], o[:, :, i], rtol=1e-12, atol=1e-12)
        do = np.zeros_like(o)
        do[:, :, i] = 1.0  # the gradient of row i alone
        _, dk, dv = ops.attention_core_backward(do, cache)
        assert np.all(dk[:, :, far] == 0) and np.all(dv[:, :, far] == 0)


# --- RoPE ------------------------------------------------------------------------------------

@pytest.mark.task1_2
@few
@given(seed=seeds, Dh=st.sampled_from([2, 4, 8]), m=st.integers(0, 200), n=st.integers(0, 200),
       shift=st.integers(-200, 500))
def test_rope_scores_depend_only_on_the_offset(seed, Dh, m, n, shift):
    assume(m + shift >= 0 and n + shift >= 0)
    rng = np.random.default_rng(seed)
    q, k = randn(rng, 1, 1, 1, Dh), randn(rng, 1, 1, 1, Dh)

    def score(pq, pk):
        rq, _ = rope_forward(q, *rope_cos_sin(np.array([pq]), Dh, dtype=np.float64))
        rk, _ = rope_forward(k, *rope_cos_sin(np.array([pk]), Dh, dtype=np.float64))
        return float(np.sum(rq * rk))

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-9, abs=1e-9)


@pytest.mark.task1_2
def test_rope_tables_literal():
    """inv_freq = theta^(-2i/Dh): for Dh = 4 the frequencies are 1 and 1/100."""
    cos, sin = rope_cos_sin(np.array([0, 1, 2]), 4, dtype=np.float64)
    f = np.array([1.0, 0.01, 1.0, 0.01])
    assert_close(cos, np.cos(np.outer([0, 1, 2], f)), rtol=1e-15)
    assert_close(sin, np.sin(np.outer([0, 1, 2], f)), rtol=1e-15)
    cb, sb = rope_cos_sin(np.array([[0, 1, 2], [5, 6, 7]]), 4)
    assert cb.shape == (2, 3, 4) and cb.dtype == np.float32
    assert_close(cb[1, 0], np.cos(5 * f), rtol=1e-6)


# --- GQA ---------------------------------------------------------------------------------

def _gqa_case(rng, dims, data):
    """q, k, v, a mask, and k, v with each kv head repeated for the G query heads that read
    it (query head h reads kv head h // G)."""
    B, H, K, Tq, Tk, Dh = (dims[k] for k in ("B", "H", "K", "Tq", "Tk", "Dh"))
    mask = data.draw(attention_masks(B, Tq, Tk))
    q, k, v = randn(rng, B, H, Tq, Dh), randn(rng, B, K, Tk, Dh), randn(rng, B, K, Tk, Dh)
    G = H // K
    return q, k, v, mask, np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)


@pytest.mark.task2_2
@fixture_ok
@given(seed=seeds, dims=attention_dims(), data=st.data(),
       softcap=st.none() | st.sampled_from([1.0, 50.0]))
def test_gqa_equals_mha_with_repeated_heads(backend, seed, dims, data, softcap):
    """Grouped-query attention equals multi-head attention with each key/value head repeated for
    its query heads: query head h reads key/value head h // (H/K)."""
    q, k, v, mask, k_rep, v_rep = _gqa_case(np.random.default_rng(seed), dims, data)
    o, _ = ops.attention_core_forward(q, k, v, mask, scale=0.3, softcap=softcap)
    o_mha, _ = ops.attention_core_forward(q, k_rep, v_rep, mask, scale=0.3, softcap=softcap)
    assert_close(o, o_mha, rtol=1e-12, atol=1e-12)


@pytest.mark.task2_3
@fixture_ok
@given(seed=seeds, dims=attention_dims(), data=st.data(),
       softcap=st.none() | st.sampled_from([1.0, 50.0]))
def test_gqa_kv_gradient_sums_over_its_query_heads(backend, seed, dims, data, softcap):
    rng = np.random.default_rng(seed)
    q, k, v, mask, k_rep, v_rep = _gqa_case(rng, dims, data)
    B, K, Tk, Dh = k.shape
    G = q.shape[1] // K
    o, c = ops.attention_core_forward(q, k, v, mask, scale=0.3, softcap=softcap)
    _, c_mha = ops.attention_core_forward(q, k_rep, v_rep, mask, scale=0.3, softcap=softcap)
    do = randn(rng, *o.shape)
    dq, dk, dv = ops.attention_core_backward(do, c)
    dq_m, dk_m, dv_m = ops.attention_core_backward(do, c_mha)
    assert_close(dq, dq_m, rtol=1e-12, atol=1e-12)
    # each kv head's gradient is the sum over the G query heads that read it
    assert_close(dk, dk_m.reshape(B, K, G, Tk, Dh).sum(2), rtol=1e-12, atol=1e-12)
    assert_close(dv, dv_m.reshape(B, K, G, Tk, Dh).sum(2), rtol=1e-12, atol=1e-12)


# --- masks: no influence, empty rows ----------------------------------------------------

def _padded_case(rng, dims, data):
    """q, k, v, a mask hiding the padded keys (and some more), the padding (B, Tk), and
    k2, v2: k, v with every padded key and value changed."""
    B, H, K, Tq, Tk, Dh = (dims[k] for k in ("B", "H", "K", "Tq", "Tk", "Dh"))
    pad = data.draw(key_paddings(B, Tk))
    mask = data.draw(bool_masks((B, 1, Tq, Tk))) & pad[:, None, None, :]
    q, k, v = randn(rng, B, H, Tq, Dh), randn(rng, B, K, Tk, Dh), randn(rng, B, K, Tk, Dh)
    k2, v2 = k.copy(), v.copy()
    padded = ~pad  # (B, Tk): keys no query may see
    k2.transpose(0, 2, 1, 3)[padded] = 100.0  # (B, K, Tk, Dh) viewed (B, Tk, K, Dh)
    v2.transpose(0, 2, 1, 3)[padded] = -7.0
    return q, k, v, mask, padded, k2, v2


@pytest.mark.task2_2
@fixture_ok
@given(seed=seeds, dims=attention_dims(), data=st.data())
def test_masked_keys_have_no_influence(backend, seed, dims, data):
    """Changing the keys and values at masked (padded) positions changes no output value."""
    q, k, v, mask, _, k2, v2 = _padded_case(np.random.default_rng(seed), dims, data)
    o, _ = ops.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    o2, _ = ops.attention_core_forward(q, k2, v2, mask, scale=0.5, softcap=50.0)
    assert_close(o2, o, rtol=1e-12, atol=1e-12)


@pytest.mark.task2_3
@fixture_ok
@given(seed=seeds, dims=attention_dims(), data=st.data())
def test_masked_keys_get_no_gradient(backend, seed, dims, data):
    rng = np.random.default_rng(seed)
    q, k, v, mask, padded, k2, v2 = _padded_case(rng, dims, data)
    o, c = ops.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    _, c2 = ops.attention_core_forward(q, k2, v2, mask, scale=0.5, softcap=50.0)
    do = randn(rng, *o.shape)
    g, g2 = ops.attention_core_backward(do, c), ops.attention_core_backward(do, c2)
    for a, b in zip(g, g2):
        assert_close(a, b, rtol=1e-12, atol=1e-12)
    for dkv in g[1:]:
        assert np.all(dkv.transpose(0, 2, 1, 3)[padded] == 0)


def _empty_rows(dtype):
    """Inputs (q, k, v, mask) with one query row that sees no key and one fully padded
    sequence; run `check(q, k, v, mask)` without any floating-point warning."""
    rng = np.random.default_rng(0)
    B, H, K, Tq, Tk, Dh = 2, 4, 2, 3, 4, 4
    mask = np.ones((B, 1, Tq, Tk), dtype=bool)
    mask[0, 0, 1] = False  # one empty row
    mask[1] = False  # a fully padded sequence
    q, k, v = (randn(rng, B, n, t, Dh, dtype=dtype) for n, t in ((H, Tq), (K, Tk), (K, Tk)))
    return q, k, v, mask


@pytest.mark.task2_2
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_without_allowed_keys_give_zeros(backend, dtype):
    """A query row that allows no key, or a fully padded sequence, gives exact zeros, with no
    NaN and no floating-point warning."""
    q, k, v, mask = _empty_rows(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from exp/divide either
        with np.errstate(all="raise"):
            o, _ = ops.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    assert o.dtype == dtype and np.all(np.isfinite(o))
    assert np.all(o[0, :, 1] == 0) and np.all(o[1] == 0) and np.any(o[0, :, 0] != 0)


@pytest.mark.task2_3
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_without_allowed_keys_give_zero_gradients(backend, dtype):
    q, k, v, mask = _empty_rows(dtype)
    o, cache = ops.attention_core_forward(q, k, v, mask, scale=0.5, softcap=50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            dq, dk, dv = ops.attention_core_backward(np.ones_like(o), cache)
    assert all(g.dtype == dtype and np.all(np.isfinite(g)) for g in (dq, dk, dv))
    assert np.all(dq[0, :, 1] == 0) and np.all(dq[1] == 0)
    assert np.all(dk[1] == 0) and np.all(dv[1] == 0)


# --- soft-cap --------------------------------------------------------------------------

@pytest.mark.task1_3
# x / cap beyond the float range is inf and tanh(inf) = 1, the right answer: a correct
# soft-cap written plainly (without np.errstate) must not print a warning here
@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")
@few
@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       cap=st.floats(0.5, 100.0))
def test_softcap_stays_strictly_inside(data, dtype, cap):
    """|y| < cap wherever tanh is representably below 1 (|x| <= 8 cap in float32, 18 cap in
    float64); |y| <= cap for every finite x (tanh rounds to exactly 1 beyond that)."""
    lim = (8.0 if dtype == np.float32 else 18.0) * cap
    xs = data.draw(st.lists(st.floats(-lim, lim, allow_nan=False), min_size=1, max_size=20))
    x = np.array(xs, dtype=dtype)
    y, _ = softcap_forward(x, cap)
    assert np.all(np.abs(y) < dtype(cap)), (x[np.abs(y) >= cap], y[np.abs(y) >= cap])
    big = np.array([np.finfo(dtype).max, -np.finfo(dtype).max, 1e30, -1e30], dtype=dtype)
    yb, c = softcap_forward(big, cap)
    assert np.all(np.abs(yb) <= dtype(cap)) and np.all(np.isfinite(softcap_backward(yb, c)))


@pytest.mark.task1_3
def test_softcap_none_is_identity():
    x = np.array([-1e3, 0.5, 7.0])
    y, c = softcap_forward(x, None)
    assert np.array_equal(y, x) and y is not x
    assert np.array_equal(softcap_backward(np.ones(3), c), np.ones(3))


# --- RMSNorm ---------------------------------------------------------------------------

@pytest.mark.task1_1
@fixture_ok
@given(seed=seeds, lead=st.lists(st.integers(1, 3), max_size=2), D=widths,
       a=st.floats(1e-2, 1e3), dtype=st.sampled_from([np.float32, np.float64]))
def test_rmsnorm_is_invariant_to_positive_scaling(backend, seed, lead, D, a, dtype):
    """Scaling x by any a > 0 leaves the output unchanged, since x and its root mean square
    scale together (eps negligible here)."""
    rng = np.random.default_rng(seed)
    x = (rng.uniform(0.5, 2.0, (*lead, D)) * rng.choice([-1, 1], (*lead, D))).astype(dtype)
    w = randn(rng, D, scale=0.3, dtype=dtype)
    eps = 1e-30  # negligible against mean(x^2) >= 0.25, so the invariance is exact up to rounding
    y, _ = ops.rmsnorm_forward(x, w, eps)
    ya, _ = ops.rmsnorm_forward(x * dtype(a), w, eps)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(ya, y, rtol=tol, atol=tol)


# --- embedding ---------------------------------------------------------------------------

def test_embedding_scales_and_scatter_adds_repeated_ids(backend):
    E = np.arange(12, dtype=np.float64).reshape(4, 3)  # V = 4, D = 3
    ids = np.array([[1, 1, 2], [3, 1, 1]])
    x, cache = embedding_forward(ids, E)
    assert_close(x[0, 0], E[1] * np.sqrt(3.0), rtol=1e-15)
    dx = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    dE = ops.embedding_backward(dx, cache)
    expect = np.zeros((4, 3))
    expect[1] = (dx[0, 0] + dx[0, 1] + dx[1, 1] + dx[1, 2]) * np.sqrt(3.0)  # id 1 used 4 times
    expect[2] = dx[0, 2] * np.sqrt(3.0)
    expect[3] = dx[1, 0] * np.sqrt(3.0)
    assert_close(dE, expect, rtol=1e-15)
    x1, c1 = embedding_forward(ids, E, scale=False)
    assert np.array_equal(x1, E[ids])
    assert np.allclose(ops.embedding_backward(dx, c1), expect / np.sqrt(3.0))


def test_embedding_factor_is_rounded_to_the_activation_dtype():
    E = np.ones((2, 2304), dtype=np.float32)
    x, _ = embedding_forward(np.array([[0]]), E)
    assert x.dtype == np.float32 and x[0, 0, 0] == np.float32(np.sqrt(2304.0))


# --- losses -----------------------------------------------------------------------------

def test_cross_entropy_value_and_ignore_index():
    logits = np.array([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]])
    labels = np.array([[0, -100, 2]])
    loss, cache = cross_entropy_forward(logits, labels)
    lse = np.log(np.exp(logits).sum(-1))
    assert loss == pytest.approx(((lse[0, 0] - 2.0) + (lse[0, 2] - 3.0)) / 2, rel=1e-14)
    d = cross_entropy_backward(1.0, cache)
    assert np.all(d[0, 1] == 0)  # the ignored position gets no gradient
    assert_close(d.sum(-1), 0, atol=1e-15)


@pytest.mark.task6_1
def test_cross_entropy_with_nothing_counted_is_zero(backend):
    z = np.ones((2, 3, 5))
    labels = np.full((2, 3), -100)
    for fwd, bwd, args in ((cross_entropy_forward, cross_entropy_backward, ()),
                           (ops.softcap_cross_entropy_forward, ops.softcap_cross_entropy_backward,
                            (30.0,))):
        loss, cache = fwd(z, labels, *args)
        assert loss == 0.0
        d = bwd(1.0, cache)
        assert d.shape == z.shape and np.all(d == 0)


@pytest.mark.task6_1
@fixture_ok
@given(seed=seeds, N=st.integers(1, 6), V=st.integers(1, 7), cap=st.sampled_from([2.0, 30.0]),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_softcap_cross_entropy_equals_the_composition(backend, seed, N, V, cap, dtype):
    rng = np.random.default_rng(seed)
    z = randn(rng, N, V, scale=10.0, dtype=dtype)
    labels = rng.integers(0, V, size=N)
    labels[0] = -100
    y, c_s = softcap_forward(z, cap)
    loss_ref, c_ref = cross_entropy_forward(y, labels)
    dz_ref = softcap_backward(cross_entropy_backward(0.5, c_ref), c_s)
    loss, cache = ops.softcap_cross_entropy_forward(z, labels, cap)
    dz = ops.softcap_cross_entropy_backward(0.5, cache)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(loss_ref, rel=tol, abs=tol)
    assert dz.dtype == dtype
    assert_close(dz, dz_ref, rtol=tol, atol=tol)


@pytest.mark.task6_2
@few
@given(seed=seeds, N=st.integers(1, 5), V=st.integers(2, 6), T=st.sampled_from([0.5, 1.0, 3.0]))
def test_distillation_is_kl_plus_teacher_entropy(seed, N, V, T):
    rng = np.random.default_rng(seed)
    logits, t = randn(rng, N, V), randn(rng, N, V)
    tp = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    mask = np.ones(N, dtype=bool)
    loss, cache = distillation_forward(logits, tp, mask, temperature=T)
    logq = logits / T - np.log(np.exp(logits / T).sum(-1, keepdims=True))
    kl = np.mean(np.sum(tp * (np.log(tp) - logq), -1))
    entropy = np.mean(-np.sum(tp * np.log(tp), -1))
    assert loss == pytest.approx(kl + entropy, rel=1e-12)
    # the student equal to the teacher is the minimum: zero gradient
    _, c_eq = distillation_forward(np.log(tp) * T, tp, mask, temperature=T)
    assert_close(distillation_backward(1.0, c_eq), 0, atol=1e-14)


@pytest.mark.task6_2
def test_distillation_mask_selects_positions():
    logits = np.array([[0.0, 1.0], [5.0, -5.0]])
    tp = np.array([[0.5, 0.5], [1.0, 0.0]])
    loss, c = distillation_forward(logits, tp, np.array([True, False]))
    assert loss == pytest.approx(-np.sum(0.5 * (logits[0] - np.log(np.exp(logits[0]).sum()))))
    d = distillation_backward(1.0, c)
    assert np.all(d[1] == 0) and np.any(d[0] != 0)
    loss0, c0 = distillation_forward(logits, tp, np.array([False, False]))
    assert loss0 == 0.0 and np.all(distillation_backward(1.0, c0) == 0)


# --- every op in float32 and float64 ---------------------------------------------------------

def _ops_in(dtype, rng_seed=0):
    """Run every op forward and backward in `dtype` on the same data; returns outputs."""
    rng = np.random.default_rng(rng_seed)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    out = {}
    x, W = r(2, 3, 4), r(5, 4)
    y, c = linear_forward(x, W)
    out["linear"] = (y, *linear_backward(r(2, 3, 5), c))
    E = r(6, 4)
    e, c = embedding_forward(np.array([[1, 2, 1]]), E)
    out["embedding"] = (e, ops.embedding_backward(r(1, 3, 4), c))
    y, c = ops.rmsnorm_forward(x, r(4))
    out["rmsnorm"] = (y, *ops.rmsnorm_backward(r(2, 3, 4), c))
    cos, sin = rope_cos_sin(np.arange(3), 4, dtype=dtype)
    y, c = rope_forward(r(2, 2, 3, 4), cos, sin)
    out["rope"] = (y, rope_backward(r(2, 2, 3, 4), c))
    y, c = softcap_forward(r(3, 4) * dtype(20), 5.0)
    out["softcap"] = (y, softcap_backward(r(3, 4), c))
    mask = attention_mask(np.arange(3), np.arange(4), causal=True, window=2)
    y, c = ops.attention_core_forward(r(2, 4, 3, 4), r(2, 2, 4, 4), r(2, 2, 4, 4), mask,
                                      scale=0.5, softcap=50.0)
    out["attention_core"] = (y, *ops.attention_core_backward(r(2, 4, 3, 4), c))
    y, c = attention_forward(r(2, 3, 4), r(2, 5, 6), r(8, 4), r(4, 6), r(4, 6), r(4, 8),
                             num_heads=2, num_kv_heads=1, head_dim=4, scale=0.5, softcap=None,
                             mask=None)
    out["attention"] = (y, *attention_backward(r(2, 3, 4), c))
    y, c = gelu_tanh_forward(r(3, 4))
    out["gelu_tanh"] = (y, gelu_tanh_backward(r(3, 4), c))
    y, c = ops.geglu_act_forward(r(3, 4), r(3, 4))
    out["geglu_act"] = (y, *ops.geglu_act_backward(r(3, 4), c))
    y, c = geglu_forward(x, r(6, 4), r(6, 4), r(4, 6))
    out["geglu"] = (y, *geglu_backward(r(2, 3, 4), c))
    labels = np.array([[0, 3, -100], [1, 1, 2]])
    z = r(2, 3, 4) * dtype(5)
    loss, c = cross_entropy_forward(z, labels)
    out["cross_entropy"] = (np.array(loss, dtype), cross_entropy_backward(1.0, c))
    loss, c = ops.softcap_cross_entropy_forward(z, labels, 3.0)
    out["softcap_cross_entropy"] = (np.array(loss, dtype),
                                    ops.softcap_cross_entropy_backward(1.0, c))
    tp = np.full((2, 3, 4), 0.25, dtype=dtype)
    loss, c = distillation_forward(z, tp, np.ones((2, 3), bool), 2.0)
    out["distillation"] = (np.array(loss, dtype), distillation_backward(1.0, c))
    return out


def test_every_op_runs_in_float32_and_agrees_with_float64(backend):
    o32, o64 = _ops_in(np.float32), _ops_in(np.float64)
    for name in o64:
        for a, b in zip(o32[name], o64[name]):
            assert a.dtype == np.float32 and b.dtype == np.float64, (name, a.dtype, b.dtype)
            assert_close(a, b, rtol=2e-4, atol=2e-5, err_msg=name)


# --- the attention core's cache: the contract between forward (2.2) and backward (2.3) --------

CORE_CACHE_KEYS = ("q", "k", "v", "p", "cap", "scale", "softcap")


def core_cache_by_the_equation(q, k, v, mask, scale, softcap):
    """The cache attention_core_forward documents, built in float64 head by head: p of
    shape (B, K, G, Tq, Tk), cap = {"t": tanh(s0 / softcap), "cap", "shape"} or None."""
    B, H, Tq, Dh = q.shape
    K, Tk = k.shape[1], k.shape[2]
    G = H // K
    s0 = np.zeros((B, K, G, Tq, Tk))
    for h in range(H):
        s0[:, h // G, h % G] = q[:, h] @ k[:, h // G].swapaxes(-1, -2) * scale
    t = None if softcap is None else np.tanh(s0 / softcap)
    s = s0 if softcap is None else softcap * t
    allowed = np.ones((B, 1, 1, Tq, Tk), bool) if mask is None else mask[:, :, None]
    e = np.where(allowed, np.exp(s - s.max(-1, keepdims=True)), 0.0)
    denom = e.sum(-1, keepdims=True)
    p = e / np.where(denom > 0, denom, 1.0)
    cap = None if softcap is None else {"t": t, "cap": softcap, "shape": s0.shape}
    return {"q": q, "k": k, "v": v, "p": p, "cap": cap, "scale": scale, "softcap": softcap}


def core_backward_by_the_chain_rule(do, cache):
    """(dq, dk, dv) from a cache of the documented layout, head by head in float64: what
    attention_core_backward must compute from the same cache."""
    q, k, v, p = (np.asarray(cache[n], np.float64) for n in ("q", "k", "v", "p"))
    B, H, Tq, Dh = q.shape
    K = k.shape[1]
    G = H // K
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for h in range(H):
        j, g = h // G, h % G
        P, dO = p[:, j, g], do[:, h].astype(np.float64)  # (B, Tq, Tk), (B, Tq, Dh)
        dv[:, j] += P.swapaxes(-1, -2) @ dO
        dP = dO @ v[:, j].swapaxes(-1, -2)
        ds = P * (dP - (P * dP).sum(-1, keepdims=True))
        if cache["cap"] is not None:
            t = np.asarray(cache["cap"]["t"], np.float64)[:, j, g]
            ds = ds * (1 - t * t)
        ds = ds * cache["scale"]
        dq[:, h] = ds @ k[:, j]
        dk[:, j] += ds.swapaxes(-1, -2) @ q[:, h]
    return dq, dk, dv


def _cache_case(seed, dims, data, dtype):
    rng = np.random.default_rng(seed)
    B, H, K, Tq, Tk, Dh = (dims[n] for n in ("B", "H", "K", "Tq", "Tk", "Dh"))
    mask = data.draw(attention_masks(B, Tq, Tk))
    q, k, v = (randn(rng, B, n, t, Dh, dtype=dtype) for n, t in ((H, Tq), (K, Tk), (K, Tk)))
    softcap = data.draw(st.none() | st.sampled_from([1.0, 50.0]))
    return q, k, v, mask, 0.5, softcap, randn(rng, B, H, Tq, Dh, dtype=dtype)


@pytest.mark.task2_2
@few
@given(seed=seeds, dims=attention_dims(), data=st.data(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_core_cache_is_what_the_backward_reads(seed, dims, data, dtype):
    """The cache holds what attention_core_backward reads, in the layout of the docstring: q, k,
    v, scale, softcap, p as (B, K, G, Tq, Tk) and the soft-cap's cache under 'cap'."""
    q, k, v, mask, scale, softcap, do = _cache_case(seed, dims, data, dtype)
    _, cache = attn.attention_core_forward(q, k, v, mask, scale=scale, softcap=softcap)
    missing = [n for n in CORE_CACHE_KEYS if n not in cache]
    assert not missing, (f"attention_core_forward: the cache lacks {missing} (has "
                         f"{sorted(cache)}); attention_core_backward reads {CORE_CACHE_KEYS}")
    want = core_cache_by_the_equation(*(a.astype(np.float64) for a in (q, k, v)), mask, scale,
                                      softcap)
    for n, x in (("q", q), ("k", k), ("v", v)):
        np.testing.assert_array_equal(cache[n], x, err_msg=f"cache[{n!r}] must be the input {n}")
    assert (cache["scale"], cache["softcap"]) == (scale, softcap), (
        f"cache['scale'], cache['softcap'] = {cache['scale']!r}, {cache['softcap']!r}; "
        f"expected the arguments {scale!r}, {softcap!r}")
    p = np.asarray(cache["p"])
    assert p.shape == want["p"].shape, (
        f"cache['p'] has shape {p.shape}; expected (B, K, G, Tq, Tk) = {want['p'].shape}")
    assert_close(p, want["p"], **tol(dtype),
                               err_msg="cache['p']: the probabilities, query head h at "
                                       "[:, h // G, h % G], 0 on masked keys")
    if softcap is None:
        assert cache["cap"] is None, "cache['cap'] must be None when softcap is None"
    else:
        cap = cache["cap"]
        assert isinstance(cap, dict) and "t" in cap and "shape" in cap, (
            f"cache['cap'] must be softcap_forward's cache (a dict with 't' = tanh(s0 / "
            f"softcap) and 'shape'); got {type(cap).__name__} "
            f"{sorted(cap) if isinstance(cap, dict) else ''}")
        assert_close(cap["t"], want["cap"]["t"], **tol(dtype),
                                   err_msg="cache['cap']['t'] = tanh(s0 / softcap), "
                                           "shape (B, K, G, Tq, Tk)")
    got = core_backward_by_the_chain_rule(do, cache)
    for name, a, b in zip(("dq", "dk", "dv"), got, core_backward_by_the_chain_rule(do, want)):
        assert_close(a, b, **tol(dtype), err_msg=f"{name} from your cache")


@pytest.mark.task2_3
@few
@given(seed=seeds, dims=attention_dims(), data=st.data(),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_core_backward_reads_the_documented_cache(seed, dims, data, dtype):
    """attention_core_backward works from any cache of the documented layout (here one
    built by the equation, not by attention_core_forward) and returns gradients shaped
    and typed like q, k, v."""
    q, k, v, mask, scale, softcap, do = _cache_case(seed, dims, data, dtype)
    cache = core_cache_by_the_equation(*(a.astype(np.float64) for a in (q, k, v)), mask, scale,
                                       softcap)
    cache = {n: (c.astype(dtype) if isinstance(c, np.ndarray) else c) for n, c in cache.items()}
    if softcap is not None:
        cache["cap"] = dict(cache["cap"], t=cache["cap"]["t"].astype(dtype))
    got = attn.attention_core_backward(do, cache)
    want = core_backward_by_the_chain_rule(do, cache)
    for name, a, b, x in zip(("dq", "dk", "dv"), got, want, (q, k, v)):
        assert a.shape == x.shape and a.dtype == x.dtype, (
            f"{name}: shape {a.shape} dtype {a.dtype}; expected {x.shape} {x.dtype}")
        assert_close(a, b, **tol(dtype), err_msg=f"{name}")
