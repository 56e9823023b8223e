"""Make a student copy of mini_encdec with the functions of chosen tasks blanked out.

    python tutorials/assignments/blank.py --list
    python tutorials/assignments/blank.py --out ../mini_encdec_student               # every task
    python tutorials/assignments/blank.py --out ../hw1 --tasks task1_1 task1_2 task2_1

The copy keeps every signature, docstring and input check; the rest of each blanked body
becomes `raise NotImplementedError("task1_1: implement rmsnorm_forward ...")`. Students
implement the bodies and grade themselves with `python -m pytest -m task1_1`: the marker
selects the main suite's tests of that task's functions (which files:
tutorials/assignments/README.md).

What is kept of a blanked function: the docstring and the input checks at the top of the
body, i.e. every statement up to the last *check* (a call of a function named check_* or
_check*, an assignment from one, an `if` that only raises, a `for` of checks), so a bad
argument still raises the library's ValueError naming it and tests/test_nn_validation.py
passes in a copy. Everything after the last check is the student's.

The Numba twins (mini_encdec/kernels/) compute the same math in loops, an answer key: by
default the copy keeps only the kernel files of the kernel tasks it blanks (task7_1:
kernels/rmsnorm.py, blanked, with its shared helpers) and replaces kernels/__init__.py by
a stub that exports no twin, so the numba backend fails loudly (ops.KernelImportError)
instead of finding the original kernels elsewhere (e.g. through an editable install of
the original repository). The tests of the twins, of the backend switch, of the thread
policy and of the allocator setting are left out; the tests in the copy run the NumPy backend only. `--keep-kernels` keeps everything.
A copy that keeps no kernel file also leaves numba out of its requirements.txt (which
pyproject.toml reads), so installing the copy does not pull numba and llvmlite.

Every copy has a STUDENT_COPY.json at its root (the tasks blanked, what was left out, the
functions of every task) and GitHub Classroom's autograding configuration,
.github/classroom/autograding.json (one test per blanked task, --points each) with the
workflow that runs it (.github/workflows/classroom.yml);
tests/conftest.py reads STUDENT_COPY.json, makes sure the copy's own package is the one imported, and
selects the NumPy backend when the twins are left out.

TASKS below is the authoritative list: task -> (title, [(module, function), ...]); a
function is `name` (top level) or `Class.name` (a method).
tests/test_assignment_tool.py checks that every task has a registered pytest marker, at
least one test, and that every listed function exists and has something to blank.
"""

from __future__ import annotations

