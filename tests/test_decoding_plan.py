"""The per-request decoding plan (models/decoding.py, DecodingPlan): a planned request
(`init_planned_cache(..., max_len=N)`, what generate runs) gives exactly the logits of the
unplanned steps (ops looked up, masks and RoPE tables built at every call) and of the full
forward, for Gemma 2, Gemma 3, T5Gemma (balanced and unbalanced) and T5Gemma 2 (merged
attention, eoi vector), with left-padded batches, past its planned length too; its pieces
(one-token masks, RoPE rows, in-place soft-cap, preallocated buffers, ops resolved once)
each equal what they replace."""

import numpy as np
import pytest

from mini_encdec import ops
from mini_encdec.config import EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.models.decoding import (DecodingPlan, _softcap_in_place, decoder_parts,
                                         decoder_step, init_cache, init_planned_cache)
from mini_encdec.models.generate import generate
from mini_encdec.models.inputs import layer_type_mask, rope_for
from mini_encdec.nn.softcap import softcap_unchecked

from .test_models import randomised
from .test_t5gemma2 import EOI, T5G2_EOI

V = 50
BASE = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)


def cfg(**kw):
    return GemmaConfig(**{**BASE, **kw})


CONFIGS = {
    "gemma2": lambda: cfg(),
    "gemma3": lambda: cfg(num_hidden_layers=3, qk_norm=True, rope_theta=1000.0,
                          layer_types=("sliding_attention",) * 2 + ("full_attention",),
                          rope_local_theta=10.0, rope_scaling_factor=4.0,
                          attn_logit_softcapping=None, final_logit_softcapping=None),
    "t5gemma": lambda: EncDecConfig(encoder=cfg(), decoder=cfg()),
    "t5gemma_unbalanced": lambda: EncDecConfig(encoder=cfg(), decoder=cfg(
        hidden_size=12, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        head_dim=6, intermediate_size=20, sliding_window=2)),
    "t5gemma2": lambda: T5G2_EOI,
}
B, T, S, PREFILL = 3, 9, 6, 4


def model_and_inputs(kind: str, seed: int = 0):
    """A float64 model, decoder ids (B, T) left-padded by 0, 1 and 3 tokens (valid), and for
    an encoder-decoder its encoder output with a right-padded source."""
    model = randomised(build_model(CONFIGS[kind](), dtype=np.float64),
                       np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    ids = rng.integers(3, V, (B, T))
    if kind == "t5gemma2":
        ids[:, 5] = EOI  # its own input vector, from the plan
    valid = np.ones((B, T), bool)
    valid[1, :1] = valid[2, :3] = False
    enc = enc_mask = None
    if not isinstance(model.config, GemmaConfig):
        enc_mask = np.ones((B, S), bool)
        enc_mask[0, -2:] = False
        enc = model.encode(rng.integers(3, V, (B, S)), enc_mask.astype(np.int64))
    return model, ids, valid, enc, enc_mask


def run_steps(model, ids, valid, enc, enc_mask, max_len):
    """Logits (B, T, V): a prefill of PREFILL tokens, then one token at a time."""
    cache = init_cache(model, B, enc, enc_mask) if max_len is None else \
        init_planned_cache(model, B, enc, enc_mask, max_len=max_len)
    out = [decoder_step(model, cache, ids[:, :PREFILL], valid[:, :PREFILL])]
    out += [decoder_step(model, cache, ids[:, t:t + 1], valid[:, t:t + 1])
            for t in range(PREFILL, T)]
    return np.concatenate(out, axis=1), cache


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("max_len", [T, 2, 64])  # exact, too short (the table grows), roomy
def test_planned_steps_equal_unplanned_steps(kind, max_len, backend):
    """Bit for bit: the plan changes where things are looked up, not what is computed."""
    model, ids, valid, enc, enc_mask = model_and_inputs(kind)
    planned, cache = run_steps(model, ids, valid, enc, enc_mask, max_len)
    unplanned, plain = run_steps(model, ids, valid, enc, enc_mask, None)
    assert cache.plan is not None and plain.plan is None
    np.testing.assert_array_equal(planned[valid], unplanned[valid])
    np.testing.assert_array_equal(cache.next_pos, plain.next_pos)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_planned_steps_equal_full_forward(kind, backend):
    model, ids, valid, enc, enc_mask = model_and_inputs(kind)
    if enc is None:  # decoder-only: the left-padded batch through the full forward
        full = model.forward({"input_ids": ids, "attention_mask": valid.astype(np.int64)})
    else:  # the decoder's inputs unpadded (the full decoder has no mask of its own)
        valid = np.ones_like(valid)
        full = model.decode(ids, enc, enc_mask.astype(np.int64))
    got, _ = run_steps(model, ids, valid, enc, enc_mask, T)
    np.testing.assert_allclose(got[valid], full[valid], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "t5gemma2"])
def test_one_token_masks_are_the_cached_validity(kind):
    """For one new token per row the plan's mask (the keys' validity) equals the mask
    the positions give (causal, window, padding), at every step, windows rolling."""
    model, ids, valid, enc, enc_mask = model_and_inputs(kind)
    cache = init_planned_cache(model, B, enc, enc_mask, max_len=T)
    unplanned = DecodingPlan(model, cache)
    cfg_ = decoder_parts(model)[0].cfg
    decoder_step(model, cache, ids[:, :PREFILL], valid[:, :PREFILL])
    for t in range(PREFILL, T):
        q_pos = cache.next_pos[:, None]  # (B, 1): one valid token per row
        k_pos, k_valid = cache.add_positions(q_pos, np.ones((B, 1), bool))
        got = cache.plan.masks(q_pos, k_pos, k_valid, cache.memory_mask)
        want = unplanned.masks(q_pos, k_pos, k_valid, cache.memory_mask)
        for lt in set(cfg_.layer_types):
            full = layer_type_mask(cfg_, lt, q_pos, k_pos[lt], causal=True,
                                   key_padding=k_valid[lt])
            np.testing.assert_array_equal(np.broadcast_to(got[lt], want[lt].shape), want[lt])
            if enc is None:
                np.testing.assert_array_equal(got[lt], full)


