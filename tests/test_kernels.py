"""The Numba twins agree with the NumPy references in mini_encdec.nn.

Tolerances: float32 outputs within 1e-5 relative, float32 gradients within
1e-4; float64 within 1e-10. "Relative" is elementwise with an absolute floor of the same
size times the largest reference magnitude, so entries near zero are judged against the
array's scale. Shapes, masks and dtypes come from hypothesis; fully masked rows are
forced in often. Each kernel compiles once per dtype (float32, float64) per process.
"""

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec import ops
from mini_encdec.kernels import _runtime as kruntime
from mini_encdec.kernels import attention as katt
from mini_encdec.kernels import output_loss as k_output_loss
from mini_encdec.kernels._vecmath import exp_array, tanh_array
from mini_encdec.nn.attention import merge_heads, split_heads
from mini_encdec.nn.embedding import embedding_forward
from mini_encdec.nn.rope import rope_cos_sin
from mini_encdec.nn import output_loss as nn_output_loss
from mini_encdec.nn.masks import attention_mask

from .strategies import attention_dims, attention_masks, float_dtypes, rngs

OUT_TOL = {np.float32: 1e-5, np.float64: 1e-10}
GRAD_TOL = {np.float32: 1e-4, np.float64: 1e-10}


def ref(name):
    return ops.resolve(name, "numpy")


def assert_close(actual, desired, rtol, what="", scale=None):
    """Elementwise within rtol, with an absolute floor of rtol * scale (default: the
    largest |desired|; pass the size of the terms when the result cancels)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, what
    assert actual.dtype == desired.dtype, what
    if scale is None:
        scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(scale, 1e-30),
                               err_msg=what)


TWINS = ops.twins()


def test_twins_cover_every_reference_op_with_its_name():
    assert set(TWINS) == set(ops.REFERENCE)
    for name, fn in TWINS.items():
        assert fn.__name__ == name


# --- attention ------------------------------------------------------------------------------

def _qkv(rng, dims, dtype, spread=2.0):
    B, H, K, Tq, Tk, Dh = (dims[k] for k in ("B", "H", "K", "Tq", "Tk", "Dh"))
    q = (rng.standard_normal((B, H, Tq, Dh)) * spread).astype(dtype)
    k = (rng.standard_normal((B, K, Tk, Dh)) * spread).astype(dtype)
    v = rng.standard_normal((B, K, Tk, Dh)).astype(dtype)
    return q, k, v


def _check_attention(q, k, v, mask, scale, softcap, do):
    dtype = q.dtype.type
    o_ref, c_ref = ref("attention_core_forward")(q, k, v, mask, scale=scale, softcap=softcap)
    o, c = TWINS["attention_core_forward"](q, k, v, mask, scale=scale, softcap=softcap)
    assert_close(o, o_ref, OUT_TOL[dtype], "o")
    grads_ref = ref("attention_core_backward")(do, c_ref)
    grads = TWINS["attention_core_backward"](do, c)
    # ds = p (dp - sum p dp) cancels (exactly to 0 with one allowed key): judge dq and dk
    # against the size of their terms, |ds| <~ |do| |v|, times scale |k| or |q|
    big = lambda a: float(np.max(np.abs(a))) if a.size else 0.0  # noqa: E731
    ds_terms = 2 * big(do) * big(v) * scale
    scales = (ds_terms * big(k), ds_terms * big(q), None)
    for name, g, g_ref, sc in zip(("dq", "dk", "dv"), grads, grads_ref, scales):
        assert_close(g, g_ref, GRAD_TOL[dtype], name,
                     scale=None if sc is None else max(sc, big(g_ref)))
    return o, grads


@contextlib.contextmanager
def _forward_path(tiled: bool):
    """Force the forward's tiled BLAS path (any Tq) or its online-softmax path."""
    previous = katt.BLAS_MIN_ROWS
    katt.BLAS_MIN_ROWS = 1 if tiled else 10**9
    try:
        yield
    finally:
        katt.BLAS_MIN_ROWS = previous


@given(dims=attention_dims(), data=st.data(), dtype=float_dtypes, rng=rngs,
       softcap=st.none() | st.sampled_from([1.0, 50.0]), empty_row=st.booleans(),
       tiled=st.booleans())
