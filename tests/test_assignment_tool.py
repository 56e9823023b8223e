"""The classroom assignment tooling (tutorials/assignments/): the task list, the pytest
markers and the blanking tool agree, and a student copy grades as the README says.

The grading tests themselves are the main suite's tests of each function, marked
task1_1 ... task4_1 (listed per task in tutorials/assignments/README.md).
"""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mini_encdec.nn import rmsnorm

ROOT = Path(__file__).resolve().parent.parent
BLANK = ROOT / "tutorials" / "assignments" / "blank.py"
MARK = re.compile(r"\bmark\.(task\d+_\d+)\b")


def load_blank_tool():
    spec = importlib.util.spec_from_file_location("assignments_blank", BLANK)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_task_has_functions_tests_and_a_registered_marker(pytestconfig):
    tool = load_blank_tool()
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = {}  # marker -> the test files that use it
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for task in MARK.findall(path.read_text(encoding="utf-8")):
            used.setdefault(task, set()).add(path.name)
    for task, (title, functions) in tool.TASKS.items():
        assert task in registered, f"marker {task} missing from pyproject.toml"
        assert task in used, f"no test carries the marker {task}"
        for module, name in functions:
            mod = importlib.import_module(module)
            assert callable(getattr(mod, name)), f"{module}.{name}"
    assert set(used) <= set(tool.TASKS), f"markers without a task: {set(used) - set(tool.TASKS)}"
    assert {m for m in registered if m.startswith("task")} == set(tool.TASKS)


def test_blanking_keeps_signature_and_docstring(tmp_path):
    tool = load_blank_tool()
    src = Path(rmsnorm.__file__).read_text(encoding="utf-8")
    out = tool.blank_source(src, ["rmsnorm_forward"], "task1_1")
    path = tmp_path / "student_rmsnorm.py"
    path.write_text(out.replace("from ..validate", "from mini_encdec.validate"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("student_rmsnorm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.rmsnorm_forward.__doc__ == rmsnorm.rmsnorm_forward.__doc__
    with pytest.raises(NotImplementedError, match="task1_1"):
        mod.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    # the other function of the module is untouched
    y, cache = rmsnorm.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    np.testing.assert_array_equal(mod.rmsnorm_backward(y, cache)[0],
                                  rmsnorm.rmsnorm_backward(y, cache)[0])


def test_student_copy_fails_exactly_the_blanked_task(tmp_path):
    """End to end, with the README's command: blank task 3.1 in a copy of the repository;
    `python -m pytest -m task3_1` fails there with NotImplementedError, while another
    task's grading passes."""
    tool = load_blank_tool()
    out = tmp_path / "student"
    done = tool.make_student_copy(out, ["task3_1"])
    assert {name for _, name in done} == {n for _, n in tool.TASKS["task3_1"][1]}
    assert not (out / "mini_encdec" / "kernels").exists()

    def grade(task):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-m", task], cwd=out, capture_output=True, text=True, timeout=600)

    blanked = grade("task3_1")
    assert blanked.returncode == 1, blanked.stdout[-2000:]  # tests failed (not a usage error)
    assert "NotImplementedError" in blanked.stdout
    assert " passed" not in blanked.stdout.splitlines()[-1]
    other = grade("task1_1")
    assert other.returncode == 0, other.stdout[-2000:]
