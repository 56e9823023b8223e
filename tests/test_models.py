"""Whole-model tests: gradients, padding, batching, parameter layout, bad batches.

Tiny float64 configs (D = 16, 2 layers, V = 50, window 3 < sequence length) so every
check runs in milliseconds; both backends through the `backend` fixture where it matters.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.backend import use_backend
from mini_encdec.config import EncDecConfig, GemmaConfig, count_parameters
from mini_encdec.models import EncDecLM, GemmaLM, build_model
from mini_encdec.models.params import init_params, param_shapes
from mini_encdec.nn.gradcheck import numerical_grad

from .conftest import requires_twins

V = 50
BASE = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)


def gemma_cfg(**kw):
    return GemmaConfig(**{**BASE, **kw})


def encdec_cfg(kind):
    enc = gemma_cfg()
    if kind == "balanced":
        return EncDecConfig(encoder=enc, decoder=enc)
    if kind == "unbalanced":  # narrower, deeper decoder with other heads
        dec = gemma_cfg(hidden_size=12, num_hidden_layers=3, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=6, intermediate_size=20)
        return EncDecConfig(encoder=enc, decoder=dec)
    if kind == "merged":
        return EncDecConfig(encoder=enc, decoder=enc, merged_attention=True)
    if kind == "tie_all":
        return EncDecConfig(encoder=enc, decoder=gemma_cfg(num_hidden_layers=1),
                            tie_all_embeddings=True)
    raise AssertionError(kind)


def randomised(model, rng, std=0.3):
    """Replace the fresh (tiny, norms 0) weights by O(1) random ones, so every path of the
    gradient (norm weights, soft-caps, residuals) is exercised."""
    for k, v in model.params.items():
        v[...] = rng.standard_normal(v.shape) * std
    return model


def lm_batch(rng, B=2, T=7):
    ids = rng.integers(0, V, (B, T))
    labels = rng.integers(0, V, (B, T))
    labels[0, 1] = -100
    return {"input_ids": ids, "labels": labels}


def encdec_batch(rng, B=2, S=7, T=6):
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, S - 2:] = 0  # right padding in the second source
    labels = rng.integers(0, V, (B, T))
    labels[1, T - 1] = -100
    return {"input_ids": rng.integers(0, V, (B, S)), "attention_mask": mask,
            "decoder_input_ids": rng.integers(0, V, (B, T)), "labels": labels}


def parameter_groups(params):
    """Keys grouped by kind, the layer index replaced by {i}: "model.layers.{i}.mlp..."."""
    groups = {}
    for key in params:
        groups.setdefault(re.sub(r"\.layers\.\d+\.", ".layers.{i}.", key), []).append(key)
    return groups


def sampled_gradcheck(model, batch, rng, per_group=3):
    """Central differences on `per_group` sampled entries of every parameter group (each
    entry from a randomly chosen layer of the group)."""
    loss, grads = model.loss_and_grads(batch)
    assert set(grads) == set(model.params)
    assert np.isclose(loss, model.loss(batch))
    for key, p in model.params.items():
        assert grads[key].shape == p.shape and grads[key].dtype == p.dtype, key
    for keys in parameter_groups(model.params).values():
        for _ in range(per_group):
            key = keys[rng.integers(len(keys))]
            flat = model.params[key].reshape(-1)
            i = int(rng.integers(flat.size))
            entry = flat[i:i + 1]  # a view into the parameter
            num = numerical_grad(lambda: model.loss(batch), entry, h=1e-6)[0]
            ana = grads[key].reshape(-1)[i]
            assert abs(num - ana) <= 1e-6 * max(1.0, abs(num)), (key, i, num, ana)


@pytest.mark.task5_2
def test_gemma_gradcheck(backend):
    rng = np.random.default_rng(0)
    model = randomised(build_model(gemma_cfg(), dtype=np.float64), rng)
    batch = lm_batch(rng)
    batch["attention_mask"] = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    batch["labels"][1, :2] = -100
    sampled_gradcheck(model, batch, rng)


@pytest.mark.task5_2
@pytest.mark.parametrize("kind", ["balanced", "unbalanced", "merged", "tie_all"])
def test_encdec_gradcheck(kind, backend_name="numpy"):
    rng = np.random.default_rng(1)
    with use_backend(backend_name):
        model = randomised(build_model(encdec_cfg(kind), dtype=np.float64), rng)
        sampled_gradcheck(model, encdec_batch(rng), rng)


@requires_twins
def test_encdec_gradcheck_numba_backend():
    """The same check with the Numba kernels wired in (the other variants run on the
    numpy reference only, to keep the suite fast)."""
    test_encdec_gradcheck("balanced", backend_name="numba")


@pytest.mark.task5_2
def test_tied_embedding_gets_both_uses():
    """dE = (output-matrix gradient) + (input-embedding gradient): a row that is never an
    input id still gets the output part, and the total matches finite differences."""
    rng = np.random.default_rng(2)
    model = randomised(build_model(gemma_cfg(), dtype=np.float64), rng)
    batch = lm_batch(rng)
    used = np.unique(batch["input_ids"])
    _, grads = model.loss_and_grads(batch)
    E = model.params["model.embed_tokens.weight"]
    for row in (used[0], next(r for r in range(V) if r not in used)):
        num = numerical_grad(lambda: model.loss(batch), E[row])
        np.testing.assert_allclose(grads["model.embed_tokens.weight"][row], num,
                                   rtol=1e-5, atol=1e-8)


def test_fresh_init_and_keys():
    cfg = gemma_cfg()
    p = init_params(cfg, seed=3)
    assert sum(v.size for v in p.values()) == count_parameters(cfg)
    assert all(v.dtype == np.float32 for v in p.values())
    for k, v in p.items():
        if k.endswith("norm.weight"):
            assert not v.any(), k
        else:
            assert 0.015 < v.std() < 0.025, k
    q = init_params(cfg, seed=3)
    assert all(np.array_equal(p[k], q[k]) for k in p)
    assert "model.layers.1.post_feedforward_layernorm.weight" in p
    assert "lm_head.weight" not in p
    for kind in ("balanced", "unbalanced", "merged", "tie_all"):
        c = encdec_cfg(kind)
        shapes = param_shapes(c)
        assert sum(int(np.prod(s)) for s in shapes.values()) == count_parameters(c), kind
    un = param_shapes(encdec_cfg("unbalanced"))
    assert un["model.decoder.layers.2.cross_attn.k_proj.weight"] == (6, 16)  # K*Dh x De
    assert un["model.decoder.layers.2.cross_attn.q_proj.weight"] == (12, 12)
    tied = param_shapes(encdec_cfg("tie_all"))
    assert "model.encoder.embed_tokens.weight" in tied
    assert "model.decoder.embed_tokens.weight" not in tied
    merged = param_shapes(encdec_cfg("merged"))
    assert not any("cross" in k for k in merged)


def test_build_model_rejects_bad_params():
    cfg = gemma_cfg()
    p = init_params(cfg)
    with pytest.raises(ValueError, match="missing keys"):
        build_model(cfg, {k: v for k, v in p.items() if "norm" not in k})
    with pytest.raises(ValueError, match="unexpected keys.*lm_head"):
        build_model(cfg, {**p, "lm_head.weight": p["model.embed_tokens.weight"]})
    bad = dict(p)
    bad["model.norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="model.norm.weight.*shape"):
        build_model(cfg, bad)
    with pytest.raises(ValueError, match="config"):
        build_model({"hidden_size": 3})
    assert isinstance(build_model(cfg, p), GemmaLM)
    assert isinstance(build_model(encdec_cfg("balanced")), EncDecLM)


def test_encoder_right_padding_leaves_real_outputs_unchanged(backend):
    rng = np.random.default_rng(4)
    model = randomised(build_model(encdec_cfg("balanced"), dtype=np.float64), rng)
    src = rng.integers(3, V, (1, 5))
    dec = rng.integers(3, V, (1, 4))
    enc = model.encode(src)
    logits = model.forward({"input_ids": src, "decoder_input_ids": dec})
    for pad in (1, 4):  # window 3: padding beyond the window and inside it
        padded = np.concatenate([src, np.zeros((1, pad), np.int64)], axis=1)
        mask = np.concatenate([np.ones((1, 5)), np.zeros((1, pad))], axis=1).astype(np.int64)
        np.testing.assert_allclose(model.encode(padded, mask)[:, :5], enc, rtol=1e-12,
                                   atol=1e-12)
        out = model.forward({"input_ids": padded, "attention_mask": mask,
                             "decoder_input_ids": dec})
        np.testing.assert_allclose(out, logits, rtol=1e-12, atol=1e-12)


def test_merged_attention_padding_unchanged():
    rng = np.random.default_rng(5)
    model = randomised(build_model(encdec_cfg("merged"), dtype=np.float64), rng)
    src, dec = rng.integers(3, V, (1, 5)), rng.integers(3, V, (1, 4))
    ref = model.forward({"input_ids": src, "decoder_input_ids": dec})
    padded = np.concatenate([src, np.zeros((1, 2), np.int64)], axis=1)
    mask = (padded != 0).astype(np.int64)
    mask[0, :5] = 1
    out = model.forward({"input_ids": padded, "attention_mask": mask, "decoder_input_ids": dec})
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoder_only_padding_leaves_real_outputs_unchanged(side, backend):
    """Documented behaviour: with attention_mask, positions count real tokens, so both
    left and right padding reproduce the unpadded logits on the real tokens."""
    rng = np.random.default_rng(6)
    model = randomised(build_model(gemma_cfg(), dtype=np.float64), rng)
    ids = rng.integers(3, V, (1, 5))
    ref = model.forward({"input_ids": ids})
    pad = np.zeros((1, 3), np.int64)
    if side == "left":
        padded, real = np.concatenate([pad, ids], 1), slice(3, 8)
    else:
        padded, real = np.concatenate([ids, pad], 1), slice(0, 5)
    mask = np.zeros((1, 8), np.int64)
    mask[:, real] = 1
    out = model.forward({"input_ids": padded, "attention_mask": mask})
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, real], ref, rtol=1e-12, atol=1e-12)


def test_batch_equals_examples_one_by_one(backend):
    rng = np.random.default_rng(7)
    lm = randomised(build_model(gemma_cfg(), dtype=np.float64), rng)
    batch = lm_batch(rng, B=3)
    full = lm.forward(batch)
    loss, grads = lm.loss_and_grads(batch)
    counts = (batch["labels"] != -100).sum(axis=1)
    loss_sum, grad_sum = 0.0, None
    for b in range(3):
        one = {k: v[b:b + 1] for k, v in batch.items()}
        np.testing.assert_allclose(lm.forward(one), full[b:b + 1], rtol=1e-12, atol=1e-12)
        lb, gb = lm.loss_and_grads(one)
        loss_sum += lb * counts[b]
        gb = {k: g * counts[b] for k, g in gb.items()}
        grad_sum = gb if grad_sum is None else {k: grad_sum[k] + gb[k] for k in gb}
    assert np.isclose(loss, loss_sum / counts.sum(), rtol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], grad_sum[k] / counts.sum(), rtol=1e-9, atol=1e-12)

    ed = randomised(build_model(encdec_cfg("unbalanced"), dtype=np.float64), rng)
    batch = encdec_batch(rng, B=3)
    full = ed.forward(batch)
    for b in range(3):
        one = {k: v[b:b + 1] for k, v in batch.items()}
        np.testing.assert_allclose(ed.forward(one), full[b:b + 1], rtol=1e-12, atol=1e-12)


@pytest.mark.task5_1
def test_local_and_global_layers_differ():
    """Layer 0 is local (window 3), layer 1 global: a change at position 0 reaches
    position 6 only through the global layer's attention (or via the causal chain)."""
    cfg = gemma_cfg(num_hidden_layers=1)  # one local layer only
    rng = np.random.default_rng(8)
    model = randomised(build_model(cfg, dtype=np.float64), rng)
    ids = rng.integers(3, V, (1, 7))
    other = ids.copy()
    other[0, 0] = (ids[0, 0] + 1) % V
    a, b = model.forward({"input_ids": ids}), model.forward({"input_ids": other})
    assert np.abs(a[0, :3] - b[0, :3]).max() > 1e-6  # inside the window
    np.testing.assert_array_equal(a[0, 3:], b[0, 3:])  # q - k >= W: no influence
    glob = gemma_cfg(num_hidden_layers=1, layer_types=("full_attention",))
    model = randomised(build_model(glob, dtype=np.float64), rng)
    a, b = model.forward({"input_ids": ids}), model.forward({"input_ids": other})
    assert np.abs(a[0, 6] - b[0, 6]).max() > 1e-6