def test_attention_matches_reference(dims, data, dtype, rng, softcap, empty_row, tiled):
    with _forward_path(tiled):
        _attention_matches_reference(dims, data, dtype, rng, softcap, empty_row)


def _attention_matches_reference(dims, data, dtype, rng, softcap, empty_row):
    B, Tq, Tk = dims["B"], dims["Tq"], dims["Tk"]
    mask = data.draw(attention_masks(B, Tq, Tk))
    if empty_row:  # force a query row with no allowed key
        mask = np.array(np.broadcast_to(True if mask is None else mask, (B, 1, Tq, Tk)))
        mask[data.draw(st.integers(0, B - 1)), 0, data.draw(st.integers(0, Tq - 1))] = False
    q, k, v = _qkv(rng, dims, dtype)
    do = rng.standard_normal(q.shape).astype(dtype)
    o, (dq, dk, dv) = _check_attention(q, k, v, mask, dims["Dh"] ** -0.5, softcap, do)
    if mask is not None:  # rows without an allowed key: exactly zero output and dq
        empty = ~np.broadcast_to(mask, (B, 1, Tq, Tk)).any(axis=-1)  # (B, 1, Tq)
        empty = np.broadcast_to(empty[..., None], o.shape)
        assert np.all(o[empty] == 0) and np.all(dq[empty] == 0)


@given(dtype=float_dtypes, rng=rngs, tiled=st.booleans(),
       shape=st.sampled_from([(1, 1, 1, 1), (2, 1, 1, 1), (1, 1, 5, 1), (2, 1, 1, 7),
                              (1, 1, 5, 7), (2, 1, 5, 1)]))
def test_attention_broadcast_mask_shapes(dtype, rng, tiled, shape):
    dims = dict(B=2, H=4, K=2, Tq=5, Tk=7, Dh=4)
    mask = rng.random(shape) < 0.6
    q, k, v = _qkv(rng, dims, dtype)
    with _forward_path(tiled):
        _check_attention(q, k, v, mask, 0.5, 50.0, rng.standard_normal(q.shape).astype(dtype))


@given(dtype=float_dtypes, rng=rngs, start=st.integers(0, 9), extra=st.integers(0, 9),
       v_start=st.integers(0, 9), tiled=st.booleans())
def test_attention_reads_kv_cache_views_in_place(dtype, rng, start, extra, v_start, tiled):
    """k, v as slices along the key axis of bigger buffers (the KV cache's views, read in
    place by the online path) give the reference's result, at matching offsets or not."""
    dims = dict(B=2, H=4, K=2, Tq=2, Tk=6, Dh=8)
    q, k, v = _qkv(rng, dims, dtype)
    kb = rng.standard_normal((2, 2, start + 6 + extra, 8)).astype(dtype)
    vb = rng.standard_normal((2, 2, v_start + 6 + extra, 8)).astype(dtype)
    kb[:, :, start:start + 6], vb[:, :, v_start:v_start + 6] = k, v
    kv, vv = kb[:, :, start:start + 6], vb[:, :, v_start:v_start + 6]
    mask = rng.random((2, 1, 2, 6)) < 0.7
    with _forward_path(tiled):
        _check_attention(q, kv, vv, mask, 0.3, 50.0, rng.standard_normal(q.shape).astype(dtype))


