"""Gemma 3 (Gemma3ForCausalLM, text) against live Hugging Face `transformers` (needs torch;
`-m parity`), in the manner of test_parity_hf.py:

1. float32, through our interop: random tiny transformers models are saved with
   `save_pretrained` and read with `load_hf`; logits (1e-4 absolute), loss (1e-5 relative)
   and every parameter gradient (1e-4 relative Frobenius error, printed per tensor) on a
   right-padded batch, with transformers building its OWN masks from the 2D attention
   mask (no explicit masks: the causal sliding window is its convention, q - k < W). Cases:
   GQA H/K = 2 and 4; the default layer pattern (5 local, 1 global) and mixes given as
   layer_types; "default" RoPE with two bases, and "linear" scaling of the global layers;
   soft-caps off (Gemma 3's default) and on; query_pre_attn_scalar != head_dim.
2. The window at its boundary: on a one-layer local model, a key at distance exactly W
   changes nothing and one at W - 1 changes the query's output, in transformers and here.
3. save_hf -> from_pretrained (no missing/unexpected keys) -> save_pretrained -> load_hf
   gives back bit-identical weights; a multimodal Gemma3ForConditionalGeneration
   directory loads as its text model; 20 greedy tokens equal transformers' `generate`.
4. float64, the parameter dict by name: logits, loss, every gradient.
5. Parameter counts of the gemma3_270m / gemma3_1b presets equal transformers' model
   built on the meta device (no memory).

transformers computes RMSNorm in float32 even in a float64 model (`x.float()`), and RoPE
angles in float32, so the float64 comparison is good to ~1e-6 relative, not 1e-12.
"""

import json

import numpy as np
import pytest

from mini_encdec.backend import use_backend
from mini_encdec.config import FULL, SLIDING, count_parameters, preset
from mini_encdec.models import build_model
from mini_encdec.models.generate import generate
from mini_encdec.storage.interop import load_hf, save_hf

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install .[parity])")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need transformers (pip install .[parity])")

from .test_parity_hf import STACK, V, assert_parity, assert_reloads_identically, \
    causal_lm_batch  # noqa: E402,F401  (the same tiny stack and checks)

pytestmark = pytest.mark.parity


def rope(local, glob, factor=None):
    full = {"rope_type": "default", "rope_theta": glob} if factor is None else \
        {"rope_type": "linear", "rope_theta": glob, "factor": factor}
    return {SLIDING: {"rope_type": "default", "rope_theta": local}, FULL: full}


CASES = {
    # H/K = 2, transformers' default pattern over 7 layers (5 local, 1 global, 1 local),
    # bases 10 / 1000 (far apart, so a base read from the wrong type changes the logits)
    "pattern_gqa2": dict(STACK, num_hidden_layers=7, rope_parameters=rope(10.0, 1000.0)),
    # H/K = 4, a global layer first, linear scaling 4 on the global layers, window 4
    "mixed_linear_gqa4": dict(STACK, num_key_value_heads=1, sliding_window=4,
                              layer_types=[FULL, SLIDING, SLIDING, FULL],
                              num_hidden_layers=4, rope_parameters=rope(10.0, 100.0, 4.0)),
    # the final soft-cap on (off by default), query scalar = head_dim, Gemma 3's own bases;
    # attn_logit_softcapping is set but transformers' Gemma3 attention never applies it, so
    # load_hf reads it as None
    "softcapped": dict(STACK, query_pre_attn_scalar=8, attn_logit_softcapping=3.0,
                       final_logit_softcapping=5.0, layer_types=[SLIDING, FULL, SLIDING],
                       rope_parameters=rope(10000.0, 1e6)),
}


def hf_config(case, **kw):
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(**{**CASES[case], **kw}, attn_implementation="eager")


