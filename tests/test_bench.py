"""The benchmark's report and plumbing (the measurements themselves are not run here:
speed is never asserted in tests; `python -m mini_encdec bench --quick` is the smoke run)."""

import argparse

import numpy as np
import pytest

from mini_encdec.experiments import bench, bench_workers
from .conftest import requires_twins


def _args(*argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_cover_both_presets_architectures_and_engines():
    a = _args()
    assert a.presets == "tiny,small" and a.archs == "decoder,encdec"
    assert a.engines == "numpy,numba,torch,torch_compile"
    assert (a.prompt_len, a.new_tokens, a.gen_batches) == (128, 64, "1,8")


def test_render_shows_ratios_peak_fractions_and_targets():
    machine = {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "python": "3", "numpy": "2",
               "blas": "openblas", "numba": "0.6", "load_average": (0.1, 0.2, 0.3)}
    peak = 100e9
    train = {("small", "decoder", "numba"): {"times": [0.2, 0.3], "flops": 12e9,
                                             "peak_rss": 300.0, "step_mem": 50.0},
             ("small", "decoder", "torch"): {"times": [0.4], "flops": 12e9,
                                             "peak_rss": 600.0, "step_mem": 80.0},
             ("small", "decoder", "numpy"): {"error": "boom"}}
    gen = {("small", "decoder", "numba", 1): {"times": [1.0], "new_tokens": 64,
                                              "peak_rss": 1.0, "tokens": [[5, 6]],
                                              "prefill": 0.01, "decode_step": 0.002,
                                              "step_bytes": 20e6},
           ("small", "decoder", "torch", 1): {"times": [4.0], "new_tokens": 64,
                                              "peak_rss": 1.0, "tokens": [[5, 6]]}}
    startup = [{"wall": 20.0, "in_process": 19.0}, {"wall": 2.0, "in_process": 1.0}]
    md = bench.render(machine, peak, dict(B=8, T=128, steps=2, P=128, N=64), ["small"],
                      ["decoder"], ["numpy", "numba", "torch"], [1], train, gen, startup, {},
                      bandwidth={"one": 20e9, "all": 40e9, "threads": 2})
    assert "Test CPU" in md and "100.0 GFLOP/s" in md
    # 8 * 128 tokens in 0.2 s; 12 GFLOP in 0.2 s = 60 GFLOP/s = 60% of the peak; 2x torch
    assert "| small | decoder | numba | 200 (250) | 5120 | 60.0 | 60% | 2.00x |" in md
    assert "error: boom" in md
    assert "| small | decoder | numba | 1 | 64 | 4.00x | yes |" in md
    assert "training tokens/s >= 1.3x PyTorch's, small decoder: 2.00x (met)" in md
    assert ">= 70% of the matmul peak on small decoder: 60% (missed)" in md
    assert "generation >= 5x transformers generate, batch 1, small decoder: 4.0x (missed)" in md
    assert "cold (empty compile cache) | 20.0" in md
    # 20 MB per step at 20 GB/s (one thread) = 1 ms, at 40 GB/s 0.5 ms; the step takes 2 ms
    assert "| small | decoder | 1 | 10.0 | 2.00 | 20.0 | 1.00 / 0.50 | 50% |" in md


def test_render_shows_torch_compile_beside_eager_with_its_compile_time():
    machine = {"cpu": "Test CPU", "cores": 2, "memory_gib": 8.0, "python": "3", "numpy": "2",
               "blas": "openblas", "numba": "0.6", "load_average": (0.1, 0.2, 0.3)}
    step = {"flops": 12e9, "peak_rss": 300.0, "step_mem": 50.0}
    train = {("tiny", "encdec", "numba"): dict(step, times=[0.2]),
             ("tiny", "encdec", "torch"): dict(step, times=[0.4]),
             ("tiny", "encdec", "torch_compile"): dict(step, times=[0.25], compile_seconds=41.6)}
    gen = {("tiny", "encdec", "torch", 1): {"times": [4.0], "new_tokens": 64, "peak_rss": 1.0,
                                            "tokens": [[5]]},
           ("tiny", "encdec", "torch_compile", 1): {"times": [2.0], "new_tokens": 64,
                                                    "peak_rss": 1.0, "tokens": [[5]],
                                                    "compile_seconds": 12.2}}
    md = bench.render(machine, 100e9, dict(B=8, T=128, steps=1, P=128, N=64), ["tiny"],
                      ["encdec"], ["numba", "torch", "torch_compile"], [1], train, gen, None, {})
    # compiled: 8 * 128 / 0.25 = 4096 tokens/s, 1.6x eager; numba 1.25x the compiled step
    assert "| tiny | encdec | torch_compile (compile 42 s) | 250 (250) | 4096 |" in md
    assert "| 1.60x |" in md
    assert "over PyTorch with torch.compile, tiny encdec: 1.25x" in md
    assert "| tiny | encdec | torch_compile (compile 12 s) | 1 | 32 | 2.00x |" in md


def test_quick_leaves_torch_compile_out_unless_asked(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(bench, "_spawn", lambda spec, *a, **k: seen.append(spec) or
                        {"error": "faked"})
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)
    monkeypatch.setattr(bench, "_have_torch", lambda: True)
    bench.run(_args("--quick", "--no-startup", "--out", str(tmp_path / "a.md")))
    assert {s.get("engine") for s in seen if "engine" in s} == {"numpy", "numba", "torch"}
    seen.clear()
    bench.run(_args("--quick", "--no-startup", "--engines", "torch_compile",
                    "--out", str(tmp_path / "b.md")))
    assert {s.get("engine") for s in seen if "engine" in s} == {"torch_compile"}


def test_bad_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="--engines"):
        bench.run(_args("--engines", "jax", "--no-startup"))


