"""The package's import graph runs one way, from the foundations up to the command line:

    validate, usage, plots  <-  config  <-  nn  <-  kernels  <-  backend, ops
        <-  models, reference, objectives  <-  storage  <-  text  <-  training
        <-  experiments  <-  cli, tools

A module may import its own layer and the layers before it, never one after it (lazy
imports inside functions count too). In particular nn/ imports neither the dispatcher nor
the kernels, so the code a student reads and edits there is the code that runs when nn
is called, and ops is the only module that picks a backend."""

import ast
from pathlib import Path

import mini_encdec

PACKAGE = Path(mini_encdec.__file__).parent
LAYERS = [
    {"validate", "usage", "plots"},
    {"config"},
    {"nn"},
    {"kernels"},
    {"backend", "ops"},
    {"models", "reference", "objectives"},
    {"storage"},
    {"text"},
    {"training"},
    {"experiments"},
    {"cli", "tools", "__main__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Absolute names of the mini_encdec modules (or names) `path` imports."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mini_encdec"):
                yield from ((f"{target}.{a.name}" if target == "mini_encdec" else target)
                            for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("mini_encdec"))


def _component(name: str):
    """The layer component of an absolute module name: mini_encdec.nn.attention -> nn."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_import_runs_down_the_layers():
    unknown, upward = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package's public face re-exports from below
        me = _component(_module_name(path))
        if me not in LEVEL:
            unknown.add(me)
            continue
        for target in _imports(path):
            other = _component(target)
            if other is None or other == me:
                continue
            if other not in LEVEL:
                unknown.add(other)
            elif LEVEL[other] > LEVEL[me]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert not unknown, f"modules missing from LAYERS (add them where they belong): {unknown}"
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_nn_imports_neither_ops_nor_kernels():
    for path in sorted((PACKAGE / "nn").glob("*.py")):
        hits = [t for t in _imports(path) if _component(t) in ("ops", "kernels", "backend")]
        assert not hits, f"{path.name} imports {hits}"


def test_only_models_and_the_optimizer_dispatch():
    callers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if any(t in ("mini_encdec.ops",) for t in _imports(p)))
    # cli/common.py only asks ops.twins() at a command's start, so that a numba backend
    # that cannot run (no Numba, a bad MINI_ENCDEC_THREADS) is one error line;
    # __main__.py only calls ops.tune_process(), the command line's opt-in, and so do the
    # bench's worker processes (they measure what the command line runs)
    allowed = ("training/optim.py", "cli/common.py", "__main__.py",
               "experiments/bench_workers.py", "experiments/bench_study.py")
    assert all(c.startswith("models/") or c in allowed for c in callers), callers