@pytest.mark.parametrize("tiled", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_online_softmax_over_several_key_blocks(dtype, tiled):
    """More keys than one block (BLOCK), with later blocks holding larger scores so the
    running max and the accumulator must be rescaled; causal, local and padded masks."""
    rng = np.random.default_rng(0)
    Tk = 2 * katt.BLOCK + 37
    dims = dict(B=2, H=2, K=1, Tq=6, Tk=Tk, Dh=8)
    q, k, v = _qkv(rng, dims, dtype, spread=1.0)
    k *= np.linspace(0.2, 3.0, Tk, dtype=dtype)[None, None, :, None]  # scores grow with key
    q_pos = np.array([3, 200, Tk - 300, Tk - 40, Tk - 2, Tk - 1])
    pad = np.ones((2, Tk), dtype=bool)
    pad[1, Tk - 100:] = False
    do = rng.standard_normal(q.shape).astype(dtype)
    for mask in (attention_mask(q_pos, np.arange(Tk), causal=True),
                 attention_mask(q_pos, np.arange(Tk), causal=True, window=300),
                 attention_mask(q_pos, np.arange(Tk), causal=False, key_padding=pad)):
        for softcap in (None, 5.0):
            with _forward_path(tiled):
                _check_attention(q, k, v, mask, 0.4, softcap, do)


@pytest.mark.parametrize("tile", [1, 7 * 11, 3 * 2 * 9 * 11])
def test_attention_backward_over_many_tiles(monkeypatch, tile):
    """Tiny score tiles force the forward and the backward to split the query rows of one
    key/value head (dk, dv accumulate over row blocks, a block may straddle two query
    heads of a group) and to take several heads per tile; results stay the reference's."""
    monkeypatch.setattr(katt, "TILE", tile)
    rng = np.random.default_rng(5)
    dims = dict(B=2, H=6, K=3, Tq=9, Tk=11, Dh=4)
    q, k, v = _qkv(rng, dims, np.float64)
    mask = attention_mask(np.arange(2, 11), np.arange(11), causal=True, window=4)
    do = rng.standard_normal(q.shape)
    for softcap in (None, 5.0):
        with _forward_path(True):
            _check_attention(q, k, v, mask, 0.5, softcap, do)


def test_attention_fully_masked_everything_gives_zeros():
    rng = np.random.default_rng(1)
    dims = dict(B=2, H=2, K=1, Tq=3, Tk=4, Dh=4)
    q, k, v = _qkv(rng, dims, np.float32)
    mask = np.zeros((2, 1, 3, 4), dtype=bool)
    o, c = TWINS["attention_core_forward"](q, k, v, mask, scale=0.5, softcap=50.0)
    grads = TWINS["attention_core_backward"](np.ones_like(o), c)
    assert not o.any() and not any(g.any() for g in grads)


def test_attention_memory_is_linear_in_sequence_length():
    """The forward cache holds no (Tq, Tk) array per head: every float array it keeps
    has at most max(B*H*Tq, B*K*Tk) * Dh entries."""
    rng = np.random.default_rng(2)
    dims = dict(B=1, H=4, K=2, Tq=96, Tk=96, Dh=4)
    q, k, v = _qkv(rng, dims, np.float32)
    mask = attention_mask(np.arange(96), np.arange(96), causal=True)
    _, cache = TWINS["attention_core_forward"](q, k, v, mask, scale=0.5, softcap=50.0)
    bound = max(q.size, k.size)
    for name, value in cache.items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert value.size <= bound, name
    _, ref_cache = ref("attention_core_forward")(q, k, v, mask, scale=0.5, softcap=50.0)
    assert ref_cache["p"].size == 4 * 96 * 96  # the reference keeps p: what we avoid


def test_attention_result_does_not_depend_on_thread_count():
    rng = np.random.default_rng(3)
    dims = dict(B=2, H=4, K=2, Tq=40, Tk=40, Dh=8)
    q, k, v = _qkv(rng, dims, np.float32)
    mask = attention_mask(np.arange(40), np.arange(40), causal=True, window=9)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            q2 = np.repeat(q, 40, axis=2)[:, :, :400]  # enough work for the thread pool
            m2 = np.ones((1, 1, 400, 40), dtype=bool)
            o, c = TWINS["attention_core_forward"](q2, k, v, m2, scale=0.3, softcap=50.0)
            o_small, c_small = TWINS["attention_core_forward"](q, k, v, mask, scale=0.3,
                                                               softcap=50.0)
            results.append((o, *TWINS["attention_core_backward"](o, c), o_small))
        finally:
            numba.set_num_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_attention_rejects_bad_input_like_the_reference():
    q = np.zeros((1, 3, 2, 4), np.float32)
    k = np.zeros((1, 2, 2, 4), np.float32)  # 3 query heads, 2 kv heads
    for fn in (ref("attention_core_forward"), TWINS["attention_core_forward"]):
        with pytest.raises(ValueError, match="k"):
            fn(q, k, k, None, scale=1.0, softcap=None)
    q = np.zeros((1, 2, 2, 4), np.float32)
    with pytest.raises(ValueError, match="mask"):
        TWINS["attention_core_forward"](q, k, k, np.ones((1, 1, 3, 2), bool), scale=1.0,
                                        softcap=None)
    with pytest.raises(ValueError, match="scale"):
        TWINS["attention_core_forward"](q, k, k, None, scale=-1.0, softcap=None)
    _, c = TWINS["attention_core_forward"](q, k, k, None, scale=1.0, softcap=None)
    with pytest.raises(ValueError, match="do"):
        TWINS["attention_core_backward"](np.zeros((1, 2, 3, 4), np.float32), c)


# --- RMSNorm, GeGLU, cross-entropy, embedding ----------------------------------------------

leading_shapes = st.lists(st.integers(1, 5), min_size=0, max_size=2).map(tuple)


@given(lead=leading_shapes, D=st.integers(1, 40), dtype=float_dtypes, rng=rngs,
       eps=st.sampled_from([1e-6, 1e-2]))
def test_rmsnorm_matches_reference(lead, D, dtype, rng, eps):
    x = (rng.standard_normal(lead + (D,)) * 3).astype(dtype)
    w = (rng.standard_normal(D) * 0.5).astype(dtype)
    y_ref, c_ref = ref("rmsnorm_forward")(x, w, eps)
    y, c = TWINS["rmsnorm_forward"](x, w, eps)
    assert_close(y, y_ref, OUT_TOL[dtype], "y")
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dw = TWINS["rmsnorm_backward"](dy, c)
    dx_ref, dw_ref = ref("rmsnorm_backward")(dy, c_ref)
    # dx = rstd * (dy (1 + w) - xhat * mean(...)) cancels (to 0 when D = 1): judge it
    # against the size of its terms
    terms = float(np.max(np.abs(c_ref["rstd"] * dy * (1 + w)))) if dy.size else 0.0
    assert_close(dx, dx_ref, GRAD_TOL[dtype], "dx", scale=terms)
    assert_close(dw, dw_ref, GRAD_TOL[dtype], "dw")


@given(lead=leading_shapes, F=st.integers(1, 70), dtype=float_dtypes, rng=rngs,
       spread=st.sampled_from([0.01, 1.0, 6.0]))
def test_geglu_act_matches_reference(lead, F, dtype, rng, spread):
    gate = (rng.standard_normal(lead + (F,)) * spread).astype(dtype)
    up = rng.standard_normal(lead + (F,)).astype(dtype)
    a_ref, c_ref = ref("geglu_act_forward")(gate, up)
    a, c = TWINS["geglu_act_forward"](gate, up)
    assert_close(a, a_ref, OUT_TOL[dtype], "a")
    da = rng.standard_normal(gate.shape).astype(dtype)
    for name, g, g_ref in zip(("dgate", "dup"), TWINS["geglu_act_backward"](da, c),
                              ref("geglu_act_backward")(da, c_ref)):
        assert_close(g, g_ref, GRAD_TOL[dtype], name)


@given(lead=st.lists(st.integers(1, 4), min_size=1, max_size=2).map(tuple),
       V=st.integers(1, 300), dtype=float_dtypes, rng=rngs,
       cap=st.none() | st.sampled_from([1.0, 30.0, 50.0]),  # 50: the max-shift path
       spread=st.sampled_from([1.0, 40.0]),
       p_ignore=st.sampled_from([0.0, 0.5, 1.0]), dloss=st.floats(-3, 3))
def test_softcap_cross_entropy_matches_reference(lead, V, dtype, rng, cap, spread, p_ignore,
                                                 dloss):
    z = (rng.standard_normal(lead + (V,)) * spread).astype(dtype)
    labels = rng.integers(0, V, lead)
    labels[rng.random(lead) < p_ignore] = -100
    loss_ref, c_ref = ref("softcap_cross_entropy_forward")(z, labels, cap)
    loss, c = TWINS["softcap_cross_entropy_forward"](z, labels, cap)
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= OUT_TOL[dtype] * max(abs(loss_ref), 1.0)
    dz = TWINS["softcap_cross_entropy_backward"](dloss, c)
    dz_ref = ref("softcap_cross_entropy_backward")(dloss, c_ref)
    # dz = dloss / n * (p - onehot) cancels (to 0 when V = 1): terms are of size dloss / n
    n = max(int((labels != -100).sum()), 1)
    assert_close(dz, dz_ref, GRAD_TOL[dtype], "dz",
                 scale=max(abs(dloss) / n, float(np.max(np.abs(dz_ref)))))
    if (labels == -100).all():
        assert loss == 0.0 and not dz.any()


def test_softcap_cross_entropy_custom_ignore_index_and_bad_labels():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 10)).astype(np.float32)
    labels = np.array([1, 7, 7])
    loss_ref, c_ref = ref("softcap_cross_entropy_forward")(z, labels, 30.0, ignore_index=7)
    loss, c = TWINS["softcap_cross_entropy_forward"](z, labels, 30.0, ignore_index=7)
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    assert_close(TWINS["softcap_cross_entropy_backward"](1.0, c),
                 ref("softcap_cross_entropy_backward")(1.0, c_ref), 1e-4)
    with pytest.raises(ValueError, match="labels"):
        TWINS["softcap_cross_entropy_forward"](z, np.array([1, 10, 2]), 30.0)
    with pytest.raises(ValueError, match="dloss"):
        TWINS["softcap_cross_entropy_backward"](float("nan"), c)