def test_matmul_peak_is_a_positive_rate():
    assert bench.matmul_peak(n=64, repeats=1) > 0


# --- --contended -----------------------------------------------------------------------------------

def _fake_result(ms, **extra):
    return dict({"times": [ms / 1e3] * 3, "peak_rss": 100.0, "step_mem": 10.0, "wall": 1.0,
                 "others_cpu": 0.01}, **extra)


def test_contended_runs_each_load_and_one_thread_and_reports_the_ratios(monkeypatch, tmp_path,
                                                                         capsys):
    """The orchestration and the table, with the processes faked: numba is measured quiet,
    beside a busy loop and beside a copy of itself, each also with one thread."""
    spawned, competitors = [], []

    class FakeCompetitor:
        def __init__(self, kind, spec=None, env_extra=None, timeout=0):
            competitors.append((kind, spec, dict(env_extra or {})))

        def cpu_seconds(self):
            return 0.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    slow = {"busy": 150, "copy": 180, "busy/1": 170, "copy/1": 160}

    def fake_spawn(spec, timeout, env_extra=None, competitor=None):
        spawned.append((spec["kind"], competitor is not None, dict(env_extra or {})))
        if spec["kind"] == "generate":
            return {"times": [1.0], "new_tokens": 8, "peak_rss": 1.0, "step_mem": 0.0,
                    "tokens": [[1]]}
        if competitor is None:
            return _fake_result(100, threads={"setting": "auto", "cap": 2, "cpus": 2,
                                              "adaptive": True, "numba": "omp",
                                              "blas": "openblas", "omp_wait_policy": "PASSIVE"})
        kind, _, env = competitors[-1]
        return _fake_result(slow[kind + ("/1" if env else "")])

    monkeypatch.setattr(bench, "_spawn", fake_spawn)
    monkeypatch.setattr(bench, "Competitor", FakeCompetitor)
    monkeypatch.setattr(bench, "matmul_peak", lambda: 100e9)
    out = tmp_path / "bench.md"
    assert bench.run(_args("--quick", "--engines", "numba", "--contended", "--no-startup",
                           "--out", str(out))) == 0
    assert [c[0] for c in competitors] == ["busy", "busy", "copy", "copy"]
    assert all(c[1]["kind"] == "train" and not c[1]["profile"] for c in competitors)
    assert [c[2] for c in competitors] == [{}, {"MINI_ENCDEC_THREADS": "1"}] * 2
    md = out.read_text()
    assert "busy loop ms (x quiet) | 2nd copy ms (x quiet) |" in md
    assert "| 150 (1.50x; 1 thread 1.70x) | 180 (1.80x; 1 thread 1.60x) |" in md
    assert "MINI_ENCDEC_THREADS=auto, cap 2 of 2 CPUs, adapting to the load" in md
    assert ("no cliff, tiny decoder: beside a busy loop 1.50x, beside a second copy 1.80x the "
            "quiet median step (<= 2.5x: met); one thread under the same loads 1.70x, 1.60x "
            "(not slower than one thread, within 5%: missed beside the copy)") in md
    assert "Other processes' CPU use during the quiet measurements: mean 0.01" in md


