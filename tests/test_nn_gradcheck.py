"""Finite-difference gradient checks, float64, for every nn/ op and every differentiable
argument. Hypothesis draws the shapes; the analytic gradient of sum(out * R) for a fixed
random R must match central differences to a relative error below GRAD_TOL = 1e-6,
measured by gradcheck.rel_error against the size of the gradient's terms (the loss tests
pass it: dloss / n, so a one-class softmax, whose gradient cancels to exactly 0, is not
judged against rounding noise). The largest error seen per (op, argument) is printed at
the end of the module.

Markers task1_1 ... task2_4: the classroom assignments (tutorials/assignments/README.md);
each backward pass grades the task of its function.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mini_encdec import ops
from mini_encdec.nn.attention import attention_backward, attention_forward
from mini_encdec.nn.embedding import embedding_forward
from mini_encdec.nn.gradcheck import GRAD_TOL, numerical_grad, random_cotangent, rel_error
from mini_encdec.nn.linear import linear_backward, linear_forward
from mini_encdec.nn.loss import (cross_entropy_backward, cross_entropy_forward,
                                 distillation_backward, distillation_forward)
from mini_encdec.nn.masks import attention_mask
from mini_encdec.nn.mlp import (geglu_backward, geglu_forward, gelu_tanh_backward,
                                gelu_tanh_forward)
from mini_encdec.nn.rope import rope_backward, rope_cos_sin, rope_forward
from mini_encdec.nn.softcap import softcap_backward, softcap_forward

from .strategies import (attention_dims, attention_masks, batch_sizes, heads, head_dims,
                         key_paddings, seeds, seq_lens, widths, windows)

TOL = GRAD_TOL
DLOSS = 0.7  # the dloss fed to a loss's backward (check_grads(scalar=True))
MAX_ERR: dict[str, float] = {}
# The backend fixture is function-scoped but only flips the backend switch, which is safe
# to share between the examples of one test.
fixture_ok = settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                             HealthCheck.too_slow])
few = settings(max_examples=30)


@pytest.fixture(scope="module", autouse=True)
def report_errors(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    cm = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or cm is None or not MAX_ERR:
        return
    with cm.global_and_fixture_disabled():
        tr.write_line("")
        tr.write_line(f"max relative gradient error per (op, argument), float64 (limit {TOL}),")
        tr.write_line("the largest over every example drawn, shrinking included (a failing "
                      "test's report gives its shrunk example's error):")
        for k in sorted(MAX_ERR):
            tr.write_line(f"  {k:45s} {MAX_ERR[k]:.2e}")


def check_grads(op, forward, backward, arrays, wrt, rng, scalar=False, floor=1e-5):
    """forward(**arrays) -> (out, cache); backward(dout, cache) -> grads of `wrt` (in order).
    Compares each analytic gradient with central differences of sum(out * R), relative
    to max(its magnitude, `floor`): pass the size of the gradient's terms as `floor`
    when they can cancel (see gradcheck.rel_error)."""
    out, cache = forward(**arrays)
    R = DLOSS if scalar else random_cotangent(np.asarray(out), rng)
    grads = backward(R, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    assert len(grads) == len(wrt)

    def f():
        return float(np.sum(np.asarray(forward(**arrays)[0]) * R))

    for name, g in zip(wrt, grads):
        x = arrays[name]
        assert g.shape == x.shape and g.dtype == x.dtype, (name, g.shape, g.dtype)
        err = rel_error(g, numerical_grad(f, x), floor=floor)
        key = f"{op}/{name}"
        MAX_ERR[key] = max(MAX_ERR.get(key, 0.0), err)
        assert err < TOL, f"{op}: gradient of {name!r}: max relative error {err:.2e} > {TOL}"


def randn(rng, *shape, scale=1.0):
    return rng.standard_normal(shape) * scale


@few
@given(seed=seeds, lead=st.lists(st.integers(1, 3), max_size=2), n_in=widths, n_out=widths)
def test_linear(seed, lead, n_in, n_out):
    rng = np.random.default_rng(seed)
    arrays = dict(x=randn(rng, *lead, n_in), W=randn(rng, n_out, n_in))
    check_grads("linear", linear_forward, linear_backward, arrays, ("x", "W"), rng)


@fixture_ok
@given(seed=seeds, B=batch_sizes, T=seq_lens, V=st.integers(1, 5), D=widths,
       scale=st.booleans())
def test_embedding(backend, seed, B, T, V, D, scale):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, T))  # V <= 5 and B*T up to 12: repeated ids are common
    arrays = dict(E=randn(rng, V, D))
    check_grads("embedding", lambda E: embedding_forward(ids, E, scale=scale),
                ops.embedding_backward, arrays, ("E",), rng)


@pytest.mark.task1_1
@fixture_ok
@given(seed=seeds, lead=st.lists(st.integers(1, 3), max_size=2), D=st.integers(2, 6),
       x_scale=st.sampled_from([0.1, 1.0, 30.0]))
def test_rmsnorm(backend, seed, lead, D, x_scale):
    """dx and dw match finite differences; the usual errors are forgetting that rstd depends on
    x (dx has a second term) and not summing dw over the leading axes."""
    # D >= 2: with D = 1 the output is the constant sign(x) (1 + w) up to eps, so the x
    # gradient is ~eps/|x|^3 and below what central differences resolve.
    rng = np.random.default_rng(seed)
    arrays = dict(x=randn(rng, *lead, D, scale=x_scale), w=randn(rng, D, scale=0.5))
    check_grads("rmsnorm", ops.rmsnorm_forward, ops.rmsnorm_backward, arrays, ("x", "w"), rng)


@pytest.mark.task1_2
@few
@given(seed=seeds, B=batch_sizes, N=st.integers(1, 3), T=seq_lens, Dh=head_dims,
       batched=st.booleans())
def test_rope(seed, B, N, T, Dh, batched):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 50, size=(B, T) if batched else (T,))
    cos, sin = rope_cos_sin(pos, Dh, dtype=np.float64)
    arrays = dict(x=randn(rng, B, N, T, Dh))
    check_grads("rope", lambda x: rope_forward(x, cos, sin), rope_backward, arrays, ("x",), rng)


@pytest.mark.task1_3
@few
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       cap=st.none() | st.sampled_from([0.5, 5.0, 50.0]))
def test_softcap(seed, shape, cap):
    rng = np.random.default_rng(seed)
    arrays = dict(x=randn(rng, *shape, scale=2.0))
    check_grads("softcap", lambda x: softcap_forward(x, cap), softcap_backward, arrays, ("x",),
                rng)


@pytest.mark.task2_3
@fixture_ok
@given(data=st.data(), seed=seeds, dims=attention_dims(),
       scale=st.sampled_from([0.125, 0.5, 1.0]), softcap=st.none() | st.sampled_from([1.0, 50.0]))
def test_attention_core(backend, data, seed, dims, scale, softcap):
    rng = np.random.default_rng(seed)
    B, H, K, Tq, Tk, Dh = (dims[k] for k in ("B", "H", "K", "Tq", "Tk", "Dh"))
    mask = data.draw(attention_masks(B, Tq, Tk))
    arrays = dict(q=randn(rng, B, H, Tq, Dh), k=randn(rng, B, K, Tk, Dh),
                  v=randn(rng, B, K, Tk, Dh))
    check_grads("attention_core",
                lambda q, k, v: ops.attention_core_forward(q, k, v, mask, scale=scale,
                                                           softcap=softcap),
                ops.attention_core_backward, arrays, ("q", "k", "v"), rng)


@pytest.mark.task2_4
@few
@given(data=st.data(), seed=seeds, hk=heads(), B=batch_sizes, Tq=seq_lens, Tk=seq_lens,
       Dh=head_dims, Dq=widths, Dkv=widths, window=st.none() | windows,
       softcap=st.none() | st.sampled_from([1.0, 50.0]))
def test_cross_attention(data, seed, hk, B, Tq, Tk, Dh, Dq, Dkv, window, softcap):
    """Cross-attention: no RoPE, key padding only, Dkv may differ from Dq, Tk from Tq."""
    rng = np.random.default_rng(seed)
    H, K = hk
    pad = data.draw(key_paddings(B, Tk))
    mask = attention_mask(np.arange(Tq), np.arange(Tk), causal=False, key_padding=pad)
    kw = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=Dh ** -0.5, softcap=softcap,
              mask=mask)
    arrays = dict(x_q=randn(rng, B, Tq, Dq), x_kv=randn(rng, B, Tk, Dkv),
                  Wq=randn(rng, H * Dh, Dq, scale=0.5), Wk=randn(rng, K * Dh, Dkv, scale=0.5),
                  Wv=randn(rng, K * Dh, Dkv, scale=0.5), Wo=randn(rng, Dq, H * Dh, scale=0.5))
    check_grads("attention(cross)", lambda **a: attention_forward(**a, **kw), attention_backward,
                arrays, ("x_q", "x_kv", "Wq", "Wk", "Wv", "Wo"), rng)


@pytest.mark.task2_4
@few
@given(data=st.data(), seed=seeds, hk=heads(), B=batch_sizes, T=seq_lens, Dh=head_dims,
       D=widths, causal=st.booleans(), window=st.none() | windows,
       softcap=st.none() | st.sampled_from([1.0, 50.0]))
def test_self_attention(data, seed, hk, B, T, Dh, D, causal, window, softcap):
    """Self-attention with RoPE: the input gradient is dx_q + dx_kv (same array twice)."""
    rng = np.random.default_rng(seed)
    H, K = hk
    pad = data.draw(st.none() | key_paddings(B, T))
    pos = np.arange(T)
    mask = attention_mask(pos, pos, causal=causal, window=window, key_padding=pad)
    rope = rope_cos_sin(pos, Dh, dtype=np.float64)
    kw = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=0.3, softcap=softcap, mask=mask,
              rope_q=rope, rope_k=rope)

    def forward(x, Wq, Wk, Wv, Wo):
        return attention_forward(x, x, Wq, Wk, Wv, Wo, **kw)

    def backward(dy, cache):
        dx_q, dx_kv, *dW = attention_backward(dy, cache)
        return (dx_q + dx_kv, *dW)

    arrays = dict(x=randn(rng, B, T, D), Wq=randn(rng, H * Dh, D, scale=0.5),
                  Wk=randn(rng, K * Dh, D, scale=0.5), Wv=randn(rng, K * Dh, D, scale=0.5),
                  Wo=randn(rng, D, H * Dh, scale=0.5))
    check_grads("attention(self)", forward, backward, arrays, ("x", "Wq", "Wk", "Wv", "Wo"), rng)


@few
@given(seed=seeds, hk=heads(), B=batch_sizes, T=seq_lens, Dh=head_dims, D=widths,
       window=st.none() | windows, theta=st.sampled_from([10.0, 1e4, 1e6]),
       scale=st.sampled_from([1.0, 0.125]))
def test_self_attention_with_qk_norm(seed, hk, B, T, Dh, D, window, theta, scale):
    """Gemma 3's attention: RMSNorm (1 + w) of every query and key head before RoPE (any
    base, linear scaling), no soft-cap; gradients of x, the projections and both norms."""
    rng = np.random.default_rng(seed)
    H, K = hk
    pos = np.arange(T)
    mask = attention_mask(pos, pos, causal=True, window=window)
    rope = rope_cos_sin(pos, Dh, theta, dtype=np.float64, scale=scale)
    kw = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=0.3, softcap=None, mask=mask,
              rope_q=rope, rope_k=rope, norm_eps=1e-6)

    def forward(x, Wq, Wk, Wv, Wo, q_norm, k_norm):
        return attention_forward(x, x, Wq, Wk, Wv, Wo, q_norm=q_norm, k_norm=k_norm, **kw)

    def backward(dy, cache):
        dx_q, dx_kv, *dW = attention_backward(dy, cache)
        return (dx_q + dx_kv, *dW)

    arrays = dict(x=randn(rng, B, T, D), Wq=randn(rng, H * Dh, D, scale=0.5),
                  Wk=randn(rng, K * Dh, D, scale=0.5), Wv=randn(rng, K * Dh, D, scale=0.5),
                  Wo=randn(rng, D, H * Dh, scale=0.5), q_norm=randn(rng, Dh, scale=0.5),
                  k_norm=randn(rng, Dh, scale=0.5))
    check_grads("attention(self, q/k norm)", forward, backward, arrays,
                ("x", "Wq", "Wk", "Wv", "Wo", "q_norm", "k_norm"), rng)


@pytest.mark.task1_3
@few
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_gelu_tanh(seed, shape):
    rng = np.random.default_rng(seed)
    arrays = dict(u=randn(rng, *shape, scale=2.0))
    check_grads("gelu_tanh", gelu_tanh_forward, gelu_tanh_backward, arrays, ("u",), rng)


@pytest.mark.task1_4
@fixture_ok
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_geglu_act(backend, seed, shape):
    rng = np.random.default_rng(seed)
    arrays = dict(gate=randn(rng, *shape, scale=2.0), up=randn(rng, *shape))
    check_grads("geglu_act", ops.geglu_act_forward, ops.geglu_act_backward, arrays,
                ("gate", "up"), rng)


@pytest.mark.task1_4
@few
@given(seed=seeds, lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), D=widths, F=widths)
def test_geglu(seed, lead, D, F):
    rng = np.random.default_rng(seed)
    arrays = dict(x=randn(rng, *lead, D), Wg=randn(rng, F, D), Wu=randn(rng, F, D),
                  Wd=randn(rng, D, F))
    check_grads("geglu", geglu_forward, geglu_backward, arrays, ("x", "Wg", "Wu", "Wd"), rng)


def _labels(rng, shape, V):
    labels = rng.integers(0, V, size=shape)
    labels[rng.random(shape) < 0.3] = -100  # some ignored positions (possibly all)
    return labels


def loss_terms(counted, temperature=1.0):
    """The size of a mean loss's gradient terms, the floor of its check: the gradient is
    dloss / (n T) times a difference of probabilities (p - onehot, p - teacher) whose
    terms are at most 1, and with one class (V = 1) they cancel to exactly 0."""
    return DLOSS / (max(int(np.count_nonzero(counted)), 1) * temperature)


@pytest.mark.task6_1
@few
@given(seed=seeds, shape=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       V=st.integers(1, 6))
def test_cross_entropy(seed, shape, V):
    rng = np.random.default_rng(seed)
    labels = _labels(rng, tuple(shape), V)
    arrays = dict(logits=randn(rng, *shape, V, scale=3.0))
    check_grads("cross_entropy", lambda logits: cross_entropy_forward(logits, labels),
                cross_entropy_backward, arrays, ("logits",), rng, scalar=True,
                floor=loss_terms(labels != -100))


@pytest.mark.task6_1
@fixture_ok
@given(seed=seeds, shape=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       V=st.integers(1, 6), cap=st.none() | st.sampled_from([2.0, 30.0]))
@example(seed=9048, shape=[2], V=1, cap=30.0)  # one class: its exact 0 failed a floor of 1e-5
def test_softcap_cross_entropy(backend, seed, shape, V, cap):
    rng = np.random.default_rng(seed)
    labels = _labels(rng, tuple(shape), V)
    arrays = dict(z=randn(rng, *shape, V, scale=3.0))
    check_grads("softcap_cross_entropy",
                lambda z: ops.softcap_cross_entropy_forward(z, labels, cap),
                ops.softcap_cross_entropy_backward, arrays, ("z",), rng, scalar=True,
                floor=loss_terms(labels != -100))


@pytest.mark.task6_2
@few
@given(seed=seeds, shape=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       V=st.integers(1, 6), temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_distillation(seed, shape, V, temperature):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((*shape, V))
    tp = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    mask = rng.random(tuple(shape)) < 0.7
    arrays = dict(logits=randn(rng, *shape, V, scale=2.0))
    check_grads("distillation",
                lambda logits: distillation_forward(logits, tp, mask, temperature),
                distillation_backward, arrays, ("logits",), rng, scalar=True,
                floor=loss_terms(mask, temperature))


@fixture_ok
@given(seed=seeds, lead=st.lists(st.integers(1, 4), min_size=1, max_size=2), V=st.integers(1, 6),
       D=st.integers(1, 4), cap=st.none() | st.sampled_from([2.0, 30.0]), teacher=st.booleans(),
       alpha=st.sampled_from([0.0, 0.4, 1.0]), temperature=st.sampled_from([0.5, 2.0]),
       rows=st.sampled_from([1, 3, 256]))
def test_output_loss_and_grads(backend, seed, lead, V, D, cap, teacher, alpha, temperature,
                               rows):
    """The fused output layer + loss: d loss / d h and d loss / d E, over several blocks of
    rows (the last one partial) and with blocks that count no row."""
    from mini_encdec.kernels import output_loss as k_output_loss  # the block sizes
    from mini_encdec.nn import output_loss as nn_output_loss
    rng = np.random.default_rng(seed)
    labels = _labels(rng, tuple(lead), V)
    tp = None
    if teacher:
        t = rng.standard_normal((*lead, V))
        tp = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    alpha = alpha if teacher else 0.0
    arrays = dict(h=randn(rng, *lead, D), E=randn(rng, V, D, scale=2.0))

    def forward(h, E):
        loss, dh, dE, _ = ops.output_loss_and_grads(h, E, labels, cap, -100, tp, alpha,
                                                    temperature)
        return loss, (dh, dE)

    saved = nn_output_loss.BLOCK_ROWS, k_output_loss.BLOCK_ROWS
    nn_output_loss.BLOCK_ROWS = k_output_loss.BLOCK_ROWS = rows
    try:
        # dh = dz E and dE = dz^T h: dz's terms (loss_terms) times those of E and h
        terms = loss_terms(labels != -100, min(temperature, 1.0)) * 2 * \
            max(1.0, float(np.abs(arrays["h"]).max()), float(np.abs(arrays["E"]).max()))
        check_grads("output_loss_and_grads", forward,
                    lambda dloss, grads: tuple(dloss * g for g in grads), arrays, ("h", "E"),
                    rng, scalar=True, floor=terms)
    finally:
        nn_output_loss.BLOCK_ROWS, k_output_loss.BLOCK_ROWS = saved


# --- the error measure itself ----------------------------------------------------------------

def test_rel_error_judges_a_cancelling_gradient_against_its_terms():
    """A one-class softmax: the analytic gradient is 0, the numerical one rounding noise
    of about 1.5 eps F / h (F = 30, the Numba kernel's shift by the cap). Against the
    terms dloss / n the noise is negligible; an error of 1e-5 of the terms is not."""
    terms = DLOSS / 1
    noise = np.array([1.5 * np.finfo(np.float64).eps * 30.0 / 1e-4, 0.0])  # ~1e-10
    zero = np.zeros(2)
    assert rel_error(zero, noise, floor=terms) < 1e-9
    assert rel_error(zero, noise, floor=1e-5) > TOL  # a floor of 1e-5 fails it, by construction
    wrong = np.array([1e-5 * terms, 0.0])  # a real bug of 1e-5 of the terms is still caught
    assert rel_error(wrong, noise, floor=terms) > TOL
    # when the gradient is as large as its terms (no cancellation), the floor has no effect
    g = terms * np.array([1.0, -0.4])
    assert rel_error(g * (1 + 1e-5), g, floor=terms) == rel_error(g * (1 + 1e-5), g)


@pytest.mark.parametrize("floor", [0.0, -1.0, float("nan")])
def test_rel_error_rejects_a_floor_that_is_not_positive(floor):
    with pytest.raises(ValueError, match="floor"):
        rel_error(np.zeros(2), np.zeros(2), floor=floor)