# --- the fused output layer and loss ----------------------------------------------------------

@contextlib.contextmanager
def output_blocks(rows):
    """Both halves of output_loss_and_grads with `rows` rows per block (small shapes then
    run through several blocks, the last one partial)."""
    saved = nn_output_loss.BLOCK_ROWS, k_output_loss.BLOCK_ROWS
    nn_output_loss.BLOCK_ROWS = k_output_loss.BLOCK_ROWS = rows
    try:
        yield
    finally:
        nn_output_loss.BLOCK_ROWS, k_output_loss.BLOCK_ROWS = saved


def _output_case(rng, lead, V, D, dtype, p_ignore, teacher, spread=1.0):
    h = (rng.standard_normal(lead + (D,)) * spread).astype(dtype)
    E = (rng.standard_normal((V, D)) * spread).astype(dtype)
    labels = rng.integers(0, V, lead)
    labels[rng.random(lead) < p_ignore] = -100
    tp = None
    if teacher:
        t = rng.standard_normal(lead + (V,)) * 2
        tp = (np.exp(t) / np.exp(t).sum(-1, keepdims=True)).astype(dtype)
    return h, E, labels, tp


@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=2).map(tuple),
       V=st.integers(1, 300), D=st.integers(1, 16), dtype=float_dtypes, rng=rngs,
       cap=st.none() | st.sampled_from([1.0, 30.0, 50.0]),  # 50: the max-shift path
       spread=st.sampled_from([0.5, 3.0]), p_ignore=st.sampled_from([0.0, 0.5, 1.0]),
       teacher=st.booleans(), alpha=st.sampled_from([0.0, 0.3, 1.0]),
       temperature=st.sampled_from([0.5, 1.0, 2.0]), rows=st.sampled_from([1, 3, 128]))
