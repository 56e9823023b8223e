"""The main job: `python -m mini_encdec demo --quick` runs end to end and writes its table."""

import json
import math

import pytest

from mini_encdec.cli import main

METRICS = ("prefix_val_loss", "reply_nll", "reply_rouge_l", "next_speech_accuracy",
           "parameters", "prompt_gflops", "gflops_per_generated_token",
           "total_gflops", "prompt_ms", "ms_per_generated_token", "total_ms")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_writes_its_table_and_results(quick_demo):
    table = (quick_demo / "results.md").read_text()
    assert ("| metric | decoder-only (Gemma 2) | encoder-decoder (T5Gemma, adapted) | "
            "baselines |") in table
    for row in ("reply NLL", "unigram", "copy the input", "majority class", "bag of words",
                "next-speech verification accuracy, classification probe",
                "parameters", "GFLOPs per generated token", "latency", "## Reading",
                "The parent's text"):
        assert row in table, row
    results = json.loads((quick_demo / "results.json").read_text())
    for arch in ("decoder_only", "encoder_decoder"):
        for key in METRICS:
            v = results[arch][key]
            if key == "ms_per_generated_token" and v is None:
                continue  # a busy machine can hide it (downstream.inference_latency): n/a
            assert math.isfinite(v), (arch, key)
        assert results[arch]["ms_per_generated_token"] is None or \
            results[arch]["ms_per_generated_token"] > 0  # never a negative time
        assert 0.0 <= results[arch]["next_speech_accuracy"] <= 1.0
    d, e = results["decoder_only"], results["encoder_decoder"]
    # the encoder-decoder has about twice the parameters (two stacks + cross-attention) ...
    assert e["parameters"] > d["parameters"]
    # ... and the cost rows compare like for like: same prompt, same forced length
    assert e["prompt_tokens"] == d["prompt_tokens"]
    assert e["generated_tokens"] == d["generated_tokens"] == results["plan"]["new_tokens"]
    # every stage left a run directory with its metrics
    for stage in ("parent", "ed_kd", "dec", "finetune_ed_kd@extra", "finetune_dec@extra",
                  "probe_ed_kd@extra", "probe_dec@extra"):
        assert (quick_demo / "runs" / "seed0" / stage / "metrics.jsonl").is_file(), stage


def test_loss_right_after_adaptation_is_finite_and_close_to_the_parent(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    parent = results["parent_prefix_loss_before_adaptation"]
    adapted = results["adapted_prefix_loss_right_after_adaptation"]
    assert math.isfinite(adapted)
    # The adapted model is the parent with a bidirectional encoder and cross-attention
    # added, so it starts near the parent, far below the uniform loss log(V) = 9.0.
    assert abs(adapted - parent) < 1.0
    assert adapted < math.log(8192) - 1.0


def test_distillation_stage_logs_its_parts(quick_demo):
    """Stage 3a logs the two parts of alpha * soft + (1 - alpha) * ce, and the student
    starts next to its teacher: the adapted model is the parent with an encoder added."""
    recs = [json.loads(line) for line in
            (quick_demo / "runs" / "seed0" / "ed_kd" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    assert train_recs and all({"kl", "ce", "soft"} <= set(r) for r in train_recs)
    for r in train_recs:  # kd_alpha = 0.5 (TrainConfig's default)
        assert r["loss"] == pytest.approx(0.5 * r["soft"] + 0.5 * r["ce"], rel=1e-6)
        assert r["kl"] >= -1e-6 and r["soft"] >= r["kl"] - 1e-6  # soft = KL + H(teacher)
    assert train_recs[0]["kl"] < 0.05 * train_recs[0]["ce"]
