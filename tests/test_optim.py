"""AdamW against hand-computed references, clipping, schedules, freezing patterns.

Marker task6_3 (tutorials/assignments/README.md): the AdamW update, nn/adamw.py, against
its equation written with loops, and two properties that single out the classic mistakes
(decay passed through the gradient as L2, a missing bias correction).
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.training.optim import (AdamW, OptimConfig, accumulate, clip_by_global_norm,
                               global_norm, trainable_names)
from mini_encdec import ops
from mini_encdec.nn.adamw import adamw_update
from mini_encdec.training.schedules import (constant, cosine, inverse_sqrt, learning_rate,
                                           wsd, wsd_decay_steps)

from .assertions import assert_close
from .conftest import requires_twins


@pytest.mark.task6_3
def test_one_adamw_step_equals_hand_computed_values():
    # After one step m_hat = g and v_hat = g^2, so the Adam part is lr * g / (|g| + eps):
    # p = 1.0, g = 0.5:  1.0 * (1 - 0.1 * 0.2) - 0.1 * 0.5 / (0.5 + 1e-8) = 0.98 - 0.1 + 2e-9
    # p = -2.0, g = -0.25: -2.0 * 0.98 + 0.1 * 0.25 / (0.25 + 1e-8)   = -1.96 + 0.1 - 4e-9
    # the norm weight gets no decay: 3.0 - 0.1 * 4 / (4 + 1e-8) = 2.9 + 2.5e-10
    params = {"w": np.array([1.0, -2.0]), "model.norm.weight": np.array([3.0])}
    grads = {"w": np.array([0.5, -0.25]), "model.norm.weight": np.array([4.0])}
    opt = AdamW(params, OptimConfig(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.2))
    opt.step(params, grads, lr=0.1)
    assert_close(params["w"], [0.88 + 2e-9, -1.86 - 4e-9], rtol=0, atol=1e-15)
    assert_close(params["model.norm.weight"], [2.9 + 2.5e-10], rtol=0, atol=1e-15)
    assert_close(opt.m["w"], [0.05, -0.025], rtol=1e-15)
    assert_close(opt.v["w"], [0.00025, 0.0000625], rtol=1e-12)
    assert opt.t == {"w": 1, "model.norm.weight": 1}


# --- the AdamW update itself (nn/adamw.py), task 6.3 -------------------------------------------

def adamw_by_the_equation(p, grads, *, lr, beta1, beta2, eps, weight_decay):
    """AdamW written out element by element with loops, for len(grads) steps from zero
    moments: m, v the moments, bias-corrected by 1 - beta^t; the decay multiplies p."""
    p = np.array(p, dtype=np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        for i in np.ndindex(p.shape):
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            p[i] = p[i] * (1 - lr * weight_decay) - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p, m, v


adamw_hyper = dict(lr=st.sampled_from([1e-3, 0.1]), beta1=st.sampled_from([0.0, 0.8, 0.9]),
                   beta2=st.sampled_from([0.9, 0.999]), eps=st.sampled_from([1e-8, 1e-3]),
                   weight_decay=st.sampled_from([0.0, 0.1, 2.0]))


@pytest.mark.task6_3
@given(shape=st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
       steps=st.integers(1, 4), seed=st.integers(0, 2**31), dtype=st.sampled_from(
           [np.float32, np.float64]), **adamw_hyper)
def test_adamw_update_is_the_equation(shape, steps, seed, dtype, lr, beta1, beta2, eps,
                                      weight_decay):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2) for _ in range(steps)]
    p, m, v = p0.astype(dtype), np.zeros(shape, dtype), np.zeros(shape, dtype)
    for t, g in enumerate(grads, start=1):
        assert adamw_update(p, g.astype(dtype), m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                            weight_decay=weight_decay, t=t) is None  # in place
    want = adamw_by_the_equation(p0.astype(dtype), [g.astype(dtype) for g in grads], lr=lr,
                                 beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for name, got, w in zip("pmv", (p, m, v), want):
        assert got.dtype == dtype, name
        assert_close(got, w, **tol, err_msg=f"{name} after {steps} steps")


@pytest.mark.task6_3
@given(seed=st.integers(0, 2**31), t=st.integers(1, 50), lr=st.sampled_from([1e-3, 0.1]),
       weight_decay=st.sampled_from([0.01, 0.5, 2.0]))
def test_weight_decay_is_decoupled_from_the_gradient(seed, t, lr, weight_decay):
    """With a zero gradient and zero moments the update is exactly p (1 - lr wd): the decay
    multiplies the weights, it does not go through the moments as an L2 term (which Adam
    would normalise into a step of size lr whatever the weight)."""
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(5) * 10.0 ** rng.integers(-2, 3)
    p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    adamw_update(p, np.zeros(5), m, v, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8,
                 weight_decay=weight_decay, t=t)
    assert_close(p, p0 * (1 - lr * weight_decay), rtol=1e-13, atol=0,
                               err_msg="a zero gradient must leave only the decay")
    np.testing.assert_array_equal(m, 0, err_msg="the decay must not enter the moments")


@pytest.mark.task6_3
@given(seed=st.integers(0, 2**31), beta1=st.sampled_from([0.5, 0.9, 0.99]),
       beta2=st.sampled_from([0.9, 0.999, 0.9999]))
def test_bias_correction_makes_the_first_step_the_size_of_lr(seed, beta1, beta2):
    """From zero moments, step 1 moves every weight by lr * g / (|g| + eps), about lr
    (m_hat = g and v_hat = g^2 exactly), whatever beta1 and beta2."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(6) * 10.0 ** rng.integers(-2, 3, 6)
    p, m, v = np.zeros(6), np.zeros(6), np.zeros(6)
    adamw_update(p, g, m, v, lr=0.01, beta1=beta1, beta2=beta2, eps=1e-12, weight_decay=0.0,
                 t=1)
    assert_close(-p, 0.01 * g / (np.abs(g) + 1e-12), rtol=1e-9,
                               err_msg="step 1 of Adam must be about lr in every coordinate")


