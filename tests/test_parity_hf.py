"""Parity with Hugging Face `transformers`, live (needs torch; `-m parity`). The one suite
for the language models (the classification heads: test_classifier_parity.py; frozen
transformers outputs without torch: test_hf_reference.py). Two parts:

1. float32, through our interop. Random tiny HF models (eager attention) are saved with
`save_pretrained`, loaded with our `load_hf`, and compared like llm.c's test_gpt2: logits
(1e-4 absolute), loss (1e-5 relative), every parameter gradient (1e-4 relative Frobenius
error, printed per tensor; `pytest -s` shows the table). Then save_hf -> transformers
from_pretrained (no missing or unexpected keys) -> save_pretrained -> load_hf must give back
identical weights, and greedy generation must give transformers' `generate` tokens for 20
steps.

Masks are given to transformers explicitly, built from SPEC.md sections 1 and 2 (see
`spec_masks`): transformers >= 5 builds T5Gemma's bidirectional local mask as
|q - k| <= W, whereas SPEC.md section 2 (and transformers 4.53) use |q - k| < W, so its
default encoder mask would differ whenever the input is longer than W. Everything else
(causal local 0 <= q - k < W, the soft-caps, the query scalar, GQA, padding) is compared
against transformers' own code.

The logits/loss/gradient tests run on both backends (numpy reference, numba kernels).
Covered: GQA with H/K = 2 and 4, sliding windows smaller than the sequences,
query_pre_attn_scalar != head_dim, unbalanced encoder/decoder widths, right-padded encoder
inputs and prompts, decoder-only and encoder-decoder.

2. float64, the parameter dict handed over by name (no interop): logits, loss and every
gradient of Gemma 2 and of an unbalanced T5Gemma with a padded encoder input. Here the HF
encoder config gets sliding_window = W - 1 when the installed transformers builds the
bidirectional local mask as |q - k| <= W (probed, not assumed). HF computes RoPE angles in
float32, hence tolerances of ~1e-5 even in float64.
"""

import json

import numpy as np
import pytest

from mini_encdec.config import FULL, SLIDING, EncDecConfig, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.storage.interop import load_hf, save_hf
from mini_encdec.models.generate import generate

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install .[parity])")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need transformers (pip install .[parity])")

pytestmark = pytest.mark.parity

V = 64
STACK = dict(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3,
             query_pre_attn_scalar=6, hidden_activation="gelu_pytorch_tanh")
CASES = {
    # decoder-only, H/K = 2, window 3 < T, query scalar 6 != head_dim 8
    "gemma2_gqa2": ("gemma2", STACK, None),
    # decoder-only, H/K = 4, query scalar = head_dim
    "gemma2_gqa4": ("gemma2", dict(STACK, num_key_value_heads=1, sliding_window=4,
                                   query_pre_attn_scalar=8, num_hidden_layers=2), None),
    # encoder-decoder, balanced, H/K = 2
    "t5gemma_balanced": ("t5gemma", dict(STACK, num_hidden_layers=2), dict(STACK,
                                                                          num_hidden_layers=2)),
    # encoder-decoder, unbalanced widths 16 -> 12, decoder H/K = 4, head_dim 6, scalar 10
    "t5gemma_unbalanced": ("t5gemma", STACK,
                           dict(STACK, hidden_size=12, num_hidden_layers=2,
                                num_key_value_heads=1, head_dim=6, intermediate_size=20,
                                sliding_window=2, query_pre_attn_scalar=10)),
}


