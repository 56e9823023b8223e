"""Configs: validation names the field; presets; parameter counts equal transformers'."""

import dataclasses

import pytest

from mini_encdec.config import (EncDecConfig, GemmaConfig, PRESETS, config_from_dict,
                                count_parameters, encdec_preset, preset)

# SPEC.md section 6 / paper: totals with vocabulary 256,000, in millions (one decimal).
ENCDEC_COUNTS = {"S": 312.5, "B": 591.5, "L": 1241.8, "XL": 3767.0, "2b": 5596.9,
                 "9b-2b": 12292.4, "9b": 20333.4}
DECODER_COUNTS = {"2b": 2614.3, "9b": 9241.7}


@pytest.mark.parametrize("name,millions", sorted(ENCDEC_COUNTS.items()))
def test_encdec_parameter_counts(name, millions):
    assert round(count_parameters(encdec_preset(name)) / 1e6, 1) == millions


@pytest.mark.parametrize("name,millions", sorted(DECODER_COUNTS.items()))
def test_decoder_only_parameter_counts(name, millions):
    assert round(count_parameters(preset(name)) / 1e6, 1) == millions


def test_exact_count_small_case_by_hand():
    cfg = GemmaConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=2, intermediate_size=3)
    # embed 40; q 4*4, k 4*2, v 4*2, o 4*4; mlp 3*4*3; 4 norms of 4; final norm 4
    assert count_parameters(cfg) == 40 + 16 + 8 + 8 + 16 + 36 + 16 + 4


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if not n.startswith("gemma3")))
def test_every_preset_builds_both_ways(name):
    dec = preset(name)
    ed = encdec_preset(name)
    assert ed.encoder == dec and ed.decoder == dec
    assert dec.layer_types[0] == "sliding_attention" and \
        (dec.num_hidden_layers == 1 or dec.layer_types[1] == "full_attention")


def test_unbalanced_preset():
    cfg = encdec_preset("9b-2b")
    assert cfg.encoder.hidden_size == 3584 and cfg.decoder.hidden_size == 2304
    assert not cfg.is_balanced


@pytest.mark.parametrize("field,value,needle", [
    ("num_attention_heads", 3, "num_attention_heads"),
    ("head_dim", 31, "head_dim"),
    ("sliding_window", 0, "sliding_window"),
    ("hidden_size", -4, "hidden_size"),
    ("vocab_size", 0, "vocab_size"),
    ("num_hidden_layers", 1.5, "num_hidden_layers"),
    ("layer_types", ("full_attention",), "layer_types"),
    ("layer_types", ("global", "local"), "layer_types"),
    ("attn_logit_softcapping", -1.0, "attn_logit_softcapping"),
    ("rms_norm_eps", 0.0, "rms_norm_eps"),
])
def test_invalid_field_is_named(field, value, needle):
    base = preset("tiny").to_dict()
    base[field] = value
    with pytest.raises(ValueError, match=needle):
        GemmaConfig.from_dict(base)


def test_vocabulary_mismatch_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        EncDecConfig(encoder=preset("tiny"), decoder=preset("tiny", vocab_size=100))


def test_merged_attention_needs_equal_widths():
    with pytest.raises(ValueError, match="merged_attention"):
        EncDecConfig(encoder=preset("small"), decoder=preset("tiny"), merged_attention=True)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="preset"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown config fields"):
        GemmaConfig.from_dict({"hidden_sise": 3})


def test_round_trip_and_frozen():
    cfg = encdec_preset("tiny", merged_attention=True)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(preset("2b").to_dict()) == preset("2b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.encoder.hidden_size = 3


def test_query_pre_attn_scalar_defaults_to_head_dim():
    assert preset("tiny").query_pre_attn_scalar == 32.0
    assert preset("tiny", query_pre_attn_scalar=10).query_pre_attn_scalar == 10


def test_tied_all_embeddings_counted_once():
    cfg = encdec_preset("tiny")
    tied = cfg.replace(tie_all_embeddings=True)
    assert count_parameters(cfg) - count_parameters(tied) == 8192 * 128