@pytest.mark.task5_1
def test_encoder_is_bidirectional_and_causal_option():
    rng = np.random.default_rng(9)
    cfg = gemma_cfg()
    model = randomised(build_model(EncDecConfig(encoder=cfg, decoder=cfg), dtype=np.float64), rng)
    src = rng.integers(3, V, (1, 6))
    other = src.copy()
    other[0, 5] = (src[0, 5] + 1) % V
    assert np.abs(model.encode(src)[0, 0] - model.encode(other)[0, 0]).max() > 1e-6
    np.testing.assert_array_equal(model.encode(src, causal=True)[0, :5],
                                  model.encode(other, causal=True)[0, :5])


def test_causal_encoder_is_a_config_field_saved_with_the_model(tmp_path):
    """The causal-encoder ablation lives in EncDecConfig (no class attribute): it changes
    the encoder's masks, round-trips through config dicts and saved models, and setting
    the model's switch replaces its config (the study's causal_encoder(model))."""
    from mini_encdec.config import config_from_dict
    from mini_encdec.storage.checkpoint import load_model, save_model
    cfg = gemma_cfg()
    config = EncDecConfig(encoder=cfg, decoder=cfg)
    assert isinstance(EncDecLM.__dict__["causal_encoder"], property)  # reads the config
    model = build_model(config, seed=1, dtype=np.float64)
    causal = build_model(config.replace(causal_encoder=True), params=model.params)
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, 6))
    np.testing.assert_array_equal(causal.encode(ids), model.encode(ids, causal=True))
    assert not np.allclose(causal.encode(ids), model.encode(ids))
    assert config_from_dict(causal.config.to_dict()) == causal.config
    loaded = load_model(save_model(tmp_path / "m", causal.config, causal.params))
    assert loaded.config.causal_encoder and loaded.causal_encoder
    np.testing.assert_array_equal(loaded.encode(ids), causal.encode(ids))
    model.causal_encoder = True  # the switch is the config's field
    assert model.config == causal.config and not config.causal_encoder
    with pytest.raises(ValueError, match="causal_encoder"):
        config.replace(causal_encoder="yes")