def hf_model(case: str, seed: int = 0, post_norm_offset: float = 0.0):
    """A random tiny transformers model, every parameter ~ N(0, 0.3^2) (norms included).

    post_norm_offset is added to the post-sublayer norm weights: it makes the sublayers
    outweigh the token's own embedding, so that greedy decoding of a random model does not
    just repeat one token (a weak generation test)."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, T5GemmaConfig,
                              T5GemmaForConditionalGeneration)
    kind, enc, dec = CASES[case]
    torch.manual_seed(seed)
    if kind == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**enc, attn_implementation="eager"))
    else:
        cfg = T5GemmaConfig(encoder=enc, decoder=dec, vocab_size=V,
                            attn_implementation="eager")
        model = T5GemmaForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, p in model.named_parameters():
            if ".post_" in name:
                p.add_(post_norm_offset)
    return model.float().eval()


def ours_from(hf, tmp_path):
    hf.save_pretrained(tmp_path / "hf")
    return load_hf(tmp_path / "hf")


def assert_reloads_identically(hf, ours, tmp_path):
    """hf (loaded by transformers from our save_hf directory) -> save_pretrained -> load_hf
    gives back ours: the same config and bit-identical weights."""
    hf.save_pretrained(tmp_path / "again")
    back = load_hf(tmp_path / "again")
    assert back.config == ours.config
    assert list(back.params) == list(ours.params)
    for k, v in ours.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)


def causal_lm_batch(B: int, T: int, pad_from: int, seed: int = 1):
    """A causal LM batch whose second row is right-padded from position pad_from:
    (ids, attention mask, transformers' labels (it shifts them inside), our batch with
    the labels already shifted)."""
    ids = np.random.default_rng(seed).integers(3, V, (B, T))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, pad_from:] = 0
    ids[1, pad_from:] = 0
    hf_labels = np.where(mask == 1, ids, -100)
    labels = np.concatenate([hf_labels[:, 1:], np.full((B, 1), -100)], axis=1)
    return ids, mask, hf_labels, {"input_ids": ids, "attention_mask": mask, "labels": labels}


def spec_masks(layer_types, q_len, k_len, window, *, causal, key_padding=None):
    """The masks of SPEC.md sections 1, 2 and 8 as transformers' additive 4D masks,
    {layer type: (B|1, 1, Tq, Tk)}."""
    q = torch.arange(q_len)[:, None]
    k = torch.arange(k_len)[None, :]
    full = (k <= q) if causal else torch.ones(q_len, k_len, dtype=torch.bool)
    local = full & ((q - k < window) if causal else ((q - k).abs() < window))
    out = {}
    for name, m in ((FULL, full), (SLIDING, local)):
        m = m[None, None]
        if key_padding is not None:
            m = m & key_padding.bool()[:, None, None, :]
        out[name] = torch.where(m, 0.0, torch.finfo(torch.float32).min)
    return {t: out[t] for t in set(layer_types)}


def report_grads(ours: dict, hf_model) -> dict:
    """Per-tensor relative Frobenius error |g_ours - g_hf| / |g_hf|, printed like llm.c."""
    hf = {k: p.grad.numpy() for k, p in hf_model.named_parameters()}
    assert set(hf) == set(ours), sorted(set(hf) ^ set(ours))
    errors = {}
    width = max(len(k) for k in hf)
    print()
    for k in hf:
        diff = np.linalg.norm(ours[k].astype(np.float64) - hf[k])
        errors[k] = diff / max(np.linalg.norm(hf[k].astype(np.float64)), 1e-30)
        status = "OK" if errors[k] < 1e-4 else "NOT OK"
        print(f"  {k:<{width}}  |g| {np.linalg.norm(hf[k]):9.3e}  max|diff| "
              f"{np.abs(ours[k] - hf[k]).max():9.3e}  rel {errors[k]:9.3e}  {status}")
    return errors


def assert_parity(logits, hf_logits, real, loss, hf_loss, grads, hf):
    np.testing.assert_allclose(logits[real], hf_logits[real], rtol=0, atol=1e-4)
    assert abs(loss - hf_loss) <= 1e-5 * abs(hf_loss), (loss, hf_loss)
    errors = report_grads(grads, hf)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"{worst}: relative gradient error {errors[worst]:.2e}"


@pytest.mark.parametrize("case", ["gemma2_gqa2", "gemma2_gqa4"])
def test_gemma2_logits_loss_grads(case, tmp_path, backend):
    hf = hf_model(case)
    ours = ours_from(hf, tmp_path)
    ids, mask, hf_labels, batch = causal_lm_batch(B=2, T=10, pad_from=7)  # T > window
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(hf_labels))
    out.loss.backward()
    loss, grads = ours.loss_and_grads(batch)
    assert_parity(ours.forward(batch), out.logits.detach().numpy(), mask.astype(bool),
                  loss, out.loss.item(), grads, hf)


@pytest.mark.parametrize("case", ["t5gemma_balanced", "t5gemma_unbalanced"])
def test_t5gemma_logits_loss_grads(case, tmp_path, backend):
    from transformers.modeling_outputs import BaseModelOutput
    hf = hf_model(case)
    ours = ours_from(hf, tmp_path)
    enc_cfg, dec_cfg = ours.config.encoder, ours.config.decoder
    rng = np.random.default_rng(2)
    B, S, T = 2, 9, 7  # both longer than the windows
    ids = rng.integers(3, V, (B, S))
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, 6:] = 0  # padded encoder input
    ids[1, 6:] = 0
    dec_ids = rng.integers(3, V, (B, T))
    labels = rng.integers(3, V, (B, T))
    labels[0, -2:] = -100
    tmask = torch.tensor(mask)
    enc_masks = spec_masks(enc_cfg.layer_types, S, S, enc_cfg.sliding_window, causal=False,
                           key_padding=tmask)
    dec_masks = spec_masks(dec_cfg.layer_types, T, T, dec_cfg.sliding_window, causal=True)
    enc = hf.model.encoder(input_ids=torch.tensor(ids), attention_mask=enc_masks)
    out = hf(encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
             attention_mask=tmask, decoder_input_ids=torch.tensor(dec_ids),
             decoder_attention_mask=dec_masks, labels=torch.tensor(labels))
    out.loss.backward()
    batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec_ids,
             "labels": labels}
    real_enc = mask.astype(bool)
    np.testing.assert_allclose(ours.encode(ids, mask)[real_enc],
                               enc.last_hidden_state.detach().numpy()[real_enc], atol=1e-4)
    loss, grads = ours.loss_and_grads(batch)
    assert_parity(ours.forward(batch), out.logits.detach().numpy(),
                  np.ones((B, T), dtype=bool), loss, out.loss.item(), grads, hf)


@pytest.mark.parametrize("case", list(CASES))
def test_save_load_through_transformers_is_identical(case, tmp_path):
    """ours -> save_hf -> transformers from_pretrained (no missing/unexpected keys) ->
    save_pretrained -> load_hf: the same config and bit-identical weights."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    ours = ours_from(hf_model(case, seed=3), tmp_path)
    save_hf(ours, tmp_path / "ours")
    auto = AutoModelForCausalLM if CASES[case][0] == "gemma2" else AutoModelForSeq2SeqLM
    hf, info = auto.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert_reloads_identically(hf, ours, tmp_path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_directories_load_in_transformers(dtype, tmp_path):
    ours = ours_from(hf_model("t5gemma_unbalanced", seed=4), tmp_path)
    save_hf(ours, tmp_path / "half", dtype=dtype)
    from transformers import T5GemmaForConditionalGeneration
    hf = T5GemmaForConditionalGeneration.from_pretrained(tmp_path / "half")
    assert hf.dtype == getattr(torch, dtype)
    back = load_hf(tmp_path / "half")
    for k, p in hf.state_dict().items():
        if k in back.params:
            np.testing.assert_array_equal(back.params[k], p.float().numpy(), err_msg=k)


def test_bf16_rounding_matches_torch():
    from mini_encdec.storage.safetensors_io import bf16_to_f32, f32_to_bf16
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(
        -30, 30, 10000), np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40, 1 + 2 ** -8,
                                   1 + 3 * 2 ** -8], dtype=np.float32)]).astype(np.float32)
    ours = bf16_to_f32(f32_to_bf16(x))
    theirs = torch.tensor(x).bfloat16().float().numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("case,seed", [("gemma2_gqa2", 1), ("t5gemma_unbalanced", 6)])
