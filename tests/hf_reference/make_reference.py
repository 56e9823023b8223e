"""Regenerate the frozen transformers outputs in this directory (needs torch + transformers).

    python tests/hf_reference/make_reference.py          # from the repository root
    python tests/hf_reference/make_reference.py gemma3   # only the cases named

For each case below: a random tiny model of ours (float64 weights rounded to float32, so a
float32 file holds them exactly) goes through `save_hf` into `transformers` (eager
attention, float64); transformers computes the logits, the loss and every parameter
gradient on a fixed batch, and `<case>.npz` stores

    config          our config as JSON (mini_encdec.config.config_from_dict reads it)
    param/<key>     the weights, float32, under our (= Hugging Face) keys
    batch/<key>     the batch, int64 (our batch dict: input_ids, attention_mask, ...)
    logits, loss    transformers' soft-capped logits and mean loss
    encoder_output  transformers' final-normed encoder output (encoder-decoder cases)
    grad/<key>      transformers' gradient of the loss for every parameter

transformers computes in float64; the outputs are stored rounded to float32 (about 7
significant digits, plenty to see a wiring mistake, and half the size).

tests/test_hf_reference.py compares the models with these files without torch, so the
default test suite sees a wiring mistake in the model assembly (a wrong query scalar,
RoPE in cross-attention, a missing soft-cap, an unwindowed local layer, a missing
gradient use of a tied table, ...) that only the optional parity tests saw before.

Masks and positions are given to transformers explicitly, from SPEC.md sections 1 and 2
(positions count real tokens; the symmetric local window is |q - k| < W, where transformers
>= 5 builds |q - k| <= W by default), as in tests/test_parity_hf.py and
tests/test_classifier_parity.py. The cases cover GQA (H/K = 2 and 4), sliding windows
shorter than the sequences, query_pre_attn_scalar different from the head size, soft-caps
small enough to bend the scores and logits, an unbalanced encoder-decoder (widths, depths,
heads and head sizes differ), right- and left-padded encoder inputs, ignored labels, and the
classification head in its two T5Gemma modes, and Gemma 3 (q/k norms, two RoPE bases with
linear scaling of the global layers, 2 local : 1 global, the final soft-cap only, right-
and left-padded rows; saved as Gemma3ForCausalLM), and T5Gemma 2 (Gemma 3 stacks of
different depth and heads, the encoder's split window, merged attention, one tied table,
an eoi token with its own input vector;
saved as T5Gemma2ForConditionalGeneration, its placeholder vision tower not compared). Generated with torch 2.13 and transformers
5.x; rerun this script after an intended change of the models' function, and review the diff
of the test.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # this checkout's mini_encdec

from mini_encdec.config import (FULL, SLIDING, ClassifierConfig, EncDecConfig,  # noqa: E402
                                GemmaConfig, patterned_layer_types, t5gemma2_config)
from mini_encdec.storage.interop import save_hf  # noqa: E402

from hf_inputs import classifier_forward, positions, random_model, spec_masks  # noqa: E402

V = 32
# 2 layers (local, global), H/K = 2, window 3, query scalar 6 != head size 4, small caps
STACK = GemmaConfig(vocab_size=V, hidden_size=8, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=4, intermediate_size=12, sliding_window=3,
                    query_pre_attn_scalar=6, attn_logit_softcapping=3.0,
                    final_logit_softcapping=5.0)
# unbalanced: a wider, deeper encoder (H/K = 2, head size 6, window 2, scalar 10) and a
# narrower decoder (H/K = 4, window 3, scalar 3); Gemma's default caps 50 and 30
ENCODER = STACK.replace(hidden_size=12, num_hidden_layers=3, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=6, intermediate_size=16,
                        sliding_window=2, query_pre_attn_scalar=10,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
DECODER = STACK.replace(num_key_value_heads=1, query_pre_attn_scalar=3,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
UNBALANCED = EncDecConfig(encoder=ENCODER, decoder=DECODER)
CASES = {
    "t5gemma_gqa": EncDecConfig(encoder=STACK, decoder=STACK),
    "t5gemma_unbalanced": UNBALANCED,
    "gemma2": STACK.replace(num_hidden_layers=3, num_key_value_heads=1,
                            query_pre_attn_scalar=5, attn_logit_softcapping=4.0),
    "classifier_encoder": ClassifierConfig(UNBALANCED, 3, "encoder"),
    "classifier_encoder_decoder": ClassifierConfig(UNBALANCED, 3, "encoder_decoder"),
    # Gemma 3: 4 layers (local, local, global, local), H/K = 2, q/k norms, local base 10,
    # global base 100 with linear scaling 4, no attention soft-cap (transformers' Gemma 3
    # never applies one), a final soft-cap of 5
    "gemma3": STACK.replace(num_hidden_layers=4, layer_types=patterned_layer_types(4, 3),
                            qk_norm=True, rope_theta=100.0, rope_local_theta=10.0,
                            rope_scaling_factor=4.0, attn_logit_softcapping=None),
    # T5Gemma 2: a Gemma 3 encoder (4 layers, 2 local : 1 global, window 4, split: 2 keys
    # left incl. the query, 2 right) and a shallower Gemma 3 decoder (H/K = 4, global then
    # local, window 3, other RoPE bases), merged attention, one tied table, final cap 5;
    # token 4 (twice in each part of the batch) is the eoi token, with its own input vector
    "t5gemma2": t5gemma2_config(
        STACK.replace(num_hidden_layers=4, layer_types=patterned_layer_types(4, 3),
                      sliding_window=4, qk_norm=True, rope_theta=100.0, rope_local_theta=10.0,
                      rope_scaling_factor=2.0, attn_logit_softcapping=None),
        STACK.replace(num_key_value_heads=1, layer_types=(FULL, SLIDING), qk_norm=True,
                      rope_theta=1000.0, rope_local_theta=20.0, attn_logit_softcapping=None,
                      query_pre_attn_scalar=4), eoi_token_id=4),
}


def encdec_batch(rng) -> dict:
    """B = 3: a full row, a right-padded and a left-padded encoder input; S = 9 and T = 7
    are longer than every window; some labels ignored."""
    B, S, T = 3, 9, 7
    ids = rng.integers(3, V, (B, S))
    ids[1, 6:] = 0
    ids[2, :4] = 0
    labels = rng.integers(3, V, (B, T))
    labels[0, 5:] = -100
    labels[2, 3:] = -100
    dec = np.concatenate([np.full((B, 1), 2), np.where(labels[:, :-1] < 0, 0, labels[:, :-1])],
                         axis=1)  # [BOS] + labels[:-1], ignored labels as pad
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
            "decoder_input_ids": dec, "labels": labels}


def classifier_batch(rng) -> dict:
    """Rows: full, right-padded, left-padded, one token (ids never 0 = pad)."""
    ids = rng.integers(3, V, (4, 8))
    ids[1, 5:] = 0
    ids[2, :3] = 0
    ids[3, 1:] = 0
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
            "labels": np.array([0, 2, 1, 2])}


def run_encdec(hf, config: EncDecConfig, b: dict):
    from transformers.modeling_outputs import BaseModelOutput
    mask = b["attention_mask"]
    enc = hf.get_encoder()(input_ids=torch.tensor(b["input_ids"]), position_ids=positions(mask),
                           attention_mask=spec_masks(config.encoder, positions(mask), mask,
                                                     causal=False))
    T = b["decoder_input_ids"].shape[1]
    dec_pos = torch.arange(T)[None].expand(len(mask), T)  # the decoder counts from 0
    dec_masks = spec_masks(config.decoder, dec_pos, np.ones((len(mask), T)), causal=True)
    out = hf(encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
             attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(
                 b["decoder_input_ids"]), decoder_attention_mask=dec_masks,
             decoder_position_ids=dec_pos, labels=torch.tensor(b["labels"]))
    return out, {"encoder_output": enc.last_hidden_state}


def run_gemma2(hf, config: GemmaConfig, b: dict):
    mask = b["attention_mask"]
    # transformers shifts inside: its label at t + 1 is ours at t
    hf_labels = np.concatenate([np.full((len(mask), 1), -100), b["labels"][:, :-1]], axis=1)
    out = hf(input_ids=torch.tensor(b["input_ids"]), position_ids=positions(mask),
             attention_mask=spec_masks(config, positions(mask), mask, causal=True),
             labels=torch.tensor(hf_labels))
    return out, {}


def run_classifier(hf, config: ClassifierConfig, b: dict):
    out, enc = classifier_forward(hf, config, b)
    return out, ({} if enc is None else {"encoder_output": enc})


def gemma2_batch(rng) -> dict:
    """B = 2, T = 10 > window; the second row right-padded; labels = next tokens."""
    ids = rng.integers(3, V, (2, 10))
    ids[1, 7:] = 0
    mask = (ids != 0).astype(np.int64)
    nxt = np.where(mask == 1, ids, -100)
    labels = np.concatenate([nxt[:, 1:], np.full((2, 1), -100)], axis=1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def gemma3_batch(rng) -> dict:
    """B = 3, T = 10 > window: a full row, a right-padded and a left-padded one."""
    ids = rng.integers(3, V, (3, 10))
    ids[1, 7:] = 0
    ids[2, :3] = 0
    mask = (ids != 0).astype(np.int64)
    labels = np.full((3, 10), -100)
    both = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)  # a real token predicting a real one
    labels[:, :-1] = np.where(both, ids[:, 1:], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_case(name: str, config, seed: int, tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, \
        AutoModelForSequenceClassification
    ours = random_model(config, seed)
    save_hf(ours, tmp / name)
    rng = np.random.default_rng(seed + 100)
    if isinstance(config, ClassifierConfig):
        auto, run, batch = AutoModelForSequenceClassification, run_classifier, classifier_batch(rng)
    elif isinstance(config, EncDecConfig):
        auto, run, batch = AutoModelForSeq2SeqLM, run_encdec, encdec_batch(rng)
    elif config.qk_norm:
        auto, run, batch = AutoModelForCausalLM, run_gemma2, gemma3_batch(rng)
    else:
        auto, run, batch = AutoModelForCausalLM, run_gemma2, gemma2_batch(rng)
    hf, info = auto.from_pretrained(tmp / name, output_loading_info=True,
                                    attn_implementation="eager", dtype=torch.float64)
    assert not any(info.values()), info
    hf.eval()
    out, extra = run(hf, config, batch)
    out.loss.backward()
    grads = {k.replace("model.encoder.text_model.", "model.encoder."): p.grad.numpy()
             for k, p in hf.named_parameters()  # T5Gemma 2: the text model's names
             if not any(s in k for s in ("vision_tower", "multi_modal_projector"))}
    grads = {k: g for k, g in grads.items()  # an eoi vector outside the vocabulary
             if "eoi_embedding" not in k or k in ours.params}
    assert set(grads) == set(ours.params), set(grads) ^ set(ours.params)
    data = {"config": np.array(json.dumps(config.to_dict(), sort_keys=True)),
            "logits": out.logits.detach().numpy().astype(np.float32),
            "loss": np.array(out.loss.item())}
    data.update({k: v.detach().numpy().astype(np.float32) for k, v in extra.items()})
    data.update({f"param/{k}": v.astype(np.float32) for k, v in ours.params.items()})
    data.update({f"batch/{k}": v.astype(np.int64) for k, v in batch.items()})
    data.update({f"grad/{k}": g.astype(np.float32) for k, g in grads.items()})
    return data


def main() -> None:
    torch.manual_seed(0)
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for seed, (name, config) in enumerate(CASES.items()):
            if only and name not in only:
                continue
            data = make_case(name, config, seed, Path(tmp))
            path = HERE / f"{name}.npz"
            np.savez_compressed(path, **data)
            print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB, loss {float(data['loss']):.6f}")


if __name__ == "__main__":
    main()
