"""The one backend switch: MINI_ENCDEC_BACKEND and set_backend select the Numba twins or
the NumPy references, and importing the package compiles nothing."""

import os
import subprocess
import sys

import pytest

import mini_encdec
from mini_encdec import ops
from mini_encdec.backend import get_backend, set_backend, use_backend
from mini_encdec.kernels import TWINS

_PROBE = """
import sys, mini_encdec
from mini_encdec import ops
from mini_encdec.kernels import TWINS
fn = ops.resolve("attention_core_forward")
print(mini_encdec.get_backend(), fn is TWINS["attention_core_forward"],
      fn is ops._load(ops.REFERENCE["attention_core_forward"]))
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
            # the layer references live in nn/; AdamW's update in optim.py
            assert reference.__module__.startswith(("mini_encdec.nn.", "mini_encdec.training.optim"))
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
