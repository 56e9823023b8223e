"""Parity of the classification probe with `transformers` (SPEC.md section 7): logits, loss
and every gradient of Gemma2ForSequenceClassification and T5GemmaForSequenceClassification
(encoder-only and encoder-decoder) in float64, eager attention, on random tiny models; and
save_hf -> from_pretrained / save_pretrained -> load_hf giving the same logits.

The batch mixes a full row, right- and left-padded rows and a one-token row, with
sequences longer than the sliding windows. Masks and positions are given to transformers
explicitly, built from positions that count real tokens (our convention; transformers'
defaults are positions 0..S-1 and, since 5.x, an encoder window |q - k| <= W instead of
SPEC.md section 2's < W), so every padding layout is compared on the same function. `pytest -s`
prints the largest differences per quantity.
"""

import numpy as np
import pytest

from mini_encdec.config import ClassifierConfig, EncDecConfig, GemmaConfig
from mini_encdec.storage.interop import load_hf, save_hf
from mini_encdec.models import build_model

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install .[parity])")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need transformers (pip install .[parity])")

pytestmark = pytest.mark.parity

from .hf_reference.hf_inputs import classifier_forward, random_model  # noqa: E402
from .test_parity_hf import assert_reloads_identically  # noqa: E402

V, C = 64, 3
STACK = GemmaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3,
                    query_pre_attn_scalar=6)
# unbalanced: the decoder is narrower, H/K = 4, head_dim 6, window 2, query scalar 10
DECODER = STACK.replace(hidden_size=12, num_hidden_layers=2, num_key_value_heads=1,
                        head_dim=6, intermediate_size=20, sliding_window=2,
                        query_pre_attn_scalar=10)
CASES = {
    "gemma2": ClassifierConfig(STACK, C),
    "t5gemma_encoder": ClassifierConfig(EncDecConfig(encoder=STACK, decoder=DECODER), C,
                                        "encoder", label_names=("neg", "neu", "pos")),
    "t5gemma_encoder_decoder": ClassifierConfig(EncDecConfig(encoder=STACK, decoder=DECODER),
                                                C, "encoder_decoder"),
}


def hf_from_ours(ours, tmp_path, dtype=torch.float64):
    """ours -> save_hf -> AutoModelForSequenceClassification (no missing/unexpected keys)."""
    from transformers import AutoModelForSequenceClassification
    save_hf(ours, tmp_path / "ours")
    hf, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "ours", output_loading_info=True, attn_implementation="eager", dtype=dtype)
    assert not any(info.values()), info
    return hf.eval()


def mixed_batch(rng, S=8):
    """Rows: full, right-padded, left-padded, one token (ids never 0 = pad)."""
    ids = rng.integers(3, V, (4, S))
    ids[1, 5:] = 0
    ids[2, :3] = 0
    ids[3, 1:] = 0
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
            "labels": np.array([0, 2, 1, 2])}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_loss_and_every_gradient(case, tmp_path, backend):
    config = CASES[case]
    ours = random_model(config, seed=1)
    hf = hf_from_ours(ours, tmp_path)
    batch = mixed_batch(np.random.default_rng(2))
    out = classifier_forward(hf, config, batch)[0]
    out.loss.backward()
    logits = ours.forward(batch)
    loss, grads = ours.loss_and_grads(batch)
    hf_logits = out.logits.detach().numpy()
    hf_grads = {k: p.grad.numpy() for k, p in hf.named_parameters()}
    assert set(hf_grads) == set(grads) == set(ours.params), set(hf_grads) ^ set(grads)
    rel = {k: np.linalg.norm(grads[k] - g) / max(np.linalg.norm(g), 1e-30)
           for k, g in hf_grads.items()}
    worst = max(rel, key=rel.get)
    print(f"\n{case}: max |logits diff| {np.abs(logits - hf_logits).max():.2e}, "
          f"|loss diff| {abs(loss - out.loss.item()):.2e}, worst gradient {worst} "
          f"(relative Frobenius error {rel[worst]:.2e}, max |diff| "
          f"{np.abs(grads[worst] - hf_grads[worst]).max():.2e}), "
          f"head {max(rel[k] for k in rel if k.startswith('score')):.2e}")
    np.testing.assert_allclose(logits, hf_logits, rtol=0, atol=1e-5)
    assert abs(loss - out.loss.item()) <= 1e-6 * abs(out.loss.item())
    assert rel[worst] < 1e-5, f"{worst}: relative gradient error {rel[worst]:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_save_hf_loads_in_transformers_with_the_same_logits(case, tmp_path):
    """ours -> save_hf -> from_pretrained: transformers' default forward (no explicit masks,
    right padding, windows longer than the input) gives our logits; save_pretrained ->
    load_hf gives back the config and bit-identical weights."""
    wide = {"sliding_window": 16}
    config = CASES[case]
    b = config.backbone
    backbone = b.replace(**wide) if isinstance(b, GemmaConfig) else \
        b.replace(encoder=b.encoder.replace(**wide), decoder=b.decoder.replace(**wide))
    config = config.replace(backbone=backbone)
    ours = random_model(config, seed=3)
    ours = build_model(config, {k: v.astype(np.float32) for k, v in ours.params.items()})
    hf = hf_from_ours(ours, tmp_path, dtype=torch.float32)
    assert type(hf).__name__ == ("Gemma2ForSequenceClassification" if case == "gemma2"
                                 else "T5GemmaForSequenceClassification")
    assert hf.config.num_labels == C
    assert [hf.config.id2label[i] for i in range(C)] == list(config.label_names)
    batch = mixed_batch(np.random.default_rng(4))
    batch["input_ids"][2] = np.roll(batch["input_ids"][2], -3)  # right padding only
    batch["attention_mask"] = (batch["input_ids"] != 0).astype(np.int64)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(batch["input_ids"]),
                 attention_mask=torch.tensor(batch["attention_mask"]),
                 labels=torch.tensor(batch["labels"]))
    logits = ours.forward(batch)
    print(f"\n{case} (float32, transformers defaults): max |logits diff| "
          f"{np.abs(logits - out.logits.numpy()).max():.2e}, |loss diff| "
          f"{abs(ours.loss(batch) - out.loss.item()):.2e}")
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=0, atol=1e-5)
    assert abs(ours.loss(batch) - out.loss.item()) <= 1e-5 * abs(out.loss.item())
    assert_reloads_identically(hf, ours, tmp_path)


def test_load_hf_reads_a_transformers_classifier(tmp_path):
    """A classifier made by transformers (its own init, encoder-only T5Gemma as in the
    paper's probe) loads into a SequenceClassifier with the same logits."""
    from transformers import T5GemmaConfig, T5GemmaForSequenceClassification
    stack = dict(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=16,
                 hidden_activation="gelu_pytorch_tanh")
    torch.manual_seed(0)
    cfg = T5GemmaConfig(encoder=stack, decoder=stack, vocab_size=V, num_labels=4,
                        is_encoder_decoder=False, attn_implementation="eager")
    hf = T5GemmaForSequenceClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    assert ours.config.mode == "encoder" and ours.config.num_labels == 4
    assert not any(k.startswith("model.decoder.") for k in ours.params)
    ids = np.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 0)).logits
    np.testing.assert_allclose(ours.forward({"input_ids": ids}), want.numpy(), atol=1e-6)