def test_greedy_generation_matches_transformers(case, seed, tmp_path):
    """Same 20 greedy tokens (our KV cache vs transformers' cache), and transformers'
    per-step logits equal our full forward over the generated sequence."""
    from transformers.modeling_outputs import BaseModelOutput
    hf = hf_model(case, seed=seed, post_norm_offset=4.0)
    ours = ours_from(hf, tmp_path)
    rng = np.random.default_rng(6)
    cfg = ours.config if CASES[case][0] == "gemma2" else ours.config.decoder
    kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=cfg.eos_token_id,
              pad_token_id=cfg.pad_token_id, output_logits=True, return_dict_in_generate=True)
    if CASES[case][0] == "gemma2":
        prompts = rng.integers(3, V, (2, 5))  # 5 + 20 tokens > window
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor(prompts),
                              attention_mask=torch.ones(2, 5, dtype=torch.long), **kw)
        theirs = out.sequences[:, 5:].numpy()
        mine = generate(ours, prompts, max_new_tokens=20)
        full = np.concatenate([prompts, mine], axis=1)
        replay = ours.forward({"input_ids": full})[:, 4:-1]  # the logits that chose `mine`
    else:
        src = rng.integers(3, V, (2, 9))
        mask = np.ones((2, 9), dtype=np.int64)
        mask[1, 6:] = 0  # padded source
        src[1, 6:] = 0
        enc_cfg = ours.config.encoder
        enc_masks = spec_masks(enc_cfg.layer_types, 9, 9, enc_cfg.sliding_window,
                               causal=False, key_padding=torch.tensor(mask))
        with torch.no_grad():
            enc = hf.model.encoder(input_ids=torch.tensor(src), attention_mask=enc_masks)
            out = hf.generate(encoder_outputs=BaseModelOutput(
                last_hidden_state=enc.last_hidden_state), attention_mask=torch.tensor(mask),
                decoder_start_token_id=cfg.bos_token_id, **kw)
        theirs = out.sequences[:, 1:].numpy()  # after the start token
        mine = generate(ours, src, attention_mask=mask, max_new_tokens=20)
        dec_in = np.concatenate([np.full((2, 1), cfg.bos_token_id), mine[:, :-1]], axis=1)
        replay = ours.forward({"input_ids": src, "attention_mask": mask,
                               "decoder_input_ids": dec_in})
    print("\n  ours        ", mine.tolist(), "\n  transformers", theirs.tolist())
    np.testing.assert_array_equal(mine, theirs)
    assert mine.shape[1] == 20 and len(np.unique(mine)) > 5  # a real 20-step test
    steps = torch.stack(out.logits, dim=1).numpy()  # (B, N, V)
    live = np.cumsum(mine == cfg.eos_token_id, axis=1) - (mine == cfg.eos_token_id) == 0
    np.testing.assert_allclose(replay[live], steps[live], rtol=0, atol=1e-4)


