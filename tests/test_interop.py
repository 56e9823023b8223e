"""interop without torch: config translation, load/save round trips, dtypes, shards, errors.

The same directories are checked against `transformers` itself in test_parity_hf.py.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings

from mini_encdec.config import EncDecConfig, GemmaConfig
from mini_encdec.storage.interop import (InteropError, config_from_hf, hf_config, is_hf_dir,
                                 load_hf, load_hf_params, save_hf, save_hf_params)
from mini_encdec.models import build_model
from mini_encdec.storage.safetensors_io import SafetensorsFile, save_tensors

from .strategies import encdec_configs, gemma_configs

G = GemmaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3,
                query_pre_attn_scalar=6)
E = EncDecConfig(encoder=G, decoder=G.replace(hidden_size=12, num_hidden_layers=2),
                 cross_attn_warmup_steps=7)


@given(gemma_configs())
def test_gemma_config_roundtrip(cfg):
    assert config_from_hf(hf_config(cfg)) == cfg


@given(encdec_configs())
def test_encdec_config_roundtrip(cfg):
    back = config_from_hf(hf_config(cfg))
    assert back == cfg and back.cross_attn_warmup_steps == cfg.cross_attn_warmup_steps


def test_rope_theta_old_and_new_forms():
    d = hf_config(G.replace(rope_theta=500.0))
    assert d["rope_parameters"] == {"rope_type": "default", "rope_theta": 500.0}
    new = {k: v for k, v in d.items() if k != "rope_theta"}
    old = {k: v for k, v in d.items() if k != "rope_parameters"}
    assert config_from_hf(new).rope_theta == config_from_hf(old).rope_theta == 500.0
    with pytest.raises(InteropError, match="rope type 'linear'"):
        config_from_hf(dict(new, rope_parameters={"rope_type": "linear", "factor": 2.0}))


def test_t5gemma_top_level_vocab_overrides_both_halves():
    d = hf_config(E)
    d["encoder"]["vocab_size"] = d["decoder"]["vocab_size"] = 7  # stale halves
    assert config_from_hf(d).vocab_size == 40
    assert config_from_hf(d).encoder.vocab_size == 40


def test_config_errors_are_clear():
    d = hf_config(G)
    with pytest.raises(InteropError, match="model_type 'llama'"):
        config_from_hf(dict(d, model_type="llama", architectures=["LlamaForCausalLM"]))
    with pytest.raises(InteropError, match="hidden_activation 'silu'"):
        config_from_hf(dict(d, hidden_activation="silu"))
    with pytest.raises(InteropError, match="missing config field 'hidden_size'"):
        config_from_hf({k: v for k, v in d.items() if k != "hidden_size"})
    with pytest.raises(InteropError, match="query_pre_attn_scalar=6.5"):
        hf_config(G.replace(query_pre_attn_scalar=6.5))
    with pytest.raises(InteropError, match="merged_attention"):
        hf_config(EncDecConfig(encoder=G, decoder=G, merged_attention=True))
    with pytest.raises(InteropError, match="causal_encoder .*always bidirectional"):
        hf_config(EncDecConfig(encoder=G, decoder=G, causal_encoder=True))
    # eos given as a list (instruction-tuned configs): the first id
    assert config_from_hf(dict(d, eos_token_id=[1, 7])).eos_token_id == 1


def _model(config, seed=0):
    m = build_model(config, seed=seed)
    rng = np.random.default_rng(seed)
    for v in m.params.values():  # norms away from 0, so a mixed-up key would show
        v[...] = rng.standard_normal(v.shape).astype(v.dtype) * 0.1
    return m


@pytest.mark.parametrize("config", [G, E], ids=["gemma2", "t5gemma"])
@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("float16", 1e-3), ("bfloat16", 4e-3)])
def test_save_load_roundtrip(tmp_path, config, dtype, tol):
    m = _model(config)
    save_hf(m, tmp_path, dtype=dtype)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dtype"] == dtype and is_hf_dir(tmp_path)
    back = load_hf(tmp_path)
    assert back.config == config and type(back) is type(m)
    assert list(back.params) == list(m.params)
    for k, v in m.params.items():
        assert back.params[k].dtype == np.float32
        np.testing.assert_allclose(back.params[k], v, rtol=tol, atol=tol * 0.01, err_msg=k)
    if dtype == "bfloat16":  # stored values are bf16 bit patterns, loaded exactly
        assert SafetensorsFile(tmp_path / "model.safetensors").dtype(next(iter(m.params))) \
            == "BF16"


def _rewrite(path, tensors, config):
    save_tensors(path / "model.safetensors", tensors)
    (path / "config.json").write_text(json.dumps(config))


def test_tied_head_absent_equal_or_different(tmp_path):
    m = _model(G)
    save_hf(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    tensors = dict(m.params)
    tensors["lm_head.weight"] = m.params["model.embed_tokens.weight"]
    _rewrite(tmp_path, tensors, cfg)
    np.testing.assert_array_equal(load_hf(tmp_path).params["model.norm.weight"],
                                  m.params["model.norm.weight"])
    tensors["lm_head.weight"] = m.params["model.embed_tokens.weight"] + 1
    _rewrite(tmp_path, tensors, cfg)
    with pytest.raises(InteropError, match="untied output matrices are not supported"):
        load_hf(tmp_path)


def test_missing_unexpected_and_misshaped_tensors(tmp_path):
    m = _model(G)
    save_hf(m, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    t = dict(m.params)
    del t["model.layers.1.mlp.up_proj.weight"]
    _rewrite(tmp_path, t, cfg)
    with pytest.raises(InteropError, match="missing tensors.*layers.1.mlp.up_proj"):
        load_hf(tmp_path)
    t = dict(m.params, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)})
    _rewrite(tmp_path, t, cfg)
    with pytest.raises(InteropError, match="unexpected tensors.*q_proj.bias"):
        load_hf(tmp_path)
    _rewrite(tmp_path, m.params, dict(cfg, intermediate_size=20))
    with pytest.raises(InteropError, match="config implies"):
        load_hf(tmp_path)
    with pytest.raises(InteropError, match="expected a directory"):
        load_hf(tmp_path / "nothing")


def test_sharded_index(tmp_path):
    m = _model(E)
    save_hf(m, tmp_path)
    keys = list(m.params)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half],
              "model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_tensors(tmp_path / name, {k: m.params[k] for k in ks}, dtype="BF16")
    (tmp_path / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config, params = load_hf_params(tmp_path)
    assert config == E
    for k in keys:
        np.testing.assert_allclose(params[k], m.params[k], rtol=4e-3, atol=1e-5)


def test_save_params_and_float64(tmp_path):
    m = _model(G)
    params64 = {k: v.astype(np.float64) for k, v in m.params.items()}
    save_hf_params(G, params64, tmp_path)  # written as float32
    config, back = load_hf_params(tmp_path, dtype=np.float64)
    assert back["model.norm.weight"].dtype == np.float64
    for k, v in m.params.items():
        np.testing.assert_array_equal(back[k], v.astype(np.float64))
    with pytest.raises(ValueError, match="missing keys"):
        save_hf_params(G, {"model.norm.weight": params64["model.norm.weight"]}, tmp_path)


@settings(max_examples=5)
@given(encdec_configs())
def test_random_encdec_roundtrip_is_exact(cfg):
    import tempfile
    m = _model(cfg, seed=3)
    with tempfile.TemporaryDirectory() as d:
        save_hf(m, d)
        back = load_hf(d)
    assert back.config == cfg
    assert all(np.array_equal(back.params[k], v) for k, v in m.params.items())


def test_released_gemma2_2b_config_reads_as_the_2b_preset():
    """The fields of google/gemma-2-2b's config.json (transformers 4.42 era: top-level
    rope_theta, no layer_types, hidden_act and hidden_activation both present)."""
    from mini_encdec.config import preset
    released = {
        "architectures": ["Gemma2ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
        "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0,
        "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304,
        "initializer_range": 0.02, "intermediate_size": 9216, "max_position_embeddings": 8192,
        "model_type": "gemma2", "num_attention_heads": 8, "num_hidden_layers": 26,
        "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
        "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": True,
        "vocab_size": 256000}
    assert config_from_hf(released) == preset("2b")
    # the instruction-tuned variant lists two end-of-turn ids
    assert config_from_hf(dict(released, eos_token_id=[1, 107])) == preset("2b")
