"""Bad input to every public nn/ function raises ValueError naming the argument, the
expected and the actual value (never a NaN or a deep NumPy error)."""

import re

import numpy as np
import pytest

from mini_encdec.nn import (adamw, attention, embedding, gradcheck, linear, loss, masks, mlp,
                            rmsnorm, rope, softcap)

rng = np.random.default_rng(0)
f64 = lambda *s: rng.standard_normal(s)  # noqa: E731
B, T, S, D, V, H, K, Dh = 2, 3, 4, 4, 6, 2, 1, 4

x = f64(B, T, D)
W = f64(5, D)
ids = np.array([[0, 5, 2], [1, 1, 3]])
E = f64(V, D)
cos, sin = np.cos(f64(T, Dh)), np.sin(f64(T, Dh))  # a (T, Dh) RoPE table pair
q, k, v = f64(B, H, T, Dh), f64(B, K, S, Dh), f64(B, K, S, Dh)
mask = np.ones((1, 1, T, S), dtype=bool)  # every query sees every key
logits = f64(B, T, V)
labels = np.array([[0, -100, 5], [1, 2, 3]])
tp = np.full((B, T, V), 1.0 / V)
AW = dict(Wq=f64(H * Dh, D), Wk=f64(K * Dh, D + 1), Wv=f64(K * Dh, D + 1), Wo=f64(D, H * Dh))
AKW = dict(num_heads=H, num_kv_heads=K, head_dim=Dh, scale=0.5, softcap=50.0, mask=mask)
x_kv = f64(B, S, D + 1)


def attn(**over):
    a = dict(x_q=x, x_kv=x_kv, **AW, **AKW)
    a.update(over)
    return lambda: attention.attention_forward(**a)


def core(**over):
    a = dict(q=q, k=k, v=v, mask=mask, scale=0.5, softcap=50.0)
    a.update(over)
    return lambda: attention.attention_core_forward(**a)


def cache_of(forward, *args, **kwargs):
    """A zero-argument function making forward(*args, **kwargs)'s cache when a backward case
    runs: importing this module calls no nn function, so it still collects in a student copy
    (tutorials/assignments/blank.py) whose functions raise NotImplementedError."""
    return lambda: forward(*args, **kwargs)[1]


c_lin = cache_of(linear.linear_forward, x, W)
c_emb = cache_of(embedding.embedding_forward, ids, E)
c_rms = cache_of(rmsnorm.rmsnorm_forward, x, f64(D))
c_rope = cache_of(rope.rope_forward, q, cos, sin)
c_cap = cache_of(softcap.softcap_forward, x, 5.0)
c_core = cache_of(attention.attention_core_forward, q, k, v, mask, scale=0.5, softcap=50.0)
c_attn = cache_of(attention.attention_forward, x, x_kv, **AW, **AKW)
c_gelu = cache_of(mlp.gelu_tanh_forward, x)
c_act = cache_of(mlp.geglu_act_forward, x, x)
c_mlp = cache_of(mlp.geglu_forward, x, f64(6, D), f64(6, D), f64(D, 6))
c_ce = cache_of(loss.cross_entropy_forward, logits, labels)
c_sce = cache_of(loss.softcap_cross_entropy_forward, logits, labels, 30.0)
c_kd = cache_of(loss.distillation_forward, logits, tp, None)

AD = dict(lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, t=1)