def test_adapted_hf_checkpoint_keeps_the_source_function(tmp_path):
    """adapt on a Gemma 2 directory writes a T5Gemma directory; in transformers, its
    decoder with cross-attention o_proj zeroed gives the Gemma 2 model's logits, and its
    encoder with causal masks gives the Gemma 2 model's final hidden states."""
    from mini_encdec.training.adapt import adapt_command
    from transformers import Gemma2ForCausalLM, T5GemmaForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput
    hf_model("gemma2_gqa2", seed=7).save_pretrained(tmp_path / "g2")
    out = adapt_command(tmp_path / "g2", None, tmp_path / "t5", print_fn=None, progress=False)
    assert json.loads((out / "config.json").read_text())["architectures"] == \
        ["T5GemmaForConditionalGeneration"]
    g2 = Gemma2ForCausalLM.from_pretrained(tmp_path / "g2", attn_implementation="eager")
    t5, info = T5GemmaForConditionalGeneration.from_pretrained(
        out, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    rng = np.random.default_rng(8)
    ids = torch.tensor(rng.integers(3, V, (2, 10)))
    cfg = t5.config.encoder
    with torch.no_grad():
        src = g2(input_ids=ids, output_hidden_states=True)
        causal = spec_masks(cfg.layer_types, 10, 10, cfg.sliding_window, causal=True)
        enc = t5.model.encoder(input_ids=ids, attention_mask=causal).last_hidden_state
        np.testing.assert_allclose(enc.numpy(), g2.model(input_ids=ids).last_hidden_state
                                   .numpy(), atol=1e-5)
        for layer in t5.model.decoder.layers:
            layer.cross_attn.o_proj.weight.zero_()
        logits = t5(encoder_outputs=BaseModelOutput(last_hidden_state=enc),
                    decoder_input_ids=ids).logits
    np.testing.assert_allclose(logits.numpy(), src.logits.numpy(), atol=1e-5)


# --- 2. float64, the parameter dict by name ---------------------------------------------------

F64_BASE = GemmaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)


