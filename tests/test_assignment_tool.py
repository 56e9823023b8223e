"""The classroom assignment tooling (tutorials/assignments/) and the autograder itself.

- The task list, the pytest markers and the blanking tool agree; blanking keeps the
  signature, the docstring and the input checks.
- A student copy grades as the README says, `python -m pytest -m <task>`: every test
  collects when every task is blanked (nothing calls a blanked function at import time),
  the copy imports its own package even when another checkout comes first on the path
  (an editable install of the original), and the left-out Numba twins fail loudly.
- End to end, by default for one task and under `-m slow` for every task: the blanked
  task fails with NotImplementedError, the restored one passes.
- The classic mistakes (tutorials/assignments/check_autograder.py MUTANTS): each, applied
  to a copy, makes its task's tests fail. Every mutant's patch still applies to the code
  (default); four of them run by default (stopping at the first failing test), all of
  them under `-m slow` (with the README's command).

The grading tests themselves are the main suite's tests of each function, marked
task1_1 ... task7_1 (listed per task in tutorials/assignments/README.md).
"""

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mini_encdec.nn import rmsnorm

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ROOT / "tutorials" / "assignments"
MARK = re.compile(r"\bmark\.(task\d+_\d+)\b")


def load(name):
    """tutorials/assignments/<name>.py as a module (registered: dataclasses need that)."""
    spec = importlib.util.spec_from_file_location(f"assignments_{name}", ASSIGNMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    sys.path.insert(0, str(ASSIGNMENTS))  # check_autograder imports blank
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ASSIGNMENTS))
    return mod


blank = load("blank")
checker = load("check_autograder")
grader = load("grade")


def env_without_pythonpath():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINI_ENCDEC_BACKEND")}


# --- the task list ----------------------------------------------------------------------------