CASES = [
    # (id, call, argument named in the message)
    ("adamw g shape", lambda: adamw.adamw_update(W, f64(5, D + 1), 0 * W, 0 * W, **AD), "g"),
    ("adamw m dtype", lambda: adamw.adamw_update(W, W, W.astype(np.float32), 0 * W, **AD), "m"),
    ("adamw t 0", lambda: adamw.adamw_update(W, W, 0 * W, 0 * W, **{**AD, "t": 0}), "t"),
    ("linear x int", lambda: linear.linear_forward(x.astype(int), W), "x"),
    ("linear x list", lambda: linear.linear_forward(x.tolist(), W), "x"),
    ("linear W 1-D", lambda: linear.linear_forward(x, W[0]), "W"),
    ("linear In mismatch", lambda: linear.linear_forward(x, f64(5, D + 1)), "x"),
    ("linear dtype mix", lambda: linear.linear_forward(x, W.astype(np.float32)), "W"),
    ("linear_backward dy", lambda: linear.linear_backward(f64(B, T, 4), c_lin()), "dy"),
    ("embedding id < 0", lambda: embedding.embedding_forward(np.array([[0, -1]]), E), "ids"),
    ("embedding id >= V", lambda: embedding.embedding_forward(np.array([[V]]), E), "ids"),
    ("embedding ids float", lambda: embedding.embedding_forward(ids.astype(float), E), "ids"),
    ("embedding ids 1-D", lambda: embedding.embedding_forward(ids[0], E), "ids"),
    ("embedding E 3-D", lambda: embedding.embedding_forward(ids, E[None]), "E"),
    ("embedding E int", lambda: embedding.embedding_forward(ids, E.astype(int)), "E"),
    ("embedding scale", lambda: embedding.embedding_forward(ids, E, scale="yes"), "scale"),
    ("embedding_backward dx", lambda: embedding.embedding_backward(f64(B, T + 1, D), c_emb()), "dx"),
    ("rmsnorm w size", lambda: rmsnorm.rmsnorm_forward(x, f64(D + 1)), "w"),
    ("rmsnorm x int", lambda: rmsnorm.rmsnorm_forward(x.astype(np.int32), f64(D)), "x"),
    ("rmsnorm eps", lambda: rmsnorm.rmsnorm_forward(x, f64(D), eps=-1.0), "eps"),
    ("rmsnorm dtype mix", lambda: rmsnorm.rmsnorm_forward(x, f64(D).astype(np.float32)), "w"),
    ("rmsnorm_backward dy", lambda: rmsnorm.rmsnorm_backward(f64(B, D), c_rms()), "dy"),
    ("rope positions float", lambda: rope.rope_cos_sin(np.arange(3.0), 4), "positions"),
    ("rope positions 3-D", lambda: rope.rope_cos_sin(np.zeros((1, 1, 3), int), 4), "positions"),
    ("rope head_dim odd", lambda: rope.rope_cos_sin(np.arange(3), 5), "head_dim"),
    ("rope head_dim 0", lambda: rope.rope_cos_sin(np.arange(3), 0), "head_dim"),
    ("rope theta", lambda: rope.rope_cos_sin(np.arange(3), 4, theta=0.0), "theta"),
    ("rope dtype", lambda: rope.rope_cos_sin(np.arange(3), 4, dtype=np.int32), "dtype"),
    ("rope x 3-D", lambda: rope.rope_forward(q[0], cos, sin), "x"),
    ("rope cos T", lambda: rope.rope_forward(q, cos[:2], sin), "cos"),
    ("rope sin dtype", lambda: rope.rope_forward(q, cos, sin.astype(np.float32)), "sin"),
    ("rope_backward dy", lambda: rope.rope_backward(f64(B, H, T, Dh + 2), c_rope()), "dy"),
    ("mask q_pos float", lambda: masks.attention_mask(np.arange(3.0), np.arange(3), causal=True),
     "q_pos"),
    ("mask k_pos 3-D", lambda: masks.attention_mask(np.arange(3), np.zeros((1, 1, 3), int),
                                                    causal=True), "k_pos"),
    ("mask window 0", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal=True,
                                                   window=0), "window"),
    ("mask window float", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal=True,
                                                       window=2.5), "window"),
    ("mask causal str", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal="yes"),
     "causal"),
    ("mask split str", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal=False,
                                                  window=2, split="yes"), "split"),
    ("mask padding Tk", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal=True,
                                                     key_padding=np.ones((2, 4), bool)),
     "key_padding"),
    ("mask padding values", lambda: masks.attention_mask(np.arange(3), np.arange(3), causal=True,
                                                         key_padding=np.full((2, 3), 2)),
     "key_padding"),
    ("mask batch mismatch", lambda: masks.attention_mask(np.zeros((2, 3), int), np.arange(3),
                                                         causal=True,
                                                         key_padding=np.ones((3, 3), bool)),
     "key_padding"),
    ("softcap cap 0", lambda: softcap.softcap_forward(x, 0.0), "cap"),
    ("softcap cap str", lambda: softcap.softcap_forward(x, "50"), "cap"),
    ("softcap x int", lambda: softcap.softcap_forward(np.arange(3), 5.0), "x"),
    ("softcap_backward dy", lambda: softcap.softcap_backward(f64(3), c_cap()), "dy"),
    ("core q 3-D", core(q=q[0]), "q"),
    ("core k Dh", core(k=f64(B, K, S, Dh + 2)), "k"),
    ("core k batch", core(k=f64(B + 1, K, S, Dh)), "k"),
    ("core v shape", core(v=f64(B, K, S + 1, Dh)), "v"),
    ("core H % K", core(k=f64(B, 3, S, Dh), v=f64(B, 3, S, Dh)), "k"),
    ("core mask Tk", core(mask=np.ones((B, 1, T, S + 1), bool)), "mask"),
    ("core mask heads", core(mask=np.ones((B, H, T, S), bool)), "mask"),
    ("core mask 3-D", core(mask=np.ones((B, T, S), bool)), "mask"),
    ("core mask values", core(mask=np.full((B, 1, T, S), 0.5)), "mask"),
    ("core scale", core(scale=0.0), "scale"),
    ("core softcap", core(softcap=-1.0), "softcap"),
    ("core dtype mix", core(k=k.astype(np.float32)), "k"),
    ("core_backward do", lambda: attention.attention_core_backward(f64(B, H, 1, Dh), c_core()), "do"),
    ("attn x_q 2-D", attn(x_q=x[0]), "x_q"),
    ("attn x_kv batch", attn(x_kv=f64(B + 1, S, D + 1)), "x_kv"),
    ("attn Wq shape", attn(Wq=f64(H * Dh, D + 1)), "Wq"),
    ("attn Wk width", attn(Wk=f64(K * Dh, D)), "Wk"),
    ("attn Wv heads", attn(Wv=f64(2 * K * Dh, D + 1)), "Wv"),
    ("attn Wo shape", attn(Wo=f64(D, D)), "Wo"),
    ("attn heads", attn(num_heads=3, num_kv_heads=2), "num_heads"),
    ("attn head_dim", attn(head_dim=0), "head_dim"),
    ("attn mask", attn(mask=np.ones((1, 1, T, T), bool)), "mask"),
    ("attn rope_q shape", attn(rope_q=(cos[:2], sin[:2])), "rope_q[cos]"),
    ("attn rope_k pair", attn(rope_k=cos), "rope_k"),
    ("attn dtype mix", attn(Wo=AW["Wo"].astype(np.float32)), "Wo"),
    ("attn_backward dy", lambda: attention.attention_backward(f64(B, T, D + 1), c_attn()), "dy"),
    ("gelu u int", lambda: mlp.gelu_tanh_forward(np.arange(3)), "u"),
    ("gelu_backward dg", lambda: mlp.gelu_tanh_backward(f64(1), c_gelu()), "dg"),
    ("geglu_act up shape", lambda: mlp.geglu_act_forward(x, x[:1]), "up"),
    ("geglu_act_backward da", lambda: mlp.geglu_act_backward(f64(2), c_act()), "da"),
    ("geglu Wg width", lambda: mlp.geglu_forward(x, f64(6, D + 1), f64(6, D), f64(D, 6)), "Wg"),
    ("geglu Wu shape", lambda: mlp.geglu_forward(x, f64(6, D), f64(5, D), f64(D, 6)), "Wu"),
    ("geglu Wd shape", lambda: mlp.geglu_forward(x, f64(6, D), f64(6, D), f64(6, D)), "Wd"),
    ("geglu_backward dy", lambda: mlp.geglu_backward(f64(B, T, 6), c_mlp()), "dy"),
    ("ce label >= V", lambda: loss.cross_entropy_forward(logits, np.full((B, T), V)), "labels"),
    ("ce label -1", lambda: loss.cross_entropy_forward(logits, np.full((B, T), -1)), "labels"),
    ("ce labels shape", lambda: loss.cross_entropy_forward(logits, labels[:, :2]), "labels"),
    ("ce labels float", lambda: loss.cross_entropy_forward(logits, labels * 1.0), "labels"),
    ("ce logits int", lambda: loss.cross_entropy_forward(labels, labels), "logits"),
    ("ce ignore_index", lambda: loss.cross_entropy_forward(logits, labels, ignore_index="x"),
     "ignore_index"),
    ("ce_backward dloss", lambda: loss.cross_entropy_backward(float("nan"), c_ce()), "dloss"),
    ("sce cap", lambda: loss.softcap_cross_entropy_forward(logits, labels, 0.0), "cap"),
    ("sce z 0-D", lambda: loss.softcap_cross_entropy_forward(np.float64(1.0), labels, 30.0), "z"),
    ("sce labels", lambda: loss.softcap_cross_entropy_forward(logits, labels + V, 30.0),
     "labels"),
    ("sce_backward dloss", lambda: loss.softcap_cross_entropy_backward(np.ones(3), c_sce()),
     "dloss"),
    ("kd teacher shape", lambda: loss.distillation_forward(logits, tp[..., :2], None),
     "teacher_probs"),
    ("kd teacher negative", lambda: loss.distillation_forward(logits, tp - 0.5, None),
     "teacher_probs"),
    ("kd teacher sums", lambda: loss.distillation_forward(logits, tp * 2, None),
     "teacher_probs"),
    ("kd mask shape", lambda: loss.distillation_forward(logits, tp, np.ones((B, T + 1), bool)),
     "mask"),
    ("kd temperature", lambda: loss.distillation_forward(logits, tp, None, temperature=0),
     "temperature"),
    ("kd_backward dloss", lambda: loss.distillation_backward("1", c_kd()), "dloss"),
    ("numerical_grad x", lambda: gradcheck.numerical_grad(lambda: 0.0, np.ones(2, np.float32)),
     "x"),
    ("rel_error shapes", lambda: gradcheck.rel_error(np.ones(2), np.ones(3)), "a"),
]


