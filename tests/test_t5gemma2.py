"""T5Gemma 2 (text) without torch: Gemma 3 stacks (q/k norms, RoPE base per layer type)
as encoder and decoder, the encoder's split local window, the decoder's merged attention
(k_norm on the encoder keys, no RoPE on them), one tied embedding table. Finite-difference
gradients of every parameter group (every q/k norm entry), KV-cached decoding equal to the
full forward, padding. Parity with transformers: test_parity_t5gemma2.py (live) and
test_hf_reference.py (frozen).

T5Gemma 2 is T5Gemma's model with config fields set (SPEC.md section 2):
`merged_attention`, `tie_all_embeddings`, `qk_norm` in both stacks, and the encoder's
`bidirectional_window = "split"` (`config.t5gemma2_config` sets them all).
"""

import numpy as np
import pytest

from mini_encdec import reference
from mini_encdec.config import (SPLIT, SYMMETRIC, EncDecConfig, GemmaConfig,
                                patterned_layer_types, t5gemma2_config)
from mini_encdec.models import build_model
from mini_encdec.models.decoding import decoder_step, init_cache
from mini_encdec.models.generate import generate
from mini_encdec.nn.masks import attention_mask

from .test_models import randomised, sampled_gradcheck

V = 50
# Gemma 3 stack: 2 local layers then 1 global, H/K = 2, window 4 (split: 2 keys to the
# left and the query, 2 to the right; symmetric would be 3 each side), two RoPE bases
STACK = GemmaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=4,
                    layer_types=patterned_layer_types(3, 3), qk_norm=True, rope_theta=1000.0,
                    rope_local_theta=10.0, rope_scaling_factor=2.0,
                    attn_logit_softcapping=None, final_logit_softcapping=None)
T5G2 = t5gemma2_config(STACK)
# with an eoi token in the vocabulary (transformers' is 256,000): its input embedding is a
# vector of its own in the encoder and the decoder
EOI = 5
T5G2_EOI = t5gemma2_config(STACK, eoi_token_id=EOI)


def model_of(config=T5G2, seed=0):
    return randomised(build_model(config, dtype=np.float64), np.random.default_rng(seed))


def batch_of(rng, B=2, S=9, T=6):
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, S - 3:] = 0  # right padding of the second source
    labels = rng.integers(0, V, (B, T))
    labels[1, T - 1] = -100
    return {"input_ids": rng.integers(3, V, (B, S)), "attention_mask": mask,
            "decoder_input_ids": rng.integers(3, V, (B, T)), "labels": labels}


# --- config and masks ----------------------------------------------------------------------

def test_t5gemma2_config_fields():
    assert T5G2.encoder.bidirectional_window == SPLIT
    assert T5G2.decoder.bidirectional_window == SYMMETRIC
    assert T5G2.merged_attention and T5G2.tie_all_embeddings
    assert T5G2.encoder.qk_norm and T5G2.decoder.qk_norm
    assert EncDecConfig.from_dict(T5G2.to_dict()) == T5G2
    old = T5G2.to_dict()  # a checkpoint dict from before the field: symmetric
    del old["encoder"]["bidirectional_window"]
    assert EncDecConfig.from_dict(old).encoder.bidirectional_window == SYMMETRIC


def test_t5gemma2_config_errors_name_the_field():
    with pytest.raises(ValueError, match="bidirectional_window"):
        STACK.replace(bidirectional_window="left")
    with pytest.raises(ValueError, match="decoder.qk_norm"):  # cross-attention has no norms
        EncDecConfig(encoder=STACK, decoder=STACK)
    EncDecConfig(encoder=STACK, decoder=STACK.replace(qk_norm=False))  # encoder alone: fine


