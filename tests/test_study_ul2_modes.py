"""The UL2 arm's fine-tuning and probe inputs start with its mode token: fine-tuning keeps
the other arms' lengths and speeches, the probes read the other arms' very examples."""

import dataclasses

import numpy as np

from mini_encdec.experiments import downstream
from mini_encdec.experiments.study import SCALES
from mini_encdec.experiments.study.representation import build_rep_data
from mini_encdec.experiments.study.ul2_modes import rep_data_with_mode, task_data_with_mode
from mini_encdec.text.tokenizer import load_tokenizer


def test_mode_tokens_lead_every_input():
    tok = load_tokenizer()
    plan = dataclasses.replace(SCALES["quick"], rep_tasks=("next_speech",))
    plain = downstream.build_task_data(tok, encoder_length=plan.half, decoder_length=plan.half,
                                       train_examples=plan.train_examples,
                                       eval_examples=plan.eval_examples,
                                       generate_examples=plan.generate_examples, seed=0)
    s2s, nlu = tok.mode_ids["[S2S]"], tok.mode_ids["[NLU]"]
    data = task_data_with_mode(tok, plan, 0, "[S2S]")
    for xs, ys in ((data.mixture, plain.mixture), (data.reply_val, plain.reply_val),
                   (data.genre_val, plain.genre_val)):
        assert len(xs) == len(ys)
        for x, y in zip(xs, ys):
            assert x.inputs[0] == s2s and len(x.inputs) <= plan.half
            assert x.inputs[-1] == y.inputs[-1] == tok.eos_id
            # the same speech (it loses at most one token at its far left end)
            assert np.array_equal(x.inputs[-3:], y.inputs[-3:])
            assert len(x.inputs) - 1 in (len(y.inputs) - 1, len(y.inputs))
    assert data.reply_prefix[0] == s2s and data.prefix_len == plain.prefix_len + 1
    plan = dataclasses.replace(plan, rep_tasks=("next_speech", "word_order"))
    rep = rep_data_with_mode(tok, plan, "[NLU]")
    base = build_rep_data(plan, tok)
    assert rep.length == base.length + 1 == plan.rep_length + 1
    for task in plan.rep_tasks:  # the other arms' very examples, [NLU] in front
        for xs, ys in zip(rep.tasks[task], base.tasks[task]):
            assert len(xs) == len(ys)
            for x, y in zip(xs, ys):
                assert x.inputs[0] == nlu and np.array_equal(x.inputs[1:], y.inputs)
                assert (x.label, x.where) == (y.label, y.where)
