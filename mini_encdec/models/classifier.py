"""The sequence-classification probe (SPEC.md section 7): a linear head on one token's hidden state.

Same parameters and semantics as `transformers`' heads, so checkpoints move both ways:

    mode "decoder"          Gemma2ForSequenceClassification
        h      = final-normed hidden states of the decoder-only Gemma 2     (B, S, D)
        logits = h[b, last_b] W^T                 score.weight (C, D), no bias
    mode "encoder"          T5GemmaForSequenceClassification, is_encoder_decoder=False
                            (the paper's SuperGLUE probe)
        h      = final-normed encoder output                                (B, S, De)
        logits = h[b, last_b] W^T + bias          score.out_proj.{weight (C, De), bias (C,)}
    mode "encoder_decoder"  T5GemmaForSequenceClassification, is_encoder_decoder=True
        the decoder reads the input shifted right, [BOS, x_0, ..., x_{S-2}], with its
        padding (id pad) masked as keys, and cross-attends to the encoder output
        h      = final-normed decoder states                                (B, S, Dd)
        logits = h[b, min(last_b + 1, S - 1)] W^T + bias

    last_b = the rightmost position of row b whose id is not pad_token_id (0), found from
             the ids (not the attention mask), 0 for a row of padding only
    loss   = mean cross-entropy of logits (B, C) against labels (B,) over labels != -100

In encoder-only mode only the encoder and the head are stored (transformers keeps no
decoder there); in the other modes the backbone's full parameter set plus the head.
Fine-tuning updates everything. No dropout (transformers' classifier_dropout_rate is 0 by
default and does nothing at inference). Without an attention_mask the mask is
`input_ids != pad_token_id`, as in transformers. Positions count real tokens (inputs.py):
with right padding they are transformers' 0, 1, 2, ...; with left padding
transformers needs position_ids = cumsum(mask) - 1 to compute the same.
Encoder-decoder quirk (transformers'): without padding the clamp makes the head read
position S - 1, where the decoder has seen x_0 ... x_{S-2} but not the last token.

API (shape letters: B batch, S tokens, C classes):

    clf = SequenceClassifier.from_backbone(model, num_labels, mode=None, *,
                                           label_names=(), seed=0, copy=True)
        a GemmaLM (mode "decoder") or EncDecLM (mode "encoder", the default, or
        "encoder_decoder"), its weights copied (copy=False shares the arrays) and a fresh
        head from `seed` (T5Gemma's N(0, 0.02^2 / C) with bias 0; Gemma 2's N(0, 0.02^2))
    clf = build_model(ClassifierConfig(backbone, num_labels, mode, label_names),
                      params=None, seed=0, dtype=np.float32)   (or SequenceClassifier(config, params))
    clf.config (ClassifierConfig), clf.params (flat dict, Hugging Face keys), clf.dtype
    clf.forward(batch) -> logits (B, C)        clf.forward(batch, return_cache=True)
    clf.backward(dlogits (B, C), cache) -> grads
    clf.loss(batch) -> float                   clf.loss_and_grads(batch) -> (loss, grads)
    clf.predict(batch) -> (B,) class ids (argmax of the logits)
    last_token_index(input_ids, pad_token_id) -> (B,)     shift_right(input_ids, bos) -> (B, S)

batch = {"input_ids": (B, S) int, "attention_mask": (B, S) 0/1 (optional),
         "labels": (B,) int in [0, C) or -100 (loss only)}; other keys are ignored, so the
classifier plugs into `mini_encdec.training.train.train`; checkpoints (`save_model`, training
checkpoints, `load_model`) store the ClassifierConfig in config.json; `interop.load_hf` /
`save_hf` read and write the transformers directories. Bad batches raise ValueError naming
the key.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..config import DECODER_ONLY, ENCODER_DECODER, ClassifierConfig
from ..nn.linear import linear_backward, linear_forward
from ..nn.loss import cross_entropy_backward, cross_entropy_forward
from .blocks import trunk_backward, trunk_forward
from .encdec import EncDecLM
from .gemma import GemmaLM
from .inputs import IGNORE_INDEX, check_batch
from .params import (GEMMA2_SCORE, T5GEMMA_SCORE, T5GEMMA_SCORE_BIAS, backbone_shapes,
                     check_params, encoder_spec, gemma_spec, head_shapes, init_tensor,
                     param_shapes)

__all__ = ["SequenceClassifier", "last_token_index", "shift_right"]


def last_token_index(input_ids: np.ndarray, pad_token_id: int) -> np.ndarray:
    """(B,) index of the rightmost id that is not pad_token_id in each row (0 when the
    row is all padding), as transformers finds it: argmax over positions * not-pad."""
    S = input_ids.shape[1]
    not_pad = input_ids != pad_token_id  # (B, S)
    return np.argmax(np.arange(S) * not_pad, axis=1)  # (B, S) -> (B,)


def shift_right(input_ids: np.ndarray, bos_token_id: int) -> np.ndarray:
    """[BOS, x_0, ..., x_{S-2}] per row: the decoder input of encoder-decoder mode."""
    out = np.empty_like(input_ids)  # (B, S)
    out[:, 0] = bos_token_id
    out[:, 1:] = input_ids[:, :-1]  # (B, S-1)
    return out


class SequenceClassifier:
    """A Gemma 2 or T5Gemma backbone with a classification head (see the module doc)."""

    def __init__(self, config: ClassifierConfig, params: dict):
        if not isinstance(config, ClassifierConfig):
            raise ValueError(f"SequenceClassifier: argument 'config': expected a "
                             f"ClassifierConfig, got {type(config).__name__}")
        self.dtype = check_params(config, params)
        self.config = config
        self.params = params
        backbone = config.backbone
        self.mode = config.mode
        # the stack the head reads in decoder and encoder mode
        self._spec = gemma_spec(backbone) if self.mode == DECODER_ONLY \
            else encoder_spec(backbone)
        self._encdec = None
        if self.mode == ENCODER_DECODER:
            # The decoder runs through EncDecLM (checked on the backbone's keys), which
            # then reads the classifier's own dict: one dict, so an update of
            # self.params[k] (in place or by assignment) is seen by both.
            self._encdec = EncDecLM(backbone, {k: params[k] for k in param_shapes(backbone)})
            self._encdec.params = params

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, model, num_labels: int, mode: Optional[str] = None, *,
                      label_names=(), seed: int = 0, copy: bool = True):
        """A classifier on a GemmaLM / EncDecLM with a fresh head (see the module doc).
        copy=True copies the backbone weights, so fine-tuning leaves `model` unchanged."""
        if not isinstance(model, (GemmaLM, EncDecLM)):
            raise ValueError(f"SequenceClassifier.from_backbone: argument 'model': expected a "
                             f"GemmaLM or EncDecLM, got {type(model).__name__}")
        config = ClassifierConfig(backbone=model.config, num_labels=num_labels, mode=mode,
                                  label_names=tuple(label_names))
        params = {k: (np.array(model.params[k]) if copy else model.params[k])
                  for k in backbone_shapes(config)}
        rng = np.random.default_rng(seed)
        for key, shape in head_shapes(config).items():
            params[key] = init_tensor(key, shape, rng, model.dtype)
        return cls(config, params)

    @property
    def causal_encoder(self) -> bool:
        """The causal-encoder ablation of an encoder-decoder backbone (its config's
        `causal_encoder`, inherited by from_backbone, saved with the config)."""
        return getattr(self.config.backbone, "causal_encoder", False)

    # --- batch handling -------------------------------------------------------------------
    def _check(self, batch, *, labels: bool, fn: str):
        """(input_ids (B, S), bool attention_mask (B, S), labels (B,) or None)."""
        b = check_batch(batch, required=("input_ids",), optional=("attention_mask",),
                        vocab_size=self.config.vocab_size, fn=fn,
                        groups={"input_ids": "tokens", "attention_mask": "tokens"})
        ids = b["input_ids"]
        if ids.shape[1] == 0:
            raise ValueError(f"{fn}: batch['input_ids']: expected at least one token per "
                             f"row, got shape {ids.shape}")
        mask = b.get("attention_mask")
        if mask is None:  # as transformers: every token that is not padding is real
            mask = ids != self.config.pad_token_id  # (B, S)
        y = None
        if labels or batch.get("labels") is not None:
            if batch.get("labels") is None:
                raise ValueError(f"{fn}: batch is missing key 'labels' (class ids (B,))")
            y = self._check_labels(batch["labels"], ids.shape[0], fn)
        return ids, mask, y

    def _check_labels(self, y, B: int, fn: str) -> np.ndarray:
        where, C = f"{fn}: batch['labels']", self.config.num_labels
        if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{where}: expected an integer numpy array of class ids, got "
                             f"{getattr(y, 'dtype', type(y).__name__)}")
        if y.shape != (B,):
            raise ValueError(f"{where}: expected shape (B,) = ({B},), one class per row, "
                             f"got {y.shape}")
        bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= C))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{where}: expected class ids in [0, {C}) or {IGNORE_INDEX}, "
                             f"got {int(y[i])} at index {i}")
        return y

    # --- the network ----------------------------------------------------------------------
    def _hidden(self, ids: np.ndarray, mask: np.ndarray):
        """(h (B, S, Dh) the states the head reads from, index (B,), cache)."""
        cfg = self.config
        last = last_token_index(ids, cfg.pad_token_id)  # (B,)
        if self.mode != ENCODER_DECODER:
            causal = self.mode == DECODER_ONLY or self.causal_encoder
            h, c = trunk_forward(self.params, self._spec, ids, mask,
                                 causal=causal)  # (B, S, D)
            return h, last, {"trunk": c}
        backbone = cfg.backbone
        enc, c_enc = self._encdec._encode(ids, mask)  # (B, S, De)
        dec_ids = shift_right(ids, backbone.decoder.bos_token_id)  # (B, S)
        dec_mask = dec_ids != backbone.decoder.pad_token_id  # (B, S)
        h, c_dec = self._encdec._decode(dec_ids, enc, mask, dec_mask)  # (B, S, Dd)
        index = np.minimum(last + 1, ids.shape[1] - 1)  # (B,): one later, for the shift
        return h, index, {"enc": c_enc, "dec": c_dec}

    def _head(self, pooled: np.ndarray):
        """logits = pooled W^T (+ bias): (B, Dh) -> (B, C). Returns (logits, cache)."""
        if self.mode == DECODER_ONLY:
            return linear_forward(pooled, self.params[GEMMA2_SCORE])  # (B,Dh)@(Dh,C)
        z, cache = linear_forward(pooled, self.params[T5GEMMA_SCORE])  # (B,Dh)@(Dh,C)
        return z + self.params[T5GEMMA_SCORE_BIAS], cache  # (B, C) + (C,)

    def _forward(self, ids: np.ndarray, mask: np.ndarray):
        h, index, cache = self._hidden(ids, mask)
        rows = np.arange(h.shape[0])
        pooled = h[rows, index]  # (B, S, Dh) -> (B, Dh)
        logits, cache["head"] = self._head(pooled)  # (B, C)
        cache.update(rows=rows, index=index, h_shape=h.shape)
        return logits, cache

    def forward(self, batch: dict, return_cache: bool = False):
        """Class logits (B, C); with return_cache also the cache for `backward`."""
        ids, mask, _ = self._check(batch, labels=False, fn="SequenceClassifier.forward")
        logits, cache = self._forward(ids, mask)
        return (logits, cache) if return_cache else logits

    def predict(self, batch: dict) -> np.ndarray:
        """(B,) the class with the largest logit."""
        return np.argmax(self.forward(batch), axis=1)

    def backward(self, dlogits: np.ndarray, cache: dict) -> dict:
        """Parameter gradients given d(objective)/d(logits) (B, C), keyed like params."""
        grads: dict = {}
        # logits = pooled W^T (+ bias)
        dpooled, grads[self._head_weight] = linear_backward(dlogits, cache["head"])
        if self.mode != DECODER_ONLY:
            grads[T5GEMMA_SCORE_BIAS] = dlogits.sum(axis=0)  # (B, C) -> (C,)
        # pooled = h[b, index_b]: the gradient lands on one position per row
        dh = np.zeros(cache["h_shape"], dtype=dpooled.dtype)  # (B, S, Dh)
        dh[cache["rows"], cache["index"]] = dpooled  # (B, Dh) -> (B, S, Dh)
        if self.mode != ENCODER_DECODER:
            # h = final_norm( blocks( E[ids] * sqrt(D) ) )
            dE, _ = trunk_backward(dh, cache["trunk"], grads)
            grads[self._spec.embed_key] = dE
        else:
            # h = decoder( shift_right(ids), enc ), enc = encoder(ids)
            grads.update(self._encdec._backward_from_hidden(dh, cache))
        return grads

    @property
    def _head_weight(self) -> str:
        return GEMMA2_SCORE if self.mode == DECODER_ONLY else T5GEMMA_SCORE

    def loss(self, batch: dict) -> float:
        """Mean cross-entropy over the rows whose label is not -100 (0.0 if none is)."""
        ids, mask, y = self._check(batch, labels=True, fn="SequenceClassifier.loss")
        logits, _ = self._forward(ids, mask)
        return cross_entropy_forward(logits, y, IGNORE_INDEX)[0]

    def loss_and_grads(self, batch: dict):
        """(mean cross-entropy, gradients keyed like params)."""
        ids, mask, y = self._check(batch, labels=True,
                                   fn="SequenceClassifier.loss_and_grads")
        logits, cache = self._forward(ids, mask)
        loss, c_loss = cross_entropy_forward(logits, y, IGNORE_INDEX)
        return loss, self.backward(cross_entropy_backward(1.0, c_loss), cache)