def test_output_loss_matches_reference(lead, V, D, dtype, rng, cap, spread, p_ignore, teacher,
                                       alpha, temperature, rows):
    h, E, labels, tp = _output_case(rng, lead, V, D, dtype, p_ignore, teacher, spread)
    alpha = alpha if teacher else 0.0
    with output_blocks(rows):
        loss_ref, dh_ref, dE_ref, parts_ref = ref("output_loss_and_grads")(
            h, E, labels, cap, -100, tp, alpha, temperature)
        loss, dh, dE, parts = TWINS["output_loss_and_grads"](h, E, labels, cap, -100, tp, alpha,
                                                             temperature)
    assert isinstance(loss, float) and set(parts) == {"ce", "soft"}
    assert abs(loss - loss_ref) <= OUT_TOL[dtype] * max(abs(loss_ref), 1.0)
    for k in parts:
        assert abs(parts[k] - parts_ref[k]) <= OUT_TOL[dtype] * max(abs(parts_ref[k]), 1.0), k
    # dz's terms are of size 1 / n (p - onehot cancels, to 0 when V = 1); dh = dz E and
    # dE = dz^T h sum them over V and over the rows
    n = max(int((labels != -100).sum()), 1)
    scale = float(np.abs(h).max() + np.abs(E).max()) / n
    assert_close(dh, dh_ref, GRAD_TOL[dtype], "dh", scale=max(scale, np.abs(dh_ref).max()))
    assert_close(dE, dE_ref, GRAD_TOL[dtype], "dE", scale=max(scale, np.abs(dE_ref).max()))
    if (labels == -100).all():
        assert loss == 0.0 and not dh.any() and not dE.any()


