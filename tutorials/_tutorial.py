"""Small helpers shared by the tutorials (not a tutorial itself: names starting with "_"
are skipped by tests/test_tutorials.py).

    out = output_dir()      where figures go: $MINI_ENCDEC_TUTORIAL_OUT, else a fresh temp
                            directory; never the repository
    plt = pyplot()          matplotlib.pyplot with the file-only "Agg" backend, or None when
                            matplotlib is not installed (the tutorials then skip their plots)
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

_OUT_ENV = "MINI_ENCDEC_TUTORIAL_OUT"


@lru_cache(maxsize=None)
def output_dir() -> Path:
    """The directory figures are saved into (created once per run)."""
    path = os.environ.get(_OUT_ENV)
    if path:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        return out
    return Path(tempfile.mkdtemp(prefix="mini_encdec_tutorial_"))


def pyplot():
    """matplotlib.pyplot drawing to files only, or None if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: the tutorials never call plt.show()
    import matplotlib.pyplot as plt
    return plt


def save(fig, name: str) -> Path:
    """Save a figure into output_dir() and close it; returns the path."""
    path = output_dir() / name
    fig.savefig(path, dpi=100, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt
    plt.close(fig)
    print(f"saved {path}")
    return path
