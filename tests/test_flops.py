"""Analytic FLOPs against FLOPs counted by instrumenting the matmuls the models run."""

import numpy as np
import pytest

import mini_encdec.models.decoding as decoding_mod
import mini_encdec.models.encdec as encdec_mod
import mini_encdec.models.gemma as gemma_mod
import mini_encdec.nn.attention as attention_mod
import mini_encdec.nn.mlp as mlp_mod
from mini_encdec import ops
from mini_encdec.config import EncDecConfig, GemmaConfig, count_parameters, preset
from mini_encdec.models import build_model
from mini_encdec.models.flops import (_pairs, encode_flops, forward_flops, token_flops,
                                      train_step_flops)
from mini_encdec.models.decoding import decoder_step, init_cache
from mini_encdec.nn.masks import attention_mask

BASE = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)
CONFIGS = {
    "gemma": GemmaConfig(**BASE),
    "balanced": EncDecConfig(encoder=GemmaConfig(**BASE), decoder=GemmaConfig(**BASE)),
    "unbalanced": EncDecConfig(encoder=GemmaConfig(**BASE), decoder=GemmaConfig(
        **{**BASE, "hidden_size": 12, "num_hidden_layers": 3, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 6, "intermediate_size": 20})),
    "merged": EncDecConfig(encoder=GemmaConfig(**BASE), decoder=GemmaConfig(**BASE),
                           merged_attention=True),
}


@pytest.fixture
def counter(monkeypatch):
    """Count 2 FLOPs per multiply-add of every linear layer and attention core call."""
    count = {"flops": 0}
    from mini_encdec.nn.linear import linear_forward

    def counted_linear(x, W):
        count["flops"] += 2 * int(np.prod(x.shape[:-1])) * W.shape[0] * W.shape[1]
        return linear_forward(x, W)

    core = ops.resolve("attention_core_forward")

    def counted_core(q, k, v, mask, **kw):
        B, H, Tq, Dh = q.shape
        count["flops"] += 4 * B * H * Tq * k.shape[2] * Dh  # every pair computed (dense)
        return core(q, k, v, mask, **kw)

    def counted_plain(x, W):  # the decoding path's unchecked matmul
        return counted_linear(x, W)[0]

    for mod in (attention_mod, gemma_mod, encdec_mod, mlp_mod):
        monkeypatch.setattr(mod, "linear_forward", counted_linear)
    monkeypatch.setattr(decoding_mod, "_linear", counted_plain)
    monkeypatch.setattr(mlp_mod, "linear_unchecked", counted_plain)
    monkeypatch.setattr(ops, "attention_core_forward", counted_core, raising=False)
    monkeypatch.setattr(ops, "linear_forward", counted_linear)  # the models' projections
    return count


def _batch(config, T, S):
    if isinstance(config, GemmaConfig):
        return {"input_ids": np.full((1, T), 5)}
    return {"input_ids": np.full((1, S), 5), "decoder_input_ids": np.full((1, T), 5)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_forward_flops_match_counted_matmuls(name, counter):
    config = CONFIGS[name]
    model = build_model(config)
    T, S = 7, 5
    model.forward(_batch(config, T, S))
    S_arg = None if name == "gemma" else S
    assert counter["flops"] == forward_flops(config, T, S_arg, attention="dense")
    assert train_step_flops(config, 4, T, S_arg, attention="dense") == 12 * counter["flops"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_token_flops_match_counted_cached_step(name, counter):
    """One cached step with `context` tokens already cached computes exactly the allowed
    pairs (the local layers keep W - 1 keys), so it matches the analytic count."""
    config = CONFIGS[name]
    model = build_model(config)
    S = 5
    enc = None if name == "gemma" else model.encode(np.full((1, S), 5))
    cache = init_cache(model, 1, enc)  # projects the encoder output once
    if enc is not None:  # the encoder ran dense (window 3 < S): compare the dense count
        assert counter["flops"] == encode_flops(config, S, attention="dense")
    for context in range(6):
        counter["flops"] = 0
        decoder_step(model, cache, np.array([[5]]))
        assert counter["flops"] == token_flops(config, context, None if enc is None else S)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 3, 20])
def test_allowed_pairs_equal_mask_count(causal, window):
    pos = np.arange(9)
    n = int(attention_mask(pos, pos, causal=causal, window=window).sum())
    assert _pairs(9, 9, causal=causal, window=window, attention="allowed") == n
    assert _pairs(9, 9, causal=causal, window=window, attention="dense") == 81


