"""Loss-curve plots (matplotlib is optional: without it nothing is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def new_figure(figsize):
    """A matplotlib Figure on an Agg canvas of its own (no pyplot, no change to the global
    backend), or None when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_loss_curve(history: Sequence[dict], path, title: Optional[str] = None) -> Optional[Path]:
    """Training loss per step (and validation loss where present) to a PNG at `path`.
    Returns the path, or None when matplotlib is not installed or there is nothing to plot."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in history if "val_loss" in r]
    fig = new_figure((6, 4)) if train or val else None
    if fig is None:
        return None
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
