"""The thread policy of the numba backend (mini_encdec/kernels/threads.py): its settings and
overrides, the load measurement on a made-up /proc/stat, the hysteresis, and the promise
that results do not depend on how many threads the load leaves us. No timing here."""

import math
import os
import platform
import subprocess
import sys

import numba
import numpy as np
import pytest

from mini_encdec.kernels import _runtime, threads


def test_setting_parses_auto_and_counts():
    assert threads._parse(None) == threads._parse("") == threads._parse(" Auto ") == "auto"
    assert threads._parse("3") == 3
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="MINI_ENCDEC_THREADS"):
            threads._parse(bad)


def test_fixed_setting_is_not_adaptive_and_caps_the_chunks():
    one = threads.Policy(environ={"MINI_ENCDEC_THREADS": "1"})
    assert one.cap == 1 and not one.adaptive and one._meter is None
    auto = threads.Policy(environ={})
    assert auto.setting == "auto"
    assert auto.cap == min(threads.available_cpus(), numba.config.NUMBA_NUM_THREADS)
    assert auto.adaptive == (auto.cap > 1)


def test_pools_whose_own_variable_is_set_are_left_alone():
    p = threads.Policy(environ={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert not p.numba_managed and not p.blas_managed
    p = threads.Policy(environ={"OMP_NUM_THREADS": "2"})
    assert p.numba_managed and not p.blas_managed
    # an explicit set_threads() call manages both
    p = threads.Policy(setting=2, environ={"OPENBLAS_NUM_THREADS": "1"})
    assert p.numba_managed and p.blas_managed


def test_wait_policy_is_set_only_on_opt_in_and_never_over_the_users():
    """OMP_WAIT_POLICY is the host's variable: set_wait_policy (the opt-in's, called by
    ops.tune_process) sets PASSIVE only where the user did not choose."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, mini_encdec.kernels as k; before = os.environ.get('OMP_WAIT_POLICY'); "
            "k.threads.set_wait_policy(); print(before, os.environ.get('OMP_WAIT_POLICY'))")
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["None", "PASSIVE"], out.stderr
    out = subprocess.run(run, env=dict(env, OMP_WAIT_POLICY="ACTIVE"), capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["ACTIVE", "ACTIVE"], out.stderr


def _stat(busy0, busy1, idle0=1000, idle1=1000):
    """A /proc/stat with two CPUs whose user time is busy0, busy1 ticks (1/100 s)."""
    return (f"cpu  {busy0 + busy1} 0 0 {idle0 + idle1} 0 0 0 0 0 0\n"
            f"cpu0 {busy0} 0 0 {idle0} 0 0 0 0 0 0\n"
            f"cpu1 {busy1} 0 0 {idle1} 0 0 0 0 0 0\n"
            "intr 12345\n")


def test_load_meter_subtracts_our_own_cpu_time(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    stat = tmp_path / "stat"
    own = [0.0]
    stat.write_text(_stat(0, 0))
    meter = threads.LoadMeter(cpus={0, 1}, stat_path=str(stat), own_cpu=lambda: own[0])
    assert meter.works
    assert meter.sample(now=10.0) is None  # no history yet
    # 0.5 s later: both CPUs busy the whole time (100 ticks), 0.5 CPU-s of it ours
    stat.write_text(_stat(50, 50))
    own[0] = 0.5
    assert meter.sample(now=10.5) == pytest.approx((1.0 - 0.5) / 0.5)  # one CPU of others
    # a CPU outside our affinity mask is not counted
    only0 = threads.LoadMeter(cpus={0}, stat_path=str(stat), own_cpu=lambda: 0.0)
    stat.write_text(_stat(50, 0))
    only0.sample(now=0.0)
    stat.write_text(_stat(50, 90))
    assert only0.sample(now=1.0) == pytest.approx(0.0)


def test_load_meter_without_proc_stat_reports_nothing(tmp_path):
    meter = threads.LoadMeter(cpus={0, 1}, stat_path=str(tmp_path / "missing"))
    assert not meter.works and meter.sample() is None


def test_thread_count_follows_the_free_cpus_with_hysteresis():
    choose = threads._choose
    assert choose(2, cap=2, cpus=2, others=0.0) == 2
    assert choose(2, cap=2, cpus=2, others=1.0) == 1  # a busy loop
    assert choose(2, cap=2, cpus=2, others=2.0) == 1  # never below one
    assert choose(2, cap=2, cpus=2, others=0.5) == 1  # half a CPU taken: drop
    assert choose(2, cap=2, cpus=2, others=0.2) == 2  # background noise: keep
    assert choose(1, cap=2, cpus=2, others=0.2) == 1  # ... but do not come back yet
    assert choose(1, cap=2, cpus=2, others=0.05) == 2
    assert choose(8, cap=8, cpus=8, others=3.0) == 5
    assert choose(4, cap=4, cpus=8, others=3.0) == 4  # the cap bounds it


def test_chunks_come_from_the_cap_not_the_current_count(monkeypatch):
    policy = threads.Policy(setting=4)
    policy._current, policy._next = 1, math.inf  # as if the load left one thread
    monkeypatch.setattr(threads, "POLICY", policy)
    big = _runtime.SERIAL_WORK
    assert _runtime.parallel_chunks(big, 1000) == 2 * policy.cap
    assert _runtime.parallel_chunks(big - 1, 1000) == 0  # small work stays serial


def test_a_count_set_from_outside_is_respected():
    policy = threads.Policy(setting=2)
    policy.start()
    policy._next = 0.0
    policy.current()  # takes over Numba's count for this thread
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)  # the user's choice
        policy._apply(numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(previous)


@pytest.mark.skipif(threads.POLICY.cap < 2, reason="one CPU: nothing to vary")
@pytest.mark.parametrize("rows,length", [(8, 129), (16, 128), (8, 256)])
def test_gradients_do_not_depend_on_the_current_thread_count(rows, length):
    """The load changes how many threads run, never the bits: same loss and gradients
    with every thread count up to the cap (Numba and BLAS together). The shapes are the
    demo's and the study's (B*T = 2032 and 2040 rows: sums that OpenBLAS splits by thread
    on this machine's kernels)."""
    from mini_encdec.backend import use_backend
    from mini_encdec.config import preset
    from mini_encdec.models import build_model

    model = build_model(preset("tiny"), seed=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, model.config.vocab_size, (rows, length))  # big enough for the pools
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:].copy()}
    results = []
    policy = threads.POLICY
    saved = (policy._current, policy._next)
    try:
        with use_backend("numba"):
            policy.current()
            # other tests may have set the pools from outside; take them over again
            policy._applied_numba = numba.get_num_threads()
            if policy._blas is not None and policy._applied_blas is not None:
                policy._applied_blas = policy._blas.get()
            for n in (policy.cap, 1):
                policy._next = 0.0
                policy.current()
                policy._apply(n)
                policy._next = math.inf  # hold n for the step
                assert numba.get_num_threads() == n
                results.append(model.loss_and_grads(batch))
    finally:
        policy._apply(saved[0])
        policy._current, policy._next = saved[0], 0.0
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert loss_a == loss_b
    for k in grads_a:
        np.testing.assert_array_equal(grads_a[k], grads_b[k], err_msg=k)


class _FakeBlas:
    """A BLAS whose float32 products round differently on more than one thread."""

    def __init__(self, varies):
        self.n, self.varies = 2, varies

    def get(self):
        return self.n

    def set(self, n):
        self.n = n

    def describe(self):
        return "fake"


def test_blas_probe_restores_the_count_it_found():
    blas = threads._Blas()
    if blas.get() is None:
        pytest.skip("no BLAS that threadpoolctl can set")
    before = blas.get()
    threads.blas_varies(blas, [1, 2], np.float32)
    assert blas.get() == before


def test_a_count_dependent_blas_is_fixed_at_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "_Blas", lambda: _FakeBlas(varies=True))
    monkeypatch.setattr(threads, "blas_varies", lambda blas, counts, dtype: blas.varies)
    policy = threads.Policy(setting="auto", environ={})
    if not policy.adaptive:
        pytest.skip("one CPU: nothing adapts")
    policy.start()
    assert policy.blas_fixed == 1 and policy._blas.n == 1
    policy._apply(2)  # the load leaves two CPUs: Numba follows, BLAS does not
    assert policy._blas.n == 1
    assert "fixed at 1 thread" in policy.describe()["blas"]
    fixed = threads.Policy(setting=2, environ={})  # a fixed count: nothing to probe
    fixed.start()
    assert fixed.blas_fixed is None and fixed._blas.n == 2


