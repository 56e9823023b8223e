"""Properties of the model assembly (SPEC.md sections 1 and 2) on hypothesis-drawn tiny
models: what the wiring of the graded layers must make true whatever the sizes.

    cross-attention reads the encoder output as a set (no RoPE, no window): permuting the
        encoder positions, with their padding, leaves the decoder's logits unchanged
    a local layer sees exactly its window: in the encoder |q - k| < W, in the decoder
        0 <= q - k < W; a token outside it has no influence, the farthest one inside has
    the decoder counts its positions from 0, whatever the encoder's length: visible with
        merged attention, where decoder queries meet unrotated encoder keys (with RoPE
        alone only position differences matter)
    the gradients are the derivatives of the loss: a directional derivative along a
        random direction of *every* parameter at once equals sum(grad * direction) (one
        check that sees a missing term anywhere, e.g. one use of a tied table)

Markers: task5_1 (forward) and task5_2 (backward), tutorials/assignments/README.md.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_encdec.backend import use_backend
from mini_encdec.config import EncDecConfig
from mini_encdec.models import build_model

from .strategies import encdec_configs, gemma_configs, seeds


def randomised(model, seed, std=0.3):
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * std
    return model


@pytest.mark.task5_1
@settings(max_examples=15)
@given(config=encdec_configs(), S=st.integers(2, 6), T=st.integers(1, 4), seed=seeds,
       data=st.data())
def test_cross_attention_reads_the_encoder_output_as_a_set(config, S, T, seed, data):
    """decode(ids, enc[:, perm], mask[:, perm]) == decode(ids, enc, mask): cross-attention
    has no positions (no RoPE on its keys, no window), only the padding mask."""
    model = randomised(build_model(config, dtype=np.float64), seed)
    rng = np.random.default_rng(seed)
    enc = rng.standard_normal((1, S, config.encoder.hidden_size))
    mask = np.ones((1, S), dtype=bool)
    mask[0, data.draw(st.integers(1, S)):] = False  # right padding (at least one real)
    perm = np.array(data.draw(st.permutations(range(S))))
    dec = rng.integers(0, config.vocab_size, (1, T))
    with use_backend("numpy"):
        want = model.decode(dec, enc, mask)
        got = model.decode(dec, enc[:, perm], mask[:, perm])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10,
                               err_msg="permuting the encoder output changed the logits")


def one_local_layer(config, W):
    """The config with a single local (sliding-window, W) layer."""
    return dataclasses.replace(config, num_hidden_layers=1, layer_types=("sliding_attention",),
                               sliding_window=W)


@pytest.mark.task5_1
@settings(max_examples=15)
@given(config=gemma_configs(), W=st.integers(1, 4), T=st.integers(2, 8), seed=seeds,
       data=st.data())
def test_a_local_layer_sees_exactly_its_window(config, W, T, seed, data):
    """One local layer, in the encoder (|q - k| < W) and in the decoder (0 <= q - k < W):
    changing token k changes the output at q exactly when k is inside q's window."""
    enc_cfg, dec_cfg = one_local_layer(config, W), one_local_layer(config, W)
    model = randomised(build_model(EncDecConfig(encoder=enc_cfg, decoder=dec_cfg),
                                   dtype=np.float64), seed)
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    ids = rng.integers(0, V, (1, T))
    k = data.draw(st.integers(0, T - 1))
    other = ids.copy()
    other[0, k] = (ids[0, k] + 1) % V
    q = np.arange(T)
    with use_backend("numpy"):
        # the encoder: symmetric window
        changed = np.abs(model.encode(ids) - model.encode(other)).max(axis=-1)[0] > 0  # (T,)
        np.testing.assert_array_equal(
            changed, np.abs(q - k) < W,
            err_msg=f"encoder, window W={W}: which positions q change when token k={k} does "
                    f"(expected |q - k| < W)")
        # the decoder (fixed encoder output): causal window
        enc = rng.standard_normal((1, 3, config.hidden_size))
        changed = np.abs(model.decode(ids, enc) - model.decode(other, enc)).max(axis=-1)[0] > 0
        np.testing.assert_array_equal(
            changed, (q - k >= 0) & (q - k < W),
            err_msg=f"decoder, window W={W}: which positions q change when token k={k} does "
                    f"(expected 0 <= q - k < W)")


