"""AdamW with decoupled weight decay, global-norm clipping, gradient accumulation and
freezing by name pattern, over the flat parameter dict (Hugging Face keys, SPEC.md section 5).

AdamW (Loshchilov & Hutter 2019), for one parameter p with gradient g at its t-th update
(t = 1, 2, ...; each parameter counts its own updates, so a parameter that was frozen
for a while starts with a correct bias correction when it is unfrozen):

    m = beta1 * m + (1 - beta1) * g                 first moment
    v = beta2 * v + (1 - beta2) * g^2               second moment
    m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)
    p = p * (1 - lr * weight_decay)                 decoupled decay (only where it applies)
    p = p - lr * m_hat / (sqrt(v_hat) + eps)

The decay is "decoupled": it shrinks the weights directly instead of being added to the
gradient, so Adam's per-coordinate scaling does not touch it. By default it is not
applied to norm weights (they are offsets, `(1 + w)`, whose natural value is 0 anyway)
nor to embeddings; `no_decay` lists the regular expressions that pick those names.

Clipping: all trainable gradients are scaled by min(1, clip_norm / (||g|| + 1e-6)),
||g|| the global L2 norm over every trainable gradient together.

Freezing: `trainable_names` picks the parameters that update at a given step: names
matching a `freeze` pattern never train; during the first `warmup_steps` updates only
names matching `warmup_pattern` train (the paper's cross-attention warmup for unbalanced
adaptation, `EncDecConfig.cross_attn_warmup_steps`; SPEC.md section 3). The pattern `cross_attn`
also matches the cross-attention norms `pre_/post_cross_attn_layernorm`. Frozen
parameters are skipped entirely (no decay, no moment update): they stay bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from .. import ops
from .schedules import SCHEDULES, learning_rate
from ..validate import check_choice, check_int, check_known_fields, check_number, invalid


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and gradient-handling settings of a training run."""

    # Peak learning rate (reached at the end of the warmup).
    lr: float = 1e-3
    # Adam's moment decay rates.
    beta1: float = 0.9
    beta2: float = 0.95
    # Added to sqrt(v_hat) in the denominator.
    eps: float = 1e-8
    # Decoupled weight decay coefficient (the shrink per update is lr * weight_decay).
    weight_decay: float = 0.01
    # Regular expressions (re.search) of parameter names that get no weight decay.
    no_decay: tuple = ("norm", "embed_tokens")
    # Learning-rate schedule: "cosine", "constant", "inverse_sqrt" or "wsd" (schedules.py).
    schedule: str = "cosine"
    # Linear warmup length in updates.
    warmup_steps: int = 20
    # Length of the cosine decay in updates; None means the run's number of steps.
    total_steps: Optional[int] = None
    # The cosine (and the WSD cooldown) ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.1
    # "wsd" only: length of the final linear cooldown in updates; None means 20% of the
    # run (schedules.wsd).
    decay_steps: Optional[int] = None
    # Global-norm gradient clipping threshold; None disables clipping.
    clip_norm: Optional[float] = 1.0
    # Micro-batches whose gradients are averaged into one update.
    grad_accum: int = 1
    # Regular expressions of parameter names that never train.
    freeze: tuple = ()

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("lr", "eps"):
            check_number(getattr(self, f), f"{name}.{f}", low=0, low_open=True)
        for f in ("beta1", "beta2"):
            check_number(getattr(self, f), f"{name}.{f}", low=0, high=1, high_open=True)
        check_number(self.weight_decay, f"{name}.weight_decay", low=0)
        check_number(self.min_lr_ratio, f"{name}.min_lr_ratio", low=0, high=1)
        check_choice(self.schedule, f"{name}.schedule", SCHEDULES)
        check_int(self.warmup_steps, f"{name}.warmup_steps", low=0)
        check_int(self.total_steps, f"{name}.total_steps", low=1, allow_none=True)
        check_int(self.decay_steps, f"{name}.decay_steps", low=1, allow_none=True)
        check_number(self.clip_norm, f"{name}.clip_norm", low=0, low_open=True, allow_none=True)
        check_int(self.grad_accum, f"{name}.grad_accum", low=1)
        for f in ("no_decay", "freeze"):
            pats = getattr(self, f)
            if isinstance(pats, str) or not isinstance(pats, (tuple, list)):
                raise invalid(f"{name}.{f}", "a tuple of regular expressions", pats)
            for p in pats:
                try:
                    re.compile(p)
                except (re.error, TypeError) as e:
                    raise invalid(f"{name}.{f}", f"valid regular expressions ({e})", p) \
                        from None
            object.__setattr__(self, f, tuple(pats))

    def lr_at(self, step: int, run_steps: int) -> float:
        """Learning rate of update `step` (0-based) in a run of `run_steps` updates."""
        return learning_rate(step, schedule=self.schedule, base=self.lr,
                             warmup=self.warmup_steps,
                             total=self.total_steps or run_steps,
                             min_lr_ratio=self.min_lr_ratio, decay=self.decay_steps)

    def replace(self, **changes) -> "OptimConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["no_decay"], d["freeze"] = list(self.no_decay), list(self.freeze)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "OptimConfig":
        d = check_known_fields(cls, d)
        for f in ("no_decay", "freeze"):
            if f in d:
                d[f] = tuple(d[f])
        return cls(**d)


# --- name patterns ----------------------------------------------------------------------------

