"""T5Gemma 2 (T5Gemma2ForConditionalGeneration, text) against live Hugging Face
`transformers` (needs torch; `-m parity`), in the manner of test_parity_gemma3.py:

1. float32, through our interop: random tiny transformers models (eager attention, a
   placeholder vision tower) are saved with `save_pretrained` and read with `load_hf`;
   logits (1e-4 absolute), loss (1e-5 relative) and every text parameter's gradient (1e-4
   relative Frobenius error, printed per tensor) on a batch with a right-padded source,
   transformers building its OWN masks from the 2D attention mask (the encoder's split
   window, the decoder's causal window beside the encoder's padding mask). Cases: GQA
   H/K = 2 and 4, transformers' default pattern and mixes, linear RoPE scaling, an
   encoder and decoder of different depth and heads, the final soft-cap on (and
   attn_logit_softcapping set, which transformers ignores).
2. The encoder's window at its boundary: one local encoder layer; the encoder output at
   query q depends on the token at k exactly when 0 <= q-k < (W+1)//2 or
   0 < k-q < W//2 + 1, in transformers (its own mask) and here, W = 1..5.
3. save_hf -> from_pretrained (no missing/unexpected keys) -> save_pretrained -> load_hf
   gives back the same config and bit-identical weights.
4. Greedy generation: the same tokens as transformers' `generate` (its cache, ours).
5. Adaptation: a transformers Gemma3ForCausalLM, adapted into a T5Gemma 2 directory,
   loads in transformers with every key and computes our logits.

transformers' T5Gemma 2 computes the encoder positions as 0..S-1 whatever the padding
(ours count real tokens): equal for right padding, which is what these tests use.
"""

import numpy as np
import pytest

from mini_encdec.config import FULL, SLIDING
from mini_encdec.models.generate import generate
from mini_encdec.storage.hf_config import T5GEMMA2_VISION
from mini_encdec.storage.interop import load_hf, save_hf

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install .[parity])")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need transformers (pip install .[parity])")

from .test_parity_hf import assert_reloads_identically  # noqa: E402

pytestmark = pytest.mark.parity

V = 64
STACK = dict(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=4,
             query_pre_attn_scalar=6, hidden_activation="gelu_pytorch_tanh",
             layer_types=[SLIDING, SLIDING, FULL])


def rope(local, glob, factor=None):
    full = {"rope_type": "default", "rope_theta": glob} if factor is None else \
        {"rope_type": "linear", "rope_theta": glob, "factor": factor}
    return {SLIDING: {"rope_type": "default", "rope_theta": local}, FULL: full}


CASES = {  # (encoder text config, decoder config)
    # H/K = 2, window 4 (split: 2 left incl. the query, 2 right), bases 10 / 1000
    "gqa2": (dict(STACK, rope_parameters=rope(10.0, 1000.0)),) * 2,
    # H/K = 4, transformers' default pattern over 7 layers, odd window 3, linear scaling
    "pattern_gqa4_linear": (dict(STACK, num_key_value_heads=1, num_hidden_layers=7,
                                 layer_types=None, sliding_window=3,
                                 rope_parameters=rope(10.0, 100.0, 4.0)),) * 2,
    # encoder and decoder differ in depth, heads, window and RoPE; the final soft-cap on,
    # attn_logit_softcapping set (transformers' T5Gemma 2 attention never applies it)
    "unbalanced_softcapped": (
        dict(STACK, sliding_window=5, final_logit_softcapping=5.0, attn_logit_softcapping=3.0,
             rope_parameters=rope(10.0, 1000.0)),
        dict(STACK, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
             head_dim=12, query_pre_attn_scalar=12, intermediate_size=20, sliding_window=2,
             layer_types=[FULL, SLIDING], final_logit_softcapping=5.0,
             attn_logit_softcapping=3.0, rope_parameters=rope(100.0, 10000.0))),
}


# cases whose eoi_token_index is inside the vocabulary (transformers' default 256,000 is
# not): that token's input embedding is the learned eoi vector, in encoder and decoder
EOI_CASES = {"gqa2_eoi": ("gqa2", 60)}