def _reference_adamw(p, grads, lrs, b1, b2, eps, wd):
    """Plain float64 AdamW, written out once more, for several steps."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p * (1 - lr * wd) - lr * mh / (np.sqrt(vh) + eps)
    return p


@pytest.mark.task6_3
def test_three_adamw_steps_match_the_written_out_formula(backend):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    lrs = [0.01, 0.02, 0.005]
    params = {"layer.weight": p0.copy()}
    opt = AdamW(params, OptimConfig(lr=0.02, beta1=0.8, beta2=0.9, eps=1e-6, weight_decay=0.1))
    for g, lr in zip(grads, lrs):
        opt.step(params, {"layer.weight": g}, lr)
    want = _reference_adamw(p0, grads, lrs, 0.8, 0.9, 1e-6, 0.1)
    assert_close(params["layer.weight"], want, rtol=1e-13, atol=1e-15)


@pytest.mark.parity
def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((5, 3))
    grads = [rng.standard_normal((5, 3)) for _ in range(4)]
    params = {"w": p0.copy()}
    opt = AdamW(params, OptimConfig(lr=0.01, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1))
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.AdamW([tp], lr=0.01, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for g in grads:
        opt.step(params, {"w": g}, 0.01)
        tp.grad = torch.tensor(g)
        topt.step()
    assert_close(params["w"], tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_default_no_decay_skips_norms_and_embeddings():
    names = ["model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
             "model.norm.weight", "model.encoder.layers.1.pre_self_attn_layernorm.weight",
             "model.layers.0.mlp.up_proj.weight", "model.decoder.layers.0.cross_attn.q_proj.weight"]
    params = {n: np.ones(2, np.float32) for n in names}
    zero = {n: np.zeros(2, np.float32) for n in names}
    opt = AdamW(params, OptimConfig(weight_decay=0.5))
    opt.step(params, zero, lr=0.1)  # zero gradient: only the decay moves weights
    for n in names[:4]:
        np.testing.assert_array_equal(params[n], 1.0)
    for n in names[4:]:
        assert_close(params[n], 0.95, rtol=1e-6)
    # configurable: decay everything
    params = {n: np.ones(2, np.float32) for n in names}
    AdamW(params, OptimConfig(weight_decay=0.5, no_decay=())).step(params, zero, lr=0.1)
    for n in names:
        assert_close(params[n], 0.95, rtol=1e-6)


def test_frozen_names_are_untouched_and_keep_their_own_step_count():
    params = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    grads = {"a": np.full(3, 0.5, np.float32), "b": np.full(3, 0.5, np.float32)}
    opt = AdamW(params, OptimConfig(weight_decay=0.1))
    before = params["b"].copy()
    for _ in range(3):
        opt.step(params, grads, 0.01, names=["a"])
    assert params["b"].tobytes() == before.tobytes()
    assert opt.t == {"a": 3, "b": 0}
    opt.step(params, grads, 0.01)
    # b's first update has the bias correction of t = 1: a full lr-sized step
    assert_close(params["b"], 1 * (1 - 0.01 * 0.1) - 0.01, rtol=1e-6)


def test_state_round_trip_and_mismatch_errors():
    params = {"a": np.ones((2, 2), np.float32)}
    opt = AdamW(params)
    opt.step(params, {"a": np.ones((2, 2), np.float32)}, 0.1)
    other = AdamW({"a": np.zeros((2, 2), np.float32)})
    other.load_state(opt.state_arrays(), opt.state_json())
    assert other.t == opt.t and np.array_equal(other.m["a"], opt.m["a"])
    with pytest.raises(ValueError, match="opt.safetensors.*missing"):
        AdamW({"b": np.zeros(2, np.float32)}).load_state(opt.state_arrays(), opt.state_json(),
                                                          source="opt.safetensors")
    with pytest.raises(ValueError, match="shape"):
        AdamW({"a": np.zeros(3, np.float32)}).load_state(opt.state_arrays(), opt.state_json())


@given(st.integers(1, 4), st.floats(0.01, 10), st.integers(0, 2**31))
def test_clipping_bounds_the_global_norm_and_keeps_direction(n, max_norm, seed):
    rng = np.random.default_rng(seed)
    grads = {f"g{i}": rng.standard_normal(rng.integers(1, 5)) * 3 for i in range(n)}
    before = {k: v.copy() for k, v in grads.items()}
    norm = clip_by_global_norm(grads, max_norm)
    assert norm == pytest.approx(math.sqrt(sum((v ** 2).sum() for v in before.values())))
    after = global_norm(grads)
    assert after <= max_norm * (1 + 1e-9)
    scale = min(1.0, max_norm / (norm + 1e-6))
    for k in grads:
        assert_close(grads[k], before[k] * scale, rtol=1e-12)


def test_clipping_only_scales_the_named_gradients_and_none_disables():
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([100.0])}
    norm = clip_by_global_norm(grads, 1.0, names=["a"])
    assert norm == pytest.approx(5.0)
    assert_close(grads["a"], [0.6, 0.8], rtol=1e-6)
    assert grads["b"][0] == 100.0
    assert clip_by_global_norm(grads, None) > 100 and grads["b"][0] == 100.0


def test_accumulate_averages():
    a = {"w": np.array([1.0, 2.0])}
    b = {"w": np.array([3.0, 6.0])}
    total = accumulate(None, a, 0.5)
    total = accumulate(total, b, 0.5)
    assert_close(total["w"], [2.0, 4.0])
    assert a["w"][0] == 1.0  # inputs untouched


# --- schedules ------------------------------------------------------------------------------------

def test_schedule_values():
    assert constant(0, 1.0, 4) == 0.25 and constant(3, 1.0, 4) == 1.0
    assert constant(99, 1.0, 4) == 1.0
    assert constant(0, 2.0, 0) == 2.0
    assert cosine(0, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    assert cosine(10, 1.0, 10, 110, 0.1) == pytest.approx(1.0)
    assert cosine(60, 1.0, 10, 110, 0.1) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert cosine(110, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    assert cosine(500, 1.0, 10, 110, 0.1) == pytest.approx(0.1)
    assert inverse_sqrt(3, 1.0, 4) == 1.0 and inverse_sqrt(15, 1.0, 4) == pytest.approx(0.5)
    assert inverse_sqrt(3, 1.0, 0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, schedule="linear", base=1.0, warmup=0, total=10)
    with pytest.raises(ValueError, match="step"):
        constant(-1, 1.0)


def test_wsd_values():
    # total 10, default cooldown 20% = 2 updates: stable through step 7, then 2/3, 1/3, 0
    assert wsd_decay_steps(10) == 2 and wsd_decay_steps(3) == 1 and wsd_decay_steps(10, 4) == 4
    assert [wsd(s, 1.0, 0, 10) for s in (0, 7, 10, 50)] == [1.0, 1.0, 0.0, 0.0]
    assert wsd(8, 1.0, 0, 10) == pytest.approx(2 / 3) and wsd(9, 1.0, 0, 10) == pytest.approx(1 / 3)
    assert wsd(9, 1.0, 0, 10, min_lr_ratio=0.1) == pytest.approx(0.4)   # 0.1 + 0.9 / 3
    assert wsd(10, 2.0, 0, 10, min_lr_ratio=0.1) == pytest.approx(0.2)
    assert wsd(5, 1.0, 0, 10, decay=4) == 1.0 and wsd(6, 1.0, 0, 10, decay=4) == pytest.approx(0.8)
    # a one-update cooldown still anneals that update
    assert wsd(3, 1.0, 0, 4, decay=1) == pytest.approx(0.5)
    # a warmup cut short by the cooldown: the smaller of the two lines
    assert [wsd(s, 1.0, 4, 5, decay=2) for s in range(5)] == \
        pytest.approx([0.25, 0.5, 0.75, 2 / 3, 1 / 3])
    assert learning_rate(9, schedule="wsd", base=1.0, warmup=0, total=10, min_lr_ratio=0.0,
                         decay=4) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="decay"):
        wsd(0, 1.0, 0, 10, decay=11)


@pytest.mark.parametrize("budget", [40, 100, 333, 1000])
def test_wsd_is_constant_before_its_cooldown_so_branches_share_the_stable_run(budget):
    # a cooldown branch of budget B starts from the stable run at B - decay(B): up to
    # there every budget's schedule (and the longest run's) is the same constant line
    longest = 1000
    for step in range(budget - wsd_decay_steps(budget)):
        lr = wsd(step, 3e-3, 20, budget)
        assert lr == constant(step, 3e-3, 20) == wsd(step, 3e-3, 20, longest)
    assert wsd(budget - 1, 3e-3, 20, budget) < constant(budget - 1, 3e-3, 20)


@given(st.sampled_from(["cosine", "constant", "inverse_sqrt", "wsd"]), st.integers(0, 20),
       st.integers(1, 200))
def test_schedules_rise_during_warmup_then_never_rise(schedule, warmup, total):
    lrs = [learning_rate(s, schedule=schedule, base=1.0, warmup=warmup, total=total)
           for s in range(total + 30)]
    assert all(0 < lr <= 1.0 + 1e-12 for lr in lrs)
    # WSD's cooldown may start inside the warmup: then the peak comes earlier
    rise = warmup if schedule != "wsd" else int(np.argmax(lrs[:max(warmup, 1)])) + 1
    assert rise <= max(warmup, 1)
    assert all(a < b for a, b in zip(lrs[:rise], lrs[1:rise]))
    after = lrs[max(rise - 1, 0):]
    assert all(b <= a + 1e-12 for a, b in zip(after, after[1:]))


# --- freezing -------------------------------------------------------------------------------------

NAMES = ["model.encoder.embed_tokens.weight",
         "model.decoder.layers.0.self_attn.q_proj.weight",
         "model.decoder.layers.0.cross_attn.q_proj.weight",
         "model.decoder.layers.0.pre_cross_attn_layernorm.weight",
         "model.decoder.norm.weight"]


def test_trainable_names_warmup_and_freeze():
    assert trainable_names(NAMES, 0, warmup_steps=2) == NAMES[2:4]
    assert trainable_names(NAMES, 1, warmup_steps=2) == NAMES[2:4]
    assert trainable_names(NAMES, 2, warmup_steps=2) == NAMES
    assert trainable_names(NAMES, 5, freeze=("embed",)) == NAMES[1:]
    with pytest.raises(ValueError, match="cross_attn"):
        trainable_names(NAMES[:2], 0, warmup_steps=3)
    with pytest.raises(ValueError, match="frozen"):
        trainable_names(NAMES, 0, freeze=(".",))


@pytest.mark.parametrize("field,value,match", [
    ("lr", 0.0, "OptimConfig.lr"), ("beta2", 1.0, "OptimConfig.beta2"),
    ("schedule", "linear", "OptimConfig.schedule"), ("clip_norm", -1.0, "clip_norm"),
    ("grad_accum", 0, "grad_accum"), ("freeze", ("(",), "freeze"),
    ("no_decay", "norm", "no_decay"), ("warmup_steps", 1.5, "warmup_steps"),
    ("decay_steps", 0, "decay_steps")])
def test_optim_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**{field: value})


def test_optim_config_dict_round_trip_and_lr_at():
    c = OptimConfig(lr=0.5, warmup_steps=2, freeze=("embed",), schedule="constant")
    assert OptimConfig.from_dict(c.to_dict()) == c
    assert c.lr_at(0, 10) == 0.25 and c.lr_at(5, 10) == 0.5
    with pytest.raises(ValueError, match="unknown"):
        OptimConfig.from_dict({"learning_rate": 1})


# --- the fused AdamW update of the numba backend (mini_encdec/kernels/adamw.py) ---------------

def _adamw_pair(rng, shape, dtype, t, weight_decay, lr=3e-3):
    """Run the reference and the numba twin from the same state; returns both (p, m, v)."""
    p = rng.standard_normal(shape).astype(dtype)
    g = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 1)).astype(dtype)
    m = (rng.standard_normal(shape) * 0.1).astype(dtype)
    v = (rng.random(shape) * 0.01).astype(dtype)
    out = []
    for backend in ("numpy", "numba"):
        state = [a.copy() for a in (p, m, v)]
        ops.resolve("adamw_update", backend)(state[0], g, state[1], state[2], lr=lr,
                                             beta1=0.9, beta2=0.95, eps=1e-8,
                                             weight_decay=weight_decay, t=t)
        out.append(state)
    return out


@requires_twins
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64]), t=st.integers(1, 1000),
       weight_decay=st.sampled_from([0.0, 0.01, 0.3]), seed=st.integers(0, 2**31))
def test_fused_adamw_update_matches_the_numpy_reference(shape, dtype, t, weight_decay, seed):
    ref, fused = _adamw_pair(np.random.default_rng(seed), shape, dtype, t, weight_decay)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for name, a, b in zip("pmv", fused, ref):
        assert a.dtype == b.dtype
        assert_close(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=name)


@requires_twins
def test_fused_adamw_update_is_parallel_and_thread_count_independent():
    """A large parameter takes the multi-threaded path; it matches the reference and
    gives bit-identical results with one thread."""
    import numba
    shape = (300, 700)  # 210k elements: above the serial threshold
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            results.append(_adamw_pair(np.random.default_rng(7), shape, np.float32, 5, 0.1))
        finally:
            numba.set_num_threads(previous)
    (ref1, fused1), (ref2, fused2) = results
    for a, b, r in zip(fused1, fused2, ref1):
        np.testing.assert_array_equal(a, b)
        assert_close(a, r, rtol=1e-5, atol=1e-5 * np.max(np.abs(r)))


@requires_twins
def test_fused_adamw_update_falls_back_to_the_reference_on_odd_layouts():
    """Non-contiguous gradients (a transposed view) give the reference's exact result."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal((6, 5)).astype(np.float32)
    g = rng.standard_normal((5, 6)).astype(np.float32).T  # (6, 5), not C-contiguous
    out = []
    for backend in ("numpy", "numba"):
        pp, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
        ops.resolve("adamw_update", backend)(pp, g, m, v, lr=0.1, beta1=0.9, beta2=0.95,
                                             eps=1e-8, weight_decay=0.1, t=1)
        out.append((pp, m, v))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
