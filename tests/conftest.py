"""Shared pytest set-up: the hypothesis profiles and the backend fixture.

Deterministic by default. `python -m pytest` runs under the hypothesis profile
"default": derandomize=True (each test's examples derive from the test's own code, so
every run draws the same ones), database=None (no replaying of failures saved in
.hypothesis/ by earlier runs), deadline=None (the first call of a Numba kernel
compiles), print_blob=True. The tests draw their numpy arrays from Generators seeded by
a hypothesis-drawn or a literal seed, never from numpy's global random state, so a run
is fixed end to end: it passes or fails the same way every time.

Seed hunting. The fixed examples are a sample; to look for failures they miss, run the
suite with a hypothesis seed:

    MINI_ENCDEC_HYPOTHESIS_SEED=7 python -m pytest     # or: python -m pytest --hypothesis-seed=7

Either selects the profile "hunt": examples drawn at random from seed 7 (each hypothesis
test starts from that seed), no database, and HUNT_EXAMPLES examples for the tests that
do not fix their own count. The header line "hypothesis: seed-hunting, seed 7" says so.
A run with a given seed is reproducible: a failure prints its example and a
`@reproduce_failure` blob, and the same command reproduces it. Many seeds:

    for s in $(seq 1 20); do
        MINI_ENCDEC_HYPOTHESIS_SEED=$s python -m pytest -q || echo "seed $s failed"
    done

(To save time, pass only the files that use hypothesis: `grep -l "given(" tests/*.py`.)

A failure found this way is fixed at its root (a bug, or an error measure that does not
fit the quantity, see mini_encdec.nn.gradcheck.rel_error), then pinned with
`@example(...)` so the default run keeps checking it.

This checkout's package. The tests import the `mini_encdec` next to this directory,
never another copy: this file puts the checkout first on sys.path and on PYTHONPATH (for
the tests' subprocesses) before the first import, and refuses to run if the package still
comes from elsewhere. (An editable install of another checkout, `pip install -e`, is
found by an import hook that would otherwise also serve any module missing here.)

Student copies. A copy made by tutorials/assignments/blank.py (it has a STUDENT_COPY.json)
leaves out the Numba twins (an answer key) unless made with --keep-kernels, so the numba
backend cannot run there: the tests then run the NumPy reference only (the `backend`
fixture skips its numba half, MINI_ENCDEC_BACKEND=numpy for subprocesses), and the
header says so.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

ROOT = Path(__file__).resolve().parent.parent
if sys.path[0] != str(ROOT):
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

import mini_encdec  # noqa: E402

if Path(mini_encdec.__file__).resolve().parent != ROOT / "mini_encdec":
    raise pytest.UsageError(
        f"the tests in {ROOT / 'tests'} must test the package in {ROOT / 'mini_encdec'}, but "
        f"`import mini_encdec` gives {Path(mini_encdec.__file__).parent} (imported before "
        f"this conftest, e.g. by a plugin); run `python -m pytest` from {ROOT}")

from mini_encdec.backend import BACKENDS, set_backend, use_backend  # noqa: E402

# The student-copy marker written by tutorials/assignments/blank.py, or None.
STUDENT_COPY_FILE = ROOT / "STUDENT_COPY.json"
STUDENT_COPY = (json.loads(STUDENT_COPY_FILE.read_text(encoding="utf-8"))
                if STUDENT_COPY_FILE.exists() else None)
# False in a student copy without the Numba twins (see the module docstring).
KERNELS_SHIPPED = STUDENT_COPY is None or STUDENT_COPY["kernels"] == "all"
if not KERNELS_SHIPPED:
    set_backend("numpy")
    os.environ["MINI_ENCDEC_BACKEND"] = "numpy"
# For tests that call the Numba twins themselves (not through the `backend` fixture).
requires_twins = pytest.mark.skipif(not KERNELS_SHIPPED, reason="the Numba twins are left "
                                    "out of this copy: the numba backend cannot run")

SEED_ENV = "MINI_ENCDEC_HYPOTHESIS_SEED"
DEFAULT_EXAMPLES = 25
HUNT_EXAMPLES = 50

_COMMON = dict(database=None, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("default", derandomize=True, max_examples=DEFAULT_EXAMPLES,
                          **_COMMON)
settings.register_profile("hunt", derandomize=False, max_examples=HUNT_EXAMPLES, **_COMMON)
# Student copies: the default run with the report cut to what helps a student, the
# minimal example and the error: no `@reproduce_failure` blob, no explain phase (its
# "The test always failed when commented parts were varied together" and "Explanation"
# lines that point into numpy).
settings.register_profile("student", derandomize=True, max_examples=DEFAULT_EXAMPLES,
                          **dict(_COMMON, print_blob=False),
                          phases=[p for p in Phase if p is not Phase.explain])
settings.load_profile("default" if STUDENT_COPY is None else "student")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """A seed (--hypothesis-seed, or $MINI_ENCDEC_HYPOTHESIS_SEED) selects the profile
    "hunt"; runs before the hypothesis plugin's own pytest_configure, which then loads
    that profile and applies the seed."""
    if STUDENT_COPY is not None:
        _student_report_options(config)
    seed = config.getoption("hypothesis_seed")
    env = os.environ.get(SEED_ENV, "").strip()
    if seed is None and env:
        try:
            int(env)
        except ValueError:
            raise pytest.UsageError(f"{SEED_ENV}: expected an integer seed, got {env!r}")
        config.option.hypothesis_seed = seed = env
    if seed is None:
        return
    profile = config.getoption("hypothesis_profile")
    if profile is None:
        config.option.hypothesis_profile = "hunt"
    elif settings.get_profile(profile).derandomize:
        raise pytest.UsageError(f"--hypothesis-seed={seed}: the profile {profile!r} is "
                                "derandomized and would ignore the seed; use "
                                "--hypothesis-profile=hunt (or leave it out)")


def _student_report_options(config):
    """In a student copy: no line per skipped test (one summary line instead, see
    pytest_terminal_summary) and short tracebacks (the failing line of each frame and the
    error), unless the command line asks for something else."""
    asked = any(a.startswith("-r") and not a.startswith("-rootdir")
                for a in config.invocation_params.args)
    if not asked:  # the configuration's -ra: everything but the skips
        chars = config.option.reportchars or ""
        config.option.reportchars = chars.replace("s", "").replace("S", "").replace("a", "fEX")
    if config.option.tbstyle == "auto":
        config.option.tbstyle = "short"


TASK_MARK = re.compile(r"^task(\d+)_(\d+)$")


def _property(item) -> str:
    """The property a test checks, in one sentence: its docstring's first sentence, or
    its name in words (after a bare op name, the module docstring's first sentence when
    it is short; a long one would bury the report)."""
    def first_sentence(text):
        paragraph = (text or "").strip().split("\n\n")[0]  # never more than one paragraph
        text = " ".join(paragraph.split())
        return text.split(". ")[0].rstrip(".") + "." if text else ""
    doc = first_sentence(getattr(item.function, "__doc__", None))
    if doc:
        return doc
    words = item.originalname.removeprefix("test_").replace("_", " ")
    if len(words.split()) <= 2:  # a bare op name: the module says what is checked
        module = first_sentence(getattr(item.module, "__doc__", None))
        return f"{words}: {module}" if module and len(module) <= MODULE_PROPERTY_CHARS \
            else words + "."
    return words + "."


MODULE_PROPERTY_CHARS = 160


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In a student copy, a failing test's report starts with the task, its functions and
    the property checked, before the counterexample and the error."""
    outcome = yield
    rep = outcome.get_result()
    if STUDENT_COPY is None or not rep.failed or call.when != "call":
        return
    tasks = [m.name for m in item.iter_markers() if TASK_MARK.match(m.name)]
    functions = STUDENT_COPY.get("functions", {})
    names = ", ".join(sorted({f for t in tasks for f in functions.get(t, [])}))
    task = " / ".join(t[4:].replace("_", ".") for t in tasks) or "-"
    head = (f"TASK {task}" + (f" ({names})" if names else "") + f": {item.originalname}\n"
            f"PROPERTY: {_property(item)}\n")
    rep.longrepr = head + rep.longreprtext


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """In a student copy, one line for all skipped tests."""
    skipped = terminalreporter.stats.get("skipped", [])
    if STUDENT_COPY is not None and skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped: they need parts this copy leaves out (the Numba "
            f"twins, torch) or a task it does not assign; `-rs` lists them")


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed")
    if seed is None:
        profile = settings.get_current_profile_name()
        lines = [f"hypothesis: deterministic (profile {profile!r}, derandomized, no database)"]
    else:
        lines = [f"hypothesis: seed-hunting, seed {seed} (profile "
                 f"{settings.get_current_profile_name()!r})"]
    if STUDENT_COPY is not None:
        blanked = ", ".join(STUDENT_COPY["tasks"]) or "none"
        lines.append(f"student copy (STUDENT_COPY.json), blanked tasks: {blanked}")
    if not KERNELS_SHIPPED:
        lines.append("backend: numpy only (the Numba twins are left out of this copy)")
    return lines


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per backend (numpy reference and numba kernels)."""
    if request.param == "numba" and not KERNELS_SHIPPED:
        pytest.skip("the Numba twins are left out of this copy: the numba backend cannot run")
    with use_backend(request.param):
        yield request.param


# --- running the command line (test_cli.py, test_faults.py) ---------------------------------------

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv):
    """main(argv) on the numpy backend; returns the exit status (SystemExit included)."""
    from mini_encdec.cli import main  # the whole command line: only for the tests using it
    with use_backend("numpy"):
        try:
            return main([str(a) for a in argv])
        except SystemExit as e:
            return e.code


def cli_env(**extra):
    """The environment of a command-line subprocess: numpy backend, one BLAS thread, this
    checkout first on the path."""
    return dict(os.environ, MINI_ENCDEC_BACKEND="numpy", OPENBLAS_NUM_THREADS="1",
                OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