import argparse
import ast
import json
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
        ("mini_encdec.nn.rope", "rope_tables_unchecked"),
        ("mini_encdec.nn.rope", "apply_rope_unchecked"),
        ("mini_encdec.nn.rope", "rope_backward")]),
    "task1_3": ("Soft-cap and the tanh GELU", [
        ("mini_encdec.nn.softcap", "tanh_ratio"),
        ("mini_encdec.nn.softcap", "softcap_unchecked"),
        ("mini_encdec.nn.softcap", "softcap_forward"),
        ("mini_encdec.nn.softcap", "softcap_backward"),
        ("mini_encdec.nn.softcap", "softcap_backward_unchecked"),
        ("mini_encdec.nn.mlp", "_gelu_parts"),
        ("mini_encdec.nn.mlp", "_gelu_grad")]),
    "task1_4": ("The GeGLU feed-forward", [
        ("mini_encdec.nn.mlp", "geglu_act_forward"),
        ("mini_encdec.nn.mlp", "geglu_act_backward"),
        ("mini_encdec.nn.mlp", "geglu_unchecked"),
        ("mini_encdec.nn.mlp", "geglu_forward"),
        ("mini_encdec.nn.mlp", "geglu_backward")]),
    "task2_1": ("Attention masks: causal, causal-local, symmetric-local, padding", [
        ("mini_encdec.nn.masks", "allowed_mask_unchecked")]),
    "task2_2": ("Attention core forward: GQA, query scalar, soft-cap, mask, empty rows", [
        ("mini_encdec.nn.attention", "attention_core_forward")]),
    "task2_3": ("Attention core backward", [
        ("mini_encdec.nn.attention", "attention_core_backward")]),
    "task2_4": ("The attention layer: projections, RoPE, core, output", [
        ("mini_encdec.nn.attention", "attention_forward"),
        ("mini_encdec.nn.attention", "attention_backward")]),
    "task2_5": ("T5Gemma 2's split encoder window: (W+1)//2 keys left, W//2 right", [
        ("mini_encdec.nn.masks", "split_window_allowed")]),
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
    "task3_5": ("The two batch forms: encoder-decoder (BOS start), decoder-only (loss on the "
                "targets only)", [
                    ("mini_encdec.text.batching", "collate_encdec"),
                    ("mini_encdec.text.batching", "collate_decoder")]),
    "task4_1": ("Adaptation: which source weight initialises each encoder-decoder weight", [
        ("mini_encdec.training.adapt_mapping", "_origin")]),
    "task5_1": ("The encoder-decoder forward: blocks, masks, positions, cross-attention, logits", [
        ("mini_encdec.models.blocks", "attention"),
        ("mini_encdec.models.blocks", "encoder_block_forward"),
        ("mini_encdec.models.blocks", "decoder_block_forward"),
        ("mini_encdec.models.inputs", "layer_type_mask"),
        ("mini_encdec.models.blocks", "trunk_forward"),
        ("mini_encdec.models.encdec", "EncDecLM._decode"),
        ("mini_encdec.models.encdec", "EncDecLM.forward")]),
    "task5_2": ("The encoder-decoder backward: blocks, both stacks, tied embeddings", [
        ("mini_encdec.models.blocks", "encoder_block_backward"),
        ("mini_encdec.models.blocks", "decoder_block_backward"),
        ("mini_encdec.models.blocks", "trunk_backward"),
        ("mini_encdec.models.encdec", "EncDecLM._backward_from_hidden")]),
    "task5_3": ("The KV cache: a buffer that keeps the last W - 1 keys of a local layer", [
        ("mini_encdec.models.window_buffer", "WindowBuffer.append"),
        ("mini_encdec.models.decoding", "init_cache")]),
    "task5_4": ("The classification head: last real token, the shift, the head", [
        ("mini_encdec.models.classifier", "last_token_index"),
        ("mini_encdec.models.classifier", "shift_right"),
        ("mini_encdec.models.classifier", "SequenceClassifier._hidden"),
        ("mini_encdec.models.classifier", "SequenceClassifier._forward"),
        ("mini_encdec.models.classifier", "SequenceClassifier.backward")]),
    "task6_1": ("The cross-entropy backward, fused with the final soft-cap", [
        ("mini_encdec.nn.loss", "_ce_grad"),
        ("mini_encdec.nn.loss", "softcap_cross_entropy_backward")]),
    "task6_2": ("The distillation loss: soft cross-entropy against the teacher", [
        ("mini_encdec.nn.loss", "distillation_forward"),
        ("mini_encdec.nn.loss", "distillation_backward")]),
    "task6_3": ("AdamW: bias-corrected moments, decoupled weight decay", [
        ("mini_encdec.nn.adamw", "adamw_update")]),
    "task7_1": ("A Numba kernel: RMSNorm, a prange loop over rows", [
        ("mini_encdec.kernels.rmsnorm", "_forward_rows"),
        ("mini_encdec.kernels.rmsnorm", "_forward_parallel"),
        ("mini_encdec.kernels.rmsnorm", "_backward_rows"),
        ("mini_encdec.kernels.rmsnorm", "_backward_parallel")]),
}

# Left out of every student copy: version control, caches, runs, virtual environments.
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis",
                                "*.egg-info", "runs", "build", "dist", ".venv*", "venv")
