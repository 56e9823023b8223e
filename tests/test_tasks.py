"""Downstream tasks: reply / genre / next-line from the plays, synthetic tasks, metrics."""

import numpy as np
import pytest

from mini_encdec.text.corpus import GENRES, load_plays, speeches
from mini_encdec.text.tasks import (SYNTH_VOCAB_SIZE, choice_pairs,
                               collate_classification, exact_match, genre_examples,
                               genre_pairs, lcs_length, next_line_examples, reply_examples,
                               reply_pairs, rouge_l, synth_decode, synth_encode,
                               synthetic_examples)
from mini_encdec.text.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def test_plays():
    return load_plays("test")


def test_reply_pairs_are_next_speech_by_another_speaker(test_plays):
    pairs = set(reply_pairs("test"))
    want = set()
    for play in test_plays:
        sp = speeches(play)
        for i in range(len(sp) - 1):
            a, b = sp[i], sp[i + 1]
            if a.scene == b.scene and a.speaker != b.speaker and a.text and b.text:
                want.add((a.text, b.text))
    assert want <= pairs and len(pairs) > 3000
    tok = load_tokenizer()
    exs = reply_examples("test", tok, encoder_length=32, decoder_length=16)
    assert all(len(e.inputs) <= 32 and e.inputs[-1] == 1 and len(e.targets) <= 16
               and e.targets[-1] == 1 for e in exs)


def test_genre_task_uses_the_play_split():
    train_texts = {t for t, _ in genre_pairs("train")}
    test = genre_pairs("test")
    assert {g for _, g in test} == set(range(len(GENRES)))  # every genre in the test split
    assert sum(t in train_texts for t, _ in test) < 0.02 * len(test)  # only stock phrases
    tok = load_tokenizer()
    exs = genre_examples("validation", tok, length=24)
    batch = collate_classification(exs[:5], 24)
    assert batch["input_ids"].shape == (5, 24) and batch["class_labels"].shape == (5,)


def test_next_line_examples_label_the_true_successor(test_plays):
    exs = next_line_examples("test", seed=1)
    assert exs == next_line_examples("test", seed=1)
    succ = {}
    for play in test_plays:
        sp = [s for s in speeches(play) if s.text]
        for a, b in zip(sp, sp[1:]):
            if a.scene == b.scene:
                succ.setdefault(a.text, set()).add(b.text)
    labels = [e.label for e in exs]
    assert 0.4 < np.mean(labels) < 0.6
    assert all(e.candidates[e.label] in succ[e.context] for e in exs)
    pair = choice_pairs(exs[0], load_tokenizer(), encoder_length=16, decoder_length=8)
    assert len(pair) == 2 and len(pair[0].inputs) <= 16


def test_synthetic_tasks_are_correct():
    for task, check in [("reverse", lambda x, y: y == x[::-1]),
                        ("sort", lambda x, y: y == "".join(sorted(x))),
                        ("addition", lambda x, y: int(y) == sum(map(int, x.split("+"))))]:
        exs = synthetic_examples(task, 50, seed=2, max_len=6, max_digits=4)
        for e in exs:
            assert e.inputs[-1] == 1 and e.targets[-1] == 1
            assert e.inputs.max() < SYNTH_VOCAB_SIZE
            assert check(synth_decode(e.inputs), synth_decode(e.targets))
        again = synthetic_examples(task, 50, seed=2, max_len=6, max_digits=4)
        assert all(np.array_equal(a.inputs, b.inputs) for a, b in zip(exs, again))
    assert synth_decode(synth_encode("12+ab")) == "12+ab"
    with pytest.raises(ValueError, match="task"):
        synthetic_examples("copy", 3)


def test_metrics():
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert rouge_l([5, 6, 7, 1, 9], [5, 6, 7, 1]) == 1.0
    # LCS([5,6,8],[5,7,8,9]) = 2: P = 2/3, R = 2/4, F = 4/7
    assert abs(rouge_l([5, 6, 8], [5, 7, 8, 9]) - 4 / 7) < 1e-12
    assert rouge_l([5], [6]) == 0.0
    assert exact_match([[4, 5, 1, 0], [4, 1]], [[4, 5, 1, -100], [5, 1]]) == 0.5
    with pytest.raises(ValueError, match="predictions"):
        exact_match([], [])


def test_task_prefixes_start_every_input_and_differ_between_tasks():
    from mini_encdec.text.tasks import TASK_PREFIXES, task_prefix
    tok = load_tokenizer()
    prefixes = {t: task_prefix(t, tok) for t in TASK_PREFIXES}
    assert len({tuple(p) for p in prefixes.values()}) == len(prefixes)
    for length in (16, 40):
        reply = reply_examples("validation", tok, encoder_length=length, decoder_length=8)
        genre = genre_examples("validation", tok, length=length)
        for task, exs in (("reply", reply), ("genre", genre)):
            p = prefixes[task]
            for e in exs[:200]:
                assert len(e.inputs) <= length and e.inputs[-1] == tok.eos_id
                np.testing.assert_array_equal(e.inputs[:len(p)], p)
    # without the prefix: the bare text, as before
    bare = reply_examples("validation", tok, encoder_length=16, decoder_length=8, prefix=False)
    assert any(not np.array_equal(e.inputs[:len(prefixes["reply"])], prefixes["reply"])
               for e in bare[:50])
    with pytest.raises(ValueError, match="no room"):
        genre_examples("validation", tok, length=len(prefixes["genre"]) + 1)
    with pytest.raises(ValueError, match="task"):
        task_prefix("nosuch", tok)
