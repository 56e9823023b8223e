"""Every tutorial runs to the end, so the tutorials never rot.

Each `tutorials/NN_*.py` is executed as a script in a subprocess, from a temporary working
directory, with matplotlib on its file-only backend and figures sent to a temporary
directory. Each tutorial checks itself with asserts; a non-zero exit fails the test and
shows the tail of its output. The subprocess imports the package of this checkout
(PYTHONPATH), not whichever copy happens to be installed.

When jupytext, nbconvert and ipykernel are installed (`pip install -e ".[notebooks]"`),
one tutorial also goes through the documented notebook commands (tutorials/README.md):
converted to .ipynb and executed in a Jupyter kernel, every figure must be an inline
image (`python -m pytest -m slow tests/test_tutorials.py` does it for every tutorial).
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TUTORIALS_DIR = REPO / "tutorials"
TUTORIALS = sorted(p for p in TUTORIALS_DIR.glob("*.py") if re.match(r"\d\d_", p.name))


def tutorial_env(out_dir: Path) -> dict:
    """The environment a tutorial runs in: this checkout's package first on the path,
    figures to out_dir, matplotlib without a display, one BLAS thread."""
    # One BLAS thread: the tutorials' matrices are tiny, and on a shared 2-core machine
    # OpenBLAS threads waiting for each other made them 3-10x slower (measured).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, MPLBACKEND="Agg", MINI_ENCDEC_TUTORIAL_OUT=str(out_dir),
                PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                PYTHONPATH=path)


def test_tutorials_are_found():
    assert len(TUTORIALS) >= 2, f"no numbered tutorials in {TUTORIALS_DIR}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_jupytext_percent_with_prose_and_checks(path):
    text = path.read_text(encoding="utf-8")
    assert "format_name: percent" in text, "missing the jupytext py:percent header"
    assert text.count("# %% [markdown]") >= 2, "expected prose cells"
    code_cells = len(re.findall(r"^# %%$", text, flags=re.M))
    assert code_cells >= 2, "expected code cells"
    assert re.search(r"^\s*assert ", text, flags=re.M), "a tutorial checks its claims"
    assert "plt.show(" not in text, \
        "figures go through _tutorial.save (inline in a notebook, a file in a script)"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = tutorial_env(tmp_path / "out")
    before = sorted(p.name for p in TUTORIALS_DIR.iterdir())
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, f"{path.name} failed:\n{tail}"
    after = sorted(p.name for p in TUTORIALS_DIR.iterdir() if p.name != "__pycache__")
    assert after == [n for n in before if n != "__pycache__"], \
        "a tutorial wrote into the repository"


# --- the tutorials as notebooks ----------------------------------------------------------------

_OUT_ENV = "MINI_ENCDEC_TUTORIAL_OUT"
NOTEBOOK_TOOLS = ("jupytext", "nbconvert", "nbclient", "ipykernel", "matplotlib")
needs_notebook_tools = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in NOTEBOOK_TOOLS),
    reason="needs the notebook extra: pip install -e \".[notebooks]\"")


def run_as_notebook(path: Path, tmp_path: Path) -> dict:
    """The documented commands on a copy of `path` (and _tutorial.py) in tmp_path:
    `jupytext --to notebook`, then `jupyter nbconvert --to notebook --execute`; returns the
    executed notebook (JSON). The kernel runs in the notebook's directory, as in Jupyter."""
    work = tmp_path / "tutorials"
    work.mkdir()
    for f in (path, TUTORIALS_DIR / "_tutorial.py"):
        shutil.copy(f, work / f.name)
    env = tutorial_env(tmp_path / "out")
    env.pop(_OUT_ENV, None)  # as a user runs it: figures inline only, no files
    for cmd in ([sys.executable, "-m", "jupytext", "--to", "notebook", str(work / path.name)],
                [sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
                 "--inplace", "--ExecutePreprocessor.timeout=300",
                 str(work / path.with_suffix(".ipynb").name)]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd[2:4])} failed:\n{proc.stderr[-3000:]}"
    assert not (tmp_path / "out").exists(), "a notebook wrote figure files"
    return json.loads(work.joinpath(path.with_suffix(".ipynb").name).read_text())


def check_figures_inline(path: Path, nb: dict) -> None:
    """Every `save(fig, ...)` of the tutorial displayed an inline PNG, and no cell printed
    a file path instead."""
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    expected = len(re.findall(r"^\s*save\(fig,", path.read_text(encoding="utf-8"), flags=re.M))
    assert len(images) == expected >= 1, f"{len(images)} inline images, {expected} figures"
    printed = "".join("".join(o.get("text", "")) for o in outputs)
    assert "saved /" not in printed, "a figure went to a file instead of the notebook"


@needs_notebook_tools
def test_a_tutorial_as_notebook_shows_its_figure_inline(tmp_path):
    path = TUTORIALS_DIR / "01_gemma2_attention.py"
    check_figures_inline(path, run_as_notebook(path, tmp_path))


@pytest.mark.slow
@needs_notebook_tools
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_tutorial_as_notebook_shows_its_figures_inline(path, tmp_path):
    if "HAVE_TRANSFORMERS" in path.read_text(encoding="utf-8") and any(
            importlib.util.find_spec(m) is None for m in ("torch", "transformers")):
        pytest.skip("its figures need torch and transformers")
    check_figures_inline(path, run_as_notebook(path, tmp_path))


# --- the tutorials' README and the lab -----------------------------------------------------------

def test_tutorials_readme_lists_every_tutorial_and_only_registered_tasks():
    readme = (TUTORIALS_DIR / "README.md").read_text(encoding="utf-8")
    main_readme = (REPO / "README.md").read_text(encoding="utf-8")
    for path in TUTORIALS:
        assert f"`{path.name}`" in readme, f"tutorials/README.md does not list {path.name}"
        assert f"`{path.name}`" in main_readme, f"README.md does not list {path.name}"
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    markers = set(re.findall(r'"(task\d+_\d+):', pyproject))
    named = set(re.findall(r"\btask\d+_\d+\b", readme))
    assert named and named <= markers, f"unregistered task markers: {sorted(named - markers)}"
