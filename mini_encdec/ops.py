"""The one dispatch point for the hot ops: name -> (NumPy reference, Numba twin).

The models and the optimizer call the hot functions through this module, e.g.
`ops.attention_core_forward(q, k, v, mask, scale=..., softcap=...)` (each op is a plain
function at the end of this file that calls `resolve(name)`) or
`ops.resolve("adamw_update")`; nothing else dispatches. With the numpy backend every name
runs the reference in `mini_encdec.nn` (what students read, edit and are graded on); with
the numba backend (the default, see `backend.py`) it runs the twin of the same name in
`mini_encdec.kernels`, which has the reference's exact signature and results.

The table is static and complete: every op has both halves. If the kernels cannot be
imported (Numba missing, a renamed helper), the numba backend fails loudly with the
reason and how to select the numpy backend; it never falls back to NumPy on its own.
Importing or running the kernels changes no environment variable and no allocator setting
(their thread policy does size BLAS's and Numba's pools, `kernels/threads.py`);
`tune_process()` is the command line's opt-in to those process-wide settings.
A forward and its backward must run under the same backend (the cache formats differ),
which holds because the backend is fixed for a run.
"""

from __future__ import annotations

import contextlib
import importlib

from .backend import get_backend
from .nn import (adamw, attention, decode_step, embedding, linear, loss, mlp, output_loss,
                 rmsnorm, rope)

# op name -> the NumPy reference; the twin is `mini_encdec.kernels.<op name>`.
REFERENCE = {
    "linear_forward": linear.linear_forward,
    "linear_backward": linear.linear_backward,
    "attention_core_forward": attention.attention_core_forward,
    "attention_core_backward": attention.attention_core_backward,
    "rope_forward": rope.rope_forward,
    "rope_backward": rope.rope_backward,
    "rmsnorm_forward": rmsnorm.rmsnorm_forward,
    "rmsnorm_backward": rmsnorm.rmsnorm_backward,
    "geglu_act_forward": mlp.geglu_act_forward,
    "geglu_act_backward": mlp.geglu_act_backward,
    "softcap_cross_entropy_forward": loss.softcap_cross_entropy_forward,
    "softcap_cross_entropy_backward": loss.softcap_cross_entropy_backward,
    "output_loss_and_grads": output_loss.output_loss_and_grads,
    "embedding_backward": embedding.embedding_backward,
    "adamw_update": adamw.adamw_update,
    # one KV-cached decoding step's pieces (inference only; models/decoding.py's plan)
    "project": decode_step.project,
    "rope_append": decode_step.rope_append,
    "attend": decode_step.attend,
    "residual_norm": decode_step.residual_norm,
}


class KernelImportError(ImportError):
    """The numba backend is selected but its kernels cannot be imported."""


_twins: dict = {}  # filled by the first successful twins() call


def twins() -> dict:
    """name -> Numba twin, for every op in REFERENCE (imports `mini_encdec.kernels`)."""
    if _twins:
        return _twins
    try:
        kernels = importlib.import_module("mini_encdec.kernels")
    except ImportError as e:
        raise KernelImportError(
            f"the numba backend needs mini_encdec.kernels, which failed to import ({e}); "
            f"install numba (requirements.txt) or select the NumPy reference with "
            f"MINI_ENCDEC_BACKEND=numpy") from e
    missing = [name for name in REFERENCE if not callable(getattr(kernels, name, None))]
    if missing:
        raise KernelImportError(f"mini_encdec.kernels has no twin for {missing}; every op in "
                                f"ops.REFERENCE needs one (or run with MINI_ENCDEC_BACKEND=numpy)")
    if _tuning["requested"]:
        kernels.apply_process_tuning()  # may raise ValueError (a bad MINI_ENCDEC_MALLOC)
    _twins.update((name, getattr(kernels, name)) for name in REFERENCE)
    return _twins


_tuning = {"requested": False}


def tune_process() -> None:
    """Opt this process in to the numba backend's process-wide settings: idle OpenMP threads
    sleep (OMP_WAIT_POLICY=PASSIVE in os.environ unless set, `kernels/threads.py`) and glibc
    keeps freed memory for the next step (`kernels/allocator.py`, MINI_ENCDEC_MALLOC).
    Both reach beyond the library (child processes inherit the variable; the allocator
    serves everything in the process), so importing the package or using its Python API
    never does this: the command line calls it first thing (`mini_encdec/__main__.py`), and
    a program that owns its process may call it too. Applied when the kernels are first
    looked up (`twins()`), at once if they already were; a bad MINI_ENCDEC_MALLOC then
    raises ValueError."""
    _tuning["requested"] = True
    if _twins:
        importlib.import_module("mini_encdec.kernels").apply_process_tuning()


def resolve(name: str, backend: str | None = None):
    """The function implementing op `name` under `backend` (default: the current one)."""
    if name not in REFERENCE:
        raise ValueError(f"ops.resolve: unknown op {name!r}; known: {sorted(REFERENCE)}")
    backend = backend or get_backend()
    if backend == "numpy":
        return REFERENCE[name]
    return twins()[name]


