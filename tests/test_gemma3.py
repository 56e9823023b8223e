"""Gemma 3 (decoder-only, text) without torch: its config fields, finite-difference
gradients of every parameter (the q/k norms included), KV-cached decoding equal to the
full forward, padding, and the presets. Parity with transformers: test_parity_gemma3.py
(live) and test_hf_reference.py (frozen).

Gemma 3 is Gemma 2's model with four config fields set (SPEC.md section 1): `qk_norm`,
`rope_local_theta`, `rope_scaling_factor`, and Gemma 3's layer pattern and soft-caps off.
"""

import numpy as np
import pytest

from mini_encdec.config import (FULL, SLIDING, EncDecConfig, GemmaConfig, count_parameters,
                                patterned_layer_types, preset)
from mini_encdec.models import build_model
from mini_encdec.models.decoding import decoder_step, init_cache
from mini_encdec.models.generate import generate
from mini_encdec.models.params import init_params, param_shapes

from .test_models import randomised, sampled_gradcheck

V = 50
# 2 local layers then 1 global (pattern 3), H/K = 2, window 3, the two RoPE bases far apart
# and the global angles scaled, so a wrong base or a missing factor changes the logits
GEMMA3 = GemmaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3,
                     layer_types=patterned_layer_types(3, 3), qk_norm=True, rope_theta=1000.0,
                     rope_local_theta=10.0, rope_scaling_factor=4.0,
                     attn_logit_softcapping=None, final_logit_softcapping=None)


def model_of(config=GEMMA3, seed=0):
    return randomised(build_model(config, dtype=np.float64), np.random.default_rng(seed))


# --- config -------------------------------------------------------------------------------

def test_gemma3_layer_pattern_and_rope_bases():
    assert patterned_layer_types(7) == (SLIDING,) * 5 + (FULL, SLIDING)
    assert GEMMA3.layer_types == (SLIDING, SLIDING, FULL)
    assert GEMMA3.rope_base(SLIDING) == (10.0, 1.0)  # local layers: never scaled
    assert GEMMA3.rope_base(FULL) == (1000.0, 4.0)
    g2 = GEMMA3.replace(rope_local_theta=None, rope_scaling_factor=1.0)
    assert g2.rope_base(SLIDING) == g2.rope_base(FULL) == (1000.0, 1.0)  # Gemma 2: one base


def test_gemma3_config_round_trips_through_our_checkpoint_dict():
    from mini_encdec.config import config_from_dict
    for cfg in (GEMMA3, preset("gemma3_1b")):
        assert config_from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in GEMMA3.to_dict().items()  # a checkpoint from before Gemma 3
           if k not in ("qk_norm", "rope_local_theta", "rope_scaling_factor")}
    assert config_from_dict(old) == GEMMA3.replace(qk_norm=False, rope_local_theta=None,
                                                   rope_scaling_factor=1.0)


def test_gemma3_config_errors_name_the_field():
    with pytest.raises(ValueError, match="qk_norm"):
        GEMMA3.replace(qk_norm="yes")
    with pytest.raises(ValueError, match="rope_local_theta"):
        GEMMA3.replace(rope_local_theta=-1.0)
    with pytest.raises(ValueError, match="rope_scaling_factor"):
        GEMMA3.replace(rope_scaling_factor=0)
    # an encoder-decoder takes Gemma 3 stacks (T5Gemma 2), the decoder's only with merged
    # attention: a separate cross-attention would need q/k norms no model has
    with pytest.raises(ValueError, match=r"decoder\.qk_norm"):
        EncDecConfig(encoder=GEMMA3, decoder=GEMMA3)


def test_q_and_k_norms_are_parameters_of_head_size():
    shapes = param_shapes(GEMMA3)
    for i in range(3):
        assert shapes[f"model.layers.{i}.self_attn.q_norm.weight"] == (8,)
        assert shapes[f"model.layers.{i}.self_attn.k_norm.weight"] == (8,)
    assert sum(int(np.prod(s)) for s in shapes.values()) == count_parameters(GEMMA3)
    p = init_params(GEMMA3)
    assert not p["model.layers.0.self_attn.q_norm.weight"].any()  # (1 + w): fresh w = 0
    assert not any("q_norm" in k for k in param_shapes(GEMMA3.replace(qk_norm=False)))


@pytest.mark.parametrize("name,count", [("gemma3_270m", 268_098_176),
                                        ("gemma3_1b", 999_885_952)])
def test_gemma3_presets_count_like_transformers(name, count):
    """The totals transformers' Gemma3ForCausalLM reports for these shapes (checked live,
    scaled down, in test_parity_gemma3.py)."""
    cfg = preset(name)
    assert count_parameters(cfg) == count
    assert cfg.qk_norm and cfg.attn_logit_softcapping is None
    assert cfg.layer_types[:6] == (SLIDING,) * 5 + (FULL,)
    assert cfg.rope_base(SLIDING) == (10_000.0, 1.0) and cfg.rope_base(FULL) == (1e6, 1.0)


