"""Small helpers shared by the tutorials (not a tutorial itself: names starting with "_"
are skipped by tests/test_tutorials.py).

    plt = pyplot()          matplotlib.pyplot, or None when matplotlib is not installed (the
                            tutorials then skip their plots)
    save(fig, name)         show the figure: inline in a notebook, as a PNG file otherwise
    in_notebook()           True inside a Jupyter kernel
    out = output_dir()      where figure files go: $MINI_ENCDEC_TUTORIAL_OUT, else a fresh
                            temporary directory; never the repository

In a student copy, importing this module limits BLAS to one thread unless
OPENBLAS_NUM_THREADS (or OMP_/MKL_NUM_THREADS) is set.

Run as a script (`python tutorials/03_adaptation.py`), a tutorial draws with the file-only
"Agg" backend and `save` writes each figure to output_dir() and prints its path. Opened as
a notebook (jupytext, tutorials/README.md), `save` displays the figure inline as a PNG
image in the cell's output, and writes a file as well only when $MINI_ENCDEC_TUTORIAL_OUT
is set.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

_OUT_ENV = "MINI_ENCDEC_TUTORIAL_OUT"
_THREAD_ENVS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _one_blas_thread_in_a_student_copy() -> bool:
    """In a student copy (tutorials/assignments/blank.py writes STUDENT_COPY.json at its
    root), limit BLAS to one thread unless a thread variable is set: the lab's timings
    (tutorials/README.md) are measured so, and on a shared 2-core machine the default two
    OpenBLAS threads make a tutorial 3-4 times slower. True when it did."""
    if not (Path(__file__).resolve().parent.parent / "STUDENT_COPY.json").exists():
        return False
    if any(os.environ.get(v) for v in _THREAD_ENVS):
        return False
    try:
        import threadpoolctl
    except ImportError:
        return False
    threadpoolctl.threadpool_limits(1, user_api="blas")  # kept for the whole process
    return True


_one_blas_thread_in_a_student_copy()


def in_notebook() -> bool:
    """True when this code runs in a Jupyter kernel (IPython with a kernel attached), where
    a figure can be shown inline; False in a plain `python` run or a terminal IPython."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; a script has not
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@lru_cache(maxsize=None)
def output_dir() -> Path:
    """The directory figure files are saved into (created once per run)."""
    path = os.environ.get(_OUT_ENV)
    if path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        return out
    return Path(tempfile.mkdtemp(prefix="mini_encdec_tutorial_"))


def pyplot():
    """matplotlib.pyplot, or None if matplotlib is missing. In a script it draws with the
    file-only "Agg" backend (no window opens); a notebook keeps its kernel's backend."""
    try:
        import matplotlib
    except ImportError:
        return None
    if not in_notebook():
        matplotlib.use("Agg")  # files only: a script never opens a window
    import matplotlib.pyplot as plt
    return plt


def save(fig, name: str) -> Optional[Path]:
    """Show `fig` and close it. In a notebook: an inline PNG image in the cell's output
    (plus a file in output_dir() when $MINI_ENCDEC_TUTORIAL_OUT is set). Otherwise: a PNG
    file in output_dir(), whose path is printed. Returns the file's path, or None."""
    import matplotlib.pyplot as plt
    path = None
    notebook = in_notebook()
    if notebook:
        from IPython.display import Image, display
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
        display(Image(data=png.getvalue(), format="png"))  # output type image/png
    if not notebook or os.environ.get(_OUT_ENV):
        path = output_dir() / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        if not notebook:
            print(f"saved {path}")
    plt.close(fig)  # closed, so an inline backend does not draw it a second time
    return path
