"""Pre-training objectives as pure functions of (tokens, np.random.Generator) (SPEC.md section 4).

    causal_lm.py        packing documents, next-token windows (decoder-only)
    prefix_lm.py        PrefixLM halves; teacher alignment for distillation
    span_corruption.py  T5 span corruption with the exact rules and the length helper
    ul2.py              UL2 denoisers, the two presets, the S-denoiser
    objective.py        objects the batcher drives (window length + example)
    example.py          the Example (inputs, targets) pair every objective returns

The package exports what the batcher and the command line drive (`make_objective`, the
objective classes, `Example`); the functions live in, and are imported from, their
modules (e.g. `from mini_encdec.objectives.span_corruption import span_corruption`), so
no exported name hides a module of the same name.
"""

from .example import Example  # noqa: F401
from .objective import (OBJECTIVES, UL2, CausalLM, PrefixLM, SpanCorruption,  # noqa: F401
                        make_objective)
