"""KV cache and generation: cached logits == full forward, cache == no cache, padding,
stopping at EOS, sampling filters, beam search scores, bad arguments."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_encdec.config import SLIDING, EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.models.generate import (beam_search, generate, log_softmax, sample_tokens,
                                         sampling_probs)
from mini_encdec.models.decoding import decoder_step, init_cache

V = 50
EOS, PAD, BOS = 1, 0, 2
BASE = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)


def cfg(**kw):
    return GemmaConfig(**{**BASE, **kw})


def model_of(config, seed=0):
    model = build_model(config, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    return model


ENCDEC = {
    "balanced": lambda: EncDecConfig(encoder=cfg(), decoder=cfg()),
    "unbalanced": lambda: EncDecConfig(encoder=cfg(), decoder=cfg(
        hidden_size=12, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        head_dim=6, intermediate_size=20, sliding_window=2)),
    "merged": lambda: EncDecConfig(encoder=cfg(), decoder=cfg(), merged_attention=True),
    "tie_all": lambda: EncDecConfig(encoder=cfg(), decoder=cfg(), tie_all_embeddings=True),
}


# --- cached step-by-step logits == full forward ------------------------------------------------

@pytest.mark.task5_3
def test_cached_steps_equal_full_forward_decoder_only(backend):
    model = model_of(cfg())
    rng = np.random.default_rng(1)
    ids = rng.integers(3, V, (2, 9))  # 9 tokens, window 3
    full = model.forward({"input_ids": ids})
    cache = init_cache(model, 2)
    steps = [decoder_step(model, cache, ids[:, :2])]  # a 2-token prefill, then 1 at a time
    steps += [decoder_step(model, cache, ids[:, t:t + 1]) for t in range(2, 9)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-11, atol=1e-11)
    # the local layer keeps only the last W - 1 = 2 keys; the global one keeps all 9
    assert cache.kv[0][0].shape == (2, 2, 2, 8)
    assert cache.kv[1][0].shape == (2, 2, 9, 8)


@pytest.mark.task5_3
@settings(max_examples=15)
@given(W=st.integers(1, 5), prefill=st.integers(1, 4), steps=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_local_layers_keep_exactly_the_last_w_minus_1_keys(W, prefill, steps, seed):
    """After every call, a local layer's cache holds the last min(seen, W - 1) keys (all a
    later query can reach: 0 <= q - k < W, and the query's own key comes with it), a global
    layer every key seen; the cached logits equal the full forward's."""
    config = cfg(num_hidden_layers=2, sliding_window=W)  # layer 0 local, layer 1 global
    model = model_of(config, seed)
    n = prefill + steps
    ids = np.random.default_rng(seed).integers(3, V, (2, n))
    full = model.forward({"input_ids": ids})
    cache = init_cache(model, 2)
    bounds = [(0, prefill)] + [(t, t + 1) for t in range(prefill, n)]
    for a, b in bounds:
        got = decoder_step(model, cache, ids[:, a:b])
        np.testing.assert_allclose(got, full[:, a:b], rtol=1e-10, atol=1e-10,
                                   err_msg=f"cached logits of tokens {a}..{b - 1}, window {W}")
        local, glob = (cache.kv[i][0].shape[2] for i in (0, 1))
        assert local == min(b, W - 1), \
            f"window {W}, {b} tokens seen: the local layer caches {local} keys, " \
            f"expected min({b}, W - 1) = {min(b, W - 1)}"
        assert glob == b, f"{b} tokens seen: the global layer caches {glob} keys"


@pytest.mark.task5_3
def test_cached_left_padded_prompt_equals_full_forward():
    model = model_of(cfg())
    rng = np.random.default_rng(2)
    ids = rng.integers(3, V, (2, 8))
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, :3] = 0  # left padding in row 1
    ids[1, :3] = PAD
    full = model.forward({"input_ids": ids, "attention_mask": mask})
    cache = init_cache(model, 2)
    first = decoder_step(model, cache, ids[:, :5], mask[:, :5].astype(bool))
    rest = [decoder_step(model, cache, ids[:, t:t + 1]) for t in range(5, 8)]
    got = np.concatenate([first] + rest, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], full[real], rtol=1e-11, atol=1e-11)