def test_gemma3_tiny_preset_runs():
    model = build_model(preset("gemma3_tiny"))
    ids = np.random.default_rng(0).integers(3, 8192, (1, 40))  # longer than the window 32
    assert model.forward({"input_ids": ids}).shape == (1, 40, 8192)


# --- the model ------------------------------------------------------------------------------

def test_gemma3_gradcheck(backend):
    """Central differences of the loss against loss_and_grads: sampled entries of every
    parameter group, and every entry of every q/k norm weight (padding, ignored labels)."""
    rng = np.random.default_rng(0)
    model = model_of()
    ids = rng.integers(0, V, (2, 7))
    labels = rng.integers(0, V, (2, 7))
    labels[1, :2] = -100
    batch = {"input_ids": ids, "labels": labels,
             "attention_mask": np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])}
    sampled_gradcheck(model, batch, rng)
    from mini_encdec.nn.gradcheck import numerical_grad
    _, grads = model.loss_and_grads(batch)
    for key in (k for k in model.params if k.endswith(("q_norm.weight", "k_norm.weight"))):
        num = numerical_grad(lambda: model.loss(batch), model.params[key], h=1e-6)
        np.testing.assert_allclose(grads[key], num, rtol=1e-6, atol=1e-8, err_msg=key)


def test_each_gemma3_field_changes_the_function():
    """qk_norm, the local base and the global scaling each matter on these inputs (so the
    parity tests would see each one missing)."""
    model = model_of()
    ids = np.random.default_rng(1).integers(0, V, (2, 8))
    want = model.forward({"input_ids": ids})
    for change in (dict(rope_local_theta=None), dict(rope_scaling_factor=1.0),
                   dict(layer_types=(SLIDING, FULL, SLIDING))):
        other = build_model(GEMMA3.replace(**change), model.params).forward({"input_ids": ids})
        assert np.abs(other - want).max() > 1e-3, change
    params = {k: v for k, v in model.params.items() if "_norm.weight" not in k
              or "self_attn" not in k}
    other = build_model(GEMMA3.replace(qk_norm=False), params).forward({"input_ids": ids})
    assert np.abs(other - want).max() > 1e-3


def test_gemma3_padding_leaves_real_tokens_unchanged(backend):
    model = model_of()
    rng = np.random.default_rng(2)
    ids = rng.integers(3, V, (1, 6))
    alone = model.forward({"input_ids": ids})
    padded = np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1)  # left padding
    mask = (padded != 0).astype(np.int64)
    got = model.forward({"input_ids": padded, "attention_mask": mask})[:, 3:]
    np.testing.assert_allclose(got, alone, rtol=1e-12, atol=1e-12)


def test_gemma3_cached_steps_equal_full_forward(backend):
    """A prefill of 3 and then one token at a time (windows roll, both RoPE bases, the q/k
    norms applied to the new keys only), left-padded prompts included."""
    model = model_of()
    rng = np.random.default_rng(3)
    ids = rng.integers(3, V, (2, 10))
    ids[1, :2] = 0
    mask = (ids != 0).astype(np.int64)
    full = model.forward({"input_ids": ids, "attention_mask": mask})
    cache = init_cache(model, 2)
    steps = [decoder_step(model, cache, ids[:, :3], mask[:, :3].astype(bool))]
    steps += [decoder_step(model, cache, ids[:, t:t + 1]) for t in range(3, 10)]
    got = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], full[real], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_gemma3_generation_with_cache_equals_without(method):
    model = model_of(seed=4)
    prompts = np.random.default_rng(4).integers(3, V, (2, 4))
    kw = dict(max_new_tokens=8)
    if method == "beam":
        from mini_encdec.models.generate import beam_search
        a = beam_search(model, prompts[:1], num_beams=2, use_cache=True, **kw)
        b = beam_search(model, prompts[:1], num_beams=2, use_cache=False, **kw)
        np.testing.assert_array_equal(a[0], b[0])
    else:
        np.testing.assert_array_equal(generate(model, prompts, use_cache=True, **kw),
                                      generate(model, prompts, use_cache=False, **kw))


# --- interop (torch-free: the config translation and a round trip through our own files) ----