def test_output_loss_equals_the_unfused_output_layer():
    """The fused op against the path it replaces: z = h E^T, the soft-capped cross-entropy
    forward/backward (Numba), dh = dz E, dE = dz^T h; over many blocks, float32."""
    rng = np.random.default_rng(5)
    h, E, labels, _ = _output_case(rng, (3, 150), 500, 24, np.float32, 0.1, False)
    z = h @ E.T  # (3, 150, 500)
    loss_ref, c = TWINS["softcap_cross_entropy_forward"](z, labels, 30.0)
    dz = TWINS["softcap_cross_entropy_backward"](1.0, c).reshape(-1, 500)
    for name in ("numpy", "numba"):
        loss, dh, dE, parts = ops.resolve("output_loss_and_grads", name)(h, E, labels, 30.0)
        assert loss == pytest.approx(loss_ref, rel=1e-6) and parts["ce"] == loss
        assert_close(dh, (dz @ E).reshape(h.shape), 1e-4, name)
        assert_close(dE, dz.T @ h.reshape(-1, 24), 1e-4, name)


def test_output_loss_result_does_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setattr(kruntime, "SERIAL_WORK", 0)  # the parallel path at any size
    rng = np.random.default_rng(6)
    h, E, labels, tp = _output_case(rng, (300,), 700, 16, np.float32, 0.2, True)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            with output_blocks(128):
                loss, dh, dE, parts = TWINS["output_loss_and_grads"](h, E, labels, 30.0, -100,
                                                                     tp, 0.5, 2.0)
            results.append((np.array([loss, parts["ce"], parts["soft"]]), dh, dE))
        finally:
            numba.set_num_threads(previous)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_output_loss_never_holds_the_whole_logits():
    """Peak memory of the twin well under one (N, V) array (what the unfused path keeps
    several of): the rows go a block at a time."""
    import tracemalloc
    rng = np.random.default_rng(7)
    N, V = 2048, 1024
    h, E, labels, _ = _output_case(rng, (N,), V, 32, np.float32, 0.0, False)
    TWINS["output_loss_and_grads"](h, E, labels, 30.0)  # compiled before measuring
    tracemalloc.start()
    try:
        TWINS["output_loss_and_grads"](h, E, labels, 30.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.25 * N * V * 4, peak


def test_output_loss_custom_ignore_index_and_bad_input():
    rng = np.random.default_rng(8)
    h, E, labels, tp = _output_case(rng, (4,), 10, 3, np.float64, 0.0, True)
    labels[1] = 7
    for name in ("numpy", "numba"):
        fn = ops.resolve("output_loss_and_grads", name)
        loss, dh, dE, _ = fn(h, E, labels, 30.0, 7)  # row 1 ignored: no gradient
        assert not dh[labels == 7].any() and dh[labels != 7].any() and loss > 0
    r, t = (ops.resolve("output_loss_and_grads", b)(h, E, labels, 30.0, 7, tp, 0.5)
            for b in ("numpy", "numba"))
    assert r[0] == pytest.approx(t[0], rel=1e-12)
    bad_tp = tp.copy()
    bad_tp[0] *= 2  # a row summing to 2
    for args, match in (((h, E, np.array([1, 10, 2, 3]), 30.0), "labels"),
                        ((h, E[:, :2], labels, 30.0), "'h'"),
                        ((h, E.astype(np.float32), labels, 30.0), "dtype"),
                        ((h, E, labels, 30.0, -100, None, 0.5), "alpha"),
                        ((h, E, labels, 30.0, -100, tp, 1.5), "alpha"),
                        ((h, E, labels, 30.0, -100, tp[:2], 0.5), "teacher_probs"),
                        ((h, E, labels, 30.0, -100, bad_tp, 0.5), "summing"),
                        ((h, E, labels, -1.0), "cap"),
                        ((h, E, labels, 30.0, -100, tp, 0.5, 0.0), "temperature")):
        with pytest.raises(ValueError, match=match) as ref_err:
            ref("output_loss_and_grads")(*args)
        with pytest.raises(ValueError) as twin_err:
            TWINS["output_loss_and_grads"](*args)
        assert str(twin_err.value) == str(ref_err.value)


@given(B=st.integers(1, 3), T=st.integers(1, 9), V=st.integers(1, 12), D=st.integers(1, 33),
       dtype=float_dtypes, rng=rngs, scale=st.booleans())
def test_embedding_backward_matches_reference(B, T, V, D, dtype, rng, scale):
    E = rng.standard_normal((V, D)).astype(dtype)
    ids = rng.integers(0, V, (B, T))  # small V: many repeated ids
    _, cache = embedding_forward(ids, E, scale=scale)
    dx = rng.standard_normal((B, T, D)).astype(dtype)
    assert_close(TWINS["embedding_backward"](dx, cache), ref("embedding_backward")(dx, cache),
                 GRAD_TOL[dtype], "dE")


# --- linear (few rows) -------------------------------------------------------------------------

def _check_linear(x, W):
    """linear_forward's twin (the layers' products) and project's (a decoding step's: the
    few-row kernel) against the reference; returns project's y."""
    dtype = x.dtype.type
    y_ref, c_ref = ref("linear_forward")(x, W)
    y_layer, c = TWINS["linear_forward"](x, W)
    y = TWINS["project"](x, W)
    np.testing.assert_array_equal(ref("project")(x, W), y_ref)
    # y sums In products: judge it against the size of the terms, |x| |W|^T
    terms = float(np.max(np.abs(x).reshape(-1, W.shape[1]) @ np.abs(W).T)) if y.size else 0.0
    assert_close(y, y_ref, OUT_TOL[dtype], "y", scale=terms)
    assert_close(y_layer, y_ref, OUT_TOL[dtype], "y", scale=terms)
    assert c["x"] is x and c["W"] is W  # the reference's cache: linear_backward takes it
    return y


@given(lead=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
       N=st.integers(1, 70), D=st.integers(1, 70), dtype=float_dtypes, rng=rngs,
       layout=st.sampled_from(["contiguous", "x strided", "W transposed"]))
def test_linear_matches_reference(lead, N, D, dtype, rng, layout):
    x = rng.standard_normal(lead + (D,)).astype(dtype)
    W = rng.standard_normal((N, D)).astype(dtype)
    if layout == "x strided":  # a view with gaps: the kernel copies it
        x = np.repeat(x, 2, axis=-1)[..., ::2]
    if layout == "W transposed":  # not C-contiguous: goes to numpy.matmul
        W = np.asfortranarray(W)
    _check_linear(x, W)


@pytest.mark.parametrize("M", [2, 3, 5, 8, 9, 32, 33])
def test_linear_kernel_row_counts_and_parallel_path(monkeypatch, M):
    """Every row-blocking tail (M mod 4, odd Out) on the serial and the parallel path,
    which agree bit for bit whatever the thread count (chunks come from the cap)."""
    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, 1, 37)).astype(np.float32)
    W = rng.standard_normal((51, 37)).astype(np.float32)
    serial = _check_linear(x, W)
    monkeypatch.setattr(kruntime, "SERIAL_WORK", 0)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            results.append(_check_linear(x, W))
        finally:
            numba.set_num_threads(previous)
    np.testing.assert_array_equal(results[0], results[1])
    assert_close(results[0], serial, 1e-6, scale=float(np.max(np.abs(serial))))


