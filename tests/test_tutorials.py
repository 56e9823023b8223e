"""Every tutorial runs to the end, so the tutorials never rot.

Each `tutorials/NN_*.py` is executed as a script in a subprocess, from a temporary working
directory, with matplotlib on its file-only backend and figures sent to a temporary
directory. Each tutorial checks itself with asserts; a non-zero exit fails the test and
shows the tail of its output.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(p for p in TUTORIALS_DIR.glob("*.py") if re.match(r"\d\d_", p.name))


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
    assert "plt.show(" not in text, "figures are saved to files, never shown"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    # One BLAS thread: the tutorials' matrices are tiny, and on a shared 2-core machine
    # OpenBLAS threads waiting for each other made them 3-10x slower (measured).
    env = dict(os.environ, MPLBACKEND="Agg", MINI_ENCDEC_TUTORIAL_OUT=str(tmp_path / "out"),
               PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    before = sorted(p.name for p in TUTORIALS_DIR.iterdir())
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    tail = (proc.stdout[-3000:] + "\n--- stderr ---\n" + proc.stderr[-3000:])
    assert proc.returncode == 0, f"{path.name} failed:\n{tail}"
    after = sorted(p.name for p in TUTORIALS_DIR.iterdir() if p.name != "__pycache__")
    assert after == [n for n in before if n != "__pycache__"], \
        "a tutorial wrote into the repository"