def hf_config(case, enc=None, dec=None):
    from transformers import T5Gemma2Config
    case, eoi = EOI_CASES.get(case, (case, None))
    e, d = CASES[case]
    e, d = {**e, **(enc or {})}, {**d, **(dec or {})}
    tokens = {} if eoi is None else {"eoi_token_index": eoi}
    return T5Gemma2Config(encoder=dict(text_config=e, vision_config=dict(T5GEMMA2_VISION),
                                       mm_tokens_per_image=1, **tokens),
                          decoder=d, attn_implementation="eager")


def hf_model(case, seed=0, enc=None, dec=None, post_norm_offset=0.0):
    """Random weights N(0, 0.3^2); post_norm_offset added to the post-sublayer norms (a
    larger residual update, so that greedy generation does not repeat one token)."""
    from transformers import T5Gemma2ForConditionalGeneration
    torch.manual_seed(seed)
    model = T5Gemma2ForConditionalGeneration(hf_config(case, enc, dec))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if ".post_" in name:
                p.add_(post_norm_offset)
    return model.float().eval()


def ours_from(hf, tmp_path):
    hf.save_pretrained(tmp_path / "hf")
    return load_hf(tmp_path / "hf")


def hf_text_grads(hf, eoi: bool = False) -> dict:
    """transformers' gradients of the text model under our keys (its tied copies are one
    parameter; the vision tower and projector do not take part, nor the eoi vector unless
    eoi: the eoi token is in the vocabulary)."""
    out = {}
    for k, p in hf.named_parameters():
        if "vision_tower" in k or "multi_modal_projector" in k or (
                "eoi_embedding" in k and not eoi):
            continue
        out[k.replace("model.encoder.text_model.", "model.encoder.")] = p.grad.numpy()
    return out


def batch_of(rng, S=11, T=8, eoi=None):
    """Two rows, the second source right-padded; with eoi, that token at two source and
    one decoder position."""
    B = 2
    ids = rng.integers(3, V, (B, S))
    if eoi is not None:
        ids[:, [1, 4]] = eoi
    mask = np.ones((B, S), dtype=np.int64)
    mask[1, S - 4:] = 0  # right-padded second source
    ids[1, S - 4:] = 0
    labels = rng.integers(3, V, (B, T))
    labels[0, -2:] = -100
    dec = rng.integers(3, V, (B, T))
    if eoi is not None:
        dec[:, 3] = eoi
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
            "labels": labels}


@pytest.mark.parametrize("case", list(CASES) + list(EOI_CASES))
def test_t5gemma2_logits_loss_grads(case, tmp_path, backend):
    hf = hf_model(case)
    ours = ours_from(hf, tmp_path)
    assert ours.config.merged_attention and ours.config.tie_all_embeddings
    assert ours.config.encoder.bidirectional_window == "split"
    assert ours.config.decoder.attn_logit_softcapping is None
    eoi = ours.config.eoi_token_id
    assert eoi == EOI_CASES.get(case, (None, None))[1]
    b = batch_of(np.random.default_rng(1), eoi=eoi)
    out = hf(**{k: torch.tensor(v) for k, v in b.items()})
    out.loss.backward()
    loss, grads = ours.loss_and_grads(b)
    logits = ours.forward(b)
    theirs = out.logits.detach().numpy()
    enc = hf.get_encoder()(input_ids=torch.tensor(b["input_ids"]),
                           attention_mask=torch.tensor(b["attention_mask"])).last_hidden_state
    real = b["attention_mask"].astype(bool)
    enc_diff = np.abs(ours.encode(b["input_ids"], b["attention_mask"])[real]
                      - enc.detach().numpy()[real]).max()
    print(f"\n  {case}: max |encoder diff| {enc_diff:.3e}, max |logits diff| "
          f"{np.abs(logits - theirs).max():.3e}, loss {loss:.6f} vs {out.loss.item():.6f}")
    assert enc_diff < 1e-4
    np.testing.assert_allclose(logits, theirs, rtol=0, atol=1e-4)
    assert abs(loss - out.loss.item()) <= 1e-5 * abs(out.loss.item())
    hf_grads = hf_text_grads(hf, eoi=eoi is not None)
    assert set(hf_grads) == set(grads), sorted(set(hf_grads) ^ set(grads))
    worst = 0.0
    for k, g in hf_grads.items():
        err = np.linalg.norm(grads[k].astype(np.float64) - g) / max(np.linalg.norm(g), 1e-30)
        print(f"  {k:<60} max|diff| {np.abs(grads[k] - g).max():9.3e}  rel {err:9.3e}")
        assert err < 1e-4, k
        worst = max(worst, err)
    print(f"  worst relative gradient error {worst:.3e}")


