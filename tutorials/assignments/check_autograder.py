"""Check the autograder itself: every task grades in a student copy, and every classic
mistake fails its task's tests with a readable counterexample.

    python tutorials/assignments/check_autograder.py tasks               # every task
    python tutorials/assignments/check_autograder.py tasks task1_1 task5_3
    python tutorials/assignments/check_autograder.py mutants             # every mistake
    python tutorials/assignments/check_autograder.py mutants rms_w rope_interleaved
    python tutorials/assignments/check_autograder.py list                # the mistakes

`tasks`: for each task, a fresh student copy with only that task blanked (blank.py,
default options) is graded with the README's command, `python -m pytest -m <task>`,
which must fail (NotImplementedError, naming the function); then the original functions
are put back and the same command must pass.

`mutants`: the classic mistakes of MUTANTS below, each a small source patch (a mutation)
of the original code in a copy laid out like a default student copy (blank.py with nothing
blanked). With the patch applied, `python -m pytest -m <task>` must fail; the report shows
which tests failed and the first line of the first failure (the counterexample).
tests/test_assignment_tool.py runs a few of both by default and all of them under
`-m slow`. The README's table of classic mistakes comes from this list.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import blank  # noqa: E402


@dataclass(frozen=True)
class Mutant:
    """A classic mistake in task `task`: replace `old` by `new` in the files of `edits`,
    [(path, old, new), ...] (`old` must occur exactly once), or (path, old, new, count)."""

    name: str
    task: str
    mistake: str
    edits: tuple


def M(name, task, mistake, *edits):
    return Mutant(name, task, mistake, tuple(edits))


NN = "mini_encdec/nn/"
MODELS = "mini_encdec/models/"
OBJ = "mini_encdec/objectives/"

MUTANTS = [
    # --- 1.1 RMSNorm
    M("rms_w", "task1_1", "RMSNorm scaled by `w` instead of `(1 + w)`",
      (NN + "rmsnorm.py", "    y = xhat * (1 + w)\n", "    y = xhat * w\n")),
    M("rms_eps_outside", "task1_1", "RMSNorm's eps added outside the square root",
      (NN + "rmsnorm.py", "np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))",
       "(np.sqrt(np.mean(x * x, axis=-1, keepdims=True)) + x.dtype.type(eps))")),
    M("rms_backward_no_mean", "task1_1", "RMSNorm backward without the term through rstd",
      (NN + "rmsnorm.py",
       "dx = rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))",
       "dx = rstd * dxhat")),
    # --- 1.2 RoPE
    M("rope_interleaved", "task1_2", "interleaved RoPE (pairs (x[2i], x[2i+1])) instead of "
      "rotate-half (pairs (x[i], x[i + Dh/2]))",
      (NN + "rope.py", "return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)",
       "return np.stack([-x[..., 1::2], x[..., ::2]], axis=-1).reshape(x.shape)"),
      (NN + "rope.py", "angle = np.concatenate([angle, angle], axis=-1)",
       "angle = np.repeat(angle, 2, axis=-1)")),
    M("rope_sign", "task1_2", "rotate_half with the sign on the wrong half ([x2, -x1])",
      (NN + "rope.py", "return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)",
       "return np.concatenate([x[..., h:], -x[..., :h]], axis=-1)")),
    M("rope_freq", "task1_2", "RoPE frequencies theta^(-i/Dh) instead of theta^(-2i/Dh)",
      (NN + "rope.py", "theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)",
       "theta ** (-np.arange(0, head_dim // 2, dtype=np.float64) / head_dim)")),
    # --- 1.3 soft-cap, GELU
    M("gelu_erf", "task1_3", "erf GELU instead of the tanh approximation",
      (NN + "mlp.py", "t = np.tanh(dt(GELU_C) * (u + dt(GELU_A) * u * u * u))",
       "t = np.vectorize(math.erf, otypes=[u.dtype])(u / dt(math.sqrt(2)))")),
    M("softcap_no_divide", "task1_3", "soft-cap `c * tanh(x)` (x not divided by c)",
      (NN + "softcap.py", "t = tanh_ratio(x, c)\n    return c * t,",
       "t = np.tanh(x)\n    return c * t,")),
    M("softcap_grad", "task1_3", "soft-cap derivative `1 - t` instead of `1 - t^2`",
      (NN + "softcap.py", "return dy * (1 - t * t)", "return dy * (1 - t)")),
    # --- 1.4 GeGLU
    M("geglu_swapped", "task1_4", "GELU applied to `up` instead of `gate`",
      (NN + "mlp.py", "g, t = _gelu_parts(gate)\n    return g * up,",
       "g, t = _gelu_parts(up)\n    return g * gate,")),
    # --- 2.1 masks
    M("mask_causal_window", "task2_1", "decoder window off by one: `q - k <= W` (W + 1 keys)",
      (NN + "masks.py", "allowed &= diff < window", "allowed &= diff <= window")),
    M("mask_encoder_window", "task2_1", "encoder window off by one: `|q - k| <= W`",
      (NN + "masks.py", "allowed &= np.abs(diff) < window", "allowed &= np.abs(diff) <= window")),
    M("mask_padding", "task2_1", "key padding ignored",
      (NN + "masks.py", "allowed = allowed & key_padding[:, None, :]", "allowed = allowed")),
    # --- 2.2 attention core
    M("core_no_softcap", "task2_2", "attention soft-cap missing",
      (NN + "attention.py",
       "s1, c_cap = softcap_forward(s0, softcap) if softcap is not None else (s0, None)",
       "s1, c_cap = s0, None")),
    M("core_gqa_modulo", "task2_2", "query head h reads key/value head `h % K` instead of "
      "`h // (H/K)`",
      (NN + "attention.py", "qg = q.reshape(B, K, G, Tq, Dh)  # (B, H, Tq, Dh) -> (B, K, G, Tq, Dh)",
       "qg = q.reshape(B, G, K, Tq, Dh).swapaxes(1, 2)", 2),
      (NN + "attention.py", "o = og.reshape(B, H, Tq, Dh)  # (B, K, G, Tq, Dh) -> (B, H, Tq, Dh)",
       "o = og.swapaxes(1, 2).reshape(B, H, Tq, Dh)")),
    M("core_head_dim_scale", "task2_2", "scores scaled by `1/sqrt(head_dim)` instead of the "
      "given scale (`query_pre_attn_scalar^-1/2`)",
      (NN + "attention.py", "s0 = (qg @ kt) * dt(scale)", "s0 = (qg @ kt) * dt(Dh ** -0.5)")),
    M("core_empty_rows_nan", "task2_2", "a query with no allowed key gives NaN (no guard)",
      (NN + "attention.py",
       "row_max = np.where(np.isfinite(row_max), row_max, 0).astype(q.dtype, copy=False)",
       "row_max = row_max")),
    M("core_cache_private_keys", "task2_2", "the cache stores tanh(s0 / softcap) as \"tanh\" "
      "and leaves out \"scale\" (the backward reads cache[\"cap\"][\"t\"] and cache[\"scale\"])",
      (NN + "attention.py", '"p": p, "cap": c_cap, "scale": scale, "softcap": softcap}',
       '"p": p, "tanh": None if c_cap is None else c_cap["t"], "softcap": softcap}')),
    M("core_softmax_no_max", "task2_2", "softmax without subtracting the row maximum "
      "(overflows to inf / inf = NaN for large scores)",
      (NN + "attention.py", "e = np.exp(s2 - row_max)", "e = np.exp(s2)")),
    # --- 2.3 attention core backward
    M("core_grad_softcap", "task2_3", "attention backward forgets the soft-cap derivative",
      (NN + "attention.py", "ds = softcap_backward(ds, cache[\"cap\"])", "ds = ds")),
    M("core_grad_group_sum", "task2_3", "dk, dv not summed over the G query heads of a "
      "key/value head",
      (NN + "attention.py", "dk = np.sum(ds.swapaxes(-1, -2) @ qg, axis=2)",
       "dk = (ds.swapaxes(-1, -2) @ qg)[:, :, 0]")),
    M("core_backward_private_cache", "task2_3", "forward and backward agree on a private "
      "cache layout (t at the top level) instead of the documented one",
      (NN + "attention.py", '"p": p, "cap": c_cap, "scale": scale,',
       '"p": p, "t": None if c_cap is None else c_cap["t"], "scale": scale,'),
      (NN + "attention.py", 'if cache["cap"] is not None:\n        ds = softcap_backward(ds, cache["cap"])',
       'if cache["t"] is not None:\n        ds = ds * (1 - cache["t"] * cache["t"])')),
    # --- 2.4 attention layer
    M("layer_rope_values", "task2_4", "RoPE applied to the values too",
      (NN + "attention.py", "        k, c_rk = rotate(k, *rope_k)\n",
       "        k, c_rk = rotate(k, *rope_k)\n        v, _ = rotate(v, *rope_k)\n")),
    M("layer_rope_q_only", "task2_4", "RoPE on the queries only, not on the keys",
      (NN + "attention.py", "        k, c_rk = rotate(k, *rope_k)\n",
       "        c_rk = None\n")),
    # --- 2.5 T5Gemma 2's split encoder window
    M("split_sides_swapped", "task2_5", "split window's sides swapped: W//2 + 1 on the left "
      "(the query included), (W+1)//2 on the right",
      (NN + "masks.py",
       "return np.where(diff >= 0, diff < (window + 1) // 2, -diff < window // 2 + 1)",
       "return np.where(diff >= 0, diff < window // 2 + 1, -diff < (window + 1) // 2)")),
    M("split_half_each_side", "task2_5", "split window as `|q - k| <= W // 2` (W//2 keys "
      "each side: W + 1 keys for even W)",
      (NN + "masks.py",
       "return np.where(diff >= 0, diff < (window + 1) // 2, -diff < window // 2 + 1)",
       "return np.abs(diff) <= window // 2")),
    # --- 3.1 counts
    M("noise_floor", "task3_1", "noise count truncated (`int`) instead of rounded half to even",
      (OBJ + "span_corruption.py",
       "n_noise = int(np.rint(np.float32(length) * np.float32(density)))",
       "n_noise = int(np.float32(length) * np.float32(density))")),
    M("noise_float64", "task3_1", "noise count from the float64 product (T5 rounds the "
      "float32 one)",
      (OBJ + "span_corruption.py",
       "n_noise = int(np.rint(np.float32(length) * np.float32(density)))",
       "n_noise = int(np.rint(float(length) * float(density)))")),
    # --- 3.2 noise mask
    M("mask_starts_with_noise", "task3_2", "the segment starts with a noise span",
      (OBJ + "span_corruption.py",
       "runs = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)\n"
       "    is_noise = np.tile([False, True], n_spans)",
       "runs = np.stack([noise_lengths, kept_lengths], axis=1).reshape(-1)\n"
       "    is_noise = np.tile([True, False], n_spans)")),
    M("composition_with_repeats", "task3_2", "composition cut points drawn with repeats "
      "(empty spans)",
      (OBJ + "span_corruption.py",
       "cuts = np.sort(rng.choice(n - 1, size=parts - 1, replace=False)) + 1",
       "cuts = np.sort(rng.integers(1, n, size=parts - 1))")),
    # --- 3.3 span corruption
    M("sentinel_reused", "task3_3", "one sentinel reused for every span",
      (OBJ + "span_corruption.py", "sentinels = sentinel_ids[:n_spans]",
       "sentinels = np.full(n_spans, sentinel_ids[0])")),
    M("sentinel_misordered", "task3_3", "sentinels in reverse order",
      (OBJ + "span_corruption.py", "sentinels = sentinel_ids[:n_spans]",
       "sentinels = sentinel_ids[:n_spans][::-1]")),
    M("sentinel_wraps", "task3_3", "more spans than sentinels silently reuses them",
      (OBJ + "span_corruption.py", "if n_spans > len(sentinel_ids):", "if False:"),
      (OBJ + "span_corruption.py", "sentinels = sentinel_ids[:n_spans]",
       "sentinels = sentinel_ids[np.arange(n_spans) % len(sentinel_ids)]")),
    # --- 3.4 PrefixLM, UL2's S-denoiser
    M("mode_token_missing", "task3_4", "UL2 inputs without their mode token",
      (OBJ + "ul2.py", "return Example(np.concatenate([[mode_id], ex.inputs]).astype(np.int64), "
       "ex.targets)", "return Example(ex.inputs, ex.targets)")),
    M("s_denoiser_short_prefix", "task3_4", "S-denoiser prefix from 1 instead of "
      "round((1 - 2r)(L - 1))",
      (OBJ + "ul2.py", "lo = max(1, int(round((1.0 - 2.0 * r) * (length - 1))))", "lo = 1")),
    # --- 3.5 the batches
    M("prefix_in_loss", "task3_5", "PrefixLM's decoder-only form counts the prefix in the loss",
      ("mini_encdec/text/batching.py", "first = max(len(ex.inputs) - 1, 0)", "first = 0")),
    M("decoder_start_pad", "task3_5", "decoder input starts with pad, not BOS",
      ("mini_encdec/text/batching.py", "decoder_input_ids[i, 0] = bos_id",
       "decoder_input_ids[i, 0] = pad_id")),
    M("decoder_not_shifted", "task3_5", "decoder input not shifted right (it sees its label)",
      ("mini_encdec/text/batching.py", "decoder_input_ids[i, 0] = bos_id                # shifted right with BOS\n"
       "        decoder_input_ids[i, 1:n] = ex.targets[:-1]",
       "decoder_input_ids[i, :n] = ex.targets")),
    M("decoder_drops_last_target", "task3_5", "decoder-only batch drops the last target "
      "when the window is full",
      ("mini_encdec/text/batching.py", "last = len(x) - 1 ", "last = m - 1 ")),
    M("decoder_mask_inputs_only", "task3_5", "decoder-only attention mask covers only the inputs",
      ("mini_encdec/text/batching.py", "attention_mask[i, :m] = 1",
       "attention_mask[i, :len(ex.inputs)] = 1")),
    # --- 4.1 adaptation
    M("adapt_fresh_cross", "task4_1", "balanced adaptation initialises cross-attention "
      "freshly instead of from self-attention",
      ("mini_encdec/training/adapt_mapping.py",
       "        if not balanced:\n            return Origin(None, init=\"normal\")\n",
       "        return Origin(None, init=\"normal\")\n")),
    M("adapt_unbalanced_cross_norm_copied", "task4_1", "unbalanced adaptation copies the "
      "cross-attention norms from B's self-attention norms instead of fresh zeros",
      ("mini_encdec/training/adapt_mapping.py",
       '        if "cross" in name and not balanced:\n            return Origin(None, init="zeros")\n',
       "")),
    # --- 5.1 the encoder-decoder forward
    M("cross_rope", "task5_1", "RoPE in cross-attention (decoder positions on the queries, "
      "encoder positions on the keys)",
      (MODELS + "blocks.py", "n_cross, memory, memory_mask, None, None)",
       "n_cross, memory, memory_mask, rope,\n"
       "                           rope_for(cfg, np.arange(memory.shape[1]), memory.dtype))")),
    M("assembly_head_dim_scale", "task5_1", "scale `1/sqrt(head_dim)` instead of "
      "`query_pre_attn_scalar^-1/2`",
      (MODELS + "blocks.py", "scale=float(cfg.query_pre_attn_scalar) ** -0.5",
       "scale=float(cfg.head_dim) ** -0.5")),
    M("assembly_final_cap_in_attention", "task5_1", "attention soft-cap set to the final cap",
      (MODELS + "blocks.py", "softcap=cfg.attn_logit_softcapping",
       "softcap=cfg.final_logit_softcapping")),
    M("assembly_no_attention_cap", "task5_1", "attention soft-cap missing",
      (MODELS + "blocks.py", "softcap=cfg.attn_logit_softcapping", "softcap=None")),
    M("assembly_no_final_cap", "task5_1", "final logit soft-cap missing",
      (MODELS + "encdec.py",
       "logits, cache[\"cap\"] = softcap_forward(z, self.config.decoder.final_logit_softcapping)",
       "logits, cache[\"cap\"] = softcap_forward(z, None)")),
    M("encoder_unwindowed", "task5_1", "the encoder's local layers left unwindowed",
      (MODELS + "inputs.py", "window = cfg.sliding_window if layer_type == SLIDING else None",
       "window = cfg.sliding_window if layer_type == SLIDING and causal else None")),
    M("assembly_window_plus_one", "task5_1", "a local layer given the window W + 1",
      (MODELS + "inputs.py", "window = cfg.sliding_window if layer_type == SLIDING else None",
       "window = cfg.sliding_window + 1 if layer_type == SLIDING else None")),
    M("decoder_positions_continue", "task5_1", "decoder positions continue from the encoder's",
      (MODELS + "encdec.py", "pos = positions_from_mask(decoder_mask, T)",
       "pos = positions_from_mask(decoder_mask, T) + S")),
    M("decoder_embedding_unscaled", "task5_1", "decoder embeddings not scaled by sqrt(D)",
      (MODELS + "encdec.py",
       "                         decoder_input_ids)  # (B, T, Dd)\n",
       "                         decoder_input_ids)  # (B, T, Dd)\n"
       "        y = y / y.dtype.type(np.sqrt(y.shape[-1]))\n")),
    M("encoder_embedding_unscaled", "task5_1", "encoder embeddings not scaled by sqrt(D)",
      (MODELS + "blocks.py",
       "    x, c_emb = embed(params, spec.embed_key, spec.eoi, input_ids)  # (B, T) -> (B, T, D)\n",
       "    x, c_emb = embed(params, spec.embed_key, spec.eoi, input_ids)  # (B, T) -> (B, T, D)\n"
       "    x = x / x.dtype.type(np.sqrt(x.shape[-1]))\n")),
    M("decoder_bidirectional", "task5_1", "decoder self-attention not causal",
      (MODELS + "encdec.py", "masks = self_attention_masks(cfg, pos, pos, causal=True,",
       "masks = self_attention_masks(cfg, pos, pos, causal=False,")),
    # --- 5.2 the backward
    M("tied_output_use_missing", "task5_2", "tied decoder embedding misses its output-matrix "
      "gradient",
      (MODELS + "encdec.py", "dE_dec = dE_out + dE_dec", "dE_dec = dE_dec")),
    M("tie_all_encoder_use_missing", "task5_2", "one table for all three uses misses the "
      "encoder's gradient",
      (MODELS + "encdec.py", "grads[self.encoder_embed_key] = dE_dec + dE_enc",
       "grads[self.encoder_embed_key] = dE_dec")),
    M("block_no_residual", "task5_2", "a block's backward drops the residual path around its MLP",
      (MODELS + "blocks.py", "    dx = dx + norm_grads(dn_ffw, c[\"pre_ffw\"], grads, pre_ffw)\n",
       "    dx = norm_grads(dn_ffw, c[\"pre_ffw\"], grads, pre_ffw)\n", 3)),
    # --- 5.3 KV cache
    M("cache_keeps_w", "task5_3", "a local-layer cache keeps W keys instead of W - 1",
      (MODELS + "decoding.py", "(cfg.sliding_window - 1 if lt == SLIDING else None)",
       "(cfg.sliding_window if lt == SLIDING else None)")),
    M("cache_keeps_all", "task5_3", "local layers cache every key",
      (MODELS + "decoding.py", "(cfg.sliding_window - 1 if lt == SLIDING else None)",
       "None")),
    M("buffer_keeps_one_more", "task5_3", "the window buffer keeps keep + 1 entries",
      (MODELS + "window_buffer.py", "self.start = max(self.start, self.end - self.keep)",
       "self.start = max(self.start, self.end - self.keep - 1)")),
    M("buffer_grows_once", "task5_3", "the window buffer doubles once even when one append "
      "needs more than twice its capacity",
      (MODELS + "window_buffer.py", "shape[self.axis] = max(2 * capacity, 2 * (live + n))",
       "shape[self.axis] = 2 * capacity")),
    M("generate_from_pad", "task5_3", "encoder-decoder generation starts the decoder from pad, "
      "not BOS",
      (MODELS + "generate.py", "bos = np.full((len(seqs), 1), cfg.bos_token_id,",
       "bos = np.full((len(seqs), 1), cfg.pad_token_id,")),
    # --- 5.4 classification head
    M("pool_last_position", "task5_4", "the head reads the last position, padding or not",
      (MODELS + "classifier.py", "return np.argmax(np.arange(S) * not_pad, axis=1)",
       "return np.full(input_ids.shape[0], S - 1)")),
    M("encdec_index_not_shifted", "task5_4", "encoder-decoder mode reads last_b, not last_b + 1",
      (MODELS + "classifier.py", "index = np.minimum(last + 1, ids.shape[1] - 1)",
       "index = last")),
    M("head_bias_grad", "task5_4", "no gradient for the head's bias",
      (MODELS + "classifier.py", "grads[T5GEMMA_SCORE_BIAS] = dlogits.sum(axis=0)",
       "grads[T5GEMMA_SCORE_BIAS] = 0 * dlogits.sum(axis=0)")),
    # --- 6.1 cross-entropy backward
    M("ce_divide_by_all", "task6_1", "cross-entropy gradient divided by all positions, not "
      "the counted ones",
      (NN + "loss.py", "scale = p.dtype.type(float(dloss) / n) if n else p.dtype.type(0)",
       "scale = p.dtype.type(float(dloss) / len(labels1))")),
    M("ce_no_cap_grad", "task6_1", "fused loss backward forgets the soft-cap derivative",
      (NN + "loss.py", "dy = softcap_backward_unchecked(dy, t)", "dy = dy")),
    M("ce_ignored_rows", "task6_1", "ignored positions (-100) still get a gradient",
      (NN + "loss.py", "dz = p * counted[:, None]  # (N, V)", "dz = p.copy()  # (N, V)")),
    # --- 6.2 distillation
    M("kd_no_temperature", "task6_2", "distillation ignores the temperature",
      (NN + "loss.py", "z2 = logits.reshape(-1, V) / logits.dtype.type(temperature)",
       "z2 = logits.reshape(-1, V) / logits.dtype.type(1.0)")),
    M("kd_mean_over_all", "task6_2", "distillation averaged over all positions, masked or not",
      (NN + "loss.py", "* logq[rows]).sum() / n) if n else 0.0",
       "* logq[rows]).sum() / len(m1)) if n else 0.0")),
    M("kd_grad_t_squared", "task6_2", "distillation gradient scaled by T instead of 1/T",
      (NN + "loss.py", "dz *= q.dtype.type(dloss / (cache[\"T\"] * n))",
       "dz *= q.dtype.type(dloss * cache[\"T\"] / n)")),
    # --- 6.3 AdamW
    M("adamw_l2", "task6_3", "AdamW's decay applied as L2 through the gradient",
      (NN + "adamw.py", "    # m = beta1 * m + (1 - beta1) * g\n",
       "    g = g + f(weight_decay) * p\n    # m = beta1 * m + (1 - beta1) * g\n"),
      (NN + "adamw.py", "    if weight_decay:\n        p *=", "    if False:\n        p *=")),
    M("adamw_no_bias_correction", "task6_3", "AdamW without bias correction",
      (NN + "adamw.py", "m_hat = m / f(1 - beta1 ** t)", "m_hat = m"),
      (NN + "adamw.py", "v_hat = v / f(1 - beta2 ** t)", "v_hat = v")),
    M("adamw_decay_without_lr", "task6_3", "AdamW decay not scaled by the learning rate",
      (NN + "adamw.py", "p *= f(1 - lr * weight_decay)", "p *= f(1 - weight_decay)")),
    M("adamw_eps_inside", "task6_3", "eps inside the square root",
      (NN + "adamw.py", "(np.sqrt(v_hat) + f(eps))", "np.sqrt(v_hat + f(eps))")),
    # --- 7.1 the Numba kernel
    M("kernel_w", "task7_1", "kernel scales by `w` instead of `(1 + w)`",
      ("mini_encdec/kernels/rmsnorm.py", "y[n, d] = (x[n, d] * r) * (cst(eps, 1.0) + w[d])",
       "y[n, d] = (x[n, d] * r) * w[d]")),
    M("kernel_chunk_bounds", "task7_1", "prange chunks skip the last row of each chunk",
      ("mini_encdec/kernels/rmsnorm.py",
       "_forward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks, x, w, eps, y, rstd)",
       "_forward_rows((c * N) // nchunks, ((c + 1) * N) // nchunks - 1, x, w, eps, y, rstd)")),
    M("kernel_shared_dw_row", "task7_1", "every prange chunk adds its dw into the same row "
      "(a race between threads)",
      ("mini_encdec/kernels/rmsnorm.py", "                       dw_part[c])",
       "                       dw_part[0])")),
]
BY_NAME = {m.name: m for m in MUTANTS}
# the mutants tests/test_assignment_tool.py runs by default (the rest under -m slow)
FAST = ("rms_w", "cross_rope", "adamw_l2", "cache_keeps_w")


# --- grading a copy ---------------------------------------------------------------------------

@dataclass
class Grade:
    """The outcome of `python -m pytest -m <task>` in a copy."""

    returncode: int
    output: str
    seconds: float
    failed: list = field(default_factory=list)

    @property
    def summary(self) -> str:
        lines = self.output.strip().splitlines()
        return lines[-1].strip("= ") if lines else ""

    def first_failure(self) -> str:
        """One line for the first failure: its message (with numpy's "Max absolute
        difference" when it has one) and hypothesis' minimal example, collapsed."""
        sections = re.split(r"\n_{3,} \S.* _{3,}\n", self.output)
        section = sections[1] if len(sections) > 1 else self.output
        # hypothesis reports several distinct failures as an exception group, "| " lines
        section = "\n".join(re.sub(r"^\s*\|(?: |$)", "E ", ln) for ln in section.splitlines())
        errors = [ln[1:].strip() for ln in section.splitlines() if ln.startswith("E ")]
        errors = [e for e in errors if e]
        first = next((i for i, e in enumerate(errors)
                      if re.match(r"(\w+(Error|Exception)\b(?!.*Traceback)|assert\b|Failed:)", e)
                      and not e.startswith("ExceptionGroup")), 0)
        errors = errors[first:]
        message = errors[0] if errors else ""
        if message.endswith(":") and len(errors) > 1:  # "AssertionError:" then the text
            message = f"{message} {errors[1]}"
        message = re.sub(r"^AssertionError: ", "", message)
        diff = next((e for e in errors if e.startswith("Max absolute difference")), "")
        if diff and diff not in message:
            message = f"{message} ({diff.replace(' among violations', '')})"
        m = re.search(r"(?:Falsifying example|Failing test case): (\w+\(.*?\n)E?\s*\)\s*$",
                      section, flags=re.M | re.S)
        if m:
            lines = [re.sub(r"^E?\s+", "", ln) for ln in m.group(1).splitlines()]
            args = [re.sub(r"\s+#.*$", "", ln) for ln in lines if not ln.lstrip().startswith("#")]
            example = re.sub(r"\(\s+", "(", " ".join(a for a in args if a)).rstrip(",") + ")"
            message = f"{message}; example: {example}"
        return message


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINI_ENCDEC_BACKEND")}
    env.update(COLUMNS="200", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return env


def grade(copy: Path, task: str, *extra: str, timeout: float = 900) -> Grade:
    """Run the README's grading command for `task` in `copy` (plus `extra` arguments)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", task, "-p", "no:cacheprovider",
                           *extra], cwd=copy, capture_output=True, text=True, timeout=timeout,
                          env=_env())
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    return Grade(proc.returncode, out, time.perf_counter() - t, failed)


def check_task(task: str, workdir: Path) -> tuple:
    """(ok, message): the blanked task fails with NotImplementedError, the restored one passes."""
    out = workdir / f"student_{task}"
    done = blank.make_student_copy(out, [task])
    blanked = grade(out, task)
    names = {name for _, name in done}
    problems = []
    if blanked.returncode != 1:
        problems.append(f"blanked: exit code {blanked.returncode} (expected 1, tests failed): "
                        f"{blanked.summary}")
    elif "NotImplementedError" not in blanked.output or \
            not any(f"implement {n}" in blanked.output for n in names):
        problems.append("blanked: no NotImplementedError naming the function")
    for rel in {path for path, _ in done}:
        shutil.copy(blank.REPO / rel, out / rel)
    restored = grade(out, task)
    if restored.returncode != 0:
        problems.append(f"restored: exit code {restored.returncode}: {restored.summary}\n"
                        f"{restored.output[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    msg = (f"{task}: blanked [{blanked.summary}] {blanked.seconds:.0f}s | restored "
           f"[{restored.summary}] {restored.seconds:.0f}s")
    return not problems, msg + "".join(f"\n  PROBLEM {p}" for p in problems)


def answer_copy(out: Path) -> Path:
    """A copy laid out like a default student copy of every task, nothing blanked."""
    blank.make_student_copy(out, list(blank.TASKS), blank=False)
    return out


def apply(mutant: Mutant, copy: Path) -> dict:
    """Patch `copy`; returns {path: original text} to restore. Raises ValueError, leaving
    the copy unchanged, if a snippet does not occur the expected number of times (the
    code changed since the mutant was written)."""
    saved = {}
    try:
        for rel, old, new, *count in mutant.edits:
            path = copy / rel
            current = path.read_text(encoding="utf-8")
            saved.setdefault(path, current)
            want = count[0] if count else 1
            if current.count(old) != want:
                raise ValueError(f"mutant {mutant.name}: expected the snippet {want} time(s) in "
                                 f"{rel}, found it {current.count(old)} times (has the code "
                                 f"changed?): {old!r}")
            path.write_text(current.replace(old, new), encoding="utf-8")
    except ValueError:
        for path, text in saved.items():
            path.write_text(text, encoding="utf-8")
        raise
    return saved


def test_files(task: str, root: Path = blank.REPO) -> list:
    """The test files (relative paths) with a test marked `task`."""
    pattern = re.compile(rf"\bmark\.{task}\b")
    return [p.relative_to(root).as_posix() for p in sorted((root / "tests").glob("test_*.py"))
            if pattern.search(p.read_text(encoding="utf-8"))]


def check_mutant(mutant: Mutant, copy: Path, quick: bool = False) -> tuple:
    """(ok, Grade): with the mistake applied, the task's tests fail (exit code 1).
    quick=True stops at the first failing test and collects only the task's test files
    (the README's command collects every file and runs every test of the task)."""
    saved = apply(mutant, copy)
    try:
        extra = ["-x", *test_files(mutant.task, copy)] if quick else []
        result = grade(copy, mutant.task, *extra)
    finally:
        for path, text in saved.items():
            path.write_text(text, encoding="utf-8")
    return result.returncode == 1 and bool(result.failed), result


# --- command line -------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["tasks", "mutants", "list"])
    ap.add_argument("names", nargs="*", help="tasks or mutant names (default: all)")
    ap.add_argument("--markdown", action="store_true",
                    help="mutants: end with the README's table of classic mistakes")
    args = ap.parse_args(argv)
    if args.what == "list":
        for m in MUTANTS:
            print(f"{m.name:32s} {m.task}  {m.mistake}")
        return 0
    bad = 0
    with tempfile.TemporaryDirectory(prefix="check_autograder_") as tmp:
        tmp = Path(tmp)
        if args.what == "tasks":
            for task in args.names or list(blank.TASKS):
                ok, msg = check_task(task, tmp)
                bad += not ok
                print(("OK  " if ok else "BAD ") + msg, flush=True)
        else:
            copy = answer_copy(tmp / "answer")
            rows = []
            for name in args.names or list(BY_NAME):
                m = BY_NAME[name]
                ok, r = check_mutant(m, copy)
                bad += not ok
                tests = ", ".join(sorted({f.split("::")[-1].split("[")[0] for f in r.failed}))
                print(f"{'OK  ' if ok else 'BAD '}{m.name} ({m.task}, {r.seconds:.0f}s): "
                      f"{m.mistake}\n    caught by: {tests or '-'}\n"
                      f"    first failure: {r.first_failure()[:400]}", flush=True)
                if not ok:
                    print(r.output[-3000:])
                first = r.first_failure().replace("|", "\\|").replace("`", "'")
                first = first if len(first) <= 200 else first[:197] + "..."
                rows.append(f"| {m.task[4:].replace('_', '.')} | `{m.name}` | {m.mistake} | "
                            f"{tests.replace(', ', '<br>') or '**not caught**'} | `{first}` |")
            if args.markdown:
                print("\n| task | name | mistake | caught by | first failure (shortened) |\n"
                      "|---|---|---|---|---|")
                print("\n".join(rows))
    print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