KERNELS = "mini_encdec/kernels"
# The kernel files a kernel task needs besides its own (compile options and launching,
# shared math, the thread policy).
KERNEL_SUPPORT = ("_runtime.py", "_vecmath.py", "threads.py")
# Tests of the twins, of the backend switch, of the thread policy and of the allocator
# setting: they need every twin.
KERNEL_TESTS = ("tests/test_kernels.py", "tests/test_backend.py", "tests/test_threads.py",
                "tests/test_allocator.py", "tests/test_matmul.py")
MARKER = "STUDENT_COPY.json"
# pyproject.toml reads the dependencies from this file. A copy that keeps no kernel file
# imports numba nowhere (its kernels/__init__.py is the stub below), so its requirements
# leave numba (and llvmlite with it) out: `pip install -e ".[plots,notebooks]"` in a lab
# copy then installs about 210 MB less (numba 35 MB and llvmlite 173 MB installed).
REQUIREMENTS = "requirements.txt"
NUMPY_ONLY_DROPS = ("numba",)
KERNELS_STUB = '''"""Student copy: the Numba twins are left out (they would be an answer key), so this
package exports no twin and the numba backend fails loudly (mini_encdec.ops raises
KernelImportError); the tests select the NumPy backend (tests/conftest.py). Only the
files of the kernel tasks blanked in this copy are here (STUDENT_COPY.json)."""
'''


# GitHub Classroom's autograding configuration, written into every copy (never into this
# repository): one test per blanked task, the README's grading command, points per task.
CLASSROOM_CONFIG = ".github/classroom/autograding.json"
CLASSROOM_WORKFLOW = ".github/workflows/classroom.yml"
CLASSROOM_SETUP = "python -m pip install -q -e . pytest hypothesis"
CLASSROOM_WORKFLOW_TEXT = """name: Autograding
on: [push, workflow_dispatch]
permissions:
  checks: write
  actions: read
  contents: read
jobs:
  autograding:
    runs-on: ubuntu-latest
    if: github.actor != 'github-classroom[bot]'
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - uses: education/autograding@v1
"""


def classroom_config(tasks, points: int = 10, timeout_minutes: int = 10) -> dict:
    """The autograding.json of GitHub Classroom (education/autograding): per task, a test
    that runs `python -m pytest -m <task>` and passes when pytest exits 0."""
    tests = []
    for i, task in enumerate(tasks):
        tests.append({
            "name": f"task {task[4:].replace('_', '.')}: {TASKS[task][0]}",
            "setup": CLASSROOM_SETUP if i == 0 else "",
            "run": f"OPENBLAS_NUM_THREADS=1 python -m pytest -m {task} -p no:cacheprovider",
            "input": "", "output": "", "comparison": "included",
            "timeout": timeout_minutes, "points": points})
    return {"tests": tests}


# --- what is kept of a blanked body: the docstring and the input checks ----------------------

def _callee(func) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_check_call(node) -> bool:
    """A call of a validating function: check_*, _check*, or a validating converter as_*."""
    name = _callee(node.func) if isinstance(node, ast.Call) else ""
    return name.lstrip("_").startswith("check") or name.startswith("as_")


def is_check(stmt) -> bool:
    """An input check: `check_x(...)`, `a = check_x(...)`, `if ...: raise ...` (no else),
    or a `for` loop of checks."""
    if isinstance(stmt, ast.Expr):
        return _is_check_call(stmt.value)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        return _is_check_call(stmt.value)
    if isinstance(stmt, ast.If):
        return not stmt.orelse and all(isinstance(s, ast.Raise) for s in stmt.body)
    if isinstance(stmt, ast.For):
        return not stmt.orelse and all(is_check(s) for s in stmt.body)
    return False


def _is_plain(expr) -> bool:
    """A value read, not computed: a constant, a name, an attribute or item of one (x.shape[1],
    cache["xhat"]), or a tuple of those."""
    if isinstance(expr, (ast.Constant, ast.Name)):
        return True
    if isinstance(expr, ast.Attribute):
        return _is_plain(expr.value)
    if isinstance(expr, ast.Subscript):
        return _is_plain(expr.value) and _is_plain(expr.slice)
    if isinstance(expr, ast.UnaryOp):
        return _is_plain(expr.operand)
    if isinstance(expr, (ast.Tuple, ast.List)):
        return all(_is_plain(e) for e in expr.elts)
    return False