def test_rope_rows_equal_the_tables_of_the_positions():
    model, *_ = model_and_inputs("gemma3")
    cache = init_planned_cache(model, 2, max_len=4)
    plan = cache.plan
    q_pos = np.array([[0, 3], [2, 9]])  # 9: past the planned 4, the table grows
    got = plan.rope(q_pos)
    for lt, (cos, sin) in rope_for(plan.cfg, q_pos, np.float64).items():
        np.testing.assert_array_equal(got[lt][0], cos[:, None])  # (B, 1, Tn, Dh)
        np.testing.assert_array_equal(got[lt][1], sin[:, None])
    assert plan.rope_len >= 10 and len(plan.rope_table[lt][0]) == plan.rope_len


@pytest.mark.parametrize("cap", [None, 30.0, 1e-30])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_softcap_equals_softcap(cap, dtype):
    z = (np.random.default_rng(0).standard_normal((3, 1, 50)) * 100).astype(dtype)
    want = softcap_unchecked(z, cap)
    got = _softcap_in_place(z.copy(), cap)
    np.testing.assert_array_equal(got, want)


def test_planned_request_allocates_its_buffers_once_and_resolves_ops_once(monkeypatch):
    """Buffers sized for max_len are never reallocated; the ops are looked up when the
    request is planned, never by a step."""
    model, ids, valid, _, _ = model_and_inputs("gemma2")
    cache = init_planned_cache(model, B, max_len=T)
    decoder_step(model, cache, ids[:, :PREFILL], valid[:, :PREFILL])
    buffers = [b.buf for b in cache._k + cache._v + list(cache._pos.values())]

    def no_lookup(name, backend=None):
        raise AssertionError(f"a planned step looked up op {name!r}")
    monkeypatch.setattr(ops, "resolve", no_lookup)
    for t in range(PREFILL, T):
        decoder_step(model, cache, ids[:, t:t + 1])
    assert all(a is b.buf for a, b in zip(buffers, cache._k + cache._v +
                                          list(cache._pos.values())))
    assert cache._k[1].buf.shape[2] == T  # the global layer: exactly max_len entries


def test_generate_plans_its_request_and_equals_the_unplanned_and_uncached_runs(monkeypatch):
    """generate sizes the plan for the prompt and max_new_tokens; the tokens equal those
    of unplanned cached steps and of the full forward without a cache."""
    import mini_encdec.models.generate as gen
    model, ids, valid, _, _ = model_and_inputs("gemma2")
    prompts = [row[m] for row, m in zip(ids, valid)]
    planned = generate(model, prompts, max_new_tokens=6, stop_at_eos=False)
    uncached = generate(model, prompts, max_new_tokens=6, stop_at_eos=False, use_cache=False)
    lens = []

    def unplanned(model_, B_, enc=None, enc_mask=None, *, max_len):
        lens.append(max_len)
        return init_cache(model_, B_, enc, enc_mask)
    monkeypatch.setattr(gen, "init_planned_cache", unplanned)
    plain = generate(model, prompts, max_new_tokens=6, stop_at_eos=False)
    np.testing.assert_array_equal(planned, plain)
    np.testing.assert_array_equal(planned, uncached)
    assert lens == [T + 6]  # the left-padded prompt (T) and the new tokens


def test_max_len_must_be_a_positive_integer():
    model, *_ = model_and_inputs("gemma2")
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_len"):
            init_planned_cache(model, 1, max_len=bad)


@pytest.mark.parametrize("kind", ["gemma2", "t5gemma2"])
def test_reserve_keeps_the_cached_entries_and_makes_room(kind):
    """KVCache.reserve moves what is cached (T5Gemma 2's encoder keys in its global
    layers) into buffers with room for n more tokens, unchanged."""
    model, ids, valid, enc, enc_mask = model_and_inputs(kind)
    cache = init_cache(model, B, enc, enc_mask)
    before = [kv if kv is None else (kv[0].copy(), kv[1].copy()) for kv in cache.kv]
    K, Dh = decoder_parts(model)[0].cfg.num_key_value_heads, decoder_parts(model)[0].cfg.head_dim
    cache.reserve(7, np.empty((B, K, 0, Dh)))
    for b, kv in zip(cache._k, before):
        live = 0 if kv is None else kv[0].shape[2]
        assert b.buf.shape == (B, K, live + 7, Dh)
        if kv is not None:
            np.testing.assert_array_equal(b.view(), kv[0])
    assert all(b.buf.shape == (B, 7) for b in cache._pos.values())


@pytest.mark.parametrize("keep", [None, 2])
def test_window_buffer_reserve_allocates_once_and_keeps_the_entries(keep):
    """After reserve(n), n entries in all (the kept ones included) are appended without
    reallocating, and the buffer holds what appending alone would."""
    from mini_encdec.models.window_buffer import WindowBuffer
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((2, 3, t, 4)) for t in (2, 1, 1, 3, 1)]
    plain, reserved = WindowBuffer(2, keep), WindowBuffer(2, keep)
    plain.append(chunks[0])
    reserved.append(chunks[0])
    reserved.reserve(reserved.end - reserved.start + 6, chunks[0])
    buf = reserved.buf
    for c in chunks[1:]:
        np.testing.assert_array_equal(reserved.append(c), plain.append(c))
        np.testing.assert_array_equal(reserved.view(), plain.view())
    assert reserved.buf is buf
