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
    n = 300  # the first plays' examples (max_examples): enough to see the labels move
    again = task_examples(task, "validation", tok, length=LENGTH, seed=0, max_examples=n)
    assert [e.label for e in again] == [e.label for e in examples[task][:n]]
    assert all(np.array_equal(a.inputs, b.inputs) for a, b in zip(again, examples[task]))
    other = task_examples(task, "validation", tok, length=LENGTH, seed=1, max_examples=n)
    assert [e.label for e in other] != [e.label for e in examples[task][:n]]


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



def _text(tok, e, task):
    return tok.decode([int(t) for t in e.inputs[:-1]])[len(INSTRUCTIONS[task]) + 1:]


def _norm(text):
    return " ".join(text.split())


def test_word_order_moves_words_exactly_when_positive(tok, examples):
    speech_texts = [_norm(s.text) for play in load_plays("validation") for s in speeches(play)]
    exs = examples["word_order"]
    for e in exs[:400]:
        text = _norm(_text(tok, e, "word_order"))
        # an untouched speech is the start of a real speech; a shuffled one is not
        assert any(t.startswith(text) for t in speech_texts) != bool(e.label)
        assert (e.where in (0, 1, 2)) == bool(e.label) and (e.where == -1) != bool(e.label)
    thirds = np.bincount([e.where for e in exs if e.label], minlength=3)
    assert thirds.min() > 0.1 * thirds.sum()   # shuffles spread over the thirds


def test_word_order_shuffles_one_span_and_keeps_the_separators():
    import re
    from mini_encdec.text.rep_tasks import SPAN, _shuffled
    words = [f"w{i}," if i % 4 == 3 else f"w{i}" for i in range(SPAN + 6)]
    text = " ".join(words[:5]) + "\n" + "  ".join(words[5:])  # mixed separators
    for s in range(50):
        new, centre, n = _shuffled(text, np.random.default_rng(s))
        a, b = text.split(), new.split()
        assert n == SPAN + 6 and sorted(a) == sorted(b) and a != b
        changed = [i for i in range(n) if a[i] != b[i]]
        assert max(changed) - min(changed) < SPAN
        assert centre - SPAN // 2 <= min(changed) and max(changed) < centre - SPAN // 2 + SPAN
        assert re.split(r"\S+", new) == re.split(r"\S+", text)
    assert _shuffled(" ".join(["no"] * (SPAN + 1)), np.random.default_rng(0)) is None
    assert _shuffled(" ".join(words[:SPAN - 1]), np.random.default_rng(0)) is None


def test_same_scene_pairs_share_a_scene_exactly_when_positive(tok, examples):
    places = [(_norm(s.text), (p, s.scene)) for p, play in enumerate(load_plays("validation"))
              for s in speeches(play)]
    sep = SEP.strip()
    checked = 0
    for e in examples["same_scene"][:300]:
        first, second = (_norm(x) for x in _text(tok, e, "same_scene").split(sep, 1))
        a = {k for t, k in places if t.endswith(first)}
        b = {k for t, k in places if t.startswith(second)}
        assert a and b
        if len(a) == 1 and len(b) == 1:   # unambiguous texts (not a repeated line)
            checked += 1
            (pa, sa), (pb, sb) = a.pop(), b.pop()
            assert (pa, sa) == (pb, sb) if e.label else pa != pb
    assert checked > 200
