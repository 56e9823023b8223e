"""The benchmark's report and plumbing (the measurements themselves are not run here:
speed is never asserted in tests; `python -m mini_encdec bench --quick` is the smoke run)."""

import argparse

import pytest

from mini_encdec.experiments import bench, bench_workers


def _args(*argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_cover_both_presets_architectures_and_engines():
    a = _args()
    assert a.presets == "tiny,small" and a.archs == "decoder,encdec"
    assert a.engines == "numpy,numba,torch"
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