def test_contended_columns_only_when_asked():
    machine = {"cpu": "C", "cores": 2, "memory_gib": 1.0, "python": "3", "numpy": "2",
               "blas": "b", "numba": "n", "load_average": (0, 0, 0)}
    train = {("tiny", "decoder", "numba"): dict(_fake_result(100), flops=1e9)}
    md = bench.render(machine, 1e9, dict(B=8, T=128, steps=3, P=1, N=1), ["tiny"], ["decoder"],
                      ["numba"], [], train, {}, None, {})
    assert "busy loop" not in md and "no cliff" not in md


def test_busy_competitor_runs_in_its_own_session_until_stopped():
    import os
    import time
    with bench.Competitor("busy") as comp:
        pid = comp.proc.pid
        assert os.getsid(pid) == pid != os.getsid(0)  # its own session, like another terminal
        time.sleep(0.3)
        assert comp.proc.poll() is None and comp.cpu_seconds() >= 0
    assert comp.proc.returncode is not None  # killed and reaped
    with pytest.raises(ValueError, match="expected one of"):
        bench.Competitor("fork-bomb")


@pytest.mark.slow
def test_quick_contended_run_end_to_end(tmp_path):
    """A real tiny run: quiet, beside a busy loop and beside a copy (and with one thread)."""
    out = tmp_path / "bench.md"
    assert bench.run(_args("--quick", "--engines", "numba", "--contended", "--no-startup",
                           "--out", str(out))) == 0
    md = out.read_text()
    assert "error" not in md and "no cliff, tiny decoder" in md


def test_decode_steps_reports_prefill_steps_and_the_bytes_a_step_reads():
    """The worker's measurement of one decoding step (what the 'What limits a decoding
    step' table is made of), on a tiny model: the bytes are the decoder's weights read per
    step (not the encoder's, not the cross-attention keys/values projected once) plus the
    KV cache."""
    from mini_encdec.models.decoding import step_weight_bytes
    model = bench_workers.bench_model("tiny", "encdec")
    prompts = bench_workers.bench_prompts(model.config, "encdec", 2, 5)
    r = bench_workers.decode_steps(model, prompts, 4)
    assert r["prefill"] > 0 and r["decode_step"] > 0
    weights = step_weight_bytes(model)
    decoder = sum(w.nbytes for k, w in model.params.items() if "decoder" in k)
    cross_kv = sum(w.nbytes for k, w in model.params.items()
                   if "cross_attn.k_proj" in k or "cross_attn.v_proj" in k)
    assert weights == decoder - cross_kv
    assert r["step_bytes"] > weights  # + the cached keys and values


# --- --study-profile ------------------------------------------------------------------------------

def test_study_profile_is_an_option_and_its_worker_is_bench_study():
    assert _args("--study-profile").study_profile and not _args().study_profile
    assert "bench_study" in bench._worker_command({"kind": "study"})[-2]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=requires_twins)])
@pytest.mark.parametrize("path", ["fused", "unfused"])
def test_step_shares_put_the_output_layer_matmuls_and_attention_in_their_rows(path, backend):
    """The categories of the study profile from a real cProfile of a small model's step:
    the fused op (or, on the path through the logits, the model's own output-layer
    products) is 'output layer + loss', the projections 'other matmuls', ops' attention
    core its own row; the rows add up to the total."""
    import cProfile
    import pstats

    from mini_encdec.config import preset
    from mini_encdec.experiments import bench_study
    from mini_encdec.models import build_model
    model = build_model(preset("tiny", vocab_size=512, hidden_size=32, intermediate_size=64,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    ids = np.random.default_rng(0).integers(3, 512, (2, 17))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:].copy()}

    def step():
        if path == "fused":
            return model.loss_and_grads(batch)
        from mini_encdec.nn.loss import cross_entropy_backward, cross_entropy_forward
        logits, cache = model.forward(batch, return_cache=True)
        _, c = cross_entropy_forward(logits, batch["labels"])
        return model.backward(cross_entropy_backward(1.0, c), cache)

    from mini_encdec.backend import use_backend
    with use_backend(backend):
        step()
        prof = cProfile.Profile()
        prof.runcall(step)
    shares = bench_study.step_shares(pstats.Stats(prof))
    for row in bench_study.CATEGORIES:
        assert shares[row] > 0, row
    assert sum(shares[row] for row in bench_study.CATEGORIES) == pytest.approx(shares["total"])


