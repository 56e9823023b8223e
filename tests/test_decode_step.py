"""One KV-cached decoding step's grouped pieces (nn/decode_step.py and their Numba twins in
kernels/decode_step.py): each twin equals the reference within the kernels' tolerances,
and equals, bit for bit, the separate ops a step ran before (so a planned step's logits
stay those of the unplanned steps, tests/test_decoding_plan.py); the plan runs them for
one token per row where they apply; WindowBuffer.claim is append without the copy."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec import ops
from mini_encdec.models import decoding
from mini_encdec.models.decoding import decoder_step, init_planned_cache
from mini_encdec.models.window_buffer import WindowBuffer
from mini_encdec.nn import decode_step as ref
from mini_encdec.nn.attention import merge_heads, split_heads
from mini_encdec.nn.rope import apply_rope_unchecked, rope_cos_sin

from .assertions import assert_close as close
from .conftest import requires_twins
from .strategies import bool_masks, float_dtypes, heads, rngs
from .test_decoding_plan import B, PREFILL, T, model_and_inputs


# the kernels' tolerances (tests/test_kernels.py, which a student copy without the Numba
# twins does not have): relative, with an absolute floor of the same times the largest entry
OUT_TOL = {np.float32: 1e-5, np.float64: 1e-10}


def assert_close(actual, desired, rtol, what):
    assert actual.shape == desired.shape and actual.dtype == desired.dtype, what
    close(actual, desired, rtol=rtol, atol=rtol * max(float(np.max(np.abs(desired))), 1e-30),
          err_msg=what)


@st.composite
def step_shapes(draw):
    """B rows, H/K heads, Dh, the buffers' capacity and the step's [lo, slot] in it."""
    H, K = draw(heads())
    cap = draw(st.integers(1, 12))
    slot = draw(st.integers(0, cap - 1))
    lo = draw(st.integers(0, slot))
    return dict(B=draw(st.integers(1, 3)), H=H, K=K, Dh=draw(st.sampled_from([2, 4, 8])),
                cap=cap, slot=slot, lo=lo)


def _step_inputs(s, dtype, rng):
    B, H, K, Dh, cap = s["B"], s["H"], s["K"], s["Dh"], s["cap"]
    qkv = rng.standard_normal((B, 1, (H + 2 * K) * Dh)).astype(dtype)
    pos = rng.integers(0, 50, (B, 1))
    cos, sin = rope_cos_sin(pos, Dh, dtype=dtype)  # (B, 1, Dh)
    k_buf = rng.standard_normal((B, K, cap, Dh)).astype(dtype)
    v_buf = rng.standard_normal((B, K, cap, Dh)).astype(dtype)
    return qkv, cos[:, None], sin[:, None], k_buf, v_buf


def _twin(name):
    return ops.twins()[name]


@requires_twins
@given(s=step_shapes(), dtype=float_dtypes, rng=rngs)
def test_rope_append_writes_the_slot_and_equals_the_reference(s, dtype, rng):
    qkv, cos, sin, k_buf, v_buf = _step_inputs(s, dtype, rng)
    bufs = {}
    for name, fn in (("ref", ref.rope_append), ("twin", _twin("rope_append"))):
        kb, vb = k_buf.copy(), v_buf.copy()
        q = fn(qkv, cos, sin, kb, vb, s["slot"], s["H"])
        bufs[name] = (q, kb, vb)
    # the separate ops' numbers exactly: split, apply_rope_unchecked, store
    H, K, Dh = s["H"], s["K"], s["Dh"]
    want_q = apply_rope_unchecked(split_heads(qkv[..., :H * Dh], H), cos, sin)
    want_k = apply_rope_unchecked(split_heads(qkv[..., H * Dh:(H + K) * Dh], K), cos, sin)
    for q, kb, vb in (bufs["ref"], bufs["twin"]):
        np.testing.assert_array_equal(q, want_q)
        np.testing.assert_array_equal(kb[:, :, s["slot"]:s["slot"] + 1], want_k)
        np.testing.assert_array_equal(vb[:, :, s["slot"]:s["slot"] + 1],
                                      split_heads(qkv[..., (H + K) * Dh:], K))
        others = np.arange(s["cap"]) != s["slot"]  # every other slot untouched
        np.testing.assert_array_equal(kb[:, :, others], k_buf[:, :, others])
        np.testing.assert_array_equal(vb[:, :, others], v_buf[:, :, others])
    q1 = bufs["twin"][0]
    assert q1.dtype == bufs["ref"][0].dtype and q1.flags.c_contiguous


@requires_twins
@given(s=step_shapes(), dtype=float_dtypes, rng=rngs, softcap=st.sampled_from([None, 2.0]),
       data=st.data())
def test_attend_equals_the_reference_and_the_attention_core_on_the_views(s, dtype, rng,
                                                                          softcap, data):
    _, _, _, k_buf, v_buf = _step_inputs(s, dtype, rng)
    B, H, Dh, lo, hi = s["B"], s["H"], s["Dh"], s["lo"], s["slot"] + 1
    q = (rng.standard_normal((B, H, 1, Dh)) * 2).astype(dtype)
    mask = data.draw(bool_masks((data.draw(st.sampled_from([1, B])), 1, 1, hi - lo)))
    o_ref = ref.attend(q, k_buf, v_buf, lo, hi, mask, scale=0.5, softcap=softcap)
    o = _twin("attend")(q, k_buf, v_buf, lo, hi, mask, scale=0.5, softcap=softcap)
    assert o.shape == (B, 1, H * Dh) and o.dtype == q.dtype
    assert_close(o, o_ref, OUT_TOL[dtype], "o")
    # what a step ran before: the attention core's twin on the cache's views, heads merged
    core, _ = _twin("attention_core_forward")(q, k_buf[:, :, lo:hi], v_buf[:, :, lo:hi], mask,
                                              scale=0.5, softcap=softcap)
    np.testing.assert_array_equal(o, merge_heads(core))
    # buffers that are not C-contiguous (a strided view) give the same
    wide = np.zeros(k_buf.shape[:3] + (2 * Dh,), dtype)
    wide[..., :Dh], wide2 = k_buf, np.zeros_like(wide)
    wide2[..., :Dh] = v_buf
    o_strided = _twin("attend")(q, wide[..., :Dh], wide2[..., :Dh], lo, hi, mask, scale=0.5,
                                softcap=softcap)
    np.testing.assert_array_equal(o_strided, o)


@requires_twins
@given(rows=st.integers(1, 4), D=st.integers(1, 9), dtype=float_dtypes, rng=rngs)
def test_residual_norm_equals_the_reference_and_the_separate_norms(rows, D, dtype, rng):
    x, y = (rng.standard_normal((rows, 1, D)).astype(dtype) for _ in range(2))
    w, w_next = (rng.standard_normal(D).astype(dtype) for _ in range(2))
    x_ref, n_ref = ref.residual_norm(x, y, w, w_next, 1e-6)
    x1, n1 = _twin("residual_norm")(x, y, w, w_next, 1e-6)
    assert_close(x1, x_ref, OUT_TOL[dtype], "x")
    assert_close(n1, n_ref, OUT_TOL[dtype], "n")
    # what a step ran before: the RMSNorm twin, the add, the RMSNorm twin again
    norm = _twin("rmsnorm_forward")
    x2 = x + norm(y, w, 1e-6)[0]
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(n1, norm(x2, w_next, 1e-6)[0])


@pytest.mark.parametrize("kind,grouped", [("gemma2", True), ("t5gemma", True),
                                          ("t5gemma_unbalanced", True), ("gemma3", False),
                                          ("t5gemma2", False)])
def test_planned_one_token_steps_run_the_grouped_layers_where_they_apply(kind, grouped,
                                                                        monkeypatch, backend):
    """Gemma 2 and T5Gemma decoders: every planned step of one token per row goes through
    one_token_layers (never a prompt, never an unplanned step); Gemma 3's q/k norms and
    T5Gemma 2's merged attention keep cached_block_forward."""
    calls = []
    real = decoding.one_token_layers
    monkeypatch.setattr(decoding, "one_token_layers",
                        lambda *a: calls.append(a[2].shape) or real(*a))
    model, ids, valid, enc, enc_mask = model_and_inputs(kind)
    cache = init_planned_cache(model, B, enc, enc_mask, max_len=T)
    decoder_step(model, cache, ids[:, :PREFILL], valid[:, :PREFILL])
    assert calls == []
    for t in range(PREFILL, T):
        decoder_step(model, cache, ids[:, t:t + 1], valid[:, t:t + 1])
    assert len(calls) == (T - PREFILL if grouped else 0)
    assert all(c == (B, 1, c[2]) for c in calls)


@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=10),
       keep=st.one_of(st.none(), st.integers(0, 20)), seed=st.integers(0, 2 ** 16))
def test_claim_then_write_equals_append(sizes, keep, seed):
    """claim(n) hands out the slots append would write, and the range append returns."""
    rng = np.random.default_rng(seed)
    a, b = WindowBuffer(2, keep), WindowBuffer(2, keep)
    for n in sizes:
        new = rng.standard_normal((2, 3, n, 4))
        seen = a.append(new)
        buf, lo, hi = b.claim(n, new)
        buf[:, :, hi - n:hi] = new
        np.testing.assert_array_equal(buf[:, :, lo:hi], seen)
        np.testing.assert_array_equal(b.view(), a.view())