def randomise_hf(model, seed, post_norm_offset=0.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if ".post_" in name:
                p.add_(post_norm_offset)
    return model.float().eval()


def hf_model(case, seed=0, post_norm_offset=0.0, **kw):
    from transformers import Gemma3ForCausalLM
    torch.manual_seed(seed)
    return randomise_hf(Gemma3ForCausalLM(hf_config(case, **kw)), seed, post_norm_offset)


def ours_from(hf, tmp_path):
    hf.save_pretrained(tmp_path / "hf")
    return load_hf(tmp_path / "hf")


@pytest.mark.parametrize("case", list(CASES))
def test_gemma3_logits_loss_grads(case, tmp_path, backend):
    hf = hf_model(case)
    ours = ours_from(hf, tmp_path)
    assert ours.config.qk_norm
    assert ours.config.layer_types == tuple(hf.config.layer_types)
    ids, mask, hf_labels, batch = causal_lm_batch(B=2, T=11, pad_from=8)  # T > every window
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(hf_labels))
    out.loss.backward()
    loss, grads = ours.loss_and_grads(batch)
    logits = ours.forward(batch)
    real = mask.astype(bool)
    print(f"\n  {case}: max |logits diff| "
          f"{np.abs(logits[real] - out.logits.detach().numpy()[real]).max():.3e}, "
          f"loss {loss:.6f} vs {out.loss.item():.6f}")
    assert_parity(logits, out.logits.detach().numpy(), real, loss, out.loss.item(), grads, hf)


@pytest.mark.parametrize("W", [1, 2, 4])
def test_sliding_window_boundary_matches_transformers(W, tmp_path):
    """One local layer, window W: the output at query q depends on the token at k exactly
    when q - W < k <= q, in transformers (its own mask) and here."""
    hf = hf_model("pattern_gqa2", num_hidden_layers=1, layer_types=[SLIDING], sliding_window=W)
    ours = ours_from(hf, tmp_path)
    T = W + 3
    ids = np.random.default_rng(W).integers(3, V, (1, T))
    q = T - 1
    with torch.no_grad():
        base = hf(input_ids=torch.tensor(ids)).logits[0, q].numpy()
    mine = ours.forward({"input_ids": ids})[0, q]
    np.testing.assert_allclose(mine, base, atol=1e-4)
    for k in range(T):
        changed = ids.copy()
        changed[0, k] = 3 + (ids[0, k] - 2) % (V - 3)  # another token at key position k
        with torch.no_grad():
            theirs = hf(input_ids=torch.tensor(changed)).logits[0, q].numpy()
        seen_hf = np.abs(theirs - base).max() > 1e-5
        seen_ours = np.abs(ours.forward({"input_ids": changed})[0, q] - mine).max() > 1e-5
        assert seen_hf == seen_ours == (q - W < k <= q), (W, k, seen_hf, seen_ours)


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_through_transformers_is_identical(case, tmp_path):
    from transformers import AutoModelForCausalLM
    ours = ours_from(hf_model(case, seed=3), tmp_path)
    save_hf(ours, tmp_path / "ours")
    d = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert d["model_type"] == "gemma3_text" and d["architectures"] == ["Gemma3ForCausalLM"]
    hf, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(hf).__name__ == "Gemma3ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert hf.config.rope_parameters == hf_config(case).rope_parameters
    assert_reloads_identically(hf, ours, tmp_path)