def serial(rows: int = 1, weight_bytes: int = 0):
    """A context manager for a KV-cached decoding step of `rows` rows that reads
    `weight_bytes` of weights: under the numba backend the thread policy decides whether it
    runs on one thread (`kernels/threads.py`, `step_threads`); a no-op under numpy."""
    if get_backend() == "numba":
        twins()  # the kernels (and their thread policy) are importable, or a loud error
        threads = importlib.import_module("mini_encdec.kernels.threads")
        return threads.step_threads(rows, weight_bytes)
    return contextlib.nullcontext()


# --- the ops: each runs the function of its name under the current backend --------------------

def linear_forward(x, W):
    """y = x W^T (..., In) @ (In, Out) -> (y, cache) (nn/linear.py)."""
    return resolve("linear_forward")(x, W)


def linear_backward(dy, cache):
    """(dx, dW) of linear_forward (nn/linear.py)."""
    return resolve("linear_backward")(dy, cache)


def attention_core_forward(q, k, v, mask, *, scale, softcap):
    """q (B, H, Tq, Dh), k/v (B, K, Tk, Dh) -> (o (B, H, Tq, Dh), cache) (nn/attention.py)."""
    return resolve("attention_core_forward")(q, k, v, mask, scale=scale, softcap=softcap)


def attention_core_backward(do, cache):
    """(dq, dk, dv) of attention_core_forward (nn/attention.py)."""
    return resolve("attention_core_backward")(do, cache)


def rope_forward(x, cos, sin):
    """x (B, N, T, Dh) rotated by the (cos, sin) tables -> (y, cache) (nn/rope.py)."""
    return resolve("rope_forward")(x, cos, sin)


def rope_backward(dy, cache):
    """dx of rope_forward (nn/rope.py)."""
    return resolve("rope_backward")(dy, cache)


def rmsnorm_forward(x, w, eps=1e-6):
    """y = x / rms(x) * (1 + w) over the last axis -> (y, cache) (nn/rmsnorm.py)."""
    return resolve("rmsnorm_forward")(x, w, eps)


def rmsnorm_backward(dy, cache):
    """(dx, dw) of rmsnorm_forward (nn/rmsnorm.py)."""
    return resolve("rmsnorm_backward")(dy, cache)


def geglu_act_forward(gate, up):
    """a = gelu_tanh(gate) * up -> (a, cache) (nn/mlp.py)."""
    return resolve("geglu_act_forward")(gate, up)


def geglu_act_backward(da, cache):
    """(dgate, dup) of geglu_act_forward (nn/mlp.py)."""
    return resolve("geglu_act_backward")(da, cache)


def softcap_cross_entropy_forward(z, labels, cap, ignore_index=-100):
    """Mean cross-entropy of cap * tanh(z / cap) -> (loss, cache) (nn/loss.py)."""
    return resolve("softcap_cross_entropy_forward")(z, labels, cap, ignore_index)


def softcap_cross_entropy_backward(dloss, cache):
    """dz of softcap_cross_entropy_forward (nn/loss.py)."""
    return resolve("softcap_cross_entropy_backward")(dloss, cache)


def output_loss_and_grads(h, E, labels, cap, ignore_index=-100, teacher_probs=None,
                          alpha=0.0, temperature=1.0):
    """The loss of the logits cap * tanh(h E^T / cap) (cross-entropy, or with teacher
    probabilities alpha * distillation + (1 - alpha) * cross-entropy) and its gradients,
    a block of rows at a time -> (loss, dh (..., D), dE (V, D), {"ce", "soft"})
    (nn/output_loss.py)."""
    return resolve("output_loss_and_grads")(h, E, labels, cap, ignore_index, teacher_probs,
                                            alpha, temperature)


def embedding_backward(dx, cache):
    """dE (V, D) of embedding_forward (nn/embedding.py)."""
    return resolve("embedding_backward")(dx, cache)


def adamw_update(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, t):
    """One AdamW update of p, m, v in place (nn/adamw.py)."""
    return resolve("adamw_update")(p, g, m, v, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                   weight_decay=weight_decay, t=t)


def project(x, W):
    """y = x W^T (..., In) -> (..., Out) of a decoding step or a prompt, no checks, no cache
    (nn/decode_step.py)."""
    return resolve("project")(x, W)


def rope_append(qkv, cos, sin, k_buf, v_buf, slot, num_heads):
    """RoPE(q) (B, H, 1, Dh) of one decoding step; RoPE(k) and v written into the KV
    cache's buffers at `slot` (nn/decode_step.py)."""
    return resolve("rope_append")(qkv, cos, sin, k_buf, v_buf, slot, num_heads)


def attend(q, k_buf, v_buf, lo, hi, mask, *, scale, softcap):
    """o (B, 1, H*Dh) of one decoding step's queries over the cached keys [lo, hi)
    (nn/decode_step.py)."""
    return resolve("attend")(q, k_buf, v_buf, lo, hi, mask, scale=scale, softcap=softcap)


def residual_norm(x, y, w, w_next, eps):
    """(x + RMSNorm(y, w), RMSNorm(that, w_next)) (nn/decode_step.py)."""
    return resolve("residual_norm")(x, y, w, w_next, eps)
