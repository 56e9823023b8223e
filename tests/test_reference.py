"""reference.py, the model on one page, computes exactly what build_model's models do:
random configs (unbalanced, GQA, windows shorter than the sequence, soft-caps on and off,
query scalars, merged attention, tied embeddings, Gemma 3's q/k norms, RoPE bases and
layer mixes, T5Gemma 2's split encoder window), padded batches, float32 and float64."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_encdec import reference
from mini_encdec.config import EncDecConfig, t5gemma2_config
from mini_encdec.models import build_model
from tests.strategies import encdec_configs, gemma_configs, key_paddings


def assert_logits_close(got, want):
    """Agree to 1e-5 of the logits' scale (float32 rounding through a few layers)."""
    scale = max(float(np.max(np.abs(want))), 1e-3)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


@st.composite
def padded_ids(draw, V, B, T):
    ids = draw(st.lists(st.lists(st.integers(0, V - 1), min_size=T, max_size=T),
                        min_size=B, max_size=B))
    real = draw(key_paddings(B, T))
    if draw(st.booleans()):  # left padding instead of right
        real = real[:, ::-1].copy()
    return np.array(ids, dtype=np.int64), real.astype(np.int64)


@pytest.mark.task5_1
@settings(max_examples=30, deadline=None)
@given(cfg=gemma_configs(), T=st.integers(1, 7), B=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16), data=st.data())
def test_gemma2_forward_equals_the_model(cfg, T, B, dtype, seed, data):
    model = build_model(cfg, seed=seed, dtype=dtype)
    ids, mask = data.draw(padded_ids(cfg.vocab_size, B, T))
    use_mask = data.draw(st.booleans())
    batch = {"input_ids": ids, **({"attention_mask": mask} if use_mask else {})}
    want = model.forward(batch)
    got = reference.gemma2_forward(cfg, model.params, ids, mask if use_mask else None)
    assert got.dtype == want.dtype == dtype
    assert_logits_close(got, want)


@st.composite
def gemma3_configs(draw):
    """Gemma 2 configs made Gemma 3: q/k norms, any mix of local and global layers, a
    local and a global RoPE base, linear scaling of the global layers or none."""
    cfg = draw(gemma_configs())
    types = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]),
                          min_size=cfg.num_hidden_layers, max_size=cfg.num_hidden_layers))
    return cfg.replace(qk_norm=True, layer_types=tuple(types),
                       rope_theta=draw(st.sampled_from([100.0, 1e6])),
                       rope_local_theta=draw(st.sampled_from([10.0, 1e4])),
                       rope_scaling_factor=draw(st.sampled_from([1.0, 8.0])))


@settings(max_examples=30, deadline=None)
@given(cfg=gemma3_configs(), T=st.integers(1, 7), B=st.integers(1, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16), data=st.data())
def test_gemma3_forward_equals_the_model(cfg, T, B, dtype, seed, data):
    model = randomised(build_model(cfg, seed=seed, dtype=dtype), seed)
    ids, mask = data.draw(padded_ids(cfg.vocab_size, B, T))
    batch = {"input_ids": ids, "attention_mask": mask}
    want = model.forward(batch)
    got = reference.gemma2_forward(cfg, model.params, ids, mask)
    assert got.dtype == want.dtype == dtype
    assert_logits_close(got, want)


def randomised(model, seed):
    """O(1) weights, norms included (fresh q/k norm weights 0 would hide a missing norm's
    scale; the RMS normalisation itself shows anyway)."""
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    return model


@st.composite
def t5gemma_configs(draw):
    """Unbalanced or balanced T5Gemma configs, with merged attention (T5Gemma 2: one
    width for both stacks) and tied embeddings drawn too."""
    config = draw(encdec_configs())
    merged, tied = draw(st.booleans()), draw(st.booleans())
    if merged or tied:  # both need one width
        config = dataclasses.replace(config, decoder=dataclasses.replace(
            config.decoder, hidden_size=config.encoder.hidden_size))
    return dataclasses.replace(config, merged_attention=merged, tie_all_embeddings=tied)


@pytest.mark.task5_1
@settings(max_examples=40, deadline=None)
@given(config=t5gemma_configs(), S=st.integers(1, 7), T=st.integers(1, 6),
       B=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16), data=st.data())
def test_t5gemma_forward_equals_the_model(config, S, T, B, dtype, seed, data):
    assert isinstance(config, EncDecConfig)
    model = build_model(config, seed=seed, dtype=dtype)
    src, mask = data.draw(padded_ids(config.vocab_size, B, S))
    dec, _ = data.draw(padded_ids(config.vocab_size, B, T))
    use_mask = data.draw(st.booleans())
    batch = {"input_ids": src, "decoder_input_ids": dec,
             **({"attention_mask": mask} if use_mask else {})}
    want = model.forward(batch)
    got = reference.t5gemma_forward(config, model.params, src, dec, mask if use_mask else None)
    assert got.dtype == want.dtype == dtype
    assert_logits_close(got, want)


@st.composite
def t5gemma2_configs(draw):
    """T5Gemma 2: a Gemma 3 encoder (split local window) and a Gemma 3 decoder of the same
    width and vocabulary (depth, heads, window and RoPE drawn on their own)."""
    enc, dec = draw(gemma3_configs()), draw(gemma3_configs())
    dec = dec.replace(hidden_size=enc.hidden_size, vocab_size=enc.vocab_size,
                      pad_token_id=enc.pad_token_id, eos_token_id=enc.eos_token_id,
                      bos_token_id=enc.bos_token_id)
    return t5gemma2_config(enc, dec)


@settings(max_examples=30, deadline=None)
@given(config=t5gemma2_configs(), S=st.integers(1, 9), T=st.integers(1, 6),
       B=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16), data=st.data())
def test_t5gemma2_forward_equals_the_model(config, S, T, B, dtype, seed, data):
    model = randomised(build_model(config, seed=seed, dtype=dtype), seed)
    src, mask = data.draw(padded_ids(config.vocab_size, B, S))
    dec, _ = data.draw(padded_ids(config.vocab_size, B, T))
    want = model.forward({"input_ids": src, "decoder_input_ids": dec, "attention_mask": mask})
    got = reference.t5gemma_forward(config, model.params, src, dec, mask)
    assert got.dtype == want.dtype == dtype
    assert_logits_close(got, want)


def test_reference_fits_on_one_page():
    import inspect
    assert len(inspect.getsource(reference).splitlines()) <= 200
