"""The study's worker pool and report on their failure paths (no training: fast)."""

import os

import pytest

from mini_encdec.experiments.study import report, runner
from mini_encdec.storage import lock


class FakeProc:
    """A worker that never finishes by itself."""

    returncode = 0

    def __init__(self, *a, **k):
        self.terminated = False
        FakeProc.made.append(self)

    def poll(self):
        return 0 if self.terminated else None

    def terminate(self):
        self.terminated = True

    def wait(self):
        return 0


def test_the_workers_stop_when_the_runner_stops(tmp_path, monkeypatch):
    """A Ctrl-C (or any error) in the runner terminates its workers, so a resumed study
    never shares a unit with an orphan still writing it."""
    FakeProc.made = []
    monkeypatch.setattr(runner.subprocess, "Popen", FakeProc)

    def interrupt(_):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner.time, "sleep", interrupt)
    (tmp_path / "logs").mkdir()
    bar = runner.tqdm(total=1, disable=True)
    with pytest.raises(KeyboardInterrupt):
        runner._run_pool(tmp_path, [("seed0", []), ("seed1", [])], 2, {}, lambda n: True, bar)
    assert len(FakeProc.made) == 2 and all(p.terminated for p in FakeProc.made)


def test_a_worker_that_cannot_start_names_the_failed_one(tmp_path, monkeypatch):
    class Failing(FakeProc):
        returncode = 1

        def poll(self):
            return 1
    FakeProc.made = []
    monkeypatch.setattr(runner.subprocess, "Popen", Failing)
    monkeypatch.setattr(runner.time, "sleep", lambda _: None)
    (tmp_path / "logs").mkdir()
    bar = runner.tqdm(total=1, disable=True)
    with pytest.raises(RuntimeError, match="seed0 cannot start: the worker.s. parent failed"):
        runner._run_pool(tmp_path, [("parent", []), ("seed0", [])], 1, {},
                         lambda n: n == "parent", bar)


def test_two_processes_making_the_same_parents_do_not_fail(tmp_path, monkeypatch):
    """The other process made the directory between our look and our mkdir."""
    target = tmp_path / "models" / "shared" / "parent"
    (tmp_path / "models" / "shared").mkdir(parents=True)
    monkeypatch.setattr(lock.os.path, "lexists", lambda p: False)
    assert lock.make_parents(target, "x") == []
    assert os.path.isdir(tmp_path / "models" / "shared")


def test_a_parent_without_its_training_time_still_reports():
    par = {"parent": {"parameters": 10, "steps": 4, "prefix_val_loss": 4.0,
                      "causal_val_loss": 4.1, "train_seconds": None},
           "big_parent": {"parameters": 20, "steps": 4, "prefix_val_loss": 3.9,
                          "causal_val_loss": 4.0, "train_seconds": 120.0}}
    md = report.parents_markdown({"parents": par})
    assert "| parent | 10 | 4 | 4.000 | 4.100 | n/a |" in md and "2.0 min" in md


def test_a_seed_runs_the_big_parents_arms_last_and_reports_in_arms_order():
    """E4's arms (they wait for the big parent) come after every other unit of a seed;
    the returned results are in ARMS order whatever the running order."""
    from mini_encdec.experiments.study import ARMS, SCALES, SWEEP_ARMS, seed_units

    class Recorder:  # stands in for Study: records which unit ran when
        plan = SCALES["full"]

        def __init__(self):
            self.calls = []

        def pretrained(self, s, arm, budget):
            self.calls.append(("pretrained", arm, budget))

        def pretrain_result(self, s, arm):
            self.calls.append(("pretrain", arm, "extra"))
            return arm

        def finetune_result(self, s, arm, budget):
            self.calls.append(("finetune", arm, budget))
            # as a unit cached before the probes were units of their own: scores inside
            stale = {"rep_score": 0.1, "next_speech_accuracy": 0.1} if budget == "extra" else {}
            return {"unit": f"{arm}@{budget}", **stale}

        def rep_result(self, s, arm):
            self.calls.append(("rep", arm, "extra"))
            return {"rep_score": 0.5}

    rec = Recorder()
    pre, ft = seed_units(rec, 0)
    big = [i for i, c in enumerate(rec.calls) if c[1].startswith("ed_unbal")]
    sweep = [i for i, c in enumerate(rec.calls) if c[0] == "finetune" and c[2] != "extra"]
    assert big and sweep and min(big) > max(sweep)
    assert list(pre) == list(ARMS) and all(pre[a] == a for a in ARMS)
    assert list(ft)[:len(ARMS)] == [f"{a}@extra" for a in ARMS]
    assert sorted(ft) == sorted([f"{a}@extra" for a in ARMS] +
                                [f"{a}@{b}" for a in SWEEP_ARMS for b in ("zero", "sweep")])
    assert all(ft[k]["unit"] == k for k in ft)
    # the probes: one unit per probed arm, right after its fine-tuning, merged into it
    probed = [c[1] for c in rec.calls if c[0] == "rep"]
    assert sorted(probed) == sorted(Recorder.plan.rep_arms)
    for arm in probed:
        i = rec.calls.index(("rep", arm, "extra"))
        assert rec.calls[i - 1] == ("finetune", arm, "extra")
    assert all(("rep_score" in ft[k]) == (k in {f"{a}@extra" for a in probed}) for k in ft)
    assert all(ft[f"{a}@extra"]["rep_score"] == 0.5 for a in probed)  # the probe unit's
    assert not any("next_speech_accuracy" in ft[k] for k in ft)
