"""The study's report functions on a made-up results dict (no training: fast).

The numbers are invented so that the expected verdicts are known: every arm's metric is
its seed's value plus a per-arm offset, so a paired difference has no spread at all or a
small one."""

import numpy as np
import pytest

from mini_encdec.experiments import study
from mini_encdec.experiments.study import ARMS, CLAIMS, METRICS, SWEEP_ARMS

SEEDS = (0, 1, 2)
OFFSET = {arm: 0.01 * i for i, arm in enumerate(ARMS)}  # dec lowest, ed_unbal_nowarm highest


def _metrics(seed: int, arm: str) -> dict:
    x = 1.0 + 0.1 * seed + OFFSET[arm] + 0.001 * ((seed * 7 + len(arm)) % 3)  # a little noise
    return dict({k: x for k in METRICS}, next_speech_accuracy=0.6, speaker_accuracy=0.7)


def fake_results() -> dict:
    plan = {"extra_steps": 4, "sweep_steps": 8, "eval_every": 2}
    res = {"pretrain": {}, "finetune": {}, "cost": {}, "plan": plan,
           "baselines": {"reply_nll_unigram": [6.0] * 3, "reply_rouge_l_copy_input": [0.05] * 3,
                         "genre_chance": [1 / 6] * 3, "genre_majority_class": [0.2] * 3,
                         "rep": {t: {"chance": 0.5, "majority": 0.51, "bag_of_words": 0.55,
                                     "eval_examples": 100}
                                 for t in ("next_speech", "speaker")}}}
    for s in SEEDS:
        pre, ft = {}, {}
        for arm in ARMS:
            end = plan["sweep_steps"] if arm in SWEEP_ARMS else plan["extra_steps"]
            curve = [[st, 1000 * st, 5.0 - 0.1 * st + OFFSET[arm]] for st in range(2, end + 1, 2)]
            pre[arm] = dict(_metrics(s, arm), prefix_val_loss_at_start=5.5, curve=curve)
            ft[f"{arm}@extra"] = _metrics(s, arm)
        for arm in SWEEP_ARMS:
            for budget in ("zero", "sweep"):
                ft[f"{arm}@{budget}"] = _metrics(s, arm)
        res["pretrain"][f"seed{s}"], res["finetune"][f"seed{s}"] = pre, ft
    for arm in ARMS:
        res["cost"][arm] = {"parameters": 1000, "prompt_gflops": 0.01, "total_gflops": 0.1,
                            "gflops_per_generated_token": 0.003, "ms_per_generated_token": 1.0,
                            "total_ms": 30.0, "quiet": arm != "dec",
                            "load_average": [1.0, 1.0, 1.0]}
    return res


def _cells(line: str) -> int:
    return line.count("|") - 1


def test_claims_table_directions_and_markdown():
    rows = study.claims_table(fake_results(), SEEDS)
    assert len(rows) == len(CLAIMS)
    for r in rows:
        c = r["claim"]
        # a - b is OFFSET[a] - OFFSET[b] (+ noise well below it): the verdict follows its sign
        diff = OFFSET[c.a] - OFFSET[c.b]
        assert r["test"]["mean_diff"] == pytest.approx(diff, abs=0.002)
        holds = diff < 0 if c.better == "lower" else diff > 0
        assert r["verdict"] == ("reproduced" if holds else "not reproduced"), c
    md = study.claims_markdown(rows).splitlines()
    assert len(md) == 2 + len(CLAIMS)
    assert all(_cells(line) == _cells(md[0]) for line in md)
    assert "(claim: < 0)" in md[2] and "(claim: > 0)" in "\n".join(md)
    text = study.reading(rows)
    assert text.count("- **E") == 6 and "Primary tests (9, Holm-corrected" in text


def test_claims_are_holm_corrected_within_their_family_and_can_be_equivalent():
    res = fake_results()
    rows = study.claims_table(res, SEEDS)
    primary = [r for r in rows if r["claim"].primary]
    assert len(primary) == 9 and {r["claim"].experiment for r in primary} == \
        {"E1", "E2", "E3", "E4", "E5", "E6"}
    for family in (primary, [r for r in rows if not r["claim"].primary]):
        m = len(family)
        smallest = min(family, key=lambda r: r["test"]["p"])["test"]
        assert smallest["p_holm"] == pytest.approx(min(1.0, m * smallest["p"]))
        assert all(r["test"]["p"] <= r["test"]["p_holm"] for r in family)
        for r in family:
            lo, hi = r["test"]["ci95"]
            assert lo <= r["test"]["mean_diff"] <= hi and r["test"]["mde"] >= 0
    # ed_causal = ed_prefix + noise far below the 0.02-nat margin: E5 reads "equivalent"
    for s in SEEDS:
        for arm in ("ed_prefix", "ed_causal"):
            res["pretrain"][f"seed{s}"][arm]["prefix_val_loss"] = \
                5.0 + 0.1 * s + (0.001 * ((s + len(arm)) % 3) if arm == "ed_causal" else 0)
    e5 = [r for r in study.claims_table(res, SEEDS)
          if r["claim"].experiment == "E5" and r["claim"].stage == "pretrain"][0]
    assert e5["verdict"] == "equivalent" and e5["test"]["p_tost"] < 0.05


def test_arms_and_sweep_tables_are_rectangular_and_name_their_budgets():
    res = fake_results()
    arms = study.arms_markdown(res, SEEDS, res["baselines"]).splitlines()
    assert len(arms) == 2 + len(ARMS) + 1  # header, rule, one row per arm, the baselines
    assert all(_cells(line) == _cells(arms[0]) for line in arms)
    # a latency measured on a busy machine is marked, per token and per request
    assert arms[2].count(" *") == 2 and " *" not in "\n".join(arms[3:])
    sweep = study.sweep_markdown(res, SEEDS)
    first, second = sweep.split("\n\n(A blank cell")[0], sweep.split("\n\n")[-1]
    rows = first.splitlines()[2:]
    assert [int(r.split("|")[1]) for r in rows] == [0, 2, 4, 6, 8]
    by_step = {int(r.split("|")[1]): [c.strip() for c in r.split("|")[2:-1]] for r in rows}
    assert all(by_step[0])  # budget 0: the starting points of both arms
    assert by_step[2][2] == ""  # dec was not evaluated at update 1
    assert by_step[8][2].startswith(f"{5.0 - 0.4:.3f}")  # ... but at update 4
    budgets = [r.split("|")[1].strip() for r in second.splitlines()[2:]]
    assert budgets == ["0", "4 updates", "8 updates"]
    assert "extra_steps" not in second


def test_report_puts_the_tables_together():
    res = fake_results()
    res.update(machine={"date": "2025-01-01 00:00", "cpus": 2, "processor": "x86_64",
                        "python": "3.12", "numpy": np.__version__, "load_average_at_end": None},
               command="python -m mini_encdec study --quick", seconds_this_call=120.0,
               seconds_all_units=90.0)
    res["plan"].update(preset="tiny", parent_steps=8, half=16, batch_size=4, finetune_steps=4,
                       probe_steps=4)
    rows = study.claims_table(res, SEEDS)
    md = study._report(res, rows, SEEDS, None, None)
    for part in ("## Claims", "### Reading", "## Every arm", "## Representation tasks",
                 "| bag of words | 0.550 | 0.550 |", "## E6: the budget sweep",
                 "this invocation 2.0 min", "inside the units 1.5 min"):
        assert part in md, part