def test_study_profile_report():
    from mini_encdec.experiments import bench_study
    row = {"label": "enc-dec PrefixLM 64+64", "B": 16, "cpu": [0.2, 0.3, 0.25],
           "wall": [0.4], "flops": 12e9,
           "shares": {"output layer + loss": 0.5, "other matmuls": 0.25, "attention core": 0.125,
                      "everything else": 0.125, "total": 1.0}}
    machine = {"cpu": "Test CPU", "cores": 2, "numpy": "2", "blas": "openblas", "numba": "0.6",
               "load_average": (1.0, 2.0, 3.0)}
    md = bench_study.render({"peak": 100e9, "peaks": [90e9, 100e9], "rows": [row]}, machine)
    # 12 GFLOP in 0.2 s = 60 GFLOP/s = 60% of 100
    assert "| enc-dec PrefixLM 64+64, B=16 | 200 / 250 | 400 | 12.00 | 60% | 50% | 25% | 12% " \
           "| 12% |" in md
    assert "90.0 and 100.0" in md and "**100.0 GFLOP/s**" in md


def test_study_profile_kd_step_runs_with_the_batchers_teacher_alignment():
    """The ed_kd row: a PrefixLM + distillation step on a small batch (the teacher keys
    made by text/batching.py's teacher_fields), its FLOPs the student's step plus the
    teacher's forward."""
    from mini_encdec.config import encdec_preset
    from mini_encdec.experiments import bench_study
    from mini_encdec.models.flops import train_step_flops
    r = bench_study._one_step("kd", "encdec+kd", 2, 8, 6, steps=1, profile_steps=1)
    assert r["kd"] and len(r["cpu"]) == 1 and r["shares"]["output layer + loss"] > 0
    assert r["flops"] > train_step_flops(encdec_preset("tiny"), 2, 8, 6)
    src = np.arange(12).reshape(2, 6)
    tgt = np.arange(16).reshape(2, 8) + 100
    kd = bench_study._kd_batch({"input_ids": src, "labels": tgt}, 6, 8)
    assert (kd["teacher_input_ids"] == np.concatenate([src, tgt], 1)).all()
    assert (kd["teacher_positions"] == 5 + np.arange(8)).all()  # S + j - 1


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_study_profile_probe_step_runs_and_counts_the_stack_it_reads(arch):
    """The representation probe's row: the classifier's step (no output layer), its
    FLOPs 3 x the forward of the stack it reads (the encoder, for an encoder-decoder)."""
    from mini_encdec.config import encdec_preset, preset
    from mini_encdec.experiments import bench_study
    from mini_encdec.models.flops import stack_forward_flops
    r = bench_study._one_step("probe", f"probe-{arch}", 2, 8, None, steps=1, profile_steps=1)
    assert r["probe"] and not r["kd"] and len(r["cpu"]) == 1
    assert r["shares"]["output layer + loss"] == 0 and r["shares"]["other matmuls"] > 0
    stack = preset("tiny") if arch == "decoder" else encdec_preset("tiny").encoder
    assert r["flops"] == 3 * 2 * stack_forward_flops(stack, 8, causal=arch == "decoder")


def test_decode_limits_show_the_step_against_its_floor_and_its_cpu_split():
    """The step as a % of the bandwidth floor, and its CPU time split into the matrix
    products and the rest."""
    from mini_encdec.experiments.bench_report import _decode_limits
    gen = {("tiny", "decoder", "numba", 8): {"times": [1.0], "new_tokens": 64, "prefill": 0.01,
                                             "decode_step": 0.002, "step_bytes": 20e6,
                                             "decode_step_cpu": 0.004, "matmuls_cpu": 0.003}}
    lines = _decode_limits(["tiny"], ["decoder"], [8], gen,
                           {"one": 20e9, "all": 40e9, "threads": 2})
    # floor 1 ms (one thread): the 2 ms step is 200% of it; 3 of its 4 CPU ms are matmuls
    assert "| tiny | decoder | 8 | 10.0 | 2.00 | 20.0 | 1.00 / 0.50 | 50% | 200% | 4.00 " \
           "| 3.00 | 25% |" in lines
