"""The demo's table and plain-language reading on made-up results (no training: fast)."""

import pytest

from mini_encdec.experiments import demo

BASE = {"reply_nll_unigram": 6.0, "reply_rouge_l_copy_input": 0.05, "genre_chance": 1 / 6,
        "genre_majority_class": 0.2}


def _arm(**over) -> dict:
    m = {"prefix_val_loss": 4.0, "reply_nll": 4.5, "reply_rouge_l": 0.1,
         "genre_rank_accuracy": 0.3, "genre_probe_accuracy": 0.4, "parameters": 1_000_000,
         "prompt_gflops": 0.03, "gflops_per_generated_token": 0.003, "total_gflops": 0.12,
         "prompt_ms": 5.0, "ms_per_generated_token": 2.0, "total_ms": 70.0}
    return dict(m, **over)


def fake(objective: str) -> dict:
    return {"decoder_only": _arm(), "baselines": BASE, "objective": objective,
            "encoder_decoder": _arm(parameters=2_000_000, reply_rouge_l=0.01),
            "plan": {"extra_steps": 300, "batch_size": 16, "half": 64, "parent_steps": 1000}}


def test_results_table_has_every_row_and_its_baselines():
    lines = demo.results_table(fake("prefix_lm_kd")).splitlines()
    assert len(lines) == 2 + len(demo.ROWS)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "unigram 6.000" in lines[3] and "chance 0.167, majority class 0.200" in lines[5]


@pytest.mark.parametrize("objective", sorted(demo.OBJECTIVE_ARMS))
def test_reading_names_what_misses_its_baseline_and_fits_the_objective(objective):
    text = demo.reading(fake(objective))
    # the encoder-decoder's ROUGE-L 0.01 is below copying the input (0.05)
    assert "encoder-decoder model's reply ROUGE-L F1" in text and "copy the input" in text
    assert ("distillation teacher" in text) == (objective == "prefix_lm_kd")
    assert ("twice as many loss-bearing tokens" in text) == (objective != "ul2")