def test_every_task_has_functions_tests_and_a_registered_marker(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = {}  # marker -> the test files that use it
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for task in MARK.findall(path.read_text(encoding="utf-8")):
            used.setdefault(task, set()).add(path.name)
    for task, (title, functions) in blank.TASKS.items():
        assert task in registered, f"marker {task} missing from pyproject.toml"
        assert task in used, f"no test carries the marker {task}"
        for module, name in functions:
            path = blank.module_path(ROOT, module)
            node = blank.find_function(ast.parse(path.read_text(encoding="utf-8")), name)
            assert node is not None, f"{module}.{name} not found"
            kept, blanked = blank.split_body(node)
            assert blanked, f"{module}.{name}: nothing to blank after its checks"
    assert set(used) <= set(blank.TASKS), f"markers without a task: {set(used) - set(blank.TASKS)}"
    assert {m for m in registered if m.startswith("task")} == set(blank.TASKS)


LAB_TASKS = ("task1_1", "task2_1", "task2_2", "task4_1")  # the two-hour lab's (tutorials/README.md)


def test_every_graded_test_of_the_lab_states_its_property_in_one_sentence():
    """A failing test's report prints `PROPERTY:` and its docstring's first sentence
    (conftest._property): each test of the lab's tasks has a docstring of one sentence."""
    found, problems = set(), []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        module_tasks = {t for node in tree.body if isinstance(node, ast.Assign)
                        and any(getattr(tg, "id", "") == "pytestmark" for tg in node.targets)
                        for t in MARK.findall(ast.get_source_segment(text, node))}
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_")):
                continue
            tasks = module_tasks | {t for d in node.decorator_list
                                    for t in MARK.findall(ast.get_source_segment(text, d))}
            if not tasks & set(LAB_TASKS):
                continue
            found |= tasks & set(LAB_TASKS)
            doc = " ".join((ast.get_docstring(node) or "").split())
            if not doc or ". " in doc or not doc.endswith("."):
                problems.append(f"{path.name}::{node.name}: {doc!r}")
    assert found == set(LAB_TASKS)
    assert not problems, "graded tests without a one-sentence docstring:\n" + "\n".join(problems)


def test_the_readme_lists_every_task_and_every_classic_mistake():
    readme = (ASSIGNMENTS / "README.md").read_text(encoding="utf-8")
    for task in blank.TASKS:
        n = task[4:].replace("_", ".")
        assert f"| **{n}** |" in readme, f"task {n} has no row in the README's table"
    for m in checker.MUTANTS:
        assert f"`{m.name}`" in readme, f"classic mistake {m.name} is not in the README"


def test_blanking_keeps_signature_docstring_and_checks(tmp_path):
    src = Path(rmsnorm.__file__).read_text(encoding="utf-8")
    out = blank.blank_source(src, ["rmsnorm_forward"], "task1_1")
    path = tmp_path / "student_rmsnorm.py"
    path.write_text(out.replace("from ..validate", "from mini_encdec.validate"), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("student_rmsnorm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.rmsnorm_forward.__doc__ == rmsnorm.rmsnorm_forward.__doc__
    assert "np.sqrt" not in out.split("def rmsnorm_forward")[1].split("def ")[0]
    with pytest.raises(NotImplementedError, match="task1_1: implement rmsnorm_forward"):
        mod.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="argument 'w'"):  # the input checks stay
        mod.rmsnorm_forward(np.ones((2, 3)), np.zeros(4))
    # the other function of the module is untouched
    y, cache = rmsnorm.rmsnorm_forward(np.ones((2, 3)), np.zeros(3))
    np.testing.assert_array_equal(mod.rmsnorm_backward(y, cache)[0],
                                  rmsnorm.rmsnorm_backward(y, cache)[0])


def test_blanking_a_method():
    src = "class A:\n    def f(self, x):\n        \"\"\"Doc.\"\"\"\n        check_x(x)\n" \
          "        y = x + 1\n        return y\n\n    def g(self):\n        return 2\n"
    out = blank.blank_source(src, ["A.f"], "task9_9")
    assert "check_x(x)" in out and "x + 1" not in out and "return 2" in out
    assert 'raise NotImplementedError("task9_9: implement A.f ' in out
    ast.parse(out)


# --- a student copy ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_blanked(tmp_path_factory):
    """A default student copy with every task blanked."""
    out = tmp_path_factory.mktemp("student") / "all"
    blank.make_student_copy(out, list(blank.TASKS))
    return out


def collects(copy, env=None):
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=copy, capture_output=True,
                          text=True, timeout=600, env=env or env_without_pythonpath())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1]


def test_every_test_collects_in_a_copy_with_every_task_blanked(all_blanked):
    """Nothing at import time calls a blanked function: the whole suite collects."""
    collects(all_blanked)
    kernels = sorted(p.name for p in (all_blanked / "mini_encdec" / "kernels").glob("*.py"))
    assert kernels == sorted(["__init__.py", "rmsnorm.py", *blank.KERNEL_SUPPORT])