def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when any regular expression in `patterns` is found in `name`."""
    return any(re.search(p, name) for p in patterns)


def trainable_names(names: Iterable[str], step: int, *, freeze: Sequence[str] = (),
                    warmup_steps: int = 0, warmup_pattern: str = "cross_attn") -> list:
    """The parameter names that update at update `step` (0-based), in the given order.

    Names matching `freeze` never train; while step < warmup_steps only names matching
    `warmup_pattern` train. Raises ValueError when nothing would train.
    """
    names = list(names)
    out = [n for n in names if not matches(n, freeze)]
    if step < warmup_steps:
        out = [n for n in out if re.search(warmup_pattern, n)]
        if not out:
            raise ValueError(f"trainable_names: a warmup of {warmup_steps} steps trains only "
                             f"parameters matching {warmup_pattern!r}, but no (unfrozen) "
                             f"parameter matches (merged_attention models have no "
                             f"cross-attention; set cross_attn_warmup_steps=0)")
    if not out:
        raise ValueError(f"trainable_names: every parameter is frozen by {list(freeze)}")
    return out


# --- gradients ----------------------------------------------------------------------------------

def global_norm(grads: dict, names: Optional[Iterable[str]] = None) -> float:
    """sqrt(sum of squares) over the gradients of `names` (default: all), in float64."""
    names = grads.keys() if names is None else names
    return float(np.sqrt(sum(float(np.sum(np.square(grads[n], dtype=np.float64)))
                             for n in names)))


def clip_by_global_norm(grads: dict, max_norm: Optional[float],
                        names: Optional[Iterable[str]] = None) -> float:
    """Scale the gradients of `names` IN PLACE so their global norm is at most max_norm
    (None: no clipping). Returns the norm before clipping."""
    names = list(grads.keys() if names is None else names)
    norm = global_norm(grads, names)
    if max_norm is not None and np.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for n in names:
            grads[n] *= grads[n].dtype.type(scale)
    return norm


def accumulate(total: Optional[dict], grads: dict, weight: float) -> dict:
    """total + weight * grads (total None: a fresh weight * grads); adds in place."""
    if total is None:
        return {k: g * g.dtype.type(weight) for k, g in grads.items()}
    for k, g in grads.items():
        total[k] += g * g.dtype.type(weight)
    return total


# --- AdamW ----------------------------------------------------------------------------------------

class AdamW:
    """AdamW over a flat parameter dict. `step` updates the parameter arrays in place (the
    model keeps using the same arrays). State: moments m, v (same dtype as the parameter)
    and a per-parameter update count t."""

    def __init__(self, params: dict, config: OptimConfig = OptimConfig()):
        if not isinstance(config, OptimConfig):
            raise ValueError(f"AdamW: argument 'config': expected an OptimConfig, got "
                             f"{type(config).__name__}")
        self.config = config
        self.names = list(params)
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = {k: 0 for k in params}
        # decay[k]: whether parameter k gets weight decay
        self.decay = {k: not matches(k, config.no_decay) for k in params}

    def step(self, params: dict, grads: dict, lr: float,
             names: Optional[Iterable[str]] = None) -> None:
        """One update of the parameters in `names` (default: all) with learning rate lr."""
        c = self.config
        names = self.names if names is None else list(names)
        for k in names:
            if k not in self.m:
                raise ValueError(f"AdamW.step: unknown parameter {k!r}")
            if k not in grads:
                raise ValueError(f"AdamW.step: argument 'grads': missing gradient for {k!r}")
            p, g, m, v = params[k], grads[k], self.m[k], self.v[k]
            if g.shape != p.shape:
                raise ValueError(f"AdamW.step: gradient of {k!r} has shape {g.shape}, the "
                                 f"parameter {p.shape}")
            self.t[k] += 1
            # nn/adamw.py's adamw_update, or its fused twin under the numba backend
            ops.resolve("adamw_update")(p, g, m, v, lr=lr, beta1=c.beta1, beta2=c.beta2,
                                        eps=c.eps, t=self.t[k],
                                        weight_decay=c.weight_decay if self.decay[k] else 0.0)

    # --- state for checkpoints -------------------------------------------------------------
    def state_arrays(self) -> dict:
        """The moments as a flat dict of arrays: "m.<name>", "v.<name>"."""
        out = {f"m.{k}": a for k, a in self.m.items()}
        out.update({f"v.{k}": a for k, a in self.v.items()})
        return out

    def state_json(self) -> dict:
        """The JSON part of the state: per-parameter update counts and the config."""
        return {"t": dict(self.t), "config": self.config.to_dict()}

    def load_state(self, arrays: dict, state: dict, source: str = "optimizer state") -> None:
        """Restore from `state_arrays()` / `state_json()` output; `source` names the file
        in error messages."""
        want = set(self.state_arrays())
        got = set(arrays)
        if want != got:
            missing, extra = sorted(want - got), sorted(got - want)
            raise ValueError(f"{source}: optimizer moments do not match the model: missing "
                             f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                             f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
        for key, a in arrays.items():
            which, name = key.split(".", 1)
            ref = self.m[name]
            if a.shape != ref.shape or a.dtype != ref.dtype:
                raise ValueError(f"{source}: moment {key!r} has shape {a.shape} dtype "
                                 f"{a.dtype}, the parameter {ref.shape} {ref.dtype}")
            (self.m if which == "m" else self.v)[name] = np.array(a, copy=True)
        t = state.get("t", {})
        if set(t) != set(self.t):
            raise ValueError(f"{source}: update counts 't' do not match the model's "
                             f"parameters")
        self.t = {k: int(v) for k, v in t.items()}
