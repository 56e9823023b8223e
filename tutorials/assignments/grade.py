"""Grade a student copy task by task and write the points as Gradescope's results.json.

    python tutorials/assignments/grade.py                           # the copy's assigned tasks
    python tutorials/assignments/grade.py --tasks task1_1 task2_2 --points 10
    python tutorials/assignments/grade.py --out /autograder/results/results.json

Run it from (or point --copy at) a student copy made by blank.py. Each task is graded by
the README's own command, `python -m pytest -m <task>`, run in the copy with one BLAS
thread; its points are max_score * passed / (passed + failed) (skipped tests do not
count; --all-or-nothing gives the points only when every test passes). The JSON is the
format of Gradescope's autograder specification
(https://gradescope-autograders.readthedocs.io/en/latest/specs/):

    {"score": 17.5, "execution_time": 41, "output": "...",
     "tests": [{"name": "task 1.1: RMSNorm ...", "score": 10.0, "max_score": 10.0,
                "output": "...", "visibility": "visible"}, ...]}

Each test's "output" lists the failing tests with the first lines of their reports (the
task, the property, the counterexample). The exit code is 0 whatever the score (a grade
was produced), 2 for bad arguments. The tasks default to STUDENT_COPY.json's "tasks"
(all tasks when it lists none, e.g. an answer copy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import blank  # noqa: E402

# Characters of each failing test's report kept in the task's output.
REPORT_CHARS = 1500


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINI_ENCDEC_BACKEND")}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", COLUMNS="120")
    return env


def run_task(copy: Path, task: str, timeout: float) -> dict:
    """{"passed", "failed", "skipped", "failures": [(test, report)], "seconds", "error"}
    for `python -m pytest -m <task>` in `copy`, read from pytest's JUnit XML."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grade_") as tmp:
        xml = Path(tmp) / "junit.xml"
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-m", task, "-p", "no:cacheprovider", "-q",
                 f"--junitxml={xml}", "-o", "junit_family=xunit2"],
                cwd=copy, capture_output=True, text=True, timeout=timeout, env=_env())
        except subprocess.TimeoutExpired:
            return dict(passed=0, failed=0, skipped=0, failures=[], error=(
                f"timed out after {timeout:.0f} s"), seconds=time.perf_counter() - t0)
        out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "error": None}
        if not xml.exists():
            out["error"] = (f"pytest exited with code {proc.returncode} before running the "
                            f"tests:\n{(proc.stdout + proc.stderr)[-REPORT_CHARS:]}")
        else:
            for case in ET.parse(xml).getroot().iter("testcase"):
                bad = case.find("failure")
                bad = bad if bad is not None else case.find("error")
                if case.find("skipped") is not None:
                    out["skipped"] += 1
                elif bad is not None:
                    out["failed"] += 1
                    report = (bad.text or bad.get("message") or "").strip()
                    out["failures"].append((case.get("name"), report))
                else:
                    out["passed"] += 1
            if proc.returncode not in (0, 1, 5):  # 5: no test selected
                out["error"] = f"pytest exited with code {proc.returncode}"
    out["seconds"] = time.perf_counter() - t0
    return out


def task_result(task: str, run: dict, max_score: float, all_or_nothing: bool) -> dict:
    """One entry of results.json's "tests" for a task."""
    title = blank.TASKS[task][0]
    counted = run["passed"] + run["failed"]
    if run["error"] or counted == 0:
        score = 0.0
    elif all_or_nothing:
        score = max_score if run["failed"] == 0 else 0.0
    else:
        score = round(max_score * run["passed"] / counted, 2)
    lines = [f"{run['passed']} of {counted} tests passed"
             + (f" ({run['skipped']} skipped)" if run["skipped"] else "")
             + f"; {run['seconds']:.0f} s. Run it yourself: python -m pytest -m {task}"]
    if run["error"]:
        lines.append(f"ERROR: {run['error']}")
    for name, report in run["failures"]:
        short = report if len(report) <= REPORT_CHARS else report[:REPORT_CHARS] + "\n..."
        lines.append(f"--- FAILED {name}\n{short}")
    return {"name": f"task {task[4:].replace('_', '.')}: {title}", "score": score,
            "max_score": float(max_score), "output": "\n".join(lines), "visibility": "visible"}


def grade_copy(copy: Path, tasks, points: float = 10.0, all_or_nothing: bool = False,
               timeout: float = 900.0) -> dict:
    """The results.json dictionary for `tasks` graded in `copy`."""
    t0 = time.perf_counter()
    tests = [task_result(t, run_task(copy, t, timeout), points, all_or_nothing) for t in tasks]
    score = round(sum(t["score"] for t in tests), 2)
    total = sum(t["max_score"] for t in tests)
    return {"score": score, "execution_time": round(time.perf_counter() - t0),
            "output": f"{score:g} of {total:g} points over {len(tests)} task(s)",
            "tests": tests}


def default_tasks(copy: Path) -> list:
    marker = copy / blank.MARKER
    assigned = json.loads(marker.read_text(encoding="utf-8"))["tasks"] if marker.exists() else []
    return assigned or list(blank.TASKS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copy", type=Path, default=HERE.parents[1],
                    help="the student copy (default: the copy this script is in)")
    ap.add_argument("--tasks", nargs="+", help="tasks to grade (default: the copy's assigned "
                    "tasks, from STUDENT_COPY.json)")
    ap.add_argument("--points", type=float, default=10.0, help="points per task (default 10)")
    ap.add_argument("--all-or-nothing", action="store_true",
                    help="a task's points only when all its tests pass")
    ap.add_argument("--out", type=Path, default=Path("results.json"),
                    help="where to write the JSON (default ./results.json)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per task")
    args = ap.parse_args(argv)
    copy = args.copy.resolve()
    if not (copy / "tests" / "conftest.py").exists():
        print(f"error: --copy {copy}: not a mini_encdec checkout (no tests/conftest.py)",
              file=sys.stderr)
        return 2
    tasks = args.tasks or default_tasks(copy)
    unknown = [t for t in tasks if t not in blank.TASKS]
    if unknown or args.points <= 0:
        print(f"error: unknown tasks {unknown}; known: {list(blank.TASKS)}" if unknown else
              "error: --points: expected a positive number", file=sys.stderr)
        return 2
    results = grade_copy(copy, tasks, args.points, args.all_or_nothing, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for t in results["tests"]:
        print(f"{t['score']:6g} / {t['max_score']:g}  {t['name']}")
    print(f"{results['score']:6g} / {sum(t['max_score'] for t in results['tests']):g}  total; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
