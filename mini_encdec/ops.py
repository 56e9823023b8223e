"""Backend dispatch for the hot ops.

Models call the hot layer functions through this module, e.g.
`ops.attention_core_forward(q, k, v, mask, scale=..., softcap=...)`. With the numpy
backend every name resolves to the reference in `mini_encdec.nn`; with the numba backend
it resolves to the twin registered in `mini_encdec.kernels.TWINS` when one exists.
A forward and its backward must run under the same backend (the cache formats may
differ), which holds because the backend is fixed for a run.
"""

from __future__ import annotations

import importlib

from .backend import get_backend

# name -> "module:function" of the NumPy reference.
REFERENCE = {
    "attention_core_forward": "mini_encdec.nn.attention:attention_core_forward",
    "attention_core_backward": "mini_encdec.nn.attention:attention_core_backward",
    "rmsnorm_forward": "mini_encdec.nn.rmsnorm:rmsnorm_forward",
    "rmsnorm_backward": "mini_encdec.nn.rmsnorm:rmsnorm_backward",
    "geglu_act_forward": "mini_encdec.nn.mlp:geglu_act_forward",
    "geglu_act_backward": "mini_encdec.nn.mlp:geglu_act_backward",
    "softcap_cross_entropy_forward": "mini_encdec.nn.loss:softcap_cross_entropy_forward",
    "softcap_cross_entropy_backward": "mini_encdec.nn.loss:softcap_cross_entropy_backward",
    "embedding_backward": "mini_encdec.nn.embedding:embedding_backward",
    "adamw_update": "mini_encdec.training.optim:adamw_update",
}

_resolved: dict[tuple[str, str], object] = {}


def _load(path: str):
    mod, fn = path.split(":")
    return getattr(importlib.import_module(mod), fn)


def resolve(name: str, backend: str | None = None):
    """The function implementing op `name` under `backend` (default: the current one)."""
    backend = backend or get_backend()
    key = (name, backend)
    if key not in _resolved:
        if name not in REFERENCE:
            raise ValueError(f"ops.resolve: unknown op {name!r}; known: {sorted(REFERENCE)}")
        fn = None
        if backend == "numba":
            try:
                twins = importlib.import_module("mini_encdec.kernels").TWINS
            except (ImportError, AttributeError):
                twins = {}
            fn = twins.get(name)
        _resolved[key] = fn if fn is not None else _load(REFERENCE[name])
    return _resolved[key]


def __getattr__(name: str):
    if name in REFERENCE:
        return lambda *a, **k: resolve(name)(*a, **k)
    raise AttributeError(name)