def test_causal_encoder_reproduces_decoder_only_hidden_states():
    """An encoder given the decoder-only model's weights (renamed keys) and run with the
    causal masks reproduces the decoder-only model's final hidden states."""
    rng = np.random.default_rng(10)
    cfg = gemma_cfg()
    lm = randomised(build_model(cfg, dtype=np.float64), rng)
    ed = build_model(EncDecConfig(encoder=cfg, decoder=cfg), dtype=np.float64)
    rename = {"input_layernorm": "pre_self_attn_layernorm",
              "post_attention_layernorm": "post_self_attn_layernorm"}
    for k, v in lm.params.items():
        k2 = "model.encoder." + k[len("model."):]
        for a, b in rename.items():
            k2 = k2.replace(a, b)
        ed.params[k2][...] = v
    ids = rng.integers(3, V, (2, 7))
    np.testing.assert_allclose(ed.encode(ids, causal=True), lm.hidden_states({"input_ids": ids}),
                               rtol=1e-12, atol=1e-12)


def test_decode_with_given_encoder_output_matches_forward():
    rng = np.random.default_rng(11)
    model = randomised(build_model(encdec_cfg("unbalanced"), dtype=np.float64), rng)
    batch = encdec_batch(rng)
    enc = model.encode(batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(
        model.decode(batch["decoder_input_ids"], enc, batch["attention_mask"]),
        model.forward(batch), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_hook_matches_loss_and_grads(arch, dtype, backend):
    """backward(dlogits) for the plain cross-entropy gives the same loss and gradients as
    loss_and_grads, which never makes the logits (ops.output_loss_and_grads)."""
    rng = np.random.default_rng(12)
    cfg = gemma_cfg() if arch == "decoder" else encdec_cfg("balanced")
    model = randomised(build_model(cfg, dtype=dtype), rng)
    batch = lm_batch(rng) if arch == "decoder" else encdec_batch(rng)
    loss, grads = model.loss_and_grads(batch)
    logits, cache = model.forward(batch, return_cache=True)
    logits = logits.astype(np.float64)
    labels = batch["labels"]
    counted = labels != -100
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    onehot = np.zeros_like(p)
    b, t = np.nonzero(counted)
    onehot[b, t, labels[b, t]] = 1
    dlogits = (p - onehot) * counted[..., None] / counted.sum()
    ce = -np.log(p[b, t, labels[b, t]]).mean()
    g2 = model.backward(dlogits.astype(dtype), cache)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    assert loss == pytest.approx(ce, rel=tol / 10)
    for k in grads:
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(g2[k], grads[k], rtol=tol,
                                   atol=tol * np.abs(g2[k]).max(), err_msg=k)


def test_float32_runs_and_stays_float32(backend):
    rng = np.random.default_rng(13)
    model = build_model(encdec_cfg("balanced"))
    loss, grads = model.loss_and_grads(encdec_batch(rng))
    assert np.isfinite(loss) and abs(loss - np.log(V)) < 0.5  # fresh init: near uniform
    assert all(g.dtype == np.float32 for g in grads.values())


# --- bad batches -----------------------------------------------------------------------------

def test_bad_batches_raise_clear_errors():
    rng = np.random.default_rng(14)
    lm = build_model(gemma_cfg())
    ed = build_model(encdec_cfg("balanced"))
    good_lm, good_ed = lm_batch(rng), encdec_batch(rng)
    cases = [
        (lm.loss, {"input_ids": good_lm["input_ids"]}, "missing key 'labels'"),
        (lm.forward, {"labels": good_lm["labels"]}, "missing key 'input_ids'"),
        (lm.loss, {**good_lm, "labels": good_lm["labels"][:, :3]}, "labels"),
        (lm.forward, {"input_ids": good_lm["input_ids"][0]}, "input_ids.*shape"),
        (lm.forward, {"input_ids": good_lm["input_ids"] + V}, "input_ids.*token ids"),
        (lm.forward, {"input_ids": good_lm["input_ids"] * 1.0}, "input_ids.*integer"),
        (lm.loss, {**good_lm, "labels": good_lm["labels"] - 200}, "labels.*token ids"),
        (lm.forward, {**good_lm, "attention_mask": np.full((2, 7), 2)}, "attention_mask"),
        (lm.forward, [good_lm["input_ids"]], "batch.*dict"),
        (ed.loss, {k: v for k, v in good_ed.items() if k != "decoder_input_ids"},
         "missing key 'decoder_input_ids'"),
        (ed.forward, {**good_ed, "attention_mask": good_ed["attention_mask"][:, :3]},
         "attention_mask.*shape"),
        (ed.forward, {**good_ed, "decoder_input_ids": good_ed["decoder_input_ids"][:1]},
         "batch size"),
        (ed.forward, {**good_ed, "input_ids": -good_ed["input_ids"] - 1}, "input_ids"),
    ]
    for fn, batch, match in cases:
        with pytest.raises(ValueError, match=match):
            fn(batch)
    with pytest.raises(ValueError, match="causal"):
        ed.encode(good_ed["input_ids"], causal="yes")
    with pytest.raises(ValueError, match="encoder_output"):
        ed.decode(good_ed["decoder_input_ids"], np.zeros((2, 7, 5)))


@pytest.mark.task5_1
@given(st.integers(1, 8), st.integers(0, 4), st.integers(1, 4), st.integers(0, 1000))
def test_padding_property_encdec(S, pad, window, seed):
    """Any source length, any amount of right padding, any window: the padded batch row
    gives the unpadded logits, and the encoder output on real tokens is unchanged."""
    rng = np.random.default_rng(seed)
    c = gemma_cfg(sliding_window=window)
    model = randomised(build_model(EncDecConfig(encoder=c, decoder=c), dtype=np.float64),
                       np.random.default_rng(0))
    src, dec = rng.integers(3, V, (1, S)), rng.integers(3, V, (1, 3))
    ref = model.forward({"input_ids": src, "decoder_input_ids": dec})
    padded = np.concatenate([src, rng.integers(0, V, (1, pad))], axis=1)  # any pad ids
    mask = (np.arange(S + pad) < S).astype(np.int64)[None]
    out = model.forward({"input_ids": padded, "attention_mask": mask, "decoder_input_ids": dec})
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-11)


def test_the_call_chain_from_forward_to_the_attention_core_crosses_at_most_four_files(
        monkeypatch):
    """A reader going from EncDecLM.forward to the attention core (NumPy backend) passes
    through at most four files: encdec.py, blocks.py, nn/attention.py and ops.py."""
    import inspect
    from pathlib import Path

    import mini_encdec
    from mini_encdec import ops
    from mini_encdec.nn.attention import attention_core_forward
    package = Path(mini_encdec.__file__).parent
    chains = []

    def core(*args, **kwargs):
        frames = inspect.stack()[1:]  # the callers, innermost first
        start = next(i for i, f in enumerate(frames)
                     if f.function == "forward" and f.filename.endswith("encdec.py"))
        chains.append([(Path(f.filename), f.function) for f in reversed(frames[:start + 1])])
        return attention_core_forward(*args, **kwargs)
    monkeypatch.setitem(ops.REFERENCE, "attention_core_forward", core)
    cfg = gemma_cfg()
    model = build_model(EncDecConfig(encoder=cfg, decoder=cfg), dtype=np.float64)
    with use_backend("numpy"):
        model.forward({"input_ids": np.full((1, 4), 5), "decoder_input_ids": np.full((1, 3), 5)})
    assert chains
    for chain in chains:
        files = {path.relative_to(package).as_posix() for path, _ in chain}
        files.add("nn/attention.py")  # where the core itself is
        assert files <= {"models/encdec.py", "models/blocks.py", "nn/attention.py", "ops.py"}, \
            chain
