"""The one backend switch: MINI_ENCDEC_BACKEND and set_backend select the Numba twins or
the NumPy references, and importing the package compiles nothing."""

import os
import subprocess
import sys

import pytest

import mini_encdec
from mini_encdec import ops
from mini_encdec.backend import get_backend, set_backend, use_backend

TWINS = ops.twins()

_PROBE = """
import sys, mini_encdec
from mini_encdec import ops
fn = ops.resolve("attention_core_forward")
print(mini_encdec.get_backend(), fn is ops.twins()["attention_core_forward"],
      fn is ops.REFERENCE["attention_core_forward"])
"""


def _run(code, backend_env):
    env = dict(os.environ)
    env.pop("MINI_ENCDEC_BACKEND", None)
    if backend_env is not None:
        env["MINI_ENCDEC_BACKEND"] = backend_env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("env_value, expected", [
    (None, "numba True False"),  # the default
    ("numba", "numba True False"),
    ("NumPy", "numpy False True"),
])
def test_environment_variable_selects_the_backend(env_value, expected):
    out = _run(_PROBE, env_value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == expected.split()


def test_bad_environment_value_is_a_clear_error():
    out = _run("import mini_encdec", "cuda")
    assert out.returncode != 0
    assert "ValueError" in out.stderr and "MINI_ENCDEC_BACKEND" in out.stderr


def test_set_backend_and_use_backend_select_twins_or_references():
    previous = get_backend()
    try:
        for name, twin in TWINS.items():
            set_backend("numba")
            assert ops.resolve(name) is twin
            set_backend("numpy")
            reference = ops.resolve(name)
            assert reference is not twin
            # every reference lives in nn/, every twin in kernels/
            assert reference.__module__.startswith("mini_encdec.nn.")
            assert twin.__module__.startswith("mini_encdec.kernels.")
        with use_backend("numba"):
            assert mini_encdec.get_backend() == "numba"
            assert ops.resolve("rmsnorm_forward") is TWINS["rmsnorm_forward"]
        assert get_backend() == "numpy"
    finally:
        set_backend(previous)
    with pytest.raises(ValueError, match="set_backend"):
        set_backend("jax")


def test_the_backend_fixture_switches_dispatch(backend):
    """ops.<name>(...) calls go to the function of the backend in force."""
    import numpy as np
    x = np.ones((2, 3), np.float32)
    w = np.zeros(3, np.float32)
    y, cache = ops.rmsnorm_forward(x, w)
    np.testing.assert_allclose(y, np.ones((2, 3)), rtol=1e-6)
    # the two backends keep different caches: the twin keeps rstd, not xhat
    assert ("xhat" in cache) == (backend == "numpy")


def test_importing_compiles_nothing_until_an_op_runs():
    code = """
import sys, mini_encdec, mini_encdec.models, mini_encdec.nn
print("kernels imported:", "mini_encdec.kernels" in sys.modules)
from mini_encdec.kernels import attention, embedding, loss, mlp, rmsnorm
from numba.core.registry import CPUDispatcher
kernels = [getattr(m, n) for m in (attention, embedding, loss, mlp, rmsnorm) for n in dir(m)
           if isinstance(getattr(m, n), CPUDispatcher)]
print("kernels:", len(kernels), "compiled:", sum(len(k.signatures) for k in kernels))
"""
    out = _run(code, None)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "kernels imported: False"
    n = int(lines[1].split()[1])
    assert n >= 9 and lines[1].endswith("compiled: 0")


_BROKEN_KERNELS = """
import sys, types
sys.modules["numba"] = None  # as if Numba were not installed
from mini_encdec import ops
try:
    ops.resolve("rmsnorm_forward", "numba")
except ops.KernelImportError as e:
    print("loud:", e)
else:
    print("silent fallback")
print(ops.resolve("rmsnorm_forward", "numpy") is ops.REFERENCE["rmsnorm_forward"])
"""


def test_a_kernel_import_failure_is_loud_never_a_silent_fallback():
    out = _run(_BROKEN_KERNELS, "numpy")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().split("\n")
    assert first.startswith("loud:") and "MINI_ENCDEC_BACKEND=numpy" in first
    assert second == "True"  # the numpy backend never needs the kernels


def test_a_missing_twin_is_loud(monkeypatch):
    import mini_encdec.kernels as kernels
    monkeypatch.delattr(kernels, "rmsnorm_backward")
    monkeypatch.setattr(ops, "_twins", {})  # forget the twins already looked up
    with pytest.raises(ops.KernelImportError, match="no twin for \\['rmsnorm_backward'\\]"):
        ops.resolve("rmsnorm_forward", "numba")