@st.composite
def merged_configs(draw):
    """T5Gemma 2 configs: merged attention (one width for both stacks)."""
    config = draw(encdec_configs())
    return dataclasses.replace(config, merged_attention=True, decoder=dataclasses.replace(
        config.decoder, hidden_size=config.encoder.hidden_size))


@pytest.mark.task5_1
@settings(max_examples=15)
@given(config=merged_configs(), S=st.integers(1, 5), pad=st.integers(1, 3),
       T=st.integers(1, 4), seed=seeds)
def test_decoder_positions_restart_at_zero(config, S, pad, T, seed):
    """Merged attention: the logits equal the one-page reference's (decoder positions
    0..T-1), and padding the encoder input with `pad` more tokens changes nothing."""
    from mini_encdec import reference
    model = randomised(build_model(config, dtype=np.float64), seed)
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    src, dec = rng.integers(0, V, (1, S)), rng.integers(0, V, (1, T))
    padded = np.concatenate([src, np.zeros((1, pad), np.int64)], axis=1)
    mask = (np.arange(S + pad) < S).astype(np.int64)[None]
    with use_backend("numpy"):
        logits = model.forward({"input_ids": src, "decoder_input_ids": dec})
        longer = model.forward({"input_ids": padded, "attention_mask": mask,
                                "decoder_input_ids": dec})
    want = reference.t5gemma_forward(config, model.params, src, dec)
    np.testing.assert_allclose(logits, want, rtol=1e-10, atol=1e-10,
                               err_msg="logits != reference.t5gemma_forward's (decoder "
                                       "positions 0..T-1)")
    np.testing.assert_allclose(longer, logits, rtol=1e-10, atol=1e-10,
                               err_msg=f"padding the encoder input with {pad} tokens changed "
                                       f"the decoder's logits")


@st.composite
def t5gemma_configs(draw):
    """Balanced or unbalanced T5Gemma configs, some with merged attention or one embedding
    table for all three uses (both need one width)."""
    config = draw(encdec_configs())
    merged, tied = draw(st.booleans()), draw(st.booleans())
    if merged or tied:
        config = dataclasses.replace(config, decoder=dataclasses.replace(
            config.decoder, hidden_size=config.encoder.hidden_size))
    return dataclasses.replace(config, merged_attention=merged, tie_all_embeddings=tied)


@pytest.mark.task5_2
@settings(max_examples=15)
@given(config=t5gemma_configs(), S=st.integers(1, 5), T=st.integers(1, 5), seed=seeds)
def test_gradients_give_the_directional_derivative(config, S, T, seed):
    """(L(p + hR) - L(p - hR)) / 2h == sum over every parameter of grad * R."""
    model = randomised(build_model(config, dtype=np.float64), seed)
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    mask = np.ones((2, S), dtype=np.int64)
    mask[1, rng.integers(1, S + 1):] = 0
    labels = rng.integers(0, V, (2, T))
    labels[0, -1] = -100
    batch = {"input_ids": rng.integers(0, V, (2, S)), "attention_mask": mask,
             "decoder_input_ids": rng.integers(0, V, (2, T)), "labels": labels}
    direction = {k: rng.standard_normal(v.shape) for k, v in model.params.items()}
    with use_backend("numpy"):
        _, grads = model.loss_and_grads(batch)
        missing = sorted(set(model.params) - set(grads))
        assert not missing, f"no gradient for {missing}"
        analytic = sum(float(np.sum(grads[k] * r)) for k, r in direction.items())
        base = {k: v.copy() for k, v in model.params.items()}

        def central(h):  # (L(p + hR) - L(p - hR)) / 2h
            losses = []
            for sign in (1, -1):
                for k, v in model.params.items():
                    v[...] = base[k] + sign * h * direction[k]
                losses.append(model.loss(batch))
            return (losses[0] - losses[1]) / (2 * h)
        # Richardson extrapolation of two central differences (error O(h^4)) with small
        # steps: a random direction of every parameter at once can drive a tiny model's
        # RMSNorm (D = 1 or 2) close to zero, where the loss bends sharply
        numeric = (4 * central(1e-6) - central(2e-6)) / 3
        for k, v in model.params.items():
            v[...] = base[k]
    assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric)), \
        f"directional derivative {numeric:.10g} by finite differences, {analytic:.10g} " \
        f"from the gradients"