@pytest.mark.parametrize("W", [1, 2, 3, 4, 5])
def test_encoder_split_window_boundary_matches_transformers(W, tmp_path):
    """One local encoder layer, window W: the encoder output at q depends on the token at
    k exactly when 0 <= q-k < (W+1)//2 or 0 < k-q < W//2 + 1, in transformers and here."""
    one = dict(num_hidden_layers=1, layer_types=[SLIDING], sliding_window=W)
    hf = hf_model("gqa2", enc=one)
    ours = ours_from(hf, tmp_path)
    S = W + 6
    ids = np.random.default_rng(W).integers(3, V, (1, S))
    q = S // 2
    encoder = hf.get_encoder()

    def theirs(x):
        with torch.no_grad():
            return encoder(input_ids=torch.tensor(x)).last_hidden_state[0, q].numpy()

    base, mine = theirs(ids), ours.encode(ids)[0, q]
    np.testing.assert_allclose(mine, base, atol=1e-4)
    for k in range(S):
        changed = ids.copy()
        changed[0, k] = 3 + (ids[0, k] - 2) % (V - 3)  # another token at key position k
        seen_hf = np.abs(theirs(changed) - base).max() > 1e-5
        seen_ours = np.abs(ours.encode(changed)[0, q] - mine).max() > 1e-5
        d = q - k
        want = 0 <= d < (W + 1) // 2 or 0 < -d < W // 2 + 1
        assert seen_hf == seen_ours == want, (W, k, seen_hf, seen_ours)


@pytest.mark.parametrize("case", list(CASES) + list(EOI_CASES))
def test_save_load_through_transformers_is_identical(case, tmp_path):
    """ours -> save_hf -> from_pretrained (no missing/unexpected keys) -> save_pretrained ->
    load_hf: the same config and bit-identical weights."""
    from transformers import AutoModelForSeq2SeqLM
    ours = ours_from(hf_model(case, seed=3), tmp_path)
    save_hf(ours, tmp_path / "ours")
    hf, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(hf).__name__ == "T5Gemma2ForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert_reloads_identically(hf, ours, tmp_path)


def test_loading_skips_the_vision_tower_in_one_line(tmp_path, capsys):
    ours_from(hf_model("gqa2"), tmp_path)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "T5Gemma 2" in ln]
    assert len(lines) == 1 and "vision_tower" in lines[0]


@pytest.mark.parametrize("case", ["gqa2", "pattern_gqa4_linear"])
def test_greedy_generation_matches_transformers(case, tmp_path):
    """The same 16 greedy tokens (our KV cache vs transformers' cache) from a full and a
    right-padded source, transformers building its own masks; and transformers' per-step
    logits equal our full forward over the generated sequence."""
    hf = hf_model(case, seed=6, post_norm_offset=4.0)
    ours = ours_from(hf, tmp_path)
    src = np.random.default_rng(6).integers(3, V, (2, 9))
    mask = np.ones((2, 9), dtype=np.int64)
    mask[1, 6:] = 0  # padded source
    src[1, 6:] = 0
    c = ours.config.decoder
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(src), attention_mask=torch.tensor(mask),
                          max_new_tokens=16, do_sample=False, eos_token_id=c.eos_token_id,
                          pad_token_id=c.pad_token_id, decoder_start_token_id=c.bos_token_id,
                          output_logits=True, return_dict_in_generate=True)
    theirs = out.sequences[:, 1:].numpy()  # after the start token
    mine = generate(ours, src, attention_mask=mask, max_new_tokens=16)
    print("\n  ours        ", mine.tolist(), "\n  transformers", theirs.tolist())
    np.testing.assert_array_equal(mine, theirs)
    assert mine.shape[1] == 16 and len(np.unique(mine)) > 4  # a real 16-step test
    dec_in = np.concatenate([np.full((2, 1), c.bos_token_id), mine[:, :-1]], axis=1)
    replay = ours.forward({"input_ids": src, "attention_mask": mask,
                           "decoder_input_ids": dec_in})
    steps = torch.stack(out.logits, dim=1).numpy()  # (B, N, V)
    live = np.cumsum(mine == c.eos_token_id, axis=1) - (mine == c.eos_token_id) == 0
    np.testing.assert_allclose(replay[live], steps[live], rtol=0, atol=1e-4)


