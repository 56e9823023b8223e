"""Pre-training objectives as pure functions of (tokens, np.random.Generator) (SPEC 4).

    causal_lm.py        packing documents, next-token windows (decoder-only)
    prefix_lm.py        PrefixLM halves; teacher alignment for distillation
    span_corruption.py  T5 span corruption with the exact rules and the length helper
    ul2.py              UL2 denoisers, the two presets, the S-denoiser
    objective.py        objects the batcher drives (window length + example)
    example.py          the Example (inputs, targets) pair every objective returns
"""

from .causal_lm import causal_lm, pack_documents  # noqa: F401
from .example import Example, teacher_positions  # noqa: F401
from .objective import (OBJECTIVES, UL2, CausalLM, PrefixLM, SpanCorruption,  # noqa: F401
                        make_objective)
from .prefix_lm import prefix_lm  # noqa: F401
from .span_corruption import (composition_first_part_pmf, corrupted_lengths,  # noqa: F401
                              fitting_raw_length, max_spans, noise_counts, noise_mask,
                              random_composition, span_corruption, span_corruption_lengths,
                              uncorrupt)
from .ul2 import (T5GEMMA2, T5GEMMA2_WEIGHTS, UL2_PAPER, Denoiser, UL2Mixture,  # noqa: F401
                  denoise, sequential_denoise, sequential_prefix_bounds, ul2_example,
                  ul2_preset)
