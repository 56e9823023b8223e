"""The pilots' decision rules on made-up end points (no training)."""

import json

import pytest

from mini_encdec.experiments.pilots import extra_lr
from mini_encdec.experiments.pilots.parent_budget import choose_budget
from mini_encdec.experiments.pilots.task_learnability import accuracy_with_se, by_third
from mini_encdec.text.rep_tasks import RepExample


def _branches(losses, gaps):
    return {s: {b: {"val_prefix": l + 0.01 * s, "gap": g} for b, l, g in zip(
        (500, 1000, 2000, 3000), losses, gaps)} for s in (0, 1)}


def test_parent_budget_rule():
    # minimum 4.50 at 2000; 1000 is within 0.02 of it and the gap grows by 0.01: chosen
    r = choose_budget(_branches([4.80, 4.515, 4.50, 4.52], [0.30, 0.31, 0.50, 0.70]))
    assert r["chosen"] == 1000 and r["argmin"] == 2000
    assert r["min_val_prefix"] == pytest.approx(4.505)
    # the same losses but a gap that widens by 0.2 at 1000: the rule picks nothing before
    # 2000's widening either, so no budget passes; the loss-only reading is reported
    r = choose_budget(_branches([4.80, 4.515, 4.50, 4.52], [0.30, 0.50, 0.70, 0.90]))
    assert r["chosen"] is None and r["smallest_within_tolerance_ignoring_gap"] == 1000
    r = choose_budget(_branches([4.8, 4.6, 4.55, 4.50], [0.3, 0.3, 0.3, 0.3]))
    assert r["chosen"] == 3000 and r["minimum_at_largest_budget"]


def test_extra_lr_choice(tmp_path):
    g = extra_lr.GRID
    inner = [4.9] * len(g)
    inner[1] = 4.7                    # an interior minimum
    edge = [4.9 - 0.1 * k for k in range(len(g))]  # falls to the grid's upper edge
    for arch, losses in (("decoder", inner), ("encdec", edge)):
        for lr, loss in zip(g, losses):
            (tmp_path / f"{arch}_lr{lr:g}.json").write_text(json.dumps(
                {"arch": arch, "lr": lr, "prefix_val_loss": loss}))
    c = extra_lr.collect(tmp_path, tmp_path / "out" / "x")["choice"]
    assert c["decoder"] == {"lr": g[1], "prefix_val_loss": 4.7, "complete_grid": True,
                            "at_grid_edge": False}
    assert c["encdec"]["lr"] == g[-1] and c["encdec"]["at_grid_edge"]


def test_task_accuracies_and_thirds():
    a = accuracy_with_se([1, 0, 1, 1], [1, 1, 1, 1])
    assert a == {"accuracy": 0.75, "se": pytest.approx((0.75 * 0.25 / 4) ** 0.5), "n": 4}
    ex = [RepExample(None, 1, 0), RepExample(None, 1, 2), RepExample(None, 0, -1),
          RepExample(None, 1, 2)]
    t = by_third([1, 0, 0, 1], ex)
    assert t["first third"]["accuracy"] == 1.0 and t["last third"]["accuracy"] == 0.5
    assert t["untouched"]["accuracy"] == 1.0 and "middle third" not in t
