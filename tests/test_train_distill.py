"""PrefixLM + distillation: teacher alignment, the loss and its gradient, training with it."""

import numpy as np
import pytest

from mini_encdec.text.batching import collate_encdec
from mini_encdec.config import encdec_preset, preset
from mini_encdec.training.distill import kd_loss_and_grads, teacher_probabilities
from mini_encdec.models import build_model
from mini_encdec.objectives.example import Example
from mini_encdec.training.optim import OptimConfig
from mini_encdec.training.train import train

SMALL = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_attention_heads=2,
             num_key_value_heads=1, head_dim=8, num_hidden_layers=2, sliding_window=4)


def _setup(dtype=np.float32):
    student = build_model(encdec_preset("tiny", **SMALL), seed=1, dtype=dtype)
    teacher = build_model(preset("tiny", **SMALL), seed=2, dtype=dtype)
    rng = np.random.default_rng(0)
    # prefixes and targets of different lengths, so padding and alignment both matter
    exs = [Example(rng.integers(4, 40, p), rng.integers(4, 40, t))
           for p, t in ((5, 4), (3, 5), (6, 2))]
    return student, teacher, exs, collate_encdec(exs, 6, 5, with_teacher=True)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_teacher_distribution_of_target_j_comes_from_position_n_plus_j_minus_1():
    student, teacher, exs, batch = _setup()
    probs = teacher_probabilities(teacher, {"input_ids": batch["teacher_input_ids"],
                                            "attention_mask": batch["teacher_attention_mask"]},
                                  batch["teacher_positions"], temperature=2.0)
    for b, ex in enumerate(exs):
        full = np.concatenate([ex.inputs, ex.targets])[None]  # the example alone, unpadded
        logits = teacher.forward({"input_ids": full})[0]  # (N + M, V)
        n = len(ex.inputs)
        for j in range(len(ex.targets)):
            np.testing.assert_allclose(probs[b, j], _softmax(logits[n + j - 1] / 2.0),
                                       rtol=1e-4, atol=1e-6)


def test_alpha_zero_is_plain_cross_entropy():
    student, teacher, _, batch = _setup()
    loss, grads, parts = kd_loss_and_grads(student, teacher, batch, alpha=0.0)
    plain = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    ref_loss, ref_grads = student.loss_and_grads(plain)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and parts["ce"] == pytest.approx(ref_loss,
                                                                                      rel=1e-5)
    for k in ref_grads:
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-3, atol=1e-6)


def test_kd_gradient_matches_finite_differences_float64():
    student, teacher, _, batch = _setup(np.float64)
    alpha, tau = 0.3, 2.0
    loss, grads, parts = kd_loss_and_grads(student, teacher, batch, alpha=alpha, temperature=tau)
    assert parts["kl"] >= -1e-12 and parts["soft"] >= parts["kl"]
    assert loss == pytest.approx(alpha * parts["soft"] + (1 - alpha) * parts["ce"])
    rng = np.random.default_rng(3)
    direction = {k: rng.standard_normal(v.shape) for k, v in student.params.items()}
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in grads)
    eps = 1e-6  # central differences: the error falls as eps^2 (1e-8 relative here)
    originals = {k: v.copy() for k, v in student.params.items()}

    def at(sign):
        for k in student.params:
            student.params[k][...] = originals[k] + sign * eps * direction[k]
        return kd_loss_and_grads(student, teacher, batch, alpha=alpha, temperature=tau)[0]

    numeric = (at(1) - at(-1)) / (2 * eps)
    for k in student.params:
        student.params[k][...] = originals[k]
    assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_kd_argument_errors():
    student, teacher, _, batch = _setup()
    plain = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    with pytest.raises(ValueError, match="with_teacher=True"):
        kd_loss_and_grads(student, teacher, plain)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss_and_grads(student, teacher, batch, alpha=1.5)
    other = build_model(preset("tiny", **{**SMALL, "vocab_size": 41}))
    with pytest.raises(ValueError, match="vocabulary"):
        train(student, [batch], steps=1, teacher=other, progress=False)
    with pytest.raises(ValueError, match="either a teacher or a loss_fn"):
        train(student, [batch], steps=1, teacher=teacher, progress=False,
              loss_fn=lambda m, b: m.loss_and_grads(b))


def test_training_with_a_teacher_pulls_the_student_towards_it():
    student, teacher, _, batch = _setup()
    before = kd_loss_and_grads(student, teacher, batch, alpha=1.0)[2]["kl"]
    history = train(student, [batch], steps=30, teacher=teacher, kd_alpha=1.0,
                    progress=False, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    after = kd_loss_and_grads(student, teacher, batch, alpha=1.0)[2]["kl"]
    assert after < before / 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["kl"] < history[0]["kl"] and "ce" in history[-1]  # parts are logged


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kd_equals_the_unfused_path_through_the_logits(backend, dtype):
    """kd_loss_and_grads (the student's output layer fused with both losses, the teacher's
    run on the gathered positions only) against the composition on whole logits:
    teacher.forward, student.forward, the loss.py losses, student.backward."""
    from mini_encdec.nn.loss import (cross_entropy_backward, cross_entropy_forward,
                                     distillation_backward, distillation_forward)
    student, teacher, _, batch = _setup(dtype)
    alpha, tau = 0.3, 2.0
    loss, grads, parts = kd_loss_and_grads(student, teacher, batch, alpha=alpha,
                                           temperature=tau)
    sb = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
    positions = batch["teacher_positions"]
    t_logits = teacher.forward({"input_ids": batch["teacher_input_ids"],
                                "attention_mask": batch["teacher_attention_mask"]})
    rows = np.arange(positions.shape[0])[:, None]
    probs = _softmax(t_logits[rows, np.maximum(positions, 0)] / tau).astype(dtype)
    logits, cache = student.forward(sb, return_cache=True)
    labels = sb["labels"]
    ce, c_ce = cross_entropy_forward(logits, labels)
    soft, c_soft = distillation_forward(logits, probs, labels != -100, tau)
    dlogits = distillation_backward(alpha, c_soft) + cross_entropy_backward(1 - alpha, c_ce)
    ref_grads = student.backward(dlogits, cache)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    assert parts["ce"] == pytest.approx(ce, rel=tol)
    assert parts["soft"] == pytest.approx(soft, rel=tol)
    assert loss == pytest.approx(alpha * soft + (1 - alpha) * ce, rel=tol)
    for k in ref_grads:
        assert grads[k].dtype == dtype
        np.testing.assert_allclose(grads[k], ref_grads[k], rtol=tol,
                                   atol=tol * np.abs(ref_grads[k]).max(), err_msg=k)