@pytest.mark.parametrize("window", [None, 1, 2, 3, 4, 5, 20])
def test_split_encoder_window_pairs_equal_mask_count(window):
    """T5Gemma 2's split encoder window: the pairs counted are the pairs its mask allows."""
    pos = np.arange(9)
    n = int(attention_mask(pos, pos, causal=False, window=window, split=True).sum())
    assert _pairs(9, 9, causal=False, window=window, attention="allowed", split=True) == n


def test_one_token_forward_is_two_flops_per_weight():
    """At T = 1 every weight matrix is used once per token (2 FLOPs per weight) plus one
    (query, key) pair per layer; norms have no matmul."""
    for cfg in (preset("2b"), preset("tiny")):
        norms = cfg.num_hidden_layers * 4 * cfg.hidden_size + cfg.hidden_size
        attend = cfg.num_hidden_layers * 4 * cfg.num_attention_heads * cfg.head_dim
        assert forward_flops(cfg, 1) == 2 * (count_parameters(cfg) - norms) + attend
    # Gemma 2 2B: about 5.2 GFLOPs per token at short context (2.6B parameters, tied)
    assert 5.0e9 < token_flops(preset("2b"), 0) < 5.5e9


def test_encdec_costs_more_to_train_but_not_per_token():
    """The paper's point at equal size: the 2B-2B encoder-decoder costs about twice a 2B
    decoder-only model per training token, but a generated token costs about the same."""
    dec_only = preset("2b")
    encdec = EncDecConfig(encoder=dec_only, decoder=dec_only)
    ratio = forward_flops(encdec, 512, 512) / forward_flops(dec_only, 1024)
    assert 0.9 < ratio < 1.3  # same total tokens, encoder tokens skip the logits
    per_token = token_flops(encdec, 256, 512) / token_flops(dec_only, 768)
    assert 1.0 < per_token < 1.6  # + cross-attention projections and attention


def test_bad_arguments():
    with pytest.raises(ValueError, match="S"):
        forward_flops(CONFIGS["balanced"], 4)
    with pytest.raises(ValueError, match="attention"):
        forward_flops(CONFIGS["gemma"], 4, attention="sparse")
    with pytest.raises(ValueError, match="T"):
        forward_flops(CONFIGS["gemma"], 0)
    with pytest.raises(ValueError, match="config"):
        token_flops({"hidden_size": 4}, 3)


def test_prefill_counts_the_last_positions_logits_only():
    from mini_encdec.models.flops import forward_flops, prefill_flops
    cfg = preset("tiny")
    for T in (1, 7, 64):
        # generate() computes the prompt's logits at its last position only
        full_logits = 2 * T * cfg.hidden_size * cfg.vocab_size
        one_row = 2 * cfg.hidden_size * cfg.vocab_size
        assert prefill_flops(cfg, T) == forward_flops(cfg, T) - full_logits + one_row
    with pytest.raises(ValueError, match="GemmaConfig"):
        prefill_flops(EncDecConfig(encoder=cfg, decoder=cfg), 8)


@pytest.mark.parametrize("name", sorted(CONFIGS) + ["gemma3"])
def test_decode_step_bytes_are_the_weights_and_the_keys_a_step_reads(name, monkeypatch):
    """decode_step_bytes = the weights a step reads (decoding.step_weight_bytes) + the
    keys and values its attention calls receive, counted on real cached steps of 2 rows
    (the local layers keep W - 1 = 2 keys, merged ones read the encoder's beside them)."""
    from mini_encdec.models.decoding import step_weight_bytes
    from mini_encdec.models.flops import decode_step_bytes
    config = CONFIGS.get(name) or GemmaConfig(**{**BASE, "qk_norm": True,
                                                 "num_hidden_layers": 3})
    model = build_model(config)  # float32
    B, S = 2, 5
    enc = None if isinstance(config, GemmaConfig) else model.encode(np.full((B, S), 5))
    S_arg = None if enc is None else S
    one, two = (decode_step_bytes(config, 0, S_arg, batch=b) for b in (1, 2))
    assert 2 * one - two == step_weight_bytes(model)  # the rows share the weights
    read = []
    core = ops.attention_core_forward

    def spy(q, k, v, mask, **kw):
        read.append(k.nbytes + v.nbytes)
        return core(q, k, v, mask, **kw)
    monkeypatch.setattr(ops, "attention_core_forward", spy)
    cache = init_cache(model, B, enc)
    for context in range(6):
        read.clear()
        decoder_step(model, cache, np.full((B, 1), 5))
        assert decode_step_bytes(config, context, S_arg, batch=B) == \
            step_weight_bytes(model) + sum(read), f"context {context}"
    with pytest.raises(ValueError, match="batch"):
        decode_step_bytes(config, 0, S_arg, batch=0)