def hf_stack_config(c: GemmaConfig, cls, window=None):
    return cls(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
               num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
               num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
               intermediate_size=c.intermediate_size,
               sliding_window=c.sliding_window if window is None else window,
               query_pre_attn_scalar=int(c.query_pre_attn_scalar),
               attn_logit_softcapping=c.attn_logit_softcapping,
               final_logit_softcapping=c.final_logit_softcapping,
               layer_types=list(c.layer_types), hidden_activation="gelu_pytorch_tanh",
               attn_implementation="eager")


def hf_encoder_window(W: int) -> int:
    """The HF encoder sliding_window that allows exactly |q - k| < W."""
    from transformers import masking_utils
    overlay = getattr(masking_utils, "sliding_window_bidirectional_overlay", None)
    if overlay is not None and overlay(W)(0, 0, 0, W):  # HF allows |q - k| == W
        return W - 1
    return W


def load_same_weights(hf, ours):
    """Copy our params into the HF model (same keys); the tied head follows the table."""
    missing, _ = hf.load_state_dict({k: torch.tensor(v) for k, v in ours.params.items()},
                                    strict=False)
    assert all(k.startswith("lm_head") for k in missing), missing


def randomise(model, seed):
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3


def compare_grads(hf, grads):
    hg = {k: p.grad.numpy() for k, p in hf.named_parameters() if p.grad is not None}
    assert set(hg) == set(grads)
    for k, g in grads.items():
        np.testing.assert_allclose(g, hg[k], rtol=1e-4, atol=1e-5 * np.abs(hg[k]).max(),
                                   err_msg=k)


def test_gemma2_float64_parity_by_name():
    from transformers import Gemma2Config, Gemma2ForCausalLM
    ours = build_model(F64_BASE, dtype=np.float64)
    randomise(ours, 0)
    hf = Gemma2ForCausalLM(hf_stack_config(F64_BASE, Gemma2Config)).double().eval()
    load_same_weights(hf, ours)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (2, 9))
    out = hf(input_ids=torch.tensor(ids), labels=torch.tensor(ids))
    np.testing.assert_allclose(ours.forward({"input_ids": ids}), out.logits.detach().numpy(),
                               rtol=1e-5, atol=1e-4)
    labels = np.concatenate([ids[:, 1:], np.full((2, 1), -100)], axis=1)  # HF shifts inside
    loss, grads = ours.loss_and_grads({"input_ids": ids, "labels": labels})
    out.loss.backward()
    assert abs(loss - out.loss.item()) < 1e-5
    compare_grads(hf, grads)


def test_t5gemma_unbalanced_float64_parity_by_name():
    from transformers.models.t5gemma import (T5GemmaConfig, T5GemmaForConditionalGeneration,
                                             T5GemmaModuleConfig)
    dec = F64_BASE.replace(hidden_size=12, num_attention_heads=2, num_key_value_heads=1,
                       head_dim=6, intermediate_size=20, num_hidden_layers=2)
    config = EncDecConfig(encoder=F64_BASE, decoder=dec)
    ours = build_model(config, dtype=np.float64)
    randomise(ours, 2)
    hc = T5GemmaConfig(encoder=hf_stack_config(F64_BASE, T5GemmaModuleConfig,
                                         window=hf_encoder_window(F64_BASE.sliding_window)),
                       decoder=hf_stack_config(dec, T5GemmaModuleConfig), vocab_size=50,
                       attn_implementation="eager")
    hf = T5GemmaForConditionalGeneration(hc).double().eval()
    load_same_weights(hf, ours)
    rng = np.random.default_rng(3)
    src = rng.integers(3, 50, (2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0
    dec_in = rng.integers(3, 50, (2, 6))
    labels = rng.integers(3, 50, (2, 6))
    out = hf(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask),
             decoder_input_ids=torch.tensor(dec_in), labels=torch.tensor(labels))
    batch = {"input_ids": src, "attention_mask": mask, "decoder_input_ids": dec_in,
             "labels": labels}
    np.testing.assert_allclose(ours.forward(batch), out.logits.detach().numpy(),
                               rtol=1e-5, atol=1e-4)
    loss, grads = ours.loss_and_grads(batch)
    out.loss.backward()
    assert abs(loss - out.loss.item()) < 1e-5
    compare_grads(hf, grads)