@pytest.mark.parametrize("call,arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_value_error_naming_the_argument(call, arg):
    with pytest.raises(ValueError) as info:
        call()
    msg = str(info.value)
    a = re.escape(arg)
    assert re.search(rf"'{a}'|\b{a}=|argument {a}\b", msg), msg
    assert "expected" in msg and "got" in msg, msg


def test_every_public_function_has_a_bad_input_case():
    """Guard: a new public function in nn/ needs a row in CASES."""
    import inspect
    mods = (adamw, attention, embedding, gradcheck, linear, loss, masks, mlp, rmsnorm, rope,
            softcap)
    public = {n for m in mods for n, f in vars(m).items()
              if inspect.isfunction(f) and f.__module__ == m.__name__ and not n.startswith("_")}
    src = inspect.getsource(inspect.getmodule(test_every_public_function_has_a_bad_input_case))
    # helpers that take no array input of their own, the pure reshapes of the heads, the
    # soft-cap's inner tanh(x / c), the *_unchecked fast paths (no checks by name), and
    # the check_* validators the kernels share (exercised through every case above), and
    # the split window's rule on offsets attention_mask has checked (its "mask split" case)
    exempt = {"rotate_half", "rotate_half_transpose", "embedding_scale",
              "random_cotangent", "split_heads", "merge_heads", "tanh_ratio",
              "split_window_allowed"}
    missing = sorted(n for n in public - exempt
                     if f".{n}(" not in src and not n.endswith("_unchecked")
                     and not n.startswith("check_"))
    assert not missing, f"no bad-input case for {missing}"
