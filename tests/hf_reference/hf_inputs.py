"""What both comparisons with `transformers` give it (needs torch): random tiny weights of
ours, positions that count real tokens, the masks of SPEC.md sections 1 and 2 as
transformers' additive masks, and the classification models' forward with those masks.

Used by tests/test_classifier_parity.py (live parity) and make_reference.py (the frozen
references), so both compare the same function.
"""

from __future__ import annotations

import numpy as np
import torch

from mini_encdec.config import FULL, SLIDING, GemmaConfig
from mini_encdec.models import build_model
from mini_encdec.models.classifier import shift_right


def random_model(config, seed: int):
    """Ours, float64, every weight N(0, 0.3^2) rounded to float32 (so a float32 file holds
    exactly the same weights)."""
    model = build_model(config, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
    return model


def positions(mask: np.ndarray) -> torch.Tensor:
    """Positions counting real tokens (models/inputs.py), (B, T)."""
    return torch.tensor(np.maximum(np.cumsum(mask, axis=1) - 1, 0))


def spec_masks(cfg: GemmaConfig, pos, key_padding, *, causal: bool) -> dict:
    """The masks of SPEC.md sections 1 and 2 as transformers' additive float64 masks
    {layer type: (B, 1, T, T)}."""
    d = pos[:, :, None] - pos[:, None, :]  # (B, Tq, Tk): q - k
    full = d >= 0 if causal else torch.ones_like(d, dtype=torch.bool)
    W = cfg.sliding_window
    if causal:
        local = full & (d < W)
    elif cfg.bidirectional_window == "split":  # T5Gemma 2's encoder
        local = torch.where(d >= 0, d < (W + 1) // 2, -d < W // 2 + 1)
    else:
        local = full & (d.abs() < W)
    keys = torch.tensor(np.asarray(key_padding, dtype=bool))[:, None, :]  # (B, 1, Tk)
    neg = torch.tensor(torch.finfo(torch.float64).min, dtype=torch.float64)
    zero = torch.zeros((), dtype=torch.float64)
    return {name: torch.where((m & keys)[:, None], zero, neg)
            for name, m in ((FULL, full), (SLIDING, local))}


def classifier_forward(hf, config, batch: dict):
    """transformers' sequence classifier on our batch, with the masks and positions of
    SPEC.md section 8.
    Returns (its output, the encoder output or None)."""
    from transformers.modeling_outputs import BaseModelOutput
    ids, mask = batch["input_ids"], batch["attention_mask"]
    t_ids, t_labels = torch.tensor(ids), torch.tensor(batch["labels"])
    if config.mode == "decoder":
        masks = spec_masks(config.backbone, positions(mask), mask, causal=True)
        return hf(input_ids=t_ids, attention_mask=masks, position_ids=positions(mask),
                  labels=t_labels), None
    enc_masks = spec_masks(config.backbone.encoder, positions(mask), mask, causal=False)
    if config.mode == "encoder":
        return hf(input_ids=t_ids, attention_mask=enc_masks, position_ids=positions(mask),
                  labels=t_labels), None
    enc = hf.model.encoder(input_ids=t_ids, attention_mask=enc_masks,
                           position_ids=positions(mask))
    dec_mask = (shift_right(ids, config.backbone.decoder.bos_token_id) != 0).astype(np.int64)
    dec_masks = spec_masks(config.backbone.decoder, positions(dec_mask), dec_mask, causal=True)
    return hf(input_ids=t_ids, attention_mask=torch.tensor(mask),
              encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
              decoder_attention_mask=dec_masks, decoder_position_ids=positions(dec_mask),
              labels=t_labels), enc.last_hidden_state
