"""The benchmark's report and plumbing (the measurements themselves are not run here:
speed is never asserted in tests; `python -m mini_encdec bench --quick` is the smoke run)."""

import argparse

import pytest

from mini_encdec.experiments import bench


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
                                              "peak_rss": 1.0, "tokens": [[5, 6]]},
           ("small", "decoder", "torch", 1): {"times": [4.0], "new_tokens": 64,
                                              "peak_rss": 1.0, "tokens": [[5, 6]]}}
    startup = [{"wall": 20.0, "in_process": 19.0}, {"wall": 2.0, "in_process": 1.0}]
    md = bench.render(machine, peak, dict(B=8, T=128, steps=2, P=128, N=64), ["small"],
                      ["decoder"], ["numpy", "numba", "torch"], [1], train, gen, startup, {})
    assert "Test CPU" in md and "100.0 GFLOP/s" in md
    # 8 * 128 tokens in 0.2 s; 12 GFLOP in 0.2 s = 60 GFLOP/s = 60% of the peak; 2x torch
    assert "| small | decoder | numba | 200 (250) | 5120 | 60.0 | 60% | 2.00x |" in md
    assert "error: boom" in md
    assert "| small | decoder | numba | 1 | 64 | 4.00x | yes |" in md
    assert "numba training tokens/s >= PyTorch's, small decoder: 2.00x (met)" in md
    assert ">= 50% of the matmul peak on small decoder: 60% (met)" in md
    assert "cold (empty compile cache) | 20.0" in md


def test_bad_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="--engines"):
        bench.run(_args("--engines", "jax", "--no-startup"))


def test_matmul_peak_is_a_positive_rate():
    assert bench.matmul_peak(n=64, repeats=1) > 0
