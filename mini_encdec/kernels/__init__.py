"""Numba twins of the hot `nn/` functions: same signatures, same results (float32 within
1e-5 relative, gradients within 1e-4; float64 to rounding), faster.

`mini_encdec.ops.resolve` runs the function of the op's name here when the backend is "numba" (the default; see
`mini_encdec.backend`). Importing this package imports Numba but compiles nothing: each
kernel compiles on its first call for a dtype (float32 or float64) and is cached on disk
(`__pycache__`), so later processes load it in well under a second.

Files, each starting with a checklist (what is fused, what runs in parallel, memory):
    attention.py   attention core forward/backward (online softmax, recomputing backward)
    rmsnorm.py     RMSNorm forward/backward
    rope.py        rotary position embedding forward/backward (one pass, no copies)
    mlp.py         the GeGLU activation forward/backward
    loss.py        soft-capped cross-entropy forward/backward
    output_loss.py the output layer, its loss and their gradients, a block of rows at a time
    decode_step.py one KV-cached decoding step's pieces: RoPE + cache write, attention over
                   the cache, post-norm + residual + next pre-norm (one call each)
    embedding.py   the embedding-gradient scatter
    adamw.py       one fused AdamW parameter update (optim.AdamW.step's inner loop)
    linear.py      y = x W^T and its gradients (many rows: matmul.py), and `project`,
                   a decoding step's products (1-32 rows: a kernel)
    matmul.py      BLAS products split across the policy's threads, load-independent bits
    _vecmath.py    vectorisable float32 exp/tanh and the shared jit options
    threads.py     how many threads BLAS and Numba use, and when (MINI_ENCDEC_THREADS)
    allocator.py   glibc keeps freed memory for the next step (MINI_ENCDEC_MALLOC)

Importing the kernels changes no environment variable and no allocator setting; the
process-wide settings (threads.set_wait_policy, allocator.apply) apply only after the
opt-in `mini_encdec.ops.tune_process()`, which the command line calls.

Matmuls of many rows stay on BLAS: `numpy.matmul`, through matmul.py where BLAS must
stay at one thread (threads.py) and the product is worth splitting.
"""

from __future__ import annotations

from . import allocator, threads
from .adamw import adamw_update
from .attention import attention_core_backward, attention_core_forward
from .decode_step import attend, residual_norm, rope_append
from .embedding import embedding_backward
from .linear import linear_backward, linear_forward, project
from .loss import softcap_cross_entropy_backward, softcap_cross_entropy_forward
from .mlp import geglu_act_backward, geglu_act_forward
from .output_loss import output_loss_and_grads
from .rmsnorm import rmsnorm_backward, rmsnorm_forward
from .rope import rope_backward, rope_forward



def apply_process_tuning() -> None:
    """The settings `mini_encdec.ops.tune_process()` opts in to: OMP_WAIT_POLICY=PASSIVE
    (threads.set_wait_policy) and glibc keeping freed memory (allocator.apply)."""
    threads.set_wait_policy()
    allocator.apply()

__all__ = ["apply_process_tuning", "adamw_update", "attend", "attention_core_backward",
           "attention_core_forward", "embedding_backward", "geglu_act_backward",
           "geglu_act_forward", "linear_backward", "linear_forward", "output_loss_and_grads",
           "project", "residual_norm", "rmsnorm_backward", "rmsnorm_forward", "rope_append",
           "rope_backward", "rope_forward", "softcap_cross_entropy_backward",
           "softcap_cross_entropy_forward"]
