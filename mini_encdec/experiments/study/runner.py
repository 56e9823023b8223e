"""`python -m mini_encdec study`: the command line, the parallel seed workers, resuming,
and the run that gathers every unit's result into results.json and the report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import downstream
from ...storage.checkpoint import atomic_write_json
from ...storage.safe_output import run_directory
from ...usage import UsageError
from ..stats import VERDICTS
from . import protocol
from .claims import claims_table
from .protocol import ARMS, SCALES, StudyPlan
from .report import _report, plot_curves, plot_quality_vs_flops
from .units import UNITS_PER_SEED, Study, load_average, seed_units, units_per_seed



def _run_workers(out: Path, plan: StudyPlan, jobs: int, progress: bool) -> None:
    """The seeds in `jobs` parallel worker processes, each single-threaded (one BLAS and
    one Numba thread: on 2 cores, two single-threaded processes get more done than one
    two-threaded one, and do not fight over the cores). Logs: out/logs/seed<S>.log."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MINI_ENCDEC_THREADS="1")
    (out / "logs").mkdir(exist_ok=True)
    tasks = [(f"seed{s}", ["--worker-seed", str(s)]) for s in plan.seeds]
    ready = lambda name: True  # noqa: E731
    if plan.shared_parents:
        # the two shared parents first, side by side; a seed starts once the parent is
        # trained (every arm needs it) and waits for the big parent only where E4's arms
        # need it (Study.parent), so the big parent's longer run overlaps the seeds
        tasks = [("parent", ["--worker-parent", "small"]),
                 ("big_parent", ["--worker-parent", "big"])] + tasks
        parent = out / "models" / "shared" / "parent" / "config.json"
        ready = lambda name: not name.startswith("seed") or parent.is_file()  # noqa: E731
    bar = tqdm(total=units_per_seed(plan) * len(plan.seeds), desc=f"study units ({jobs} workers)",
               disable=not progress, file=sys.stderr)
    _run_pool(out, tasks, jobs, env, ready, bar)


def _run_pool(out: Path, tasks: list, jobs: int, env: dict, ready, bar) -> None:
    """Run [(name, worker arguments)] in at most `jobs` worker processes, in order, each
    once ready(name) (logs: out/logs/<name>.log); bar: finished fine-tuning and probe
    units."""
    pending, running = list(tasks), []
    done_units = lambda: sum(len(list((out / "results").glob(f"seed*/{kind}_*.json")))  # noqa
                             for kind in ("finetune", "rep"))
    failed = []
    try:
        while pending or running:
            if not running and pending and not ready(pending[0][0]):
                raise RuntimeError(f"study: {pending[0][0]} cannot start: the worker(s) "
                                   f"{', '.join(failed) or 'it needs'} failed; see "
                                   f"{out / 'logs'}; rerun with --resume")
            while pending and len(running) < jobs and ready(pending[0][0]):
                name, extra = pending.pop(0)
                log = open(out / "logs" / f"{name}.log", "a")
                cmd = [sys.executable, "-m", "mini_encdec.experiments.study", "--out",
                       str(out), *extra, "--no-progress"]  # the plan: study_plan.json
                running.append((name, subprocess.Popen(cmd, stdout=log,
                                                       stderr=subprocess.STDOUT, env=env), log))
            time.sleep(2.0)
            for item in list(running):
                name, proc, log = item
                if proc.poll() is not None:
                    log.close()
                    running.remove(item)
                    if proc.returncode != 0:
                        failed.append(name)
            bar.n = done_units()
            bar.refresh()
    finally:  # the runner stopped (Ctrl-C, a kill, an error): its workers stop with it, so
        for name, proc, log in running:  # a resumed study never shares a unit with them
            proc.terminate()
        for name, proc, log in running:
            proc.wait()
            log.close()
        bar.close()
    if failed:
        raise RuntimeError(f"study: the worker(s) {', '.join(failed)} failed; see "
                           f"{out / 'logs'}; rerun with --resume to continue")


def run_study(out: Path, plan: StudyPlan, progress: bool = True, command: str = "",
              jobs: int = 1) -> dict:
    """Run (or resume) every unit of the protocol and write the reports."""
    t0 = time.perf_counter()
    if jobs > 1:
        _run_workers(out, plan, jobs, progress)
    study = Study(out, plan, progress and jobs == 1)
    seeds = plan.seeds
    results: dict = {"pretrain": {}, "finetune": {}, "cost": {}, "baselines": {}}
    if plan.shared_parents:
        results["parents"] = {"parent": study.parent_result(),
                              "big_parent": study.parent_result(big=True)}
    bar = tqdm(total=UNITS_PER_SEED * len(seeds) + len(ARMS), desc="study units",
               disable=not progress, file=sys.stderr)
    for s in seeds:
        pre, ft = seed_units(study, s, lambda: bar.update(1))
        results["pretrain"][f"seed{s}"], results["finetune"][f"seed{s}"] = pre, ft
        base = downstream.baselines(study.data(s))
        for k, v in base.items():
            results["baselines"].setdefault(k, []).append(v)
    results["baselines"]["rep"] = study.rep_baselines()
    for arm in ARMS:
        results["cost"][arm] = study.cost_result(arm)
        bar.update(1)
    bar.close()
    rows = claims_table(results, seeds)
    results["claims"] = [{"experiment": r["claim"].experiment, "claim": r["claim"].claim,
                          "a": r["claim"].a, "b": r["claim"].b, "metric": r["claim"].metric,
                          "budget": r["claim"].budget, "better": r["claim"].better,
                          "primary": r["claim"].primary, "test": r["test"],
                          "verdict": r["verdict"]} for r in rows]
    results["plan"] = dataclasses.asdict(plan)
    results["machine"] = machine_info()
    results["command"] = command
    results["seconds_this_call"] = time.perf_counter() - t0
    results["seconds_all_units"] = _unit_seconds(out)
    results["timeline"] = timeline(out)
    atomic_write_json(out / "results.json", results)
    curves = plot_curves(results, seeds, out / "loss_curves.png")
    qf = plot_quality_vs_flops(results, seeds, out / "quality_vs_flops.png")
    md = _report(results, rows, seeds, curves, qf)
    (out / "results.md").write_text(md)
    return results