# --- RoPE ------------------------------------------------------------------------------------------

@given(B=st.integers(1, 3), N=st.integers(1, 4), T=st.integers(1, 9),
       half=st.integers(1, 6), dtype=float_dtypes, rng=rngs, per_row=st.booleans(),
       view=st.booleans())
def test_rope_matches_reference(B, N, T, half, dtype, rng, per_row, view):
    """Forward and backward, tables shared (T, Dh) or per row (B, T, Dh), x contiguous or
    the strided view split_heads makes of a projection; merge_heads of the backward's
    result (which the twin lays out for it) gives the reference's values."""
    Dh = 2 * half
    positions = rng.integers(0, 50, (B, T) if per_row else (T,))
    cos, sin = rope_cos_sin(positions, Dh, 100.0, dtype)
    x = (rng.standard_normal((B, T, N * Dh)) * 2).astype(dtype)
    x = split_heads(x, N) if view else np.ascontiguousarray(split_heads(x, N))
    y_ref, c_ref = ref("rope_forward")(x, cos, sin)
    y, c = TWINS["rope_forward"](x, cos, sin)
    assert_close(y, y_ref, OUT_TOL[dtype], "y", scale=2 * float(np.max(np.abs(x))))
    assert y.flags.c_contiguous
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_ref = ref("rope_backward")(dy, c_ref)
    dx = TWINS["rope_backward"](dy, c)
    assert_close(dx, dx_ref, GRAD_TOL[dtype], "dx", scale=2 * float(np.max(np.abs(dy))))
    assert_close(merge_heads(dx), merge_heads(dx_ref), GRAD_TOL[dtype], "merged",
                 scale=2 * float(np.max(np.abs(dy))))