def requirement_names(copy) -> set:
    """The distributions `pip install -e copy` installs: pyproject.toml's dependencies
    (read from the files its dynamic `dependencies` names) and the lab's extras."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((copy / "pyproject.toml").read_text(encoding="utf-8"))
    files = meta["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    lines = [ln for f in files for ln in (copy / f).read_text(encoding="utf-8").splitlines()]
    lines += [r for extra in ("plots", "notebooks")
              for r in meta["project"]["optional-dependencies"][extra]]
    lines += meta["project"].get("dependencies", [])
    return {re.match(r"[A-Za-z0-9._-]*", ln.split("#")[0].strip()).group().lower()
            for ln in lines} - {""}


def numba_blocked_env(tmp_path):
    """An environment in which `import numba` fails, as in a venv without numba."""
    (tmp_path / "block" / "numba").mkdir(parents=True)
    (tmp_path / "block" / "numba" / "__init__.py").write_text(
        'raise ImportError("numba is not installed (blocked by the test)")\n')
    return dict(env_without_pythonpath(), PYTHONPATH=str(tmp_path / "block"))


def test_every_test_collects_in_a_copy_without_kernel_files(tmp_path):
    """A copy that does not assign the kernel task has no kernel file but the stub; no
    test module imports one at collection time, nor numba: the copy's requirements
    leave numba out, and the whole suite collects with numba missing."""
    copy = tmp_path / "copy"
    blank.make_student_copy(copy, ["task1_1"])
    assert [p.name for p in (copy / "mini_encdec" / "kernels").iterdir()] == ["__init__.py"]
    names = requirement_names(copy)
    assert "numpy" in names and "numba" not in names and "llvmlite" not in names, names
    assert json.loads((copy / blank.MARKER).read_text())["requirements_dropped"] == \
        [ln for ln in (ROOT / "requirements.txt").read_text().splitlines()
         if ln.startswith("numba")]
    assert "numba" in requirement_names(ROOT)  # the original keeps it
    collects(copy, numba_blocked_env(tmp_path))


def test_the_lab_copy_grades_and_imports_without_numba(tmp_path):
    """The lab's copy (tasks 1.1, 2.1, 2.2, 4.1) with numba missing: its grading command
    reports the blank, and the package, its models, the adaptation and the command line
    import without numba."""
    copy = tmp_path / "lab"
    blank.make_student_copy(copy, ["task1_1", "task2_1", "task2_2", "task4_1"])
    assert "numba" not in requirement_names(copy)
    env = numba_blocked_env(tmp_path)
    code = ("import sys\nimport mini_encdec, mini_encdec.ops, mini_encdec.models, "
            "mini_encdec.training.adapt, mini_encdec.cli\n"
            "print('numba imported' if 'numba' in sys.modules else 'no numba', "
            "mini_encdec.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.stdout.startswith(f"no numba {copy}"), proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "task1_1", "-p",
                           "no:cacheprovider"], cwd=copy, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "task1_1: implement rmsnorm_forward" in proc.stdout
    assert "numba is not installed" not in proc.stdout + proc.stderr


def test_a_copy_with_the_kernel_task_keeps_numba(all_blanked):
    """Task 7.1 is a Numba kernel: a copy that assigns it keeps numba in its requirements."""
    assert "numba" in requirement_names(all_blanked)
    assert json.loads((all_blanked / blank.MARKER).read_text())["requirements_dropped"] == []


def test_a_copy_imports_its_own_package_first(all_blanked):
    """Even with the original repository first on PYTHONPATH (as an editable install of it
    puts it on the path) and run from the copy's tests/ directory, the copy's tests grade
    the copy's (blanked) functions, and the header says it is a student copy."""
    env = dict(env_without_pythonpath(), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "task3_1", "-p",
                           "no:cacheprovider", "-x"], cwd=all_blanked / "tests",
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "task3_1: implement noise_counts" in proc.stdout
    assert "student copy (STUDENT_COPY.json)" in proc.stdout
    assert "backend: numpy only" in proc.stdout