def is_plain(stmt) -> bool:
    """A statement the checks may need between them: a plain binding (`B, T, D = x.shape`,
    `fn = "name"`) or a default (`if mask is None: mask = ...`)."""
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        return stmt.value is not None and _is_plain(stmt.value)
    if isinstance(stmt, ast.If) and not stmt.orelse:
        test = stmt.test
        return (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Is) and isinstance(test.comparators[0], ast.Constant)
                and test.comparators[0].value is None
                and all(isinstance(s, ast.Assign) for s in stmt.body))
    return False


def _has_docstring(body) -> bool:
    first = body[0]
    return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str))


def split_body(node) -> tuple:
    """(kept, blanked) statements of a function body. kept = the docstring and the input
    checks at the top: the longest run of checks and plain statements, up to its last
    check; blanked = the rest (the first computation on)."""
    body = list(node.body)
    start = 1 if _has_docstring(body) else 0
    last = start - 1
    for i in range(start, len(body)):
        if is_check(body[i]):
            last = i
        elif not is_plain(body[i]):
            break
    return body[:last + 1], body[last + 1:]


def find_function(tree, qualname: str):
    """The FunctionDef of `name` (top level) or `Class.name` (a method) in a module tree."""
    scope, parts = tree.body, qualname.split(".")
    for i, part in enumerate(parts):
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if i == len(parts) - 1 else (ast.ClassDef,)
        node = next((n for n in scope if isinstance(n, kinds) and n.name == part), None)
        if node is None:
            return None
        scope = node.body
    return node