def _unit_seconds(out: Path) -> float:
    total = 0.0
    for p in (out / "results").rglob("*.json"):
        total += float(json.loads(p.read_text()).get("seconds", 0.0))
    return total


def timeline(out: Path) -> dict:
    """The study's wall-clock time from its units' records (results/**.json: each unit's
    seconds and the time it finished): from the first unit's start to the last unit's end,
    and the parents' share. Interruptions count as time: resume soon."""
    spans = []
    for p in (out / "results").rglob("*.json"):
        r = json.loads(p.read_text())
        if "finished_at" in r:
            spans.append((r["finished_at"] - float(r.get("seconds", 0.0)), r["finished_at"],
                          p.relative_to(out / "results").as_posix()))
    if not spans:
        return {}
    start, end = min(s[0] for s in spans), max(s[1] for s in spans)
    parents = [s for s in spans if s[2].endswith("_training.json")]
    return {"wall_clock_minutes": (end - start) / 60,
            "parents_minutes": (max(s[1] for s in parents) - min(s[0] for s in parents)) / 60
            if parents else None, "units": len(spans)}


def machine_info() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "numpy": np.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_end": load_average()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a smoke-test budget (2 seeds, a few updates each; under a minute)")
    p.add_argument("--out", default=None,
                   help="study directory (default runs/study-<time>, or runs/study-quick-"
                        "<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out (its finished units are reused)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out, once the new study is complete")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (at least 2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the seeds in this many parallel single-threaded worker "
                        "processes (default 1: one process, the default threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-parent", choices=("small", "big"), default=None,
                   help=argparse.SUPPRESS)


def plan_from_args(args) -> StudyPlan:
    plan = SCALES["quick" if args.quick else "full"]
    if args.seeds is not None:
        if args.seeds < 2:
            raise UsageError(f"--seeds: expected an integer >= 2 (a paired test needs "
                             f"two seeds), got {args.seeds}")
        plan = dataclasses.replace(plan, seeds=tuple(range(args.seeds)))
    return plan


def _check_resume(out: Path, plan: StudyPlan) -> None:
    """--resume continues only a study of the same plan."""
    marker = out / "study_plan.json"
    if not marker.is_file():
        raise UsageError(f"--resume: {out} holds no study (no study_plan.json)")
    if json.loads(marker.read_text()) != _plan_dict(plan):
        raise UsageError(f"--resume: {out} was run with another plan (see its "
                         f"study_plan.json); use the same --quick/--seeds")


def _plan_dict(plan: StudyPlan) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(plan)))


def _plan_of(out: Path) -> StudyPlan:
    """The plan a study directory was started with (study_plan.json)."""
    d = json.loads((out / "study_plan.json").read_text())
    d["seeds"] = tuple(d["seeds"])
    d["big_overrides"] = tuple(tuple(x) for x in d["big_overrides"])
    for k in ("rep_tasks", "probe_seeds", "rep_arms"):
        if k in d:
            d[k] = tuple(d[k])
    return StudyPlan(**d)


def run(args) -> int:
    if args.worker_seed is not None or args.worker_parent is not None:  # run_study's workers
        out = Path(args.out)
        plan = _plan_of(out)
        study = Study(out, plan, progress=not args.no_progress)
        if args.worker_parent is not None:  # one shared parent
            study.parent(plan.parent_seed, big=args.worker_parent == "big")
        else:  # one seed's units
            seed_units(study, args.worker_seed)
        return 0
    plan = plan_from_args(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    if args.out == "":
        raise UsageError("--out '': expected a directory path")
    default = f"study-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    target = Path(args.out) if args.out else Path("runs") / default
    if args.resume:
        _check_resume(target, plan)
    command = "python -m mini_encdec study" + (" --quick" if args.quick else "") + \
        (f" --seeds {args.seeds}" if args.seeds else "") + \
        (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    # a new study needs a new or empty --out (--overwrite: replaced once complete); a
    # resumed one only adds to its own directory (safe_output.run_directory)
    with run_directory(target, overwrite=args.overwrite, resume=args.resume,
                       what="--out") as rd:
        out = rd.path
        if not args.resume:
            atomic_write_json(out / "study_plan.json", _plan_dict(plan))
        rd.started()
        results = run_study(out, plan, progress=not args.no_progress, command=command,
                            jobs=args.jobs)
    n = {v: sum(r["verdict"] == v for r in results["claims"]) for v in VERDICTS}
    print(f"\nstudy: {n['reproduced']} reproduced, {n['not reproduced']} not reproduced, "
          f"{n['equivalent']} equivalent, {n['inconclusive']} inconclusive (Holm-corrected); "
          f"{target / 'results.md'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mini_encdec study", description=protocol.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))

