"""The reference NumPy layers: one concept per file, each a forward/backward pair.

Conventions (SPEC.md section 10): `forward(...) -> (out, cache)`, `backward(dout, cache) -> grads`,
fresh arrays out, float32 and float64 both supported (the dtype of the inputs is kept;
softmaxes run in at least float32). Weights are `[out, in]`, `y = x W^T`.
Every public function validates its inputs (`mini_encdec.validate`) and raises
`ValueError` naming the argument, the expected and the actual value.

The API every other module codes against (shape letters from SPEC.md, its opening):

linear.py
    linear_forward(x, W) -> (y, cache)                x (..., In), W (Out, In) -> y (..., Out)
    linear_backward(dy, cache) -> (dx, dW)
embedding.py
    embedding_forward(ids, E, scale=True) -> (x, cache)
        ids (B, T) int in [0, V), E (V, D) -> x = E[ids] * sqrt(D)  (factor in E's dtype)
    embedding_backward(dx, cache) -> dE               (V, D), scatter-add over repeated ids
rmsnorm.py
    rmsnorm_forward(x, w, eps=1e-6) -> (y, cache)     x (..., D), w (D,): x * rsqrt(mean x^2 + eps) * (1 + w)
    rmsnorm_backward(dy, cache) -> (dx, dw)
rope.py
    rope_cos_sin(positions, head_dim, theta=10000.0, dtype=np.float32, *, scale=1.0) -> (cos, sin)
        positions int (T,) or (B, T) -> cos, sin (T, Dh) or (B, T, Dh), halves repeated;
        scale multiplies the angles (linear RoPE scaling by a factor: scale = 1 / factor)
    rope_forward(x, cos, sin) -> (y, cache)           x (B, N, T, Dh), N heads; rotate-half
    rope_backward(dy, cache) -> dx
masks.py (True = may attend)
    attention_mask(q_pos, k_pos, *, causal, window=None, key_padding=None) -> bool (B|1, 1, Tq, Tk)
        q_pos (Tq,) or (B, Tq), k_pos (Tk,) or (B, Tk) integer positions;
        causal=True:  k <= q, and with window W also q - k < W      (decoder)
        causal=False: everything, and with window W only |q - k| < W (encoder)
        key_padding (B, Tk) bool/0-1, True for real tokens, ANDed in.
softcap.py
    softcap_forward(x, cap) -> (y, cache)             y = cap * tanh(x / cap); cap None = identity
    softcap_backward(dy, cache) -> dx
attention.py
    attention_core_forward(q, k, v, mask, *, scale, softcap) -> (o, cache)
        q (B, H, Tq, Dh), k/v (B, K, Tk, Dh), mask bool broadcastable to (B, 1, Tq, Tk)
        -> o (B, H, Tq, Dh). Steps: s = q.k * scale; s = softcap(s); mask; float32+ softmax;
        o = p v. Query head h reads kv head h // (H/K). A row with no allowed key gives o = 0
        and zero gradients.
    attention_core_backward(do, cache) -> (dq, dk, dv)
    attention_forward(x_q, x_kv, Wq, Wk, Wv, Wo, *, num_heads, num_kv_heads, head_dim,
                      scale, softcap, mask, rope_q=None, rope_k=None, core=None,
                      q_norm=None, k_norm=None, norm_eps=1e-6, norm=None,
                      linear=None) -> (y, cache)
        x_q (B, Tq, Dq), x_kv (B, Tk, Dkv); Wq (H*Dh, Dq), Wk/Wv (K*Dh, Dkv), Wo (Dq, H*Dh);
        rope_q / rope_k: (cos, sin) pairs from rope_cos_sin, or None (cross-attention).
        q_norm / k_norm (Dh,): Gemma 3's RMSNorm (1 + w) of each query / key head, after the
        projection and before RoPE (None: none, Gemma 2).
        Self-attention passes the same array as x_q and x_kv; merged attention passes
        [x ; encoder output] as x_kv with cos 1, sin 0 for the encoder keys.
        core: the (forward, backward) pair of the core; default this file's (the models
        pass the pair mini_encdec.ops dispatches); rope, norm and linear likewise for RoPE,
        the q/k norms and the four projections. The one attention layer the models run.
    attention_backward(dy, cache) -> (dx_q, dx_kv, dWq, dWk, dWv, dWo)
        (for self-attention the input gradient is dx_q + dx_kv); with q/k norms two more,
        (..., dWo, dq_norm, dk_norm)
    split_heads(y, n) (B, T, n*Dh) -> (B, n, T, Dh); merge_heads(o) the inverse
mlp.py
    gelu_tanh_forward(u) -> (g, cache); gelu_tanh_backward(dg, cache) -> du
    geglu_act_forward(gate, up) -> (a, cache)         a = gelu_tanh(gate) * up
    geglu_act_backward(da, cache) -> (dgate, dup)
    geglu_forward(x, Wg, Wu, Wd, act=None, linear=None) -> (y, cache)
        y = (gelu_tanh(x Wg^T) * (x Wu^T)) Wd^T; act / linear: the (forward, backward)
        pairs of the activation and the projections (the models pass the ops pairs)
    geglu_backward(dy, cache) -> (dx, dWg, dWu, dWd)
loss.py
    cross_entropy_forward(logits, labels, ignore_index=-100) -> (loss, cache)
        logits (..., V), labels (...) int; mean over labels != ignore_index (0.0 if none)
    cross_entropy_backward(dloss, cache) -> dlogits
    softcap_cross_entropy_forward(z, labels, cap, ignore_index=-100) -> (loss, cache)
        the fused form: cross-entropy of softcap(z, cap); the (N, V) probabilities are
        kept once, for the backward.
    softcap_cross_entropy_backward(dloss, cache) -> dz
    distillation_forward(logits, teacher_probs, mask, temperature=1.0) -> (loss, cache)
        soft cross-entropy  mean over positions with mask True of
        -sum_v teacher_probs[v] * log_softmax(logits / temperature)[v]
    distillation_backward(dloss, cache) -> dlogits
output_loss.py
    output_loss_and_grads(h, E, labels, cap, ignore_index=-100, teacher_probs=None,
                          alpha=0.0, temperature=1.0) -> (loss, dh, dE, {"ce", "soft"})
        the output layer and its loss, forward and backward in one call, a block of rows
        at a time (the (N, V) logits never stored whole): loss of cap * tanh(h E^T / cap),
        cross-entropy, or with teacher probabilities alpha * soft + (1 - alpha) * ce
adamw.py
    adamw_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, t) -> None
        one AdamW update in place: bias-corrected moments, decoupled weight decay
gradcheck.py (test helper)
    numerical_grad(f, x, h=1e-4) -> central differences of the scalar f() wrt float64 x
    rel_error(a, b, floor=1e-5) -> max |a - b| / max(max |a|, max |b|, floor), floor the
        size of the gradient's terms where they can cancel; GRAD_TOL = 1e-6
    random_cotangent(out, rng) -> R, so sum(out * R) is a scalar loss with d/d out = R

Helpers beyond the API: masks and rope tables are plain arrays; rope.rotate_half,
embedding.embedding_scale(D, dtype), mlp.GELU_C.
Unchecked fast paths (no validation, no cache; the name ends in `_unchecked`) for
KV-cached decoding, whose caller validates once per request: linear.linear_unchecked,
rope.apply_rope_unchecked, rope.rope_tables_unchecked, masks.allowed_mask_unchecked,
softcap.softcap_unchecked, softcap.softcap_backward_unchecked, embedding.embed_unchecked,
mlp.geglu_unchecked; the public functions compute through them after their checks.
decode_step.py groups one KV-cached decoding step's work between its matmuls (inference
only, unchecked, no cache; models/decoding.py's plan runs them through mini_encdec.ops):
    rope_append(qkv, cos, sin, k_buf, v_buf, slot, num_heads) -> RoPE(q) (B, H, 1, Dh),
        RoPE(k) and v written into the KV buffers at slot
    attend(q, k_buf, v_buf, lo, hi, mask, *, scale, softcap) -> o (B, 1, H*Dh)
    residual_norm(x, y, w, w_next, eps) -> (x + RMSNorm(y, w), RMSNorm(that, w_next))
"""

from .adamw import adamw_update  # noqa: F401
from .attention import (attention_backward, attention_core_backward,  # noqa: F401
                        attention_core_forward, attention_forward, merge_heads, split_heads)
from .embedding import embedding_backward, embedding_forward  # noqa: F401
from .linear import linear_backward, linear_forward  # noqa: F401
from .loss import (cross_entropy_backward, cross_entropy_forward,  # noqa: F401
                   distillation_backward, distillation_forward, softcap_cross_entropy_backward,
                   softcap_cross_entropy_forward)
from .masks import attention_mask  # noqa: F401
from .output_loss import output_loss_and_grads  # noqa: F401
from .mlp import (geglu_act_backward, geglu_act_forward, geglu_backward,  # noqa: F401
                  geglu_forward, gelu_tanh_backward, gelu_tanh_forward)
from .rmsnorm import rmsnorm_backward, rmsnorm_forward  # noqa: F401
from .rope import rope_backward, rope_cos_sin, rope_forward  # noqa: F401
from .softcap import softcap_backward, softcap_forward  # noqa: F401
