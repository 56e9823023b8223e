"""Gemma's GeGLU feed-forward: `y = down( gelu_tanh(gate(x)) * up(x) )`, no biases.

    gelu_tanh(u) = 0.5 u (1 + tanh( sqrt(2/pi) (u + 0.044715 u^3) ))

Shapes: x (..., D), Wg/Wu (F, D), Wd (D, F) -> y (..., D).
`geglu_forward` computes the activation `a = gelu_tanh(gate) * up` with this file's
`geglu_act_forward` unless the caller passes another pair (the models pass the one
`mini_encdec.ops` dispatches, the Numba twin under the numba backend).
"""

from __future__ import annotations

import math

import numpy as np

from ..validate import check_float, check_same_dtype, check_shape
from .linear import linear_unchecked, linear_backward, linear_forward

GELU_C = math.sqrt(2.0 / math.pi)  # sqrt(2/pi)
GELU_A = 0.044715


def _gelu_parts(u):
    """(g, t) with t = tanh(sqrt(2/pi) (u + 0.044715 u^3)) and g = 0.5 u (1 + t)."""
    dt = u.dtype.type
    t = np.tanh(dt(GELU_C) * (u + dt(GELU_A) * u * u * u))
    return dt(0.5) * u * (1 + t), t


def _gelu_grad(u, t):
    """d gelu_tanh / du = 0.5 (1 + t) + 0.5 u (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 u^2)."""
    dt = u.dtype.type
    return dt(0.5) * (1 + t) + dt(0.5) * u * (1 - t * t) * dt(GELU_C) * (1 + dt(3 * GELU_A) * u * u)


def gelu_tanh_forward(u: np.ndarray):
    """g = gelu_tanh(u). Returns (g, cache)."""
    check_float(u, "u", fn="gelu_tanh_forward")
    g, t = _gelu_parts(u)
    return g, {"u": u, "t": t}


def gelu_tanh_backward(dg: np.ndarray, cache: dict):
    """du = dg * gelu_tanh'(u)."""
    u, t = cache["u"], cache["t"]
    check_float(dg, "dg", fn="gelu_tanh_backward")
    check_shape(dg, "dg", u.shape, fn="gelu_tanh_backward")
    # g = 0.5 u (1 + tanh(c (u + a u^3)))
    return dg * _gelu_grad(u, t)


def geglu_act_forward(gate: np.ndarray, up: np.ndarray):
    """a = gelu_tanh(gate) * up, gate/up (..., F). Returns (a, cache)."""
    fn = "geglu_act_forward"
    check_float(gate, "gate", fn=fn)
    check_float(up, "up", fn=fn)
    check_shape(up, "up", gate.shape, fn=fn)
    check_same_dtype(fn, gate=gate, up=up)
    g, t = _gelu_parts(gate)
    return g * up, {"gate": gate, "up": up, "g": g, "t": t}


def geglu_act_backward(da: np.ndarray, cache: dict):
    """Returns (dgate, dup)."""
    gate, up, g, t = cache["gate"], cache["up"], cache["g"], cache["t"]
    check_float(da, "da", fn="geglu_act_backward")
    check_shape(da, "da", gate.shape, fn="geglu_act_backward")
    # a = g * up
    dup = da * g
    dg = da * up
    # g = gelu_tanh(gate)
    dgate = dg * _gelu_grad(gate, t)
    return dgate, dup


def geglu_unchecked(x: np.ndarray, W_gate_up: np.ndarray, Wd: np.ndarray, act=None,
           linear=None) -> np.ndarray:
    """y = (gelu_tanh(x Wg^T) * (x Wu^T)) Wd^T without checks or cache: the inference fast
    path (KV-cached decoding) for callers that validated the inputs once. W_gate_up is
    [Wg ; Wu] (2F, D), concatenated once by the caller: one matmul for both. `act` and
    `linear` (x, W) -> x W^T replace the activation and the matmul (the models pass the
    ops twins)."""
    F = Wd.shape[1]
    linear = linear or linear_unchecked
    gate_up = linear(x, W_gate_up)  # (..., D) @ (D, 2F) -> (..., 2F)
    a, _ = (act or geglu_act_forward)(gate_up[..., :F], gate_up[..., F:])  # (..., F)
    return linear(a, Wd)  # (..., F) @ (F, D) -> (..., D)


def geglu_forward(x: np.ndarray, Wg: np.ndarray, Wu: np.ndarray, Wd: np.ndarray,
                  act: tuple = None, linear: tuple = None):
    """y = (gelu_tanh(x Wg^T) * (x Wu^T)) Wd^T. Returns (y, cache).

    act: the (forward, backward) pair of the activation a = gelu_tanh(gate) * up; default
    this file's geglu_act_forward / geglu_act_backward. The models pass the pair that
    `mini_encdec.ops` dispatches (the Numba twin under the numba backend); nn itself
    never imports the dispatcher. linear: likewise the pair of the three projections
    (default nn.linear's linear_forward / linear_backward)."""
    fn = "geglu_forward"
    check_float(x, "x", fn=fn)
    if x.ndim < 1:
        raise ValueError(f"{fn}: argument 'x': expected at least 1 dimension, got shape {x.shape}")
    D = x.shape[-1]
    check_float(Wg, "Wg", ndim=2, fn=fn)
    check_shape(Wg, "Wg", (None, D), fn=fn)
    F = Wg.shape[0]
    check_float(Wu, "Wu", fn=fn)
    check_shape(Wu, "Wu", (F, D), fn=fn)
    check_float(Wd, "Wd", fn=fn)
    check_shape(Wd, "Wd", (D, F), fn=fn)
    check_same_dtype(fn, x=x, Wg=Wg, Wu=Wu, Wd=Wd)
    project, project_backward = linear or (linear_forward, linear_backward)
    gate, c_g = project(x, Wg)  # (..., D) -> (..., F)
    up, c_u = project(x, Wu)  # (..., D) -> (..., F)
    act_forward, act_backward = act or (geglu_act_forward, geglu_act_backward)
    a, c_a = act_forward(gate, up)  # (..., F)
    y, c_d = project(a, Wd)  # (..., F) -> (..., D)
    return y, {"gate": c_g, "up": c_u, "act": c_a, "act_backward": act_backward, "down": c_d,
               "linear_backward": project_backward}


def geglu_backward(dy: np.ndarray, cache: dict):
    """Returns (dx, dWg, dWu, dWd)."""
    check_float(dy, "dy", fn="geglu_backward")
    x = cache["gate"]["x"]
    check_shape(dy, "dy", x.shape, fn="geglu_backward")
    # y = a Wd^T
    project_backward = cache["linear_backward"]
    da, dWd = project_backward(dy, cache["down"])
    # a = gelu_tanh(gate) * up
    dgate, dup = cache["act_backward"](da, cache["act"])
    # gate = x Wg^T, up = x Wu^T
    dx_g, dWg = project_backward(dgate, cache["gate"])
    dx_u, dWu = project_backward(dup, cache["up"])
    return dx_g + dx_u, dWg, dWu, dWd
