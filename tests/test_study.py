"""The study command at its smoke-test budget: every experiment runs, the claims table is
complete, an interrupted study resumes from its cached units, bad arguments are one line."""

import json

import numpy as np
import pytest

from mini_encdec import cli
from mini_encdec.experiments.study import ARMS, CLAIMS, UNITS_PER_SEED, causal_encoder


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    assert cli.main(["study", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


def test_quick_study_writes_every_claim(quick_study):
    res = json.loads((quick_study / "results.json").read_text())
    assert {c["experiment"] for c in res["claims"]} == {"E1", "E2", "E3", "E4", "E5", "E6"}
    assert len(res["claims"]) == len(CLAIMS)
    for c in res["claims"]:
        assert c["verdict"] in ("reproduced", "not reproduced", "equivalent", "inconclusive")
        assert c["test"]["p"] <= c["test"]["p_holm"] <= 1
        assert c["test"]["n"] == len(res["plan"]["seeds"]) >= 2
        assert np.isfinite(c["test"]["mean_a"]) and 0 <= c["test"]["p"] <= 1
    seeds = res["plan"]["seeds"]
    for s in seeds:
        assert set(res["pretrain"][f"seed{s}"]) == set(ARMS)
        assert len(res["finetune"][f"seed{s}"]) == UNITS_PER_SEED
    for arm in ARMS:  # like-for-like costs: same prompt, same forced length for every arm
        cost = res["cost"][arm]
        assert cost["generated_tokens"] == res["plan"]["new_tokens"]
        assert cost["prompt_tokens"] == res["cost"]["dec"]["prompt_tokens"]
        assert cost["latency_attempts"] == 1 and isinstance(cost["quiet"], bool)
        assert cost["total_gflops"] > cost["prompt_gflops"] > 0
    for s in seeds:  # probes on the claimed arms, replies generated at the extra budget
        for name, unit in res["finetune"][f"seed{s}"].items():
            arm, budget = name.split("@")
            probed = budget == "extra" and arm in res["plan"]["rep_arms"]
            assert ("rep_score" in unit) == probed, name
            if probed:
                assert 0 <= unit["rep_score"] <= 1
                assert len(unit["next_speech_accuracy_per_head_seed"]) == \
                    len(res["plan"]["probe_seeds"])
                thirds = unit["word_order_accuracy_by_third"]   # a positional task
                assert set(thirds) == {"first", "middle", "last", "untouched"}
                assert (quick_study / "results" / f"seed{s}" / f"rep_{arm}.json").is_file()
            assert ("reply_repetition" in unit) == (budget == "extra"), name
            assert unit["reply_examples"] == res["plan"]["eval_examples"]
    parents = res["parents"]  # trained once, shared, their quality reported
    assert parents["big_parent"]["parameters"] > parents["parent"]["parameters"]
    assert all(np.isfinite(p["prefix_val_loss"]) for p in parents.values())
    assert res["timeline"]["wall_clock_minutes"] > 0
    assert set(res["baselines"]["rep"]) >= set(res["plan"]["rep_tasks"])
    for s in seeds:  # UL2 gets more examples per update: as many targets as PrefixLM
        assert res["pretrain"][f"seed{s}"]["ed_ul2"]["batch_size"] > res["plan"]["batch_size"]
    md = (quick_study / "results.md").read_text()
    assert "| E4 |" in md and "Reading" in md and "baseline" in md
    assert "## Representation tasks" in md
    assert "`word_order`:" in md and "| arm | first third |" in md


def test_resumed_study_reuses_its_units_and_refuses_a_new_one_in_place(quick_study, capsys):
    before = json.loads((quick_study / "results.json").read_text())
    stamp = {p: p.stat().st_mtime_ns for p in (quick_study / "results").rglob("*.json")}
    assert cli.main(["study", "--quick", "--out", str(quick_study), "--resume",
                     "--no-progress"]) == 0
    after = json.loads((quick_study / "results.json").read_text())
    assert [c["test"] for c in after["claims"]] == [c["test"] for c in before["claims"]]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing recomputed
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a new study over a finished one
        cli.main(["study", "--quick", "--out", str(quick_study)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # resuming with another plan
        cli.main(["study", "--quick", "--seeds", "3", "--out", str(quick_study), "--resume"])
    assert e.value.code == 2 and "another plan" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [(["--seeds", "1"], "--seeds"),
                                      (["--jobs", "0"], "--jobs"),
                                      (["--out", ""], "--out"),
                                      (["--resume"], "--resume")])
def test_bad_study_arguments_are_one_line(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(["study", "--quick"] + argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_causal_encoder_switch_reaches_generation_and_the_probe():
    from mini_encdec import preset
    from mini_encdec.config import EncDecConfig
    from mini_encdec.models import build_model
    from mini_encdec.models.classifier import SequenceClassifier
    cfg = preset("tiny", vocab_size=64, hidden_size=32, head_dim=8, intermediate_size=64)
    model = build_model(EncDecConfig(encoder=cfg, decoder=cfg), seed=0)
    ids = np.array([[5, 9, 11, 7, 1]])
    bidir = model.encode(ids)
    causal = model.encode(ids, causal=True)
    assert not np.allclose(bidir, causal)
    clf_bi = SequenceClassifier.from_backbone(model, 3, seed=1)
    causal_encoder(model)
    np.testing.assert_array_equal(model.encode(ids), causal)
    clf = SequenceClassifier.from_backbone(model, 3, seed=1)
    assert clf.causal_encoder
    # the probe reads the last token: with a causal encoder it sees the same prefix, but
    # earlier tokens no longer see later ones, so the pooled state differs
    assert not np.allclose(clf.forward({"input_ids": ids}), clf_bi.forward({"input_ids": ids}))


def test_every_reported_budget_is_annealed_and_the_short_one_is_a_cooldown_branch(quick_study):
    plan = json.loads((quick_study / "study_plan.json").read_text())
    extra, sweep, lr = plan["extra_steps"], plan["sweep_steps"], plan["extra_lr_encdec"]

    def lrs(run):
        lines = (quick_study / "runs" / "seed0" / run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}

    stable, branch = lrs("ed_kd"), lrs(f"ed_kd@cooldown{extra}")
    assert max(stable) == sweep and stable[sweep] < lr and branch[extra] < lr
    start = extra - max(1, round(0.2 * extra))   # the branch starts in the stable phase
    assert min(branch) == start + 1 and stable[start] == lr
    assert lrs("ed_prefix")[extra] < lr          # a single-budget arm anneals too


def test_probe_scores_replace_those_a_fine_tuning_unit_once_held():
    from mini_encdec.experiments.study.units import with_probes
    old = {"reply_nll": 4.6, "rep_score": 0.589, "next_speech_accuracy": 0.589,
           "next_speech_accuracy_per_head_seed": [0.58, 0.59, 0.6]}
    new = {"rep_score": 0.63, "next_speech_accuracy": 0.6, "word_order_accuracy": 0.66}
    assert with_probes(old, new) == {"reply_nll": 4.6, **new}
    assert with_probes({"reply_nll": 4.6}, {}) == {"reply_nll": 4.6}