def blank_source(source: str, names, task: str) -> str:
    """`source` with the functions `names` (top-level `f` or methods `C.f`) blanked: after
    the docstring and the input checks, the body is `raise NotImplementedError(...)`."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    found = {name: find_function(tree, name) for name in names}
    missing = sorted(n for n, node in found.items() if node is None)
    if missing:
        raise ValueError(f"blank_source: functions {missing} not found")
    # from the bottom up, so earlier line numbers stay valid
    for name, node in sorted(found.items(), key=lambda kv: kv[1].lineno, reverse=True):
        kept, blanked = split_body(node)
        if not blanked:
            raise ValueError(f"blank_source: {name} has nothing after its checks to blank")
        indent = " " * blanked[0].col_offset
        # the lines after the last kept statement (comments above the first blanked
        # statement are part of the answer) down to the end of the function
        start = kept[-1].end_lineno if kept else node.body[0].lineno - 1
        if not kept:
            while start - 1 >= node.lineno and lines[start - 1].lstrip().startswith("#"):
                start -= 1
        stub = (f'{indent}raise NotImplementedError("{task}: implement {name} '
                f'(see tutorials/assignments/README.md)")\n')
        lines[start:node.end_lineno] = [stub]
    return "".join(lines)


def module_path(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def kernel_files(tasks) -> list:
    """The files under mini_encdec/kernels/ that the kernel tasks among `tasks` blank."""
    out = []
    for task in tasks:
        for module, _ in TASKS[task][1]:
            rel = module_path(Path(), module).as_posix()
            if rel.startswith(KERNELS + "/") and rel not in out:
                out.append(rel)
    return out


def _requirement_name(line: str) -> str:
    """The distribution name of a requirements line ('' for a comment or a blank line)."""
    line = line.split("#", 1)[0].strip()
    for i, c in enumerate(line):
        if not (c.isalnum() or c in "-_."):
            return line[:i].lower()
    return line.lower()


def drop_requirements(path: Path, names) -> list:
    """Remove the lines requiring any of `names` from a requirements file, leaving a
    comment in their place; returns the removed requirements."""
    lines, dropped = path.read_text(encoding="utf-8").splitlines(keepends=True), []
    for i, line in enumerate(lines):
        if _requirement_name(line) in names:
            dropped.append(line.strip())
            lines[i] = (f"# {line.strip()}: left out of this student copy, which has no Numba "
                        f"kernel (STUDENT_COPY.json)\n")
    path.write_text("".join(lines), encoding="utf-8")
    return dropped


def make_student_copy(out: Path, tasks, keep_kernels: bool = False, blank: bool = True,
                      points: int = 10) -> list:
    """Copy the repository to `out` and blank the functions of `tasks`. Returns the list
    of (file, function) blanked. blank=False makes the same copy (the same files left
    out) without blanking anything: the answer, for checking the graders."""
    out = Path(out).resolve()
    if out == REPO or REPO in out.parents:
        raise ValueError(f"--out {out}: expected a directory outside the repository {REPO}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: expected a new or empty directory")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; known: {list(TASKS)}")
    shutil.copytree(REPO, out, ignore=IGNORE, dirs_exist_ok=True)
    kept_kernels, dropped = "all", []
    if not keep_kernels:
        keep = kernel_files(tasks)
        if keep:
            keep += [f"{KERNELS}/{name}" for name in KERNEL_SUPPORT]
        for p in sorted((out / KERNELS).iterdir()):
            if p.relative_to(out).as_posix() not in keep:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        (out / KERNELS / "__init__.py").write_text(KERNELS_STUB, encoding="utf-8")
        for rel in KERNEL_TESTS:
            (out / rel).unlink(missing_ok=True)
        kept_kernels = sorted(keep)
        if not keep:  # no kernel file left: nothing in the copy imports numba
            dropped = drop_requirements(out / REQUIREMENTS, NUMPY_ONLY_DROPS)
    by_file = {}
    for task in tasks if blank else ():
        for module, name in TASKS[task][1]:
            by_file.setdefault(module_path(out, module), []).append((task, name))
    done = []
    for path, items in by_file.items():
        source = path.read_text(encoding="utf-8")
        for task, name in items:
            source = blank_source(source, [name], task)
            done.append((path.relative_to(out).as_posix(), name))
        path.write_text(source, encoding="utf-8")
    marker = {"tasks": list(tasks) if blank else [], "kernels": kept_kernels,
              # requirements the copy does not need (numba when no kernel file is kept)
              "requirements_dropped": dropped,
              "grade": "python -m pytest -m <task>  (tutorials/assignments/README.md)",
              # the functions of every task, named in the report of a failing test
              "functions": {t: [name for _, name in fs] for t, (_, fs) in TASKS.items()}}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    config = out / CLASSROOM_CONFIG
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(classroom_config(list(tasks) or list(TASKS), points), indent=1)
                      + "\n", encoding="utf-8")
    workflow = out / CLASSROOM_WORKFLOW
    workflow.parent.mkdir(parents=True, exist_ok=True)
    workflow.write_text(CLASSROOM_WORKFLOW_TEXT, encoding="utf-8")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the tasks and their functions")
    ap.add_argument("--out", type=Path, help="new directory for the student copy")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks to blank (default all)")
    ap.add_argument("--points", type=int, default=10,
                    help="points per task in the GitHub Classroom configuration (default 10)")
    ap.add_argument("--keep-kernels", action="store_true",
                    help="keep all of mini_encdec/kernels (the Numba twins) in the copy")
    args = ap.parse_args(argv)
    if args.list or args.out is None:
        for task, (title, functions) in TASKS.items():
            print(f"{task}  {title}")
            for module, name in functions:
                print(f"         {module}.{name}")
        return 0
    try:
        done = make_student_copy(args.out, args.tasks, args.keep_kernels, points=args.points)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, name in done:
        print(f"blanked {path}: {name}")
    print(f"student copy in {args.out}; grade with: python -m pytest -m <task>; points as "
          f"Gradescope's results.json: python tutorials/assignments/grade.py; GitHub "
          f"Classroom's configuration: {CLASSROOM_CONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
