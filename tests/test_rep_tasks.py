"""Representation tasks from the plays: balanced, deterministic, within length, and each
label means what the task says."""

import numpy as np
import pytest

from mini_encdec.text.corpus import load_plays, speeches
from mini_encdec.text.rep_tasks import (INSTRUCTIONS, SEP, TASKS, replaced_word_examples,
                                        task_examples)
from mini_encdec.text.tokenizer import load_tokenizer

LENGTH = 96


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def examples(tok):
    return {t: task_examples(t, "validation", tok, length=LENGTH, seed=0) for t in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_balanced_fitted_and_prefixed(task, tok, examples):
    exs = examples[task]
    assert len(exs) > 2000
    assert 0.46 < np.mean([e.label for e in exs]) < 0.54
    head = tok.encode(INSTRUCTIONS[task] + "\n")
    for e in exs:
        assert len(e.inputs) <= LENGTH and e.inputs[-1] == tok.eos_id
        assert np.array_equal(e.inputs[:len(head)], head)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_per_seed(task, tok, examples):
    again = task_examples(task, "validation", tok, length=LENGTH, seed=0)
    assert [e.label for e in again] == [e.label for e in examples[task]]
    other = task_examples(task, "validation", tok, length=LENGTH, seed=1)
    assert [e.label for e in other] != [e.label for e in examples[task]]


def test_next_speech_positives_are_the_next_speech(tok, examples):
    pairs = []
    for play in load_plays("validation"):
        sp = [s for s in speeches(play) if s.text]
        pairs += [(a.text, b.text) for a, b in zip(sp, sp[1:]) if a.scene == b.scene]
    sep = SEP.strip()
    hits = {0: [], 1: []}
    for e in examples["next_speech"][:300]:
        first, second = tok.decode([int(t) for t in e.inputs[:-1]]).split(sep, 1)
        first, second = first.strip()[-30:], second.strip()[:30]
        hits[e.label].append(any(a.endswith(first) and b.startswith(second)
                                 for a, b in pairs))
    assert all(hits[1]) and not any(hits[0])


def test_speaker_question_names_the_masked_speaker_iff_positive(tok, examples):
    names = {s.speaker for play in load_plays("validation") for s in speeches(play)}
    for e in examples["speaker"][:300]:
        text = tok.decode([int(t) for t in e.inputs[:-1]])
        assert "???:" in text and text.rstrip().endswith("?")
        asked = text.rsplit("Is it ", 1)[1][:-1]
        assert asked in names


def test_replaced_word_changes_one_word_exactly_when_positive(tok):
    vocab = (["zzzword"], np.array([1.0]))  # every replacement is this one word
    exs = replaced_word_examples("validation", tok, length=LENGTH, seed=0, vocabulary=vocab)
    for e in exs[:500]:
        text = tok.decode([int(t) for t in e.inputs[:-1]])
        assert ("zzzword" in text) == bool(e.label)
        assert (e.where in (0, 1, 2)) == bool(e.label) and (e.where == -1) != bool(e.label)
    thirds = np.bincount([e.where for e in exs if e.label], minlength=3)
    assert thirds.min() > 0.2 * thirds.sum()   # replacements spread over the thirds
