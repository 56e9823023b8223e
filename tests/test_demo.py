"""The main job: `python -m mini_encdec demo --quick` runs end to end and writes its table."""

import json
import math

import pytest

from mini_encdec.cli import main

METRICS = ("pretrain_val_loss", "reply_nll", "reply_rouge_l", "genre_accuracy", "parameters",
           "inference_gflops", "latency_ms")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_demo_writes_its_table_and_results(quick_demo):
    table = (quick_demo / "results.md").read_text()
    assert "| metric | decoder-only (Gemma 2) | encoder-decoder (T5Gemma, adapted) |" in table
    for row in ("reply NLL", "genre accuracy", "parameters", "inference GFLOPs", "latency"):
        assert row in table
    results = json.loads((quick_demo / "results.json").read_text())
    for arch in ("decoder_only", "encoder_decoder"):
        for key in METRICS:
            assert math.isfinite(results[arch][key]), (arch, key)
        assert 0.0 <= results[arch]["genre_accuracy"] <= 1.0
    # the encoder-decoder has about twice the parameters (two stacks + cross-attention) ...
    assert results["encoder_decoder"]["parameters"] > results["decoder_only"]["parameters"]
    # ... every stage left a run directory with its metrics
    for stage in ("1_pretrain_decoder", "3a_encdec_pretrain", "3b_decoder_pretrain",
                  "4a_encdec_finetune", "4b_decoder_finetune"):
        assert (quick_demo / stage / "metrics.jsonl").is_file(), stage


def test_loss_right_after_adaptation_is_finite_and_close_to_the_parent(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    parent = results["parent_prefix_loss_before_adaptation"]
    adapted = results["adapted_prefix_loss_right_after_adaptation"]
    assert math.isfinite(adapted)
    # The adapted model is the parent with a bidirectional encoder and cross-attention
    # added, so it starts near the parent, far below the uniform loss log(V) = 9.0.
    assert abs(adapted - parent) < 1.0
    assert adapted < math.log(8192) - 1.0


def test_distillation_stage_logs_its_parts_and_learns(quick_demo):
    recs = [json.loads(line) for line in
            (quick_demo / "3a_encdec_pretrain" / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    assert all("kl" in r and "ce" in r for r in train_recs)
    k = max(1, len(train_recs) // 4)
    first = sum(r["kl"] for r in train_recs[:k]) / k
    last = sum(r["kl"] for r in train_recs[-k:]) / k
    assert last < first