def test_the_left_out_twins_fail_loudly_in_a_copy(all_blanked):
    """ops.twins() in a copy raises KernelImportError: never the original kernels found
    elsewhere (an editable install's import hook serves modules missing from the copy)."""
    code = ("from mini_encdec import ops\n"
            "try:\n    ops.twins()\nexcept ops.KernelImportError as e:\n    print('LOUD', e)\n")
    env = dict(env_without_pythonpath(), PYTHONPATH=f"{all_blanked}{os.pathsep}{ROOT}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=all_blanked, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.stdout.startswith("LOUD"), proc.stdout + proc.stderr


def test_one_task_grades_end_to_end(tmp_path):
    """The README's command in a fresh copy: task 6.3 blanked fails with
    NotImplementedError; with the original code restored it passes."""
    ok, msg = checker.check_task("task6_3", tmp_path)
    assert ok, msg


def test_gradescope_results_and_classroom_config_end_to_end(tmp_path):
    """A copy with task 3.1 blanked: its GitHub Classroom configuration has one test whose
    command fails, and grade.py writes Gradescope's results.json with 0 points and the
    NotImplementedError; with the original code restored the command passes and the task
    gets its points."""
    copy = tmp_path / "hw"
    done = blank.make_student_copy(copy, ["task3_1"], points=4)
    config = json.loads((copy / blank.CLASSROOM_CONFIG).read_text(encoding="utf-8"))
    assert [t["points"] for t in config["tests"]] == [4]
    test = config["tests"][0]
    assert set(test) == {"name", "setup", "run", "input", "output", "comparison", "timeout",
                         "points"} and test["name"].startswith("task 3.1: ")
    assert (copy / blank.CLASSROOM_WORKFLOW).read_text().count("education/autograding") == 1
    assert not (ROOT / ".github" / "classroom").exists()  # never in this repository

    def classroom():  # the command's `python` is this interpreter, as in an activated venv
        env = env_without_pythonpath()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return subprocess.run(test["run"], shell=True, cwd=copy, capture_output=True,
                              env=env).returncode

    def gradescope(name):
        out = tmp_path / name
        assert grader.main(["--copy", str(copy), "--out", str(out), "--points", "5"]) == 0
        results = json.loads(out.read_text(encoding="utf-8"))
        assert set(results) >= {"score", "tests"}
        (entry,) = results["tests"]
        assert set(entry) >= {"name", "score", "max_score", "output"}
        assert entry["max_score"] == 5.0 and entry["name"].startswith("task 3.1: ")
        assert results["score"] == entry["score"]
        return entry

    assert classroom() != 0
    entry = gradescope("blank.json")
    assert entry["score"] == 0.0 and "NotImplementedError: task3_1" in entry["output"]
    # the student copy's report: task, functions, property, no hypothesis blob
    assert "TASK 3.1 (corrupted_lengths, noise_counts, span_corruption_lengths)" in \
        entry["output"] and "PROPERTY: " in entry["output"]
    assert "reproduce_failure" not in entry["output"]
    for rel in {path for path, _ in done}:
        shutil.copy(ROOT / rel, copy / rel)
    assert classroom() == 0
    entry = gradescope("solved.json")
    assert entry["score"] == 5.0 and "FAILED" not in entry["output"]


@pytest.mark.slow
@pytest.mark.parametrize("task", list(blank.TASKS))
def test_every_task_grades_end_to_end(task, tmp_path):
    ok, msg = checker.check_task(task, tmp_path)
    assert ok, msg


# --- the classic mistakes ---------------------------------------------------------------------

def test_every_mutant_applies_to_the_code(tmp_path):
    """Each classic mistake's patch finds its snippet in the current code (so a refactor
    that moves the code is noticed here), and each names a known task."""
    assert len({m.name for m in checker.MUTANTS}) == len(checker.MUTANTS)
    for m in checker.MUTANTS:
        assert m.task in blank.TASKS, m.name
        for rel, *_ in m.edits:
            dst = tmp_path / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text((ROOT / rel).read_text(encoding="utf-8"), encoding="utf-8")
        saved = checker.apply(m, tmp_path)
        for path, text in saved.items():
            assert path.read_text(encoding="utf-8") != text, m.name
            path.write_text(text, encoding="utf-8")
    tasks_with_mutants = {m.task for m in checker.MUTANTS}
    assert tasks_with_mutants == set(blank.TASKS), set(blank.TASKS) - tasks_with_mutants


@pytest.fixture(scope="module")
def answer(tmp_path_factory):
    """A copy laid out like a default student copy, nothing blanked."""
    return checker.answer_copy(tmp_path_factory.mktemp("answer") / "copy")


def check_caught(mutant, copy, quick=False):
    ok, result = checker.check_mutant(mutant, copy, quick)
    assert ok, (f"{mutant.name} ({mutant.task}): {mutant.mistake} is not caught: "
                f"{result.summary}\n{result.output[-2000:]}")
    assert result.first_failure(), f"{mutant.name}: no readable failure\n{result.output[-2000:]}"


@pytest.mark.parametrize("name", checker.FAST)
def test_a_classic_mistake_fails_its_task(name, answer):
    """Quick: the task's test files only, stopping at the first failure."""
    check_caught(checker.BY_NAME[name], answer, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", [m.name for m in checker.MUTANTS if m.name not in checker.FAST])
def test_every_classic_mistake_fails_its_task(name, answer):
    check_caught(checker.BY_NAME[name], answer)
