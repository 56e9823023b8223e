"""The UL2 arm reads the mode token of its pre-training convention when it is fine-tuned
and evaluated: [S2S] for generation (the reply + genre-as-text mixture, the replies it
generates, rank classification), [NLU] for classification (the probes).

Fine-tuning: the examples are built one token shorter (encoder_length - 1) and the mode
token is prepended, so they fit the same lengths as every other arm's and hold the same
speeches (a long speech loses one more token at its far left end). Probes: the same
examples as every other arm's with the mode token in front (rep_length + 1 tokens).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ...objectives.example import Example
from ...text.rep_tasks import RepExample
from ...text.tasks import ClassExample
from .. import downstream
from .representation import RepData, build_rep_data

MODE_ARMS = ("ed_ul2",)     # the arms pre-trained with UL2's mode tokens
GENERATION_MODE = "[S2S]"
CLASSIFICATION_MODE = "[NLU]"


def _prepend(ex, mode_id: int):
    ids = np.concatenate([[mode_id], ex.inputs]).astype(np.int64)
    if isinstance(ex, RepExample):
        return ex._replace(inputs=ids)
    if isinstance(ex, ClassExample):
        return ClassExample(ids, ex.label)
    return Example(ids, ex.targets)


def task_data_with_mode(tok, plan, seed: int, mode: str) -> downstream.TaskData:
    """The study's TaskData of `seed` with `mode`'s token before every input."""
    mode_id = int(tok.mode_ids[mode])
    d = downstream.build_task_data(tok, encoder_length=plan.half - 1,
                                   decoder_length=plan.half,
                                   train_examples=plan.train_examples,
                                   eval_examples=plan.eval_examples,
                                   generate_examples=plan.generate_examples, seed=seed,
                                   eval_split=plan.eval_split,
                                   genre_eval_examples=plan.genre_eval_examples)
    return dataclasses.replace(
        d, encoder_length=plan.half,
        mixture=[_prepend(e, mode_id) for e in d.mixture],
        genre_train=[_prepend(e, mode_id) for e in d.genre_train],
        reply_val=[_prepend(e, mode_id) for e in d.reply_val],
        genre_val=[_prepend(e, mode_id) for e in d.genre_val],
        reply_prefix=(mode_id,) + tuple(d.reply_prefix))


def rep_data_with_mode(tok, plan, mode: str, base: Optional[RepData] = None) -> RepData:
    """The representation tasks with `mode`'s token before every input: the very examples
    every other arm reads (built at rep_length), so one token longer. Building them one
    token shorter instead would change a task's texts: word_order cuts a speech to the
    room it has and shuffles a span of what is left. `base`: those examples, when the
    caller has them already (build_rep_data(plan, tok) otherwise)."""
    mode_id = int(tok.mode_ids[mode])
    d = base if base is not None else build_rep_data(plan, tok)
    return RepData({t: ([_prepend(e, mode_id) for e in tr], [_prepend(e, mode_id) for e in ev])
                    for t, (tr, ev) in d.tasks.items()}, plan.rep_length + 1, d.pad_id)
