"""kernels/allocator.py: with the numba backend and the process's opt-in
(ops.tune_process, which the command line calls), freed memory is kept for the next step
(no fresh zero-filled pages for arrays of the same size); without the opt-in, and with
MINI_ENCDEC_MALLOC=system or glibc's own variables, the allocator is left alone; a bad
value is a clear error."""

import os
import subprocess
import sys

import pytest

from mini_encdec.kernels import allocator

# Three "steps", each allocating two 4 MiB arrays and freeing them; prints the minor page
# faults of the last step (a fresh page costs one, on its first touch) and describe().
PROBE = """
import resource, sys
import numpy as np
from mini_encdec import ops
if sys.argv[1] == "opt-in":
    ops.tune_process()
ops.twins()
from mini_encdec.kernels import allocator
for step in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a, b = np.ones(2 ** 20, dtype=np.float32), np.ones(2 ** 20, dtype=np.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del a, b
print(faults)
print(allocator.describe())
"""


def _probe(opt_in=True, **env):
    environ = {k: v for k, v in os.environ.items()
               if k != allocator.ENV and k not in allocator.GLIBC_ENV}
    out = subprocess.run([sys.executable, "-c", PROBE, "opt-in" if opt_in else "library"],
                         env=dict(environ, **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    faults, state = out.stdout.splitlines()
    return int(faults), state


glibc = pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")


@glibc
def test_freed_memory_is_reused_without_page_faults():
    faults, state = _probe()
    assert "'applied': True" in state
    assert faults < 50  # the memory of the step before, reused


@glibc
def test_the_library_alone_leaves_the_allocator_alone():
    """Without the opt-in (a program using the Python API) nothing is set."""
    faults, state = _probe(opt_in=False)
    assert "'applied': False" in state and "not yet applied" in state
    assert faults > 0


@glibc
@pytest.mark.parametrize("env", [{"MINI_ENCDEC_MALLOC": "system"},
                                 {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}])
def test_system_setting_and_glibc_variables_leave_the_allocator_alone(env):
    faults, state = _probe(**env)
    assert "'applied': False" in state
    # fresh pages every step (measured here: ~1000 faults; with transparent huge pages
    # always on, a few, one per 2 MiB page)
    assert faults > 0


def test_bad_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="MINI_ENCDEC_MALLOC='often'.*keep, system"):
        allocator._setting({"MINI_ENCDEC_MALLOC": "often"})
    assert allocator._setting({}) == "keep"
    assert allocator._setting({"MINI_ENCDEC_MALLOC": " System "}) == "system"