def test_rope_parallel_path_and_bad_input(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 40, 8)).astype(np.float32)
    cos, sin = rope_cos_sin(np.arange(40), 8)
    serial = TWINS["rope_forward"](x, cos, sin)[0]
    monkeypatch.setattr(kruntime, "SERIAL_WORK", 0)
    np.testing.assert_array_equal(TWINS["rope_forward"](x, cos, sin)[0], serial)
    with pytest.raises(ValueError, match="cos"):
        TWINS["rope_forward"](x, cos[:5], sin)
    with pytest.raises(ValueError, match="even head size"):
        TWINS["rope_forward"](x[..., :7], cos[:, :7], sin[:, :7])
    _, c = TWINS["rope_forward"](x, cos, sin)
    with pytest.raises(ValueError, match="dy"):
        TWINS["rope_backward"](x[:1], c)
    # a float64 gradient through float32 tables: the reference's promotion
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(TWINS["rope_backward"](dy, c),
                               ref("rope_backward")(dy, ref("rope_forward")(x, cos, sin)[1]))


@pytest.mark.parametrize("name, args", [
    ("linear_forward", (np.zeros((2, 3), np.float32), np.zeros((4, 4), np.float32))),
    ("linear_forward", (np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float64))),
    ("linear_forward", (np.zeros((2, 3), np.float32), np.zeros(3, np.float32))),
    ("linear_forward", (np.zeros((2, 3), np.int64), np.zeros((4, 3), np.int64))),
    ("rmsnorm_forward", (np.zeros((2, 3), np.float32), np.zeros(4, np.float32))),
    ("rmsnorm_forward", (np.zeros((2, 3), np.float32), np.zeros(3, np.float64))),
    ("geglu_act_forward", (np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))),
    ("geglu_act_forward", (np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64))),
])
def test_twins_reject_bad_input_like_the_reference(name, args):
    with pytest.raises(ValueError) as ref_err:
        ref(name)(*args)
    with pytest.raises(ValueError) as twin_err:
        TWINS[name](*args)
    assert str(twin_err.value) == str(ref_err.value)


# --- the vectorised float32 exp / tanh ------------------------------------------------------

def test_float32_exp_and_tanh_are_accurate_and_keep_special_values():
    """The float32 approximations of _vecmath (float64 uses libm)."""
    x = np.concatenate([np.linspace(-87, 88, 20001), np.linspace(-1e-3, 1e-3, 2001),
                        np.linspace(-12, 12, 20001)]).astype(np.float32)
    x64 = x.astype(np.float64)
    e = exp_array(x)
    assert np.max(np.abs(e - np.exp(x64)) / np.exp(x64)) < 3e-7
    t = tanh_array(x)  # absolute accuracy (see _vecmath): what cap * tanh(z / cap) needs
    assert np.max(np.abs(t - np.tanh(x64))) < 2e-7
    special = np.array([-np.inf, -1000.0, np.inf, np.nan, 0.0], np.float32)
    e = exp_array(special)
    assert e[0] == 0 and e[1] == 0 and np.isnan(e[3]) and e[4] == 1
    t = tanh_array(special)
    assert t[0] == -1 and t[1] == -1 and t[2] == 1 and np.isnan(t[3]) and t[4] == 0
