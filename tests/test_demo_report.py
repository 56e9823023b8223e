"""The demo's table and plain-language reading on made-up results (no training: fast)."""

import pytest

from mini_encdec.experiments import demo

BASE = {"reply_nll_unigram": 6.0, "reply_rouge_l_copy_input": 0.05, "rep_chance": 0.5,
        "rep_majority": 0.52, "rep_bag_of_words": 0.55, "rep_eval_examples": 2860}


def _arm(**over) -> dict:
    m = {"prefix_val_loss": 4.0, "reply_nll": 4.5, "reply_rouge_l": 0.1,
         "next_speech_accuracy": 0.6, "parameters": 1_000_000,
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
    assert "unigram 6.000" in lines[3]
    assert "chance 0.500, majority class 0.520, bag of words 0.550" in lines[5]


@pytest.mark.parametrize("objective", sorted(demo.OBJECTIVE_ARMS))
def test_reading_names_what_misses_its_baseline_and_fits_the_objective(objective):
    text = demo.reading(fake(objective))
    # the encoder-decoder's ROUGE-L 0.01 is below copying the input (0.05)
    assert "encoder-decoder model's reply ROUGE-L F1" in text and "copy the input" in text
    assert ("distillation teacher" in text) == (objective == "prefix_lm_kd")
    assert ("twice as many loss-bearing tokens" in text) == (objective != "ul2")


@pytest.mark.parametrize("ed_arm", sorted(set(demo.OBJECTIVE_ARMS.values())))
def test_loss_panels_are_numbered_in_order_and_share_only_validation_losses(ed_arm):
    """loss_curves.png: panels 1, 2, 3, ... in order; the one panel with both models is the
    PrefixLM validation loss (the same windows); every training loss is alone."""
    panels = demo.stage_panels(ed_arm)
    assert [t.split(".")[0] for t, _, _ in panels] == [str(i) for i in range(1, len(panels) + 1)]
    for title, key, runs in panels:
        assert key in ("loss", "val_loss")
        if len(runs) > 1:
            assert key == "val_loss" and "same windows" in title
        if key == "loss":
            assert len(runs) == 1 and "training loss" in title
    assert {name for _, key, runs in panels if key == "val_loss" for name, _ in runs} == \
        {ed_arm, "dec"}


def test_loss_curves_png_from_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    import json
    runs = tmp_path / "runs" / "seed0"
    for name in ("parent", "ed_kd", "dec", "finetune_ed_kd@extra", "finetune_dec@extra"):
        (runs / name).mkdir(parents=True)
        recs = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 6)]
        recs += [{"step": s, "val_loss": 4.0 - s / 20} for s in (2, 4)]
        (runs / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    path = demo.plot_stages(tmp_path, 0, "ed_kd")
    assert path == tmp_path / "loss_curves.png" and path.stat().st_size > 1000


def test_one_seed_differences_inside_the_seed_spread_read_within_noise():
    """A 0.019-nat PrefixLM difference (the old demo's) is inside twice the study's
    seed-to-seed spread: "within noise", never "supported"; a large one has a direction."""
    r = fake("prefix_lm_kd")
    r["encoder_decoder"] = _arm(parameters=2_000_000, prefix_val_loss=4.0 - 0.019,
                                reply_nll=4.5 - 0.5)
    text = demo.reading(r)
    line = next(x for x in text.splitlines() if "pre-training performance" in x)
    assert "within noise" in line and "supported" not in text
    line = next(x for x in text.splitlines() if "better fine-tuned generation" in x)
    assert "in the paper's direction beyond one seed's noise" in line


def test_a_baseline_is_beaten_only_beyond_its_sampling_error():
    r = fake("prefix_lm_kd")
    # 0.01 above the bag of words (0.55) on 2860 examples: inside 2 binomial errors (0.019)
    r["decoder_only"] = _arm(next_speech_accuracy=0.56)
    text = demo.reading(r)
    assert "decoder-only model's next-speech verification accuracy" in text
    assert "sampling error" in text
    r["decoder_only"] = _arm(next_speech_accuracy=0.60)  # 0.05 above: beyond it
    assert "decoder-only model's next-speech" not in demo.reading(r)


def test_probe_accuracy_differences_read_against_their_binomial_error():
    r = fake("prefix_lm_kd")
    r["encoder_decoder"] = _arm(parameters=2_000_000, next_speech_accuracy=0.615)
    line = next(x for x in demo.reading(r).splitlines() if "next-speech" in x and "SuperGLUE" in x)
    assert "within noise" in line       # +0.015 against about +-0.026 (paired, n = 2860)
    r["encoder_decoder"] = _arm(parameters=2_000_000, next_speech_accuracy=0.65)
    line = next(x for x in demo.reading(r).splitlines() if "next-speech" in x and "SuperGLUE" in x)
    assert "in the paper's direction" in line


def test_the_cooldown_branch_continues_the_validation_curve(tmp_path, monkeypatch):
    """The annealed end of the extra budget (its WSD cooldown branch) is drawn on from the
    stable run, so the panel's last point is the table's number."""
    pytest.importorskip("matplotlib")
    import json
    import matplotlib.axes
    drawn = []
    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: drawn.append(a) or real(self, *a, **k))
    runs = tmp_path / "runs" / "seed0"
    for name, steps in (("ed_kd", (2, 4)), ("ed_kd@cooldown6", (6,)), ("dec", (2, 4))):
        (runs / name).mkdir(parents=True)
        recs = [{"step": s, "val_loss": 4.0 - s / 20} for s in steps]
        (runs / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    demo.plot_stages(tmp_path, 0, "ed_kd")
    assert ((4, 6), (4.0 - 4 / 20, 4.0 - 6 / 20), "o--") in [tuple(a) for a in drawn]


def test_a_latency_from_a_busy_machine_is_marked_indicative():
    r = fake("prefix_lm_kd")
    assert "indicative only" not in demo.reading(r)
    r["encoder_decoder"] = _arm(parameters=2_000_000, quiet=False, load_average_before=2.3)
    line = next(x for x in demo.reading(r).splitlines() if "inference cost" in x)
    assert "load average was 2.3" in line and "indicative only" in line


def test_a_per_token_latency_a_busy_machine_could_not_measure_reads_n_a(monkeypatch):
    """inference_latency's per-token time is a difference of two timings: where the
    longer request did not take longer (a busy machine), it is None, never negative, and
    the table and reading show "n/a"."""
    from mini_encdec.experiments import downstream
    import mini_encdec.models.generate as gen
    clock = iter([0.0, 0.010, 0.0, 0.010, 0.0, 0.010,  # warm-up: 10 ms
                  0.0, 0.008, 0.0, 0.009, 0.0, 0.007,  # 32 tokens: best 7 ms
                  0.0, 0.012, 0.0, 0.011, 0.0, 0.015])  # 1 token: best 11 ms
    monkeypatch.setattr(downstream.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(gen, "generate", lambda *a, **k: None)
    lat = downstream.inference_latency(None, [5, 6, 7], 32, repeats=3)
    assert lat == {"total_ms": 7.0, "prompt_ms": 11.0, "ms_per_generated_token": None}
    r = fake("prefix_lm_kd")
    r["encoder_decoder"] = _arm(parameters=2_000_000, ms_per_generated_token=None)
    assert "| measured latency per generated token (ms) | 2.00 | n/a |" in \
        demo.results_table(r)
    assert "measured: n/a vs 2.00 ms per token" in demo.reading(r)