def test_gemma3_config_both_rope_forms_and_defaults():
    """transformers 5's rope_parameters per layer type and 4.x's rope_theta /
    rope_local_base_freq / rope_scaling give the same config; omitted fields take
    Gemma3TextConfig's defaults (the multimodal text_config omits most of them)."""
    from mini_encdec.storage.hf_config import config_from_hf, hf_config
    d = hf_config(GEMMA3)
    assert d["model_type"] == "gemma3_text" and d["architectures"] == ["Gemma3ForCausalLM"]
    assert d["rope_parameters"] == {
        SLIDING: {"rope_type": "default", "rope_theta": 10.0},
        FULL: {"rope_type": "linear", "rope_theta": 1000.0, "factor": 4.0}}
    assert config_from_hf(d) == GEMMA3
    old = {k: v for k, v in d.items() if k != "rope_parameters"}
    assert config_from_hf(old) == GEMMA3
    new = {k: v for k, v in d.items() if k not in ("rope_theta", "rope_local_base_freq",
                                                    "rope_scaling")}
    assert config_from_hf(new) == GEMMA3
    mm = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
          "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                          "intermediate_size": 10240, "num_hidden_layers": 34,
                          "sliding_window": 1024,
                          "rope_scaling": {"factor": 8.0, "rope_type": "linear"}}}
    cfg = config_from_hf(mm)  # google/gemma-3-4b's text model
    assert (cfg.vocab_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim,
            cfg.query_pre_attn_scalar) == (262_208, 8, 4, 256, 256)
    assert cfg.rope_base(FULL) == (1e6, 8.0) and cfg.rope_base(SLIDING) == (10_000.0, 1.0)
    assert cfg.layer_types == patterned_layer_types(34) and cfg.qk_norm
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None


@pytest.mark.parametrize("change,match", [
    (dict(rope_parameters={FULL: {"rope_type": "yarn", "factor": 2.0}}), "'yarn'"),
    (dict(rope_parameters={SLIDING: {"rope_type": "linear", "factor": 2.0}}),
     "sliding_attention"),
    (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, rope_parameters=None),
     "'dynamic'"),
    (dict(num_key_value_heads=3), "num_attention_heads"),
    (dict(layer_types=[SLIDING, "chunked_attention", FULL]), "layer_types"),
    (dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
])
def test_gemma3_bad_configs_are_refused_in_one_line(change, match):
    from mini_encdec.storage.hf_config import InteropError, config_from_hf, hf_config
    d = {**hf_config(GEMMA3), **change}
    with pytest.raises(InteropError, match=match) as e:
        config_from_hf(d)
    assert "\n" not in str(e.value)


def test_gemma3_attention_softcap_is_read_as_transformers_runs_it():
    """transformers' Gemma3 attention ignores attn_logit_softcapping: we read it as None,
    and refuse to save a Gemma 3 model that has one."""
    from mini_encdec.storage.hf_config import InteropError, config_from_hf, hf_config
    d = {**hf_config(GEMMA3), "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    cfg = config_from_hf(d)
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping == 30.0
    with pytest.raises(InteropError, match="attn_logit_softcapping"):
        hf_config(GEMMA3.replace(attn_logit_softcapping=50.0))
    with pytest.raises(InteropError, match="rope_local_theta"):  # Gemma 2: one RoPE
        hf_config(GEMMA3.replace(qk_norm=False))


def test_gemma3_save_load_round_trip(tmp_path):
    from mini_encdec.storage.interop import load_hf, save_hf
    model = model_of()
    save_hf(model, tmp_path / "g3")
    back = load_hf(tmp_path / "g3", dtype=np.float64)
    assert back.config == GEMMA3
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v.astype(np.float32), err_msg=k)


def test_multimodal_weights_are_renamed_and_the_vision_tower_skipped(tmp_path, capsys):
    """A Gemma3ForConditionalGeneration directory as the hub stores it: the language model
    under language_model.model., the vision parts skipped with one printed line."""
    import json
    from mini_encdec.storage.hf_config import hf_config
    from mini_encdec.storage.interop import load_hf, save_hf
    from mini_encdec.storage.safetensors_io import SafetensorsFile, SafetensorsWriter
    model = model_of()
    save_hf(model, tmp_path / "text")
    src = SafetensorsFile(tmp_path / "text" / "model.safetensors")
    tensors = {"language_model." + k: src.read(k) for k in src.keys()}
    tensors["vision_tower.vision_model.post_layernorm.weight"] = np.ones(4, np.float32)
    tensors["multi_modal_projector.mm_input_projection_weight"] = np.ones((4, 16), np.float32)
    out = tmp_path / "mm"
    out.mkdir()
    with SafetensorsWriter(out / "model.safetensors",
                           [(k, "F32", v.shape) for k, v in tensors.items()], {}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    text = hf_config(GEMMA3)
    (out / "config.json").write_text(json.dumps({
        "model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": text, "vision_config": {"model_type": "siglip_vision_model"}}))
    back = load_hf(out, dtype=np.float64)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "skipping 2 vision_tower / multi_modal_projector" in printed[0]
    assert back.config == GEMMA3
    for k, v in model.params.items():
        np.testing.assert_array_equal(back.params[k], v.astype(np.float32), err_msg=k)