def test_multimodal_directory_loads_its_text_model(tmp_path, capsys):
    """A Gemma3ForConditionalGeneration directory: the text_config is read, the vision
    tower and projector are skipped with one printed line, and the logits on text equal
    the multimodal model's."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig
    text = {k: v for k, v in CASES["mixed_linear_gqa4"].items()}
    text["vocab_size"] = 300
    vision = SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                num_attention_heads=2, image_size=16, patch_size=8)
    cfg = Gemma3Config(text_config=text, vision_config=vision.to_dict(), mm_tokens_per_image=4,
                       boi_token_index=297, eoi_token_index=298, image_token_index=299,
                       attn_implementation="eager")
    torch.manual_seed(0)
    hf = randomise_hf(Gemma3ForConditionalGeneration(cfg), 5)
    ours = ours_from(hf, tmp_path)
    printed = capsys.readouterr().out
    assert "skipping" in printed and "vision_tower" in printed
    assert ours.config.rope_scaling_factor == 4.0 and ours.config.vocab_size == 300
    ids = np.random.default_rng(5).integers(3, 290, (2, 9))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours.forward({"input_ids": ids}), theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", ["pattern_gqa2", "mixed_linear_gqa4"])
def test_greedy_generation_matches_transformers(case, tmp_path):
    """Our KV cache against transformers' (sliding layers roll past the window): the same
    20 greedy tokens, and transformers' per-step logits equal our full forward."""
    hf = hf_model(case, seed=1, post_norm_offset=4.0)
    ours = ours_from(hf, tmp_path)
    cfg = ours.config
    prompts = np.random.default_rng(6).integers(3, V, (2, 5))
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(prompts),
                          attention_mask=torch.ones(2, 5, dtype=torch.long), max_new_tokens=20,
                          do_sample=False, eos_token_id=cfg.eos_token_id,
                          pad_token_id=cfg.pad_token_id, output_logits=True,
                          return_dict_in_generate=True)
    theirs = out.sequences[:, 5:].numpy()
    mine = generate(ours, prompts, max_new_tokens=20)
    print("\n  ours        ", mine.tolist(), "\n  transformers", theirs.tolist())
    np.testing.assert_array_equal(mine, theirs)
    assert mine.shape[1] == 20 and len(np.unique(mine)) > 5
    replay = ours.forward({"input_ids": np.concatenate([prompts, mine], axis=1)})[:, 4:-1]
    steps = torch.stack(out.logits, dim=1).numpy()
    live = np.cumsum(mine == cfg.eos_token_id, axis=1) - (mine == cfg.eos_token_id) == 0
    np.testing.assert_allclose(replay[live], steps[live], rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", ["pattern_gqa2", "mixed_linear_gqa4"])
def test_gemma3_float64_parity_by_name(case):
    from transformers import Gemma3ForCausalLM
    hf = Gemma3ForCausalLM(hf_config(case)).double().eval()
    from mini_encdec.storage.hf_config import config_from_hf
    config = config_from_hf(hf.config.to_dict())
    ours = build_model(config, dtype=np.float64)
    rng = np.random.default_rng(0)
    for v in ours.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    missing, _ = hf.load_state_dict({k: torch.tensor(v) for k, v in ours.params.items()},
                                    strict=False)
    assert all(k.startswith("lm_head") for k in missing), missing
    ids = rng.integers(0, V, (2, 9))
    out = hf(input_ids=torch.tensor(ids), labels=torch.tensor(ids))
    with use_backend("numpy"):
        np.testing.assert_allclose(ours.forward({"input_ids": ids}),
                                   out.logits.detach().numpy(), rtol=1e-5, atol=1e-5)
        labels = np.concatenate([ids[:, 1:], np.full((2, 1), -100)], axis=1)
        loss, grads = ours.loss_and_grads({"input_ids": ids, "labels": labels})
    out.loss.backward()
    assert abs(loss - out.loss.item()) < 1e-6 * abs(loss)
    hg = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}
    assert set(hg) == set(grads)
    for k, g in grads.items():
        np.testing.assert_allclose(g, hg[k], rtol=1e-4, atol=1e-5 * np.abs(hg[k]).max(),
                                   err_msg=k)


@pytest.mark.parametrize("name", ["gemma3_270m", "gemma3_1b", "gemma3_4b"])
def test_preset_parameter_counts_equal_transformers(name):
    """transformers' Gemma3ForCausalLM with our preset's config, built on the meta device
    (no memory), has exactly count_parameters(preset) parameters, and our config written
    for transformers reads back as the preset."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    from mini_encdec.storage.hf_config import config_from_hf, hf_config as to_hf
    cfg = preset(name)
    d = to_hf(cfg)
    assert config_from_hf(d) == cfg
    hc = Gemma3TextConfig(**{k: v for k, v in d.items()
                             if k not in ("architectures", "model_type", "dtype")})
    assert hc.layer_types == list(cfg.layer_types)
    with torch.device("meta"):
        model = Gemma3ForCausalLM(hc)
    assert model.num_parameters() == count_parameters(cfg)
