"""Adaptation (SPEC.md section 3): the mapping, the exact checks, unbalanced fresh
cross-attention and its warmup, directories (ours and Hugging Face, streamed), and clear errors.

Marker task4_1: the classroom assignment on `_origin` (tutorials/assignments/README.md)
is graded by the mapping and the exact checks.
"""

import json

import numpy as np
import pytest

from mini_encdec.training.adapt import (AdaptError, DEFAULT_UNBALANCED_WARMUP, adapt,
                                       adapt_command, adapt_params, adaptation_mapping)
from mini_encdec.training.adapt_mapping import Origin, _origin
from mini_encdec.storage.checkpoint import load_model, save_model
from mini_encdec.config import GemmaConfig
from mini_encdec.storage.interop import load_hf, save_hf
from mini_encdec.models import build_model
from mini_encdec.storage.safetensors_io import SafetensorsFile

A_CFG = GemmaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3,
                    query_pre_attn_scalar=6)
B_CFG = GemmaConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=6, intermediate_size=20, sliding_window=2)


def source(config, seed):
    """A decoder-only model with every parameter random (norms too, so that a wrongly
    mapped norm changes the results)."""
    m = build_model(config, seed=seed)
    rng = np.random.default_rng(seed)
    for v in m.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    return m


def batch(rng, B=2, T=9, pad=True):
    ids = rng.integers(3, 40, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    if pad:
        mask[1, T - 3:] = 0  # right padding in the second row
        ids[1, T - 3:] = 0
    return ids, mask


@pytest.mark.task4_1
def test_mapping_literal_one_layer_balanced():
    """Balanced (one source A): each encoder and decoder weight copies A's weight of the same
    role, and each cross-attention copies its layer's self-attention (projections and norms)."""
    cfg = A_CFG.replace(num_hidden_layers=1)
    got = adaptation_mapping((cfg, source(cfg, 0).params))
    L = "A:model.layers.0."
    expected = {"model.encoder.embed_tokens.weight": "A:model.embed_tokens.weight"}
    for part in ("encoder", "decoder"):
        p = f"model.{part}.layers.0."
        if part == "decoder":
            expected["model.decoder.embed_tokens.weight"] = "A:model.embed_tokens.weight"
        for w in "qkvo":
            expected[f"{p}self_attn.{w}_proj.weight"] = f"{L}self_attn.{w}_proj.weight"
            if part == "decoder":
                expected[f"{p}cross_attn.{w}_proj.weight"] = f"{L}self_attn.{w}_proj.weight"
        for w in ("gate", "up", "down"):
            expected[f"{p}mlp.{w}_proj.weight"] = f"{L}mlp.{w}_proj.weight"
        expected[f"{p}pre_self_attn_layernorm.weight"] = f"{L}input_layernorm.weight"
        expected[f"{p}post_self_attn_layernorm.weight"] = f"{L}post_attention_layernorm.weight"
        if part == "decoder":
            expected[f"{p}pre_cross_attn_layernorm.weight"] = f"{L}input_layernorm.weight"
            expected[f"{p}post_cross_attn_layernorm.weight"] = \
                f"{L}post_attention_layernorm.weight"
        for w in ("pre", "post"):
            expected[f"{p}{w}_feedforward_layernorm.weight"] = \
                f"{L}{w}_feedforward_layernorm.weight"
        expected[f"model.{part}.norm.weight"] = "A:model.norm.weight"
    assert got == expected


def _check_exact(model, enc_src, dec_src, rng):
    """SPEC.md section 3's two exact checks on an adapted model."""
    ids, mask = batch(rng)
    # 1. the encoder with causal masks reproduces the encoder source's final hidden states
    h_src = enc_src.hidden_states({"input_ids": ids, "attention_mask": mask})
    h_enc = model.encode(ids, mask, causal=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(h_enc[real], h_src[real], rtol=1e-6, atol=1e-6)
    # 2. with cross-attention output projections zeroed, the decoder reproduces the decoder
    # source's logits on the decoder inputs, whatever the encoder output
    for i in range(model.config.decoder.num_hidden_layers):
        model.params[f"model.decoder.layers.{i}.cross_attn.o_proj.weight"][...] = 0
    dec_ids = rng.integers(3, 40, (2, 7))
    enc = model.encode(ids, mask)
    np.testing.assert_allclose(model.decode(dec_ids, enc, mask),
                               dec_src.forward({"input_ids": dec_ids}), rtol=1e-6, atol=1e-6)


@pytest.mark.task4_1
def test_balanced_exact_checks(backend):
    """A balanced adaptation copies (never aliases) every weight and passes the two exact
    checks: the causal encoder reproduces A's hidden states, the decoder with zeroed
    cross-attention A's logits."""
    src = source(A_CFG, 1)
    model = adapt(src)
    assert model.config.encoder == model.config.decoder == A_CFG
    assert model.config.cross_attn_warmup_steps == 0
    # copies, never aliases of the source's arrays or of each other
    arrays = list(model.params.values()) + list(src.params.values())
    for i, (k, v) in enumerate(model.params.items()):
        assert not any(np.shares_memory(v, w) for w in arrays[i + 1:]), f"{k} is an alias"
    _check_exact(model, src, src, np.random.default_rng(2))


@pytest.mark.task4_1
def test_origin_of_each_unbalanced_tensor():
    """Unbalanced (two sources): the encoder copies A, the decoder B, and the
    cross-attention, which has no source of its shape, is fresh: N(0, 0.02) projections
    and zero norms (SPEC.md section 3, _origin's docstring)."""
    want = {
        "model.encoder.layers.0.self_attn.q_proj.weight":
            Origin("A", "model.layers.0.self_attn.q_proj.weight"),
        "model.decoder.layers.1.self_attn.k_proj.weight":
            Origin("B", "model.layers.1.self_attn.k_proj.weight"),
        "model.decoder.layers.1.pre_self_attn_layernorm.weight":
            Origin("B", "model.layers.1.input_layernorm.weight"),
        "model.decoder.embed_tokens.weight": Origin("B", "model.embed_tokens.weight"),
        "model.decoder.norm.weight": Origin("B", "model.norm.weight"),
        "model.decoder.layers.1.cross_attn.q_proj.weight": Origin(None, init="normal"),
        "model.decoder.layers.1.cross_attn.o_proj.weight": Origin(None, init="normal"),
        "model.decoder.layers.1.pre_cross_attn_layernorm.weight": Origin(None, init="zeros"),
        "model.decoder.layers.1.post_cross_attn_layernorm.weight": Origin(None, init="zeros"),
    }
    for target, origin in want.items():
        got = _origin(target, balanced=False)
        assert got == origin, (f"_origin({target!r}, balanced=False) = {got!r}; expected "
                               f"{origin!r} ({origin})")


@pytest.mark.task4_1
def test_unbalanced_fresh_cross_attention_and_exact_checks(backend):
    """Unbalanced (encoder from A, decoder from B): the cross-attention is fresh (N(0, 0.02)
    projections of the right widths, zero norms, reproducible from the rng) and the two exact
    checks pass."""
    a, b = source(A_CFG, 3), source(B_CFG, 4)
    config, params = adapt_params(a, b, rng=np.random.default_rng(5), warmup_steps=4)
    assert config.encoder == A_CFG and config.decoder == B_CFG
    assert config.cross_attn_warmup_steps == 4
    p = "model.decoder.layers.1.cross_attn."
    # queries read the decoder width, keys/values the encoder's (A's) width
    assert params[p + "q_proj.weight"].shape == (2 * 6, 12)
    assert params[p + "k_proj.weight"].shape == (1 * 6, 16)
    assert params[p + "v_proj.weight"].shape == (1 * 6, 16)
    assert params[p + "o_proj.weight"].shape == (12, 2 * 6)
    fresh = np.concatenate([params[f"model.decoder.layers.{i}.cross_attn.{w}_proj.weight"]
                            .ravel() for i in range(2) for w in "qkvo"])
    assert abs(fresh.std() - 0.02) < 0.003 and abs(fresh.mean()) < 0.003
    for i in range(2):
        for n in ("pre", "post"):
            key = f"model.decoder.layers.{i}.{n}_cross_attn_layernorm.weight"
            assert not params[key].any(), f"{key}: unbalanced, a fresh norm is zeros"
    # the same rng seed gives the same fresh tensors; another seed different ones
    _, again = adapt_params(a, b, rng=np.random.default_rng(5))
    _, other = adapt_params(a, b, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(again[p + "k_proj.weight"], params[p + "k_proj.weight"])
    assert not np.array_equal(other[p + "k_proj.weight"], params[p + "k_proj.weight"])
    # defaults: unbalanced gets the paper's warmup
    assert adapt_params(a, b)[0].cross_attn_warmup_steps == DEFAULT_UNBALANCED_WARMUP
    _check_exact(build_model(config, params), a, b, np.random.default_rng(7))


def test_incompatible_sources_raise():
    a = source(A_CFG, 0)
    with pytest.raises(AdaptError, match="vocabulary of 40 tokens.*41"):
        adapt(a, source(B_CFG.replace(vocab_size=41), 1))
    with pytest.raises(AdaptError, match="eos_token_id is 1 in the encoder source and 5"):
        adapt(a, source(B_CFG.replace(eos_token_id=5), 1))
    enc = adapt(a)
    with pytest.raises(AdaptError, match="must be a decoder-only"):
        adapt(enc)
    with pytest.raises(AdaptError, match="rng"):
        adapt(a, rng=3)
    with pytest.raises(AdaptError, match="GemmaLM, a \\(GemmaConfig, params\\) pair"):
        adapt(42)


def test_our_checkpoint_directories(tmp_path):
    a, b = source(A_CFG, 8), source(B_CFG, 9)
    save_model(tmp_path / "a", A_CFG, a.params)
    save_model(tmp_path / "b", B_CFG, b.params)
    lines = []
    out = adapt_command(tmp_path / "a", tmp_path / "b", tmp_path / "c", warmup_steps=3,
                        seed=11, print_fn=lines.append, progress=False)
    model = load_model(out)
    config, params = adapt_params(a, b, rng=np.random.default_rng(11), warmup_steps=3)
    assert model.config == config
    for k, v in params.items():
        np.testing.assert_array_equal(model.params[k], v, err_msg=k)
    # one printed line per parameter naming its origin, plus the legend
    text = "\n".join(lines)
    for k, origin in adaptation_mapping(a, b).items():
        assert f"{k}" in text and origin in text
    assert f"A = {tmp_path / 'a'}" in text and "unbalanced" in text
    # balanced from one directory (the same path twice is balanced too)
    out = adapt_command(tmp_path / "a", tmp_path / "a", tmp_path / "d", print_fn=None)
    assert load_model(out).config.decoder == A_CFG


def test_different_tokenizer_files_raise(tmp_path):
    save_model(tmp_path / "a", A_CFG, source(A_CFG, 0).params)
    save_model(tmp_path / "b", B_CFG, source(B_CFG, 1).params)
    (tmp_path / "a" / "tokenizer.model").write_bytes(b"one")
    (tmp_path / "b" / "tokenizer.model").write_bytes(b"two")
    with pytest.raises(AdaptError, match="tokenizer.model differ"):
        adapt_command(tmp_path / "a", tmp_path / "b", tmp_path / "c", print_fn=None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_directories_are_streamed(tmp_path, dtype):
    """Gemma 2 directories in, a T5Gemma directory out: stored bytes copied unchanged,
    fresh tensors drawn exactly as the in-memory adaptation draws them."""
    a, b = source(A_CFG, 12), source(B_CFG, 13)
    save_hf(a, tmp_path / "a", dtype=dtype)
    save_hf(b, tmp_path / "b", dtype=dtype)
    (tmp_path / "a" / "tokenizer.model").write_bytes(b"spm")
    out = adapt_command(tmp_path / "a", tmp_path / "b", tmp_path / "c", warmup_steps=2,
                        seed=4, print_fn=None, progress=False)
    assert json.loads((out / "config.json").read_text())["model_type"] == "t5gemma"
    assert (out / "tokenizer.model").read_bytes() == b"spm"
    got = load_hf(out)
    # in memory, from the same (rounded) sources
    config, params = adapt_params(load_hf(tmp_path / "a"), load_hf(tmp_path / "b"),
                                  rng=np.random.default_rng(4), warmup_steps=2)
    assert got.config == config
    fa = SafetensorsFile(tmp_path / "a" / "model.safetensors")
    fc = SafetensorsFile(out / "model.safetensors")
    mapping = adaptation_mapping(tmp_path / "a", tmp_path / "b")
    for k, v in params.items():
        if "cross_attn" in k and dtype == "bfloat16":  # fresh, stored rounded to bf16
            np.testing.assert_allclose(got.params[k], v, rtol=2 ** -8, err_msg=k)
        else:
            np.testing.assert_array_equal(got.params[k], v, err_msg=k)
        assert fc.dtype(k) == {"float32": "F32", "bfloat16": "BF16"}[dtype]
        if mapping[k].startswith("A:"):
            assert fc.read_raw(k).tobytes() == fa.read_raw(mapping[k][2:]).tobytes()


def test_streamed_dtype_conversion_chunk_by_chunk(tmp_path, monkeypatch):
    """bfloat16 sources written as float32 (exact widening) and float16, 8 bytes at a time."""
    import mini_encdec.training.adapt as adapt_mod
    monkeypatch.setattr(adapt_mod, "COPY_CHUNK_BYTES", 8)
    save_hf(source(A_CFG, 17), tmp_path / "a", dtype="bfloat16")
    src = load_hf(tmp_path / "a")
    want = adapt(src)
    for dtype, tol in (("float32", 0), ("float16", 1e-3)):
        out = adapt_command(tmp_path / "a", None, tmp_path / dtype, dtype=dtype,
                            print_fn=None, progress=False)
        got = load_hf(out)
        for k, v in want.params.items():
            np.testing.assert_allclose(got.params[k], v, rtol=tol, atol=tol * 1e-2, err_msg=k)


def test_hf_output_from_memory_and_dtype_option(tmp_path):
    a = source(A_CFG, 14)
    save_model(tmp_path / "a", A_CFG, a.params)
    out = adapt_command(tmp_path / "a", None, tmp_path / "c", out_format="hf",
                        dtype="float16", print_fn=None)
    f = SafetensorsFile(out / "model.safetensors")
    assert {f.dtype(k) for k in f.keys()} == {"F16"}
    got = load_hf(out)
    want = adapt(a)
    for k, v in want.params.items():
        np.testing.assert_allclose(got.params[k], v, rtol=1e-3, atol=1e-4, err_msg=k)
    with pytest.raises(AdaptError, match="out_format"):
        adapt_command(tmp_path / "a", None, tmp_path / "d", out_format="onnx", print_fn=None)
    with pytest.raises(ValueError, match="is the --encoder-from source"):  # OutputError
        adapt_command(tmp_path / "a", None, tmp_path / "a", print_fn=None)


def test_unbalanced_warmup_trains_only_cross_attention():
    """For the first K steps only cross-attention (projections and its norms) changes;
    afterwards everything trains (the trainer reads EncDecConfig.cross_attn_warmup_steps)."""
    from mini_encdec.backend import use_backend
    from mini_encdec.training.optim import OptimConfig
    from mini_encdec.training.train import train
    rng = np.random.default_rng(0)
    ids, mask = batch(rng, B=2, T=6, pad=False)
    dec = rng.integers(3, 40, (2, 5))
    labels = rng.integers(3, 40, (2, 5))
    batches = [{"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
                "labels": labels}]
    optim = OptimConfig(lr=1e-2, schedule="constant", warmup_steps=0)
    K = 3
    a, b = source(A_CFG, 15), source(B_CFG, 16)
    start = adapt(a, b, rng=np.random.default_rng(1), warmup_steps=K)
    before = {k: v.copy() for k, v in start.params.items()}
    with use_backend("numpy"):  # the trainer's logic is under test, not the kernels
        train(start, batches, optim=optim, steps=K, eval_every=0, checkpoint_every=0,
              progress=False, plot=False)
    changed = {k for k, v in start.params.items() if not np.array_equal(v, before[k])}
    cross = {k for k in before if "cross_attn" in k}
    assert changed == cross
    longer = adapt(a, b, rng=np.random.default_rng(1), warmup_steps=K)
    with use_backend("numpy"):
        train(longer, batches, optim=optim, steps=K + 2, eval_every=0, checkpoint_every=0,
              progress=False, plot=False)
    changed = {k for k, v in longer.params.items() if not np.array_equal(v, before[k])}
    assert changed == set(before)


def test_memory_measurement_tool_on_a_tiny_shape(tmp_path, capsys):
    """The 2B measurement script (mini_encdec/tools) end to end on the tiny preset."""
    from mini_encdec.tools.measure_adapt_memory import main
    assert main(["--preset", "tiny", "--dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "peak RSS of the adapt process" in out and "verified" in out
    assert not (tmp_path / "m").exists()  # cleaned up