@pytest.mark.skipif(threads.POLICY.cap < 2 or platform.machine() != "x86_64"
                    or "openblas" not in threads.describe()["blas"],
                    reason="needs OpenBLAS on an x86_64 machine with 2 CPUs")
@pytest.mark.parametrize("coretype", ["Haswell", "Zen"])
def test_thread_count_independence_holds_under_other_openblas_kernels(coretype):
    """OpenBLAS's Haswell and Zen kernels (AMD EPYC, older Intel CPUs) round float32
    products by thread share: the policy must notice and hold BLAS still there too."""
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype)
    test = f"{__file__}::test_gradients_do_not_depend_on_the_current_thread_count"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           test], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "3 passed" in done.stdout


def test_serial_runs_a_block_on_one_thread_and_restores_the_count(monkeypatch):
    """ops.serial (a decoding step) puts both managed pools at one thread and restores the
    count afterwards; the adaptive policy starts at one thread until it has measured."""
    from mini_encdec import ops
    from mini_encdec.backend import use_backend
    policy = threads.Policy(environ={})
    if policy.cap < 2:
        pytest.skip("one CPU: nothing to serialise")
    assert policy._current == (1 if policy._meter.works else policy.cap)
    policy._current = policy.cap
    monkeypatch.setattr(threads, "POLICY", policy)
    applied = []
    monkeypatch.setattr(policy, "_apply", lambda n: (applied.append(n),
                                                     setattr(policy, "_current", n)))
    with use_backend("numba"):
        with ops.serial():
            assert policy.current() == 1
    assert applied == [1, policy.cap] and policy._current == policy.cap
    # a step of many rows, or one reading weights too big for the cache, keeps the
    # threads the policy allows (measured: more bandwidth for the `small` decoder)
    # threads the policy allows after measuring the load (measured: more bandwidth for the
    # `small` decoder); the measurement is faked so the test does not depend on the load
    asked = []
    monkeypatch.setattr(policy, "current", lambda: asked.append(1) or policy._current)
    for big in (dict(rows=threads.SERIAL_ROWS), dict(rows=1, weight_bytes=threads.SERIAL_BYTES)):
        with use_backend("numba"), ops.serial(**big):
            assert policy._current == policy.cap
    assert applied == [1, policy.cap] and len(asked) == 2
    with use_backend("numpy"), ops.serial():  # no thread policy without the kernels
        assert applied == [1, policy.cap]


def test_available_cpus_is_the_affinity_mask_capped_by_a_cgroup_quota(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: math.inf)
    assert threads.available_cpus() == 4
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 1.5)  # cpu.max "150000 100000"
    assert threads.available_cpus() == 2