@pytest.mark.task5_3
@pytest.mark.parametrize("kind", sorted(ENCDEC))
def test_cached_steps_equal_full_forward_encdec(kind):
    model = model_of(ENCDEC[kind]())
    rng = np.random.default_rng(3)
    src = rng.integers(3, V, (2, 6))
    mask = np.ones((2, 6), dtype=np.int64)
    mask[0, 4:] = 0
    dec = rng.integers(3, V, (2, 7))  # 7 decoder tokens > window
    full = model.forward({"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec})
    enc = model.encode(src, mask)
    cache = init_cache(model, 2, enc, mask.astype(bool))
    steps = [decoder_step(model, cache, dec[:, t:t + 1]) for t in range(7)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("kind", ["decoder"] + sorted(ENCDEC))
def test_last_only_steps_equal_the_last_of_all_positions(kind, backend):
    """decoder_step(last_only=True) (what generation runs) gives the last position's
    logits of the all-positions step, step after step (prefill of 5 with left padding, then 1)."""
    model = model_of(cfg() if kind == "decoder" else ENCDEC[kind]())
    rng = np.random.default_rng(4)
    ids = rng.integers(3, V, (2, 9))
    valid = np.ones((2, 9), bool)
    enc = enc_mask = None
    if kind != "decoder":
        src = rng.integers(3, V, (2, 6))
        enc_mask = np.ones((2, 6), bool)
        enc_mask[1, 4:] = False
        enc = model.encode(src, enc_mask.astype(np.int64))
    else:
        valid[1, :2] = False  # left padding in row 1
    first = 5 if kind == "decoder" else 1
    caches = [init_cache(model, 2, enc, enc_mask) for _ in range(2)]
    spans = [(0, first)] + [(t, t + 1) for t in range(first, 9)]
    for a, b in spans:
        ref = decoder_step(model, caches[0], ids[:, a:b], valid[:, a:b])
        got = decoder_step(model, caches[1], ids[:, a:b], valid[:, a:b], last_only=True)
        assert got.shape == (2, 1, V)
        np.testing.assert_allclose(got[:, 0], ref[:, -1], rtol=1e-11, atol=1e-11)


# --- generation: cache == no cache, padding, EOS -----------------------------------------------

PROMPTS = [[BOS, 5, 6, 7, 8], [BOS, 9], [BOS, 11, 12, 13]]


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_cache_equals_no_cache_decoder_only(method):
    model = model_of(cfg())
    kw = dict(max_new_tokens=7, method=method, num_beams=3, top_k=10, top_p=0.9,
              temperature=1.5)
    a = generate(model, PROMPTS, rng=np.random.default_rng(5), **kw)
    b = generate(model, PROMPTS, use_cache=False, rng=np.random.default_rng(5), **kw)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 7)


@pytest.mark.parametrize("kind", sorted(ENCDEC))
@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_cache_equals_no_cache_encdec(kind, method):
    model = model_of(ENCDEC[kind](), seed=4)
    kw = dict(max_new_tokens=6, method=method, num_beams=2, seed=7)
    sources = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    np.testing.assert_array_equal(generate(model, sources, **kw),
                                  generate(model, sources, use_cache=False, **kw))


@pytest.mark.parametrize("encdec", [False, True])
def test_batch_of_different_lengths_equals_one_by_one(encdec):
    model = model_of(ENCDEC["unbalanced"]() if encdec else cfg(), seed=6)
    batch = generate(model, PROMPTS, max_new_tokens=6)
    beams, _ = beam_search(model, PROMPTS, max_new_tokens=6, num_beams=3)
    for i, p in enumerate(PROMPTS):
        one = generate(model, [p], max_new_tokens=6)
        np.testing.assert_array_equal(batch[i, :one.shape[1]], one[0])
        one_beam, _ = beam_search(model, [p], max_new_tokens=6, num_beams=3)
        np.testing.assert_array_equal(beams[i, :one_beam.shape[1]], one_beam[0])


def test_array_inputs_with_any_padding_side():
    model = model_of(cfg(), seed=7)
    ref = generate(model, PROMPTS, max_new_tokens=4)
    ids = np.zeros((3, 5), dtype=np.int64)
    mask = np.zeros((3, 5), dtype=np.int64)
    for b, p in enumerate(PROMPTS):  # right-padded array in, same result
        ids[b, :len(p)], mask[b, :len(p)] = p, 1
    np.testing.assert_array_equal(generate(model, ids, attention_mask=mask, max_new_tokens=4), ref)


def test_per_sequence_stop_at_eos():
    """Make EOS the greedy choice of row 0 at step 1: row 0 ends there and is padded
    afterwards, the other row continues; cache and no cache agree."""
    model = model_of(cfg(), seed=8)
    prompts = [[BOS, 5, 6], [BOS, 30, 31, 32]]
    before = generate(model, prompts, max_new_tokens=5)
    E = model.params["model.embed_tokens.weight"]
    assert before[0, 0] != EOS
    E[EOS] = 3.0 * E[before[0, 0]]  # EOS now outscores row 0's first choice
    after = generate(model, prompts, max_new_tokens=5)
    assert after[0, 0] == EOS and np.all(after[0, 1:] == PAD)
    row1_eos = np.nonzero(after[1] == EOS)[0]
    if row1_eos.size:
        assert np.all(after[1, row1_eos[0] + 1:] == PAD)
    np.testing.assert_array_equal(after, generate(model, prompts, max_new_tokens=5,
                                                  use_cache=False))
    single = generate(model, [prompts[0]], max_new_tokens=5)
    assert single.shape == (1, 1)  # everything finished: generation stops early


# --- sampling and beam search ------------------------------------------------------------------

@given(st.integers(0, 10_000), st.integers(1, 12), st.floats(0.05, 1.0), st.floats(0.3, 3.0))
def test_sampling_probs_filters(seed, top_k, top_p, temperature):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((3, 12)) * 3
    p = sampling_probs(logits, temperature, top_k, top_p)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    assert np.all((p > 0).sum(-1) <= top_k)
    full = sampling_probs(logits, temperature, top_k)
    for b in range(3):
        kept = p[b] > 0
        assert full[b][kept].sum() >= top_p - 1e-12  # the nucleus reaches top_p ...
        smallest = full[b][kept].min()  # ... and is minimal: without its last token it doesn't
        assert full[b][kept].sum() - smallest < top_p + 1e-12
        assert np.argmax(logits[b]) in np.nonzero(kept)[0]
    tok = sample_tokens(p, rng)
    assert np.all(p[np.arange(3), tok] > 0)


def test_sampling_seeded_and_limits():
    model = model_of(cfg(), seed=9)
    kw = dict(max_new_tokens=8, method="sample", temperature=2.0)
    a = generate(model, PROMPTS, seed=1, **kw)
    np.testing.assert_array_equal(a, generate(model, PROMPTS, seed=1, **kw))
    assert not np.array_equal(a, generate(model, PROMPTS, seed=2, **kw))
    greedy = generate(model, PROMPTS, max_new_tokens=8)
    np.testing.assert_array_equal(generate(model, PROMPTS, seed=3, top_k=1, **kw), greedy)
    np.testing.assert_array_equal(generate(model, PROMPTS, seed=3, top_p=1e-9, **kw), greedy)


def test_sample_frequencies_follow_probs():
    rng = np.random.default_rng(10)
    p = np.array([[0.5, 0.3, 0.2, 0.0]])
    draws = np.array([sample_tokens(p, rng)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / 4000
    np.testing.assert_allclose(freq, p[0], atol=0.03)


@pytest.mark.task5_3
@pytest.mark.parametrize("use_cache", [True, False])
def test_encdec_generation_starts_from_bos(use_cache):
    """The decoder's first input is BOS (not pad): greedy tokens equal the argmax of a
    full forward whose decoder input is [BOS] + the tokens generated so far."""
    model = model_of(ENCDEC["balanced"](), seed=3)
    src = [5, 6, 7, 8]
    got = generate(model, [src], max_new_tokens=4, use_cache=use_cache, stop_at_eos=False)[0]
    dec = [BOS]
    for _ in range(4):
        logits = model.forward({"input_ids": np.array([src]),
                                "decoder_input_ids": np.array([dec])})
        dec.append(int(np.argmax(logits[0, -1])))
    assert got.tolist() == dec[1:], (f"generated {got.tolist()}; a decoder started from BOS "
                                     f"({BOS}) gives {dec[1:]}")


def test_beam_one_equals_greedy_and_scores_are_normalised_logprobs():
    model = model_of(ENCDEC["balanced"](), seed=11)
    sources = [[5, 6, 7, 8], [9, 10]]
    greedy = generate(model, sources, max_new_tokens=5)
    one, _ = beam_search(model, sources, num_beams=1, max_new_tokens=5)
    np.testing.assert_array_equal(one, greedy)
    for lp in (0.0, 1.0):
        tokens, scores = beam_search(model, sources, num_beams=3, max_new_tokens=5,
                                     length_penalty=lp)
        for b, src in enumerate(sources):
            seq = tokens[b]
            n = int(np.argmax(seq == EOS)) + 1 if EOS in seq else len(seq)
            dec_in = np.array([[BOS] + list(seq[:n - 1])])
            logits = model.forward({"input_ids": np.array([src]), "decoder_input_ids": dec_in})
            logp = log_softmax(logits[0])[np.arange(n), seq[:n]].sum()
            assert np.isclose(scores[b], logp / n ** lp, rtol=1e-9)
            if lp == 0.0:  # beam search never returns worse than greedy's path here
                g = greedy[b]
                m = int(np.argmax(g == EOS)) + 1 if EOS in g else len(g)
                gl = model.forward({"input_ids": np.array([src]),
                                    "decoder_input_ids": np.array([[BOS] + list(g[:m - 1])])})
                assert scores[b] >= log_softmax(gl[0])[np.arange(m), g[:m]].sum() - 1e-9


# --- bad arguments -----------------------------------------------------------------------------

def test_bad_generation_arguments():
    model = model_of(cfg())
    cases = [
        (dict(method="nucleus"), "method"),
        (dict(method="sample", temperature=0.0), "temperature"),
        (dict(method="sample", top_p=1.5), "top_p"),
        (dict(method="sample", top_k=0), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(method="beam", num_beams=0), "num_beams"),
        (dict(method="sample", rng=3), "rng"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            generate(model, PROMPTS, **kw)
    with pytest.raises(ValueError, match="inputs"):
        generate(model, [[BOS, V + 3]])
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[BOS], []])
    with pytest.raises(ValueError, match="inputs"):
        generate(model, "hello")
    with pytest.raises(ValueError, match="model"):
        generate(object(), PROMPTS)


def test_forced_length_generates_past_eos():
    """stop_at_eos=False: every row gets exactly max_new_tokens, the prefix up to the
    first EOS equals the stopping run's output."""
    from mini_encdec import preset
    from mini_encdec.models import build_model
    from mini_encdec.models.generate import generate
    cfg = preset("tiny", vocab_size=32, num_hidden_layers=2, hidden_size=32, head_dim=8,
                 intermediate_size=64)
    model = build_model(cfg, seed=3)
    eos = cfg.eos_token_id
    prompts = [[2, 7, 9], [2, 11]]
    # point EOS's embedding along row 0's last hidden state: row 0 emits EOS first
    h = model.hidden_states({"input_ids": np.array([prompts[0]])})[0, -1]
    model.params["model.embed_tokens.weight"][eos] = 50.0 * h / np.linalg.norm(h) ** 2
    stopped = generate(model, prompts, max_new_tokens=6)
    forced = generate(model, prompts, max_new_tokens=6, stop_at_eos=False)
    assert stopped[0, 0] == eos and (stopped[0, 1:] == cfg.pad_token_id).all()
    assert forced.shape == (2, 6) and (forced[0, 1:] != cfg.pad_token_id).all()
    for row in range(2):  # the same tokens up to and including the first EOS
        n = next((i + 1 for i, t in enumerate(stopped[row]) if t == eos), stopped.shape[1])
        np.testing.assert_array_equal(forced[row, :n], stopped[row, :n])
    with pytest.raises(ValueError, match="stop_at_eos"):
        generate(model, prompts, stop_at_eos="no")
    with pytest.raises(ValueError, match="beam search"):
        generate(model, prompts, method="beam", stop_at_eos=False)


def test_the_cache_owns_its_fused_weights_and_leaves_the_parameters_alone():
    """The fused q/k/v and gate/up matrices belong to one request's cache: model.params
    keeps its own arrays (not views), and a parameter update between two requests, in
    place or by assignment, reaches the next request."""
    model = model_of(cfg())
    ids = np.array([[BOS, 5, 6, 7, 8]])
    before_params = {k: v for k, v in model.params.items()}

    def cached_equals_full():  # a new request's prefill logits == the full forward
        cache = init_cache(model, 1)
        got = decoder_step(model, cache, ids)
        np.testing.assert_allclose(got, model.forward({"input_ids": ids}), rtol=1e-11,
                                   atol=1e-11)
        return got, cache

    before, cache = cached_equals_full()
    key = "model.layers.0.self_attn.k_proj.weight"
    assert all(model.params[k] is v for k, v in before_params.items())  # not replaced
    assert not np.shares_memory(model.params[key], cache.fused[0]["qkv"])
    for name in ("q", "k", "v"):  # in place, as the optimizer updates parameters
        model.params[f"model.layers.0.self_attn.{name}_proj.weight"] *= 3.0
    model.params["model.layers.1.mlp.up_proj.weight"] += 0.5
    after, _ = cached_equals_full()
    assert not np.allclose(after, before)
    model.params[key] = model.params[key] * 0.5  # a new array
    again, _ = cached_equals_full()
    assert not np.allclose(again, after)


@pytest.mark.parametrize("kind", ["decoder", "merged", "balanced"])
def test_decoding_steps_read_every_cached_key_in_place(kind, monkeypatch):
    """The keys and values a decoding step attends over are views of the cache's buffers,
    never copies; merged attention's global layers hold [encoder ; decoder keys] in one
    buffer, its local layers copy a bounded S + W keys (the encoder's and the window)."""
    import mini_encdec.models.decoding as decoding
    config = cfg() if kind == "decoder" else ENCDEC[kind]()
    model = model_of(config)
    dec = config if kind == "decoder" else config.decoder
    rng = np.random.default_rng(4)
    S = 5
    if kind == "decoder":
        cache = init_cache(model, 2)
    else:
        src = rng.integers(3, V, (2, S))
        cache = init_cache(model, 2, model.encode(src, np.ones((2, S), np.int64)),
                           np.ones((2, S), bool))
    seen = []
    core = decoding.ops.attention_core_forward

    def spy(q, k, v, mask, **kw):
        seen.append((k, v, mask))
        return core(q, k, v, mask, **kw)

    monkeypatch.setattr(decoding.ops, "attention_core_forward", spy)
    steps = 6  # more than the window (3)
    for t in range(steps):
        decoder_step(model, cache, rng.integers(3, V, (2, 1)))
    buffers = [b.buf for b in cache._k + cache._v]
    # the cross-attention's own keys (merged local layers pass copies, never these)
    cross = [id(kv[0]) for kv in cache.memory_kv or [] if kv is not None]
    self_attn = [s for s in seen if id(s[0]) not in cross]
    assert len(self_attn) == steps * dec.num_hidden_layers
    for j, (k, v, mask) in enumerate(self_attn):
        assert mask.shape[-1] == k.shape[2]
        local = dec.layer_types[j % dec.num_hidden_layers] == SLIDING
        if kind == "merged" and local:
            assert k.shape[2] <= S + dec.sliding_window  # W - 1 kept + the new key
            continue
        assert any(np.shares_memory(k, b) for b in buffers)
        assert any(np.shares_memory(v, b) for b in buffers)


@pytest.mark.parametrize("kind", ["decoder", "gemma3", "balanced", "unbalanced", "merged"])
def test_every_cached_layer_equals_its_training_block(kind, monkeypatch, backend):
    """The fused decoding path is the training blocks' equations: every layer's output in
    a cached prefill and in the cached steps after it equals models/blocks.py's block
    (encoder / decoder / merged) run on that layer's inputs for the whole sequence."""
    import mini_encdec.models.decoding as decoding
    from mini_encdec.models import blocks
    from mini_encdec.models.decoding import decoder_parts
    from mini_encdec.models.inputs import (memory_mask, merge_masks, positions_from_mask,
                                           rope_for, self_attention_masks)
    if kind in ("decoder", "gemma3"):  # Gemma 3: q/k norms, two RoPE bases, 2 local : 1 global
        config = cfg() if kind == "decoder" else cfg(
            num_hidden_layers=3, layer_types=("sliding_attention",) * 2 + ("full_attention",),
            qk_norm=True, rope_theta=1000.0, rope_local_theta=10.0, rope_scaling_factor=4.0,
            attn_logit_softcapping=None, final_logit_softcapping=None)
    else:
        config = ENCDEC[kind]()
    model = model_of(config)
    spec, _ = decoder_parts(model)
    dec = spec.cfg
    rng = np.random.default_rng(7)
    B, T, S = 2, 6, 5
    ids = rng.integers(3, V, (B, T))
    memory = mem_mask = None
    if kind in ("decoder", "gemma3"):
        cache = init_cache(model, B)
    else:
        src, src_mask = rng.integers(3, V, (B, S)), np.ones((B, S), np.int64)
        src_mask[1, -2:] = 0  # padding in the encoder input
        memory = model.encode(src, src_mask)
        cache = init_cache(model, B, memory, src_mask.astype(bool))
        mem_mask = memory_mask(src_mask.astype(bool), S)
    seen = {i: [] for i in range(dec.num_hidden_layers)}
    cached = decoding.cached_block_forward

    def record(spec_, P, i, x, cache_, mask, rope):
        out = cached(spec_, P, i, x, cache_, mask, rope)
        seen[i].append((x, out))
        return out
    monkeypatch.setattr(decoding, "cached_block_forward", record)
    decoder_step(model, cache, ids[:, :4])  # a prefill of 4, then one token at a time
    for t in range(4, T):
        decoder_step(model, cache, ids[:, t:t + 1])
    pos = positions_from_mask(None, T)
    masks = self_attention_masks(dec, pos, pos, causal=True)
    if spec.merged:
        masks = merge_masks(masks, mem_mask, B)
    rope = rope_for(dec, pos, np.float64)
    for i, calls in seen.items():
        x_in = np.concatenate([c[0] for c in calls], axis=1)  # (B, T, D), as the cache saw it
        x_out = np.concatenate([c[1] for c in calls], axis=1)
        p, mask, rope_i = spec.layer(i), masks[dec.layer_types[i]], rope[dec.layer_types[i]]
        if spec.cross:
            want, _ = blocks.decoder_block_forward(dec, model.params, p, spec.attn_norms, x_in,
                                                   mask, rope_i, memory, mem_mask)
        elif spec.merged:
            want, _ = blocks.merged_block_forward(dec, model.params, p, spec.attn_norms, x_in,
                                                  mask, rope_i, memory)
        else:
            want, _ = blocks.encoder_block_forward(dec, model.params, p, spec.attn_norms, x_in,
                                                   mask, rope_i)
        np.testing.assert_allclose(x_out, want, rtol=1e-11, atol=1e-11, err_msg=f"layer {i}")