def test_adapting_a_transformers_gemma3_gives_a_t5gemma2_transformers_loads(tmp_path):
    """A Gemma3ForCausalLM saved by transformers, adapted (streamed, HF in and out) into a
    T5Gemma 2 directory: from_pretrained finds every key and its logits equal ours; and the
    causal-encoder invariant holds against transformers' Gemma 3 itself (our adapted
    encoder with causal masks gives the parent's final hidden states)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, T5Gemma2ForConditionalGeneration

    from mini_encdec.training.adapt import adapt_command
    torch.manual_seed(0)
    parent = Gemma3ForCausalLM(Gemma3TextConfig(**dict(STACK, rope_parameters=rope(10.0, 1e3)),
                                                attn_implementation="eager"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in parent.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    parent.eval().save_pretrained(tmp_path / "parent")
    adapt_command(tmp_path / "parent", None, tmp_path / "t5g2", print_fn=None, progress=False)
    hf, info = T5Gemma2ForConditionalGeneration.from_pretrained(
        tmp_path / "t5g2", output_loading_info=True, attn_implementation="eager")
    assert not any(info.values()), info
    ours = load_hf(tmp_path / "t5g2")
    b = batch_of(np.random.default_rng(3))
    with torch.no_grad():
        theirs = hf(**{k: torch.tensor(v) for k, v in b.items() if k != "labels"}).logits
        h_parent = parent.model(input_ids=torch.tensor(b["input_ids"]), attention_mask=torch.tensor(
            b["attention_mask"])).last_hidden_state.numpy()
    np.testing.assert_allclose(ours.forward(b), theirs.numpy(), rtol=0, atol=1e-4)
    real = b["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours.encode(b["input_ids"], b["attention_mask"], causal=True)[real],
                               h_parent[real], rtol=0, atol=1e-4)


def test_sequence_classification_matches_transformers(tmp_path, backend):
    """T5Gemma2ForSequenceClassification (encoder-decoder: the decoder reads the input
    shifted right, the head its last real position): logits, loss and every gradient
    through load_hf, right-padded rows; and save_hf -> from_pretrained -> load_hf."""
    from transformers import T5Gemma2ForSequenceClassification

    from mini_encdec.models.classifier import SequenceClassifier
    config = hf_config("gqa2")
    config.num_labels = 3
    torch.manual_seed(0)
    hf = T5Gemma2ForSequenceClassification(config)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for _, p in hf.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    hf.eval().save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    assert isinstance(ours, SequenceClassifier) and ours.mode == "encoder_decoder"
    rng = np.random.default_rng(5)
    ids = rng.integers(3, V, (3, 10))
    ids[1, 6:] = 0  # right padding
    ids[2, 9:] = 0
    mask = (ids != 0).astype(np.int64)
    labels = np.array([0, 2, 1])
    out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             labels=torch.tensor(labels))
    out.loss.backward()
    b = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    loss, grads = ours.loss_and_grads(b)
    logits = ours.forward(b)
    print(f"\n  classifier: max |logits diff| "
          f"{np.abs(logits - out.logits.detach().numpy()).max():.3e}, loss {loss:.6f} vs "
          f"{out.loss.item():.6f}")
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), rtol=0, atol=1e-4)
    assert abs(loss - out.loss.item()) <= 1e-5 * abs(out.loss.item())
    theirs = hf_text_grads(hf)
    assert set(theirs) == set(grads), sorted(set(theirs) ^ set(grads))
    for k, gk in theirs.items():
        err = np.linalg.norm(grads[k].astype(np.float64) - gk) / max(np.linalg.norm(gk), 1e-30)
        assert err < 1e-4, (k, err)
    save_hf(ours, tmp_path / "ours")
    back, info = T5Gemma2ForSequenceClassification.from_pretrained(
        tmp_path / "ours", output_loading_info=True)
    assert not any(info.values()), info
    back.save_pretrained(tmp_path / "again")
    again = load_hf(tmp_path / "again")
    assert again.config == ours.config
    for k, v in ours.params.items():
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)


@pytest.mark.parametrize("name", ["t5gemma2_tiny", "t5gemma2_270m-270m", "t5gemma2_1b-1b",
                                  "t5gemma2_4b-4b"])
def test_preset_parameter_counts_equal_transformers(name):
    """count_parameters equals transformers' T5Gemma2ForConditionalGeneration built on the
    meta device from the preset's numbers (its text model: vision tower, projector and eoi
    vectors left out), and transformers derives the same layer pattern and RoPE bases."""
    from transformers import T5Gemma2Config, T5Gemma2ForConditionalGeneration

    from mini_encdec.config import count_parameters, encdec_preset
    c = encdec_preset(name)
    e = c.encoder
    text = dict(vocab_size=e.vocab_size, hidden_size=e.hidden_size,
                intermediate_size=e.intermediate_size, num_hidden_layers=e.num_hidden_layers,
                num_attention_heads=e.num_attention_heads,
                num_key_value_heads=e.num_key_value_heads, head_dim=e.head_dim,
                sliding_window=e.sliding_window,
                query_pre_attn_scalar=int(e.query_pre_attn_scalar))
    with torch.device("meta"):
        hf = T5Gemma2ForConditionalGeneration(T5Gemma2Config(encoder=dict(text_config=text),
                                                             decoder=dict(text)))
    skip = ("vision_tower", "multi_modal_projector") + (
        ("eoi_embedding",) if c.eoi_token_id is None else ())  # counted when in the vocabulary
    n = sum(p.numel() for k, p in hf.named_parameters() if not any(s in k for s in skip))
    assert count_parameters(c) == n
    for stack in (hf.config.encoder.text_config, hf.config.decoder):
        assert tuple(stack.layer_types) == e.layer_types
        assert stack.rope_parameters[FULL]["rope_theta"] == e.rope_base(FULL)[0]
        assert stack.rope_parameters[SLIDING]["rope_theta"] == e.rope_base(SLIDING)[0]


@pytest.mark.parametrize("case", ["gqa2", "unbalanced_softcapped", "gqa2_eoi"])
def test_t5gemma2_float64_parity_by_name(case):
    """float64, no files: our random weights put into transformers' model by name (the
    encoder's under model.encoder.text_model.), logits, loss and every gradient (to ~1e-6:
    transformers computes RMSNorm and RoPE angles in float32 even in float64). One padded
    encoder token only: a padding query whose local window holds padding alone gets NaN in
    transformers' float64 attention, which then reaches every token through 0 * NaN."""
    from transformers import T5Gemma2ForConditionalGeneration

    from mini_encdec.backend import use_backend
    from mini_encdec.models import build_model
    from mini_encdec.storage.hf_config import config_from_hf
    hf = T5Gemma2ForConditionalGeneration(hf_config(case)).double().eval()
    config = config_from_hf(hf.config.to_dict())
    ours = build_model(config, dtype=np.float64)
    rng = np.random.default_rng(0)
    for v in ours.params.values():
        v[...] = rng.standard_normal(v.shape) * 0.3
    theirs = {k.replace("model.encoder.", "model.encoder.text_model.", 1): torch.tensor(v)
              for k, v in ours.params.items()}
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    assert not unexpected, unexpected
    assert all(any(s in k for s in ("lm_head", "decoder.embed_tokens", "vision_tower",
                                    "multi_modal_projector", "eoi_embedding"))
               for k in missing), missing
    b = batch_of(rng, eoi=config.eoi_token_id)
    b["attention_mask"][1] = 1
    b["attention_mask"][1, -1] = 0
    # every unmasked input id real (not pad 0): transformers' embedding has padding_idx, so
    # an unmasked pad id would pass no gradient to its row there
    b["input_ids"][1, :-1] = rng.integers(3, V, b["input_ids"].shape[1] - 1)
    out = hf(**{k: torch.tensor(v) for k, v in b.items()})
    out.loss.backward()
    with use_backend("numpy"):
        logits = ours.forward(b)
        loss, grads = ours.loss_and_grads(b)
    np.testing.assert_allclose(logits, out.logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert abs(loss - out.loss.item()) < 1e-6 * abs(loss)
    hg = hf_text_grads(hf, eoi=config.eoi_token_id is not None)
    assert set(hg) == set(grads)
    for k, g in grads.items():
        np.testing.assert_allclose(g, hg[k], rtol=1e-4, atol=1e-5 * np.abs(hg[k]).max(),
                                   err_msg=k)
