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
    wsd           warmup-stable-decay: lr = base before decay_start = total - decay; the
                  `decay` updates of the cooldown step linearly down towards
                  min_lr = base * min_lr_ratio:
                  lr = min_lr + (base - min_lr) * (total - step) / (decay + 1),
                  so the first cooldown update already moves below base and the last
                  (step total - 1) still moves (lr > min_lr); min_lr from step total on. `decay` defaults to 20% of the run (Hagele et al. 2024: a 20%
                  linear cooldown matches a cosine of the same length).

Why WSD: up to decay_start it equals `constant`, so one stable run serves every budget B:
its checkpoint at B - decay(B) plus a cooldown of decay(B) updates is a fully annealed run
of B updates (a "cooldown branch"), never a mid-schedule checkpoint.
"""

from __future__ import annotations

import math

from ..validate import argument, check_int

SCHEDULES = ("cosine", "constant", "inverse_sqrt", "wsd")
WSD_DECAY_FRACTION = 0.2  # the cooldown's share of a WSD run when no length is given


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


def wsd_decay_steps(total: int, decay=None) -> int:
    """The cooldown length of a WSD run of `total` updates: `decay`, or 20% of total
    (at least 1)."""
    check_int(total, argument("learning-rate schedule", "total"), low=1)
    if decay is None:
        return max(1, round(WSD_DECAY_FRACTION * total))
    check_int(decay, argument("learning-rate schedule", "decay"), low=1, high=total)
    return decay


def wsd(step: int, base: float, warmup: int, total: int, decay=None,
        min_lr_ratio: float = 0.0) -> float:
    """Warmup-stable-decay (module docstring): constant after the warmup, then a linear
    cooldown over the last `decay` updates to base * min_lr_ratio at step `total`."""
    _check(step, warmup)
    decay = wsd_decay_steps(total, decay)
    start = total - decay
    min_lr = base * min_lr_ratio
    cooled = base if step < start else \
        min_lr + (base - min_lr) * max(0, total - step) / (decay + 1)
    return min(base * warmup_factor(step, warmup), cooled)  # a warmup cut short by the decay


def learning_rate(step: int, *, schedule: str, base: float, warmup: int, total: int,
                  min_lr_ratio: float = 0.1, decay=None) -> float:
    """The learning rate of update `step` under the named schedule (`decay`: the WSD
    cooldown length, None for 20% of total)."""
    if schedule == "wsd":
        return wsd(step, base, warmup, total, decay, min_lr_ratio)
    if schedule == "cosine":
        return cosine(step, base, warmup, total, min_lr_ratio)
    if schedule == "constant":
        return constant(step, base, warmup)
    if schedule == "inverse_sqrt":
        return inverse_sqrt(step, base, warmup)
    raise ValueError(f"learning_rate: argument 'schedule': expected one of {SCHEDULES}, "
                     f"got {schedule!r}")