@pytest.mark.parametrize("W", [1, 2, 3, 4, 5, 8])
def test_split_window_counts_the_keys_transformers_does(W):
    """With d = q - k: visible when 0 <= d < (W + 1) // 2 or 0 < -d < W // 2 + 1, so
    (W + 1) // 2 keys at or left of the query and W // 2 right of it, W in all away from
    the edges. Checked entry by entry."""
    T = 3 * W + 4
    pos = np.arange(T)
    m = attention_mask(pos, pos, causal=False, window=W, split=True)[0, 0]
    for q in range(T):
        for k in range(T):
            d = q - k
            assert m[q, k] == ((0 <= d < (W + 1) // 2) or (0 < -d < W // 2 + 1)), (q, k)
    mid = T // 2
    assert m[mid].sum() == (W + 1) // 2 + W // 2
    # causal masks ignore it; symmetric is the old |d| < W
    np.testing.assert_array_equal(
        attention_mask(pos, pos, causal=True, window=W, split=True),
        attention_mask(pos, pos, causal=True, window=W))
    np.testing.assert_array_equal(
        attention_mask(pos, pos, causal=False, window=W)[0, 0], np.abs(pos[:, None] - pos) < W)


# --- the model --------------------------------------------------------------------------------

def test_t5gemma2_forward_equals_the_reference():
    model = model_of()
    b = batch_of(np.random.default_rng(1))
    want = reference.t5gemma_forward(T5G2, model.params, b["input_ids"], b["decoder_input_ids"],
                                     b["attention_mask"])
    got = model.forward({k: v for k, v in b.items() if k != "labels"})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_t5gemma2_gradcheck(backend):
    """Central differences of the loss against loss_and_grads: sampled entries of every
    parameter group (the one tied table included), and every entry of every q/k norm."""
    rng = np.random.default_rng(0)
    model = model_of()
    batch = batch_of(rng)
    sampled_gradcheck(model, batch, rng)
    from mini_encdec.nn.gradcheck import numerical_grad
    _, grads = model.loss_and_grads(batch)
    assert "model.decoder.embed_tokens.weight" not in grads
    keys = [k for k in model.params if k.endswith(("q_norm.weight", "k_norm.weight"))]
    assert len(keys) == 4 * STACK.num_hidden_layers
    for key in keys:
        num = numerical_grad(lambda: model.loss(batch), model.params[key], h=1e-6)
        np.testing.assert_allclose(grads[key], num, rtol=1e-6, atol=1e-8, err_msg=key)
    E = model.params["model.encoder.embed_tokens.weight"]
    for _ in range(6):  # the tied table: encoder input, decoder input and output rows
        r, c = int(rng.integers(V)), int(rng.integers(16))
        num = numerical_grad(lambda: model.loss(batch), E[r, c:c + 1], h=1e-6)[0]
        assert abs(num - grads["model.encoder.embed_tokens.weight"][r, c]) <= 1e-6


def test_each_t5gemma2_field_changes_the_function():
    """The split window, the q/k norms on the encoder keys and the merged attention each
    matter on these inputs, so the parity tests would see each one wrong."""
    model = model_of()
    b = batch_of(np.random.default_rng(2), S=12)
    del b["labels"]
    want = model.forward(b)
    sym = T5G2.replace(encoder=T5G2.encoder.replace(bidirectional_window=SYMMETRIC))
    assert np.abs(build_model(sym, model.params).forward(b) - want).max() > 1e-3
    P = dict(model.params)
    for k in [k for k in P if "k_norm" in k and "decoder" in k]:
        P[k] = P[k] + 0.5
    assert np.abs(build_model(T5G2, P).forward(b) - want).max() > 1e-3


def test_t5gemma2_padding_leaves_real_tokens_unchanged(backend):
    model = model_of()
    rng = np.random.default_rng(3)
    src, dec = rng.integers(3, V, (1, 7)), rng.integers(3, V, (1, 5))
    alone = model.forward({"input_ids": src, "decoder_input_ids": dec})
    padded = np.concatenate([src, np.zeros((1, 4), np.int64)], axis=1)  # right padding
    mask = (padded != 0).astype(np.int64)
    got = model.forward({"input_ids": padded, "attention_mask": mask,
                         "decoder_input_ids": dec})
    np.testing.assert_allclose(got, alone, rtol=1e-12, atol=1e-12)


def test_t5gemma2_cached_steps_equal_full_forward(backend):
    """Encoder once; decoder prefill of 2, then one token at a time: local windows roll
    beside the encoder keys (k_norm-ed once, never rotated), padded sources included."""
    model = model_of()
    b = batch_of(np.random.default_rng(4), T=9)
    full = model.forward({k: v for k, v in b.items() if k != "labels"})
    enc = model.encode(b["input_ids"], b["attention_mask"])
    cache = init_cache(model, 2, enc, b["attention_mask"].astype(bool))
    ids = b["decoder_input_ids"]
    steps = [decoder_step(model, cache, ids[:, :2])]
    steps += [decoder_step(model, cache, ids[:, t:t + 1]) for t in range(2, ids.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_t5gemma2_generation_with_cache_equals_without(method):
    model = model_of(seed=5)
    src = np.random.default_rng(5).integers(3, V, (2, 8))
    kw = dict(max_new_tokens=8)
    if method == "beam":
        from mini_encdec.models.generate import beam_search
        a = beam_search(model, src[:1], num_beams=2, use_cache=True, **kw)
        b = beam_search(model, src[:1], num_beams=2, use_cache=False, **kw)
        np.testing.assert_array_equal(a[0], b[0])
    else:
        np.testing.assert_array_equal(generate(model, src, use_cache=True, **kw),
                                      generate(model, src, use_cache=False, **kw))


# --- adaptation from Gemma 3 (the T5Gemma 2 way) ------------------------------------------------

def parent_of(config=STACK, seed=7):
    """A random Gemma 3 decoder-only model (every weight O(1), norms included)."""
    return randomised(build_model(config, dtype=np.float64), np.random.default_rng(seed))


def _check_t5gemma2_exact(model, enc_src, dec_src, rng):
    """The two exact invariants of an adapted T5Gemma 2."""
    ids = rng.integers(3, V, (2, 9))
    mask = np.ones((2, 9), dtype=np.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    # 1. the encoder with causal masks reproduces the encoder source's final hidden states
    h_src = enc_src.hidden_states({"input_ids": ids, "attention_mask": mask})
    real = mask.astype(bool)
    np.testing.assert_allclose(model.encode(ids, mask, causal=True)[real], h_src[real],
                               rtol=1e-12, atol=1e-12)
    # 2. the decoder whose merged attention sees no encoder key (every encoder token masked)
    # reproduces the decoder source's logits, whatever the encoder output
    dec_ids = rng.integers(3, V, (2, 7))
    enc = model.encode(ids, mask)
    none = np.zeros_like(mask)
    np.testing.assert_allclose(model.decode(dec_ids, enc, none),
                               dec_src.forward({"input_ids": dec_ids}), rtol=1e-12, atol=1e-12)
    # ... and with the encoder keys visible it differs (the merged attention reads them)
    assert np.abs(model.decode(dec_ids, enc, mask) - dec_src.forward(
        {"input_ids": dec_ids})).max() > 1e-3


def test_adapt_gemma3_into_t5gemma2_balanced(backend):
    from mini_encdec.training.adapt import adapt, adaptation_mapping
    src = parent_of()
    model = adapt(src, dtype=np.float64)
    assert model.config == t5gemma2_config(STACK)
    assert model.config.cross_attn_warmup_steps == 0
    mapping = adaptation_mapping(src)
    assert mapping["model.encoder.embed_tokens.weight"] == "A:model.embed_tokens.weight"
    assert "model.decoder.embed_tokens.weight" not in mapping  # one tied table
    assert not any("cross_attn" in k for k in mapping)  # merged attention: none
    for part in ("encoder", "decoder"):
        for w in ("q_norm", "k_norm", "q_proj", "o_proj"):
            key = f"model.{part}.layers.2.self_attn.{w}.weight"
            assert mapping[key] == f"A:model.layers.2.self_attn.{w}.weight"
        assert mapping[f"model.{part}.layers.0.pre_self_attn_layernorm.weight"] == \
            "A:model.layers.0.input_layernorm.weight"
    assert not any(v.startswith("fresh") for v in mapping.values())
    arrays = list(model.params.values()) + list(src.params.values())
    for i, (k, v) in enumerate(model.params.items()):  # copies, never aliases
        assert not any(np.shares_memory(v, w) for w in arrays[i + 1:]), f"{k} is an alias"
    _check_t5gemma2_exact(model, src, src, np.random.default_rng(8))


def test_adapt_gemma3_into_t5gemma2_unbalanced_depth(backend):
    """Two Gemma 3 parents of one width (encoder deeper than the decoder): the encoder and
    the one table from A, the decoder from B, nothing fresh, no warmup."""
    from mini_encdec.training.adapt import adapt
    dec_cfg = STACK.replace(num_hidden_layers=2, layer_types=("sliding_attention",
                                                               "full_attention"),
                            num_key_value_heads=1, sliding_window=2)
    a, b = parent_of(), parent_of(dec_cfg, seed=9)
    model = adapt(a, b, dtype=np.float64)
    assert model.config == t5gemma2_config(STACK, dec_cfg)
    _check_t5gemma2_exact(model, a, a.__class__(dec_cfg, {**b.params,
                          "model.embed_tokens.weight": a.params["model.embed_tokens.weight"]}),
                          np.random.default_rng(10))


def test_adapt_gemma3_errors_are_clear():
    from mini_encdec.training.adapt import AdaptError, adapt
    a = parent_of()
    with pytest.raises(AdaptError, match="one width"):
        adapt(a, parent_of(STACK.replace(hidden_size=24), seed=1))
    with pytest.raises(AdaptError, match="Gemma 3 .*qk_norm.* and the other is not"):
        adapt(a, parent_of(STACK.replace(qk_norm=False), seed=1))
    with pytest.raises(AdaptError, match="no cross-attention to warm up"):
        adapt(a, parent_of(STACK.replace(num_hidden_layers=2, layer_types=()), seed=1),
              warmup_steps=10)


# --- presets ---------------------------------------------------------------------------------

def test_t5gemma2_presets():
    from mini_encdec.config import count_parameters, encdec_preset, preset
    tiny = encdec_preset("t5gemma2_tiny")
    assert tiny == t5gemma2_config(preset("gemma3_tiny"))
    model = build_model(tiny, seed=0)
    src = np.random.default_rng(0).integers(3, 100, (1, 40))  # longer than the window 32
    logits = model.forward({"input_ids": src, "decoder_input_ids": src[:, :5]})
    assert logits.shape == (1, 5, 8192) and np.isfinite(logits).all()
    big = encdec_preset("t5gemma2_270m-270m")
    assert big.encoder.vocab_size == 262_208 and big.encoder.hidden_size == 640
    assert big.eoi_token_id == 256_000  # in this vocabulary: its own input vector
    assert tiny.eoi_token_id is None  # outside it
    # the text model of T5Gemma2ForConditionalGeneration, as transformers counts it on the
    # meta device (test_parity_t5gemma2.py); the vision tower is not counted
    assert count_parameters(big) == 368_465_792
    with pytest.raises(ValueError, match="T5Gemma 2"):
        encdec_preset("t5gemma2_tiny", merged_attention=False)


def test_cli_accepts_the_t5gemma2_presets():
    from mini_encdec.cli.runs import _check_preset
    _check_preset("t5gemma2_tiny")
    _check_preset("T5Gemma2_270m-270m")
    with pytest.raises(Exception, match="t5gemma2_tiny"):
        _check_preset("t5gemma2_small")


def test_cli_pretrains_a_t5gemma2_tiny(tmp_path):
    """`pretrain --preset t5gemma2_tiny` (UL2 on the shipped data) runs, saves and reloads
    the T5Gemma 2 config."""
    import json

    from mini_encdec.storage.checkpoint import load_model

    from .test_cli import run
    d = tmp_path / "t5g2"
    assert run("pretrain", "--preset", "t5gemma2_tiny", "--objective", "ul2", "--run-dir", d,
               "--quiet", "--set", "steps=2", "batch_size=2", "encoder_length=32",
               "decoder_length=32", "eval_batches=1") == 0
    losses = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r.get("loss", 0.0)) for r in losses)
    from mini_encdec.config import encdec_preset
    assert load_model(d).config == encdec_preset("t5gemma2_tiny")


# --- the eoi token's own input vector ------------------------------------------------------------

def eoi_batch(rng):
    b = batch_of(rng)
    b["input_ids"][0, [1, 4]] = EOI
    b["decoder_input_ids"][:, 2] = EOI
    return b


def test_eoi_vector_replaces_the_embedding_and_gets_its_gradient(backend):
    from mini_encdec.models.params import EOI_KEY
    model = model_of(T5G2_EOI)
    assert model.params[EOI_KEY].shape == (16,)
    assert not build_model(T5G2_EOI, seed=0).params[EOI_KEY].any()  # fresh: zeros
    rng = np.random.default_rng(11)
    b = eoi_batch(rng)
    src = {k: v for k, v in b.items() if k != "labels"}
    want = reference.t5gemma_forward(T5G2_EOI, model.params, b["input_ids"],
                                     b["decoder_input_ids"], b["attention_mask"])
    np.testing.assert_allclose(model.forward(src), want, rtol=1e-12, atol=1e-12)
    other = dict(model.params, **{EOI_KEY: model.params[EOI_KEY] + 0.5})
    assert np.abs(build_model(T5G2_EOI, other).forward(src) - want).max() > 1e-3
    sampled_gradcheck(model, b, rng)
    from mini_encdec.nn.gradcheck import numerical_grad
    _, grads = model.loss_and_grads(b)
    num = numerical_grad(lambda: model.loss(b), model.params[EOI_KEY], h=1e-6)
    np.testing.assert_allclose(grads[EOI_KEY], num, rtol=1e-6, atol=1e-8)
    E = model.params["model.encoder.embed_tokens.weight"]  # its row: the output use only
    num = numerical_grad(lambda: model.loss(b), E[EOI, :3], h=1e-6)
    np.testing.assert_allclose(grads["model.encoder.embed_tokens.weight"][EOI, :3], num,
                               rtol=1e-6, atol=1e-8)


def test_eoi_cached_steps_equal_full_forward(backend):
    model = model_of(T5G2_EOI)
    b = eoi_batch(np.random.default_rng(12))
    full = model.forward({k: v for k, v in b.items() if k != "labels"})
    enc = model.encode(b["input_ids"], b["attention_mask"])
    cache = init_cache(model, 2, enc, b["attention_mask"].astype(bool))
    ids = b["decoder_input_ids"]
    steps = [decoder_step(model, cache, ids[:, t:t + 1]) for t in range(ids.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-10)


def test_eoi_config_rules():
    from mini_encdec.training.adapt import adaptation_mapping
    with pytest.raises(ValueError, match="eoi_token_id"):
        EncDecConfig(encoder=STACK, decoder=STACK, merged_attention=True, eoi_token_id=V)
    with pytest.raises(ValueError, match="eoi_token_id"):
        T5G2_EOI.replace(tie_all_embeddings=False)
    assert EncDecConfig.from_dict(T5G2_EOI.to_dict()) == T5G2_EOI
    mapping = adaptation_mapping(parent_of(STACK.replace(vocab_size=256_008), seed=1))
    assert mapping["model.encoder.embed_tokens.eoi_embedding"] == "fresh zeros"
