"""Learning-rate schedules: the learning rate of update number `step` (0, 1, 2, ...).

Every schedule starts with a linear warmup over `warmup` updates,

    lr(step) = base * (step + 1) / warmup          for step < warmup

so the first update already moves (lr > 0), and update `warmup - 1` uses the full base.
After the warmup:

    constant      lr = base
    cosine        lr = min_lr + (base - min_lr) * (1 + cos(pi * progress)) / 2,
                  progress = (step - warmup) / (total - warmup), clipped to [0, 1];
                  min_lr = base * min_lr_ratio. Reaches min_lr at step = total.
    inverse_sqrt  lr = base * sqrt(max(warmup, 1) / (step + 1))  ("Noam"/T5 style:
                  continuous with the warmup's end, decaying as 1/sqrt(step))
"""

from __future__ import annotations

import math

from ..validate import argument, check_int

SCHEDULES = ("cosine", "constant", "inverse_sqrt")


def _check(step: int, warmup: int) -> None:
    check_int(step, argument("learning-rate schedule", "step"), low=0)
    check_int(warmup, argument("learning-rate schedule", "warmup"), low=0)


def warmup_factor(step: int, warmup: int) -> float:
    """(step + 1) / warmup during the warmup, 1 after it."""
    return (step + 1) / warmup if step < warmup else 1.0


def constant(step: int, base: float, warmup: int = 0) -> float:
    _check(step, warmup)
    return base * warmup_factor(step, warmup)


def cosine(step: int, base: float, warmup: int, total: int, min_lr_ratio: float = 0.1) -> float:
    _check(step, warmup)
    if step < warmup:
        return base * warmup_factor(step, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    min_lr = base * min_lr_ratio
    return min_lr + (base - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def inverse_sqrt(step: int, base: float, warmup: int = 0) -> float:
    _check(step, warmup)
    if step < warmup:
        return base * warmup_factor(step, warmup)
    return base * math.sqrt(max(warmup, 1) / (step + 1))


def learning_rate(step: int, *, schedule: str, base: float, warmup: int, total: int,
                  min_lr_ratio: float = 0.1) -> float:
    """The learning rate of update `step` under the named schedule."""
    if schedule == "cosine":
        return cosine(step, base, warmup, total, min_lr_ratio)
    if schedule == "constant":
        return constant(step, base, warmup)
    if schedule == "inverse_sqrt":
        return inverse_sqrt(step, base, warmup)
    raise ValueError(f"learning_rate: argument 'schedule': expected one of {SCHEDULES}, "
                     f"got {schedule!r}")
