"""The training loop: overfitting, freezing, accumulation, exact resume, divergence stop."""

import json

import numpy as np
import pytest

from mini_encdec.storage import checkpoint as ckpt
from mini_encdec.backend import use_backend
from mini_encdec.text.batching import Batcher, collate_decoder, collate_encdec
from mini_encdec.config import encdec_preset, preset
from mini_encdec.models import build_model
from mini_encdec.objectives import PrefixLM
from mini_encdec.objectives.example import Example
from mini_encdec.training.optim import OptimConfig
from mini_encdec.training.train import (TrainConfig, TrainingDiverged, evaluate, processed_tokens,
                               train)

SMALL = dict(vocab_size=48, hidden_size=32, intermediate_size=64, num_attention_heads=2,
             num_key_value_heads=1, head_dim=16, num_hidden_layers=2, sliding_window=4)


def _examples(n, s=6, t=6, seed=0):
    rng = np.random.default_rng(seed)
    return [Example(rng.integers(4, 48, s), rng.integers(4, 48, t)) for _ in range(n)]


def _batch(arch, n=4, seed=0):
    exs = _examples(n, seed=seed)
    return collate_encdec(exs, 6, 6) if arch == "encdec" else collate_decoder(exs, 12)


def _model(arch, seed=0, dtype=np.float32, **top):
    config = encdec_preset("tiny", **SMALL, **top) if arch == "encdec" else preset("tiny", **SMALL)
    return build_model(config, seed=seed, dtype=dtype)


@pytest.mark.parametrize("arch", ["encdec", "decoder"])
def test_tiny_model_overfits_a_tiny_batch(arch, backend):
    model = _model(arch)
    batch = _batch(arch)
    history = train(model, [batch], steps=60, progress=False,
                    optim=OptimConfig(lr=1e-2, warmup_steps=5))
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[0] / losses[-1] >= 10, (losses[0], losses[-1])
    assert evaluate(model, [batch])["loss"] < losses[0] / 10


def _snapshot(model):
    return {k: v.copy() for k, v in model.params.items()}


def test_cross_attention_warmup_trains_only_cross_attention_bit_for_bit():
    model = _model("encdec", cross_attn_warmup_steps=3)
    before = _snapshot(model)
    batch = _batch("encdec")
    train(model, [batch], steps=3, progress=False, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    changed = {k for k in before if model.params[k].tobytes() != before[k].tobytes()}
    cross = {k for k in before if "cross_attn" in k}
    assert cross and changed <= cross
    assert {k for k in cross if k.endswith("proj.weight")} <= changed  # q, k, v, o all move
    # after the warmup every parameter trains
    model = _model("encdec", cross_attn_warmup_steps=3)
    train(model, [batch], steps=4, progress=False, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    unchanged = {k for k in before if model.params[k].tobytes() == before[k].tobytes()}
    assert not {k for k in unchanged if not k.endswith("norm.weight")}


def test_freeze_patterns_keep_parameters_bit_for_bit():
    model = _model("decoder")
    before = _snapshot(model)
    train(model, [_batch("decoder")], steps=3, progress=False,
          optim=OptimConfig(lr=1e-2, weight_decay=0.5, freeze=(r"mlp\.", "embed_tokens")))
    for k in before:
        same = model.params[k].tobytes() == before[k].tobytes()
        assert same == ("mlp." in k or "embed_tokens" in k), k


def test_gradient_accumulation_equals_the_big_batch():
    exs = _examples(4)  # every example has 6 targets: equal token counts per micro-batch
    halves = [collate_encdec(exs[:2], 6, 6), collate_encdec(exs[2:], 6, 6)]
    whole = collate_encdec(exs, 6, 6)
    a, b = _model("encdec", dtype=np.float64), _model("encdec", dtype=np.float64)
    opt = dict(lr=1e-2, warmup_steps=0, clip_norm=0.5)
    ha = train(a, halves, steps=3, progress=False, optim=OptimConfig(grad_accum=2, **opt))
    hb = train(b, [whole] * 2, steps=3, progress=False, optim=OptimConfig(**opt))
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-9, atol=1e-12)
    assert ha[0]["loss"] == pytest.approx(hb[0]["loss"], rel=1e-12)
    assert ha[0]["tokens"] == hb[0]["tokens"] == processed_tokens(whole)


def _losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in l]


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path):
    with use_backend("numpy"):
        stream = np.random.default_rng(5).integers(4, 48, 2000)
        opt = OptimConfig(lr=5e-3, warmup_steps=2, total_steps=8)

        def run(run_dir, steps, seed=0, resume=False):
            model = _model("encdec", seed=seed)
            b = Batcher(stream, PrefixLM(), batch_size=2, encoder_length=8, decoder_length=8,
                        seed=1)
            train(model, b, steps=steps, optim=opt, run_dir=run_dir, checkpoint_every=3,
                  eval_every=0, progress=False, plot=False, resume=resume)
            return model

        full = run(tmp_path / "a", 8)
        run(tmp_path / "b", 5)
        # as if killed after the step-3 checkpoint: step 5 never reached the disk
        import shutil
        shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_000005")
        resumed = run(tmp_path / "b", 8, seed=99, resume=True)  # the init seed must not matter
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    for k in full.params:
        assert resumed.params[k].tobytes() == full.params[k].tobytes(), k
    a = ckpt.load_checkpoint(tmp_path / "a")
    b = ckpt.load_checkpoint(tmp_path / "b")
    assert a.step == b.step == 8
    for k in a.optimizer_arrays:
        assert a.optimizer_arrays[k].tobytes() == b.optimizer_arrays[k].tobytes()
    assert a.state["data"] == b.state["data"] and a.state["rng"] == b.state["rng"]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    model = _model("decoder")
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        loss, grads = m.loss_and_grads(batch)
        return (float("nan") if len(calls) == 4 else loss), grads

    with pytest.raises(TrainingDiverged, match=r"step 4: the loss is nan.*step_000002"):
        train(model, [_batch("decoder")], steps=10, run_dir=tmp_path, checkpoint_every=2,
              progress=False, plot=False, loss_fn=loss_fn)
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_000002"
    assert ckpt.load_checkpoint(tmp_path).step == 2
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "diverged" and last["step"] == 4
    assert "the loss is nan" in (tmp_path / "log.txt").read_text()


