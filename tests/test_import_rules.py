"""The readable reference layers in nn/ import nothing from the dispatcher or the kernels,
so the code a student reads and edits there is the code that runs when nn is called."""

import ast
from pathlib import Path

import mini_encdec

NN = Path(mini_encdec.__file__).parent / "nn"


def _imported_modules(path: Path) -> set:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            mods |= {base + ("." if node.module else "") + a.name for a in node.names} \
                if not node.module else {base}
        elif isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
    return mods


def test_nn_imports_neither_ops_nor_kernels():
    bad = {}
    for f in sorted(NN.glob("*.py")):
        hits = {m for m in _imported_modules(f)
                if any(part in ("ops", "kernels") for part in m.replace(".", " ").split())}
        if hits:
            bad[f.name] = sorted(hits)
    assert not bad, f"nn/ must not import the dispatcher or the kernels: {bad}"
