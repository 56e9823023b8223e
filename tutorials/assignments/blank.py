"""Make a student copy of mini_encdec with the functions of chosen tasks blanked out.

    python tutorials/assignments/blank.py --list
    python tutorials/assignments/blank.py --out ../mini_encdec_student               # every task
    python tutorials/assignments/blank.py --out ../hw1 --tasks task1_1 task1_2 task2_1

The copy keeps every signature and docstring; each blanked body becomes
`raise NotImplementedError("task1_1: ...")`. Students implement the bodies and grade
themselves with `python -m pytest -m task1_1`: the marker selects the main suite's tests
of that task's functions (which files: tutorials/assignments/README.md). By default the
copy leaves out mini_encdec/kernels/ (the Numba twins compute the same math in loops, an
answer key) and the tests of the twins and of the backend switch; the tests in the copy
then run the NumPy backend only (tests/conftest.py). `--keep-kernels` keeps them.

TASKS below is the authoritative list: task -> (title, [(module, function), ...]).
tests/test_assignment_tool.py checks that every task has a registered pytest marker, at
least one test, and that every listed function exists.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TASKS = {
    "task1_1": ("RMSNorm with (1 + w): forward and backward", [
        ("mini_encdec.nn.rmsnorm", "rmsnorm_forward"),
        ("mini_encdec.nn.rmsnorm", "rmsnorm_backward")]),
    "task1_2": ("Rotary position embeddings, rotate-half", [
        ("mini_encdec.nn.rope", "rotate_half"),
        ("mini_encdec.nn.rope", "rotate_half_transpose"),
        ("mini_encdec.nn.rope", "rope_cos_sin"),
        ("mini_encdec.nn.rope", "rope_forward"),
        ("mini_encdec.nn.rope", "rope_backward")]),
    "task1_3": ("Soft-cap and the tanh GELU", [
        ("mini_encdec.nn.softcap", "softcap_forward"),
        ("mini_encdec.nn.softcap", "softcap_backward"),
        ("mini_encdec.nn.mlp", "_gelu_parts"),
        ("mini_encdec.nn.mlp", "_gelu_grad")]),
    "task1_4": ("The GeGLU feed-forward", [
        ("mini_encdec.nn.mlp", "geglu_act_forward"),
        ("mini_encdec.nn.mlp", "geglu_act_backward"),
        ("mini_encdec.nn.mlp", "geglu_forward"),
        ("mini_encdec.nn.mlp", "geglu_backward")]),
    "task2_1": ("Attention masks: causal, causal-local, symmetric-local, padding", [
        ("mini_encdec.nn.masks", "attention_mask")]),
    "task2_2": ("Attention core forward: GQA, query scalar, soft-cap, mask, empty rows", [
        ("mini_encdec.nn.attention", "attention_core_forward")]),
    "task2_3": ("Attention core backward", [
        ("mini_encdec.nn.attention", "attention_core_backward")]),
    "task2_4": ("The attention layer: projections, RoPE, core, output", [
        ("mini_encdec.nn.attention", "attention_forward"),
        ("mini_encdec.nn.attention", "attention_backward")]),
    "task3_1": ("Span corruption counts and the length helper", [
        ("mini_encdec.objectives.span_corruption", "noise_counts"),
        ("mini_encdec.objectives.span_corruption", "corrupted_lengths"),
        ("mini_encdec.objectives.span_corruption", "span_corruption_lengths")]),
    "task3_2": ("Random compositions and the noise mask", [
        ("mini_encdec.objectives.span_corruption", "random_composition"),
        ("mini_encdec.objectives.span_corruption", "noise_mask")]),
    "task3_3": ("Span corruption: inputs, targets, sentinels", [
        ("mini_encdec.objectives.span_corruption", "span_corruption")]),
    "task3_4": ("PrefixLM and the UL2 S-denoiser, mode tokens", [
        ("mini_encdec.objectives.prefix_lm", "prefix_lm"),
        ("mini_encdec.objectives.ul2", "sequential_prefix_bounds"),
        ("mini_encdec.objectives.ul2", "sequential_denoise"),
        ("mini_encdec.objectives.ul2", "denoise")]),
    "task4_1": ("Adaptation: which source weight initialises each encoder-decoder weight", [
        ("mini_encdec.training.adapt", "_origin")]),
}

# Left out of student copies: caches, runs, and (unless --keep-kernels) the Numba twins
# with the tests that need them.
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
                                "*.egg-info", "runs", "build", "dist", ".venv", "venv")
KERNEL_PATHS = ("mini_encdec/kernels", "tests/test_kernels.py", "tests/test_backend.py")


def blank_source(source: str, names, task: str) -> str:
    """`source` with the bodies of the top-level functions `names` replaced by
    `raise NotImplementedError(...)`; signatures, decorators and docstrings stay."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            found[node.name] = node
    missing = sorted(set(names) - set(found))
    if missing:
        raise ValueError(f"blank_source: functions {missing} not found")
    # from the bottom up, so earlier line numbers stay valid
    for node in sorted(found.values(), key=lambda n: n.lineno, reverse=True):
        body = node.body
        first = body[0]
        has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                   and isinstance(first.value.value, str))
        if has_doc:
            start = first.end_lineno  # 0-based index of the line after the docstring
            indent = " " * first.col_offset
        else:
            start = first.lineno - 1
            while start - 1 >= node.lineno and lines[start - 1].lstrip().startswith("#"):
                start -= 1  # comments above the first statement are part of the answer
            indent = " " * first.col_offset
        stub = (f'{indent}raise NotImplementedError("{task}: implement {node.name} '
                f'(see tutorials/assignments/README.md)")\n')
        lines[start:node.end_lineno] = [stub]
    return "".join(lines)


def module_path(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def make_student_copy(out: Path, tasks, keep_kernels: bool = False) -> list:
    """Copy the repository to `out` and blank the functions of `tasks`. Returns the list
    of (file, function) blanked."""
    out = Path(out).resolve()
    if out == REPO or REPO in out.parents:
        raise ValueError(f"--out {out}: expected a directory outside the repository {REPO}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: expected a new or empty directory")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; known: {list(TASKS)}")
    shutil.copytree(REPO, out, ignore=IGNORE, dirs_exist_ok=True)
    if not keep_kernels:
        for rel in KERNEL_PATHS:
            p = out / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    by_file = {}
    for task in tasks:
        for module, name in TASKS[task][1]:
            by_file.setdefault(module_path(out, module), []).append((task, name))
    done = []
    for path, items in by_file.items():
        source = path.read_text(encoding="utf-8")
        for task, name in items:
            source = blank_source(source, [name], task)
            done.append((str(path.relative_to(out)), name))
        path.write_text(source, encoding="utf-8")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the tasks and their functions")
    ap.add_argument("--out", type=Path, help="new directory for the student copy")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks to blank (default all)")
    ap.add_argument("--keep-kernels", action="store_true",
                    help="keep mini_encdec/kernels (the Numba twins) in the copy")
    args = ap.parse_args(argv)
    if args.list or args.out is None:
        for task, (title, functions) in TASKS.items():
            print(f"{task}  {title}")
            for module, name in functions:
                print(f"         {module}.{name}")
        return 0
    try:
        done = make_student_copy(args.out, args.tasks, args.keep_kernels)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, name in done:
        print(f"blanked {path}: {name}")
    print(f"student copy in {args.out}; grade with: python -m pytest -m <task>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