def test_infinite_gradient_norm_also_stops(tmp_path):
    model = _model("decoder")

    def loss_fn(m, batch):
        loss, grads = m.loss_and_grads(batch)
        grads["model.norm.weight"][0] = np.inf
        return loss, grads

    with pytest.raises(TrainingDiverged, match="gradient norm is inf.*no checkpoint"):
        train(model, [_batch("decoder")], steps=3, run_dir=tmp_path, progress=False,
              plot=False, loss_fn=loss_fn)
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints") is None


def test_time_budget_stops_early_with_a_final_checkpoint(tmp_path):
    model = _model("decoder")
    history = train(model, [_batch("decoder")], steps=10**6, time_budget=0.3,
                    run_dir=tmp_path, checkpoint_every=0, progress=False, plot=False)
    step = history[-1]["step"]
    assert 1 <= step < 10**6
    assert ckpt.load_checkpoint(tmp_path).step == step
    assert "time budget reached" in (tmp_path / "log.txt").read_text()


def test_run_directory_contents_and_loss_curve(tmp_path):
    pytest.importorskip("matplotlib")
    model = _model("encdec")
    b = _batch("encdec")
    history = train(model, [b], steps=4, run_dir=tmp_path, eval_batches=[b], eval_every=2,
                    checkpoint_every=2, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoints", "log.txt", "loss.png", "metrics.jsonl"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["step"] for r in history if "val_loss" in r] == [2, 4]
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in history if "loss" in r)


def test_evaluate_is_token_weighted():
    model = _model("encdec")
    b1 = _batch("encdec", seed=1)
    b2 = collate_encdec(_examples(2, t=3, seed=2), 6, 6)  # fewer targets
    n1, n2 = 4 * 6, 2 * 3
    want = (model.loss(b1) * n1 + model.loss(b2) * n2) / (n1 + n2)
    got = evaluate(model, [b1, b2])
    assert got["loss"] == pytest.approx(want, rel=1e-6) and got["tokens"] == n1 + n2
    assert got["ppl"] == pytest.approx(np.exp(want), rel=1e-6)


def test_argument_errors(tmp_path):
    model = _model("decoder")
    b = _batch("decoder")
    with pytest.raises(ValueError, match="resume=True needs a run_dir"):
        train(model, [b], steps=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="Batcher.*or a list"):
        train(model, iter([b]), steps=1, progress=False)
    with pytest.raises(ValueError, match="TrainConfig.steps"):
        train(model, [b], steps=0, progress=False)
    with pytest.raises(ValueError, match="TrainConfig.kd_alpha"):
        TrainConfig(kd_alpha=2.0)
    train(model, [b], steps=1, run_dir=tmp_path, progress=False, plot=False)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(model, [b], steps=1, run_dir=tmp_path, progress=False, plot=False)
    other = build_model(preset("tiny", **{**SMALL, "hidden_size": 16}))
    with pytest.raises(ckpt.CheckpointError, match=r"config\.json.*differs"):
        train(other, [b], steps=2, run_dir=tmp_path, resume=True, progress=False, plot=False)
