"""Batches: shapes, shifts, -100 padding, the decoder-only form, teacher alignment,
determinism and exact resume."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.text.batching import (Batcher, ExampleBatcher, collate_decoder, collate_encdec,
                                  corpus_stream, eval_batches, make_batcher, split_teacher)
from mini_encdec.objectives import Example, make_objective
from mini_encdec.text.tokenizer import load_tokenizer

S, T, B = 48, 40, 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def stream(tok):
    return corpus_stream("validation", tok)


examples_st = st.lists(st.tuples(st.integers(1, S), st.integers(1, T), st.integers(0, 999)),
                       min_size=1, max_size=5)


def _examples(spec):
    out = []
    for p, n, seed in spec:
        rng = np.random.default_rng(seed)
        out.append(Example(rng.integers(4, 8192, size=p), rng.integers(4, 8192, size=n)))
    return out


@pytest.mark.task3_5
@given(examples_st)
def test_collate_encdec_shifts_and_pads(spec):
    exs = _examples(spec)
    b = collate_encdec(exs, S, T, pad_id=0, bos_id=2, with_teacher=True)
    assert b["input_ids"].shape == (len(exs), S) and b["labels"].shape == (len(exs), T)
    for i, ex in enumerate(exs):
        p, n = len(ex.inputs), len(ex.targets)
        np.testing.assert_array_equal(b["input_ids"][i, :p], ex.inputs)
        assert (b["input_ids"][i, p:] == 0).all() and b["attention_mask"][i].sum() == p
        assert b["decoder_input_ids"][i, 0] == 2
        np.testing.assert_array_equal(b["decoder_input_ids"][i, 1:n], ex.targets[:-1])
        np.testing.assert_array_equal(b["labels"][i, :n], ex.targets)
        assert (b["labels"][i, n:] == -100).all() and (b["decoder_input_ids"][i, n:] == 0).all()
        # teacher alignment: the teacher's token after position teacher_positions[j] is
        # labels[j], i.e. its logits there predict the student's target j
        pos = b["teacher_positions"][i]
        np.testing.assert_array_equal(b["teacher_input_ids"][i, pos[:n] + 1], ex.targets)
        assert (pos[n:] == -1).all()


@pytest.mark.task3_5
@given(examples_st)
def test_decoder_only_form_predicts_the_same_targets(spec):
    exs = _examples(spec)
    enc = collate_encdec(exs, S, T)
    dec = collate_decoder(exs, S + T)
    assert dec["input_ids"].shape == (len(exs), S + T)
    for i, ex in enumerate(exs):
        lab = dec["labels"][i]
        # the targets, in order, are exactly the non-ignored decoder-only labels
        np.testing.assert_array_equal(lab[lab != -100], enc["labels"][i][enc["labels"][i] != -100])
        first = np.flatnonzero(lab != -100)[0]
        assert first == len(ex.inputs) - 1          # loss starts at the last prefix token
        x = np.concatenate([ex.inputs, ex.targets])
        np.testing.assert_array_equal(dec["input_ids"][i, :len(x)], x)


@pytest.mark.task3_5
@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 999)), min_size=1, max_size=4),
       st.integers(2, 8))
def test_decoder_only_full_window_keeps_the_last_target_and_attends_to_every_token(spec, L):
    """A full window (len(inputs ++ targets) == L + 1): the last target is the label of the
    last position, and the attention mask covers the targets too, not only the inputs."""
    exs = []
    for p, seed in spec:
        p = min(p, L)  # at least one target
        rng = np.random.default_rng(seed)
        exs.append(Example(rng.integers(4, 99, size=p), rng.integers(4, 99, size=L + 1 - p)))
    dec = collate_decoder(exs, L)
    for i, ex in enumerate(exs):
        x = np.concatenate([ex.inputs, ex.targets])
        lab = dec["labels"][i]
        assert lab[-1] == ex.targets[-1], (
            f"example {i}: a full window's last position must predict the last target "
            f"{ex.targets[-1]}; labels {lab.tolist()}")
        np.testing.assert_array_equal(lab[lab != -100], ex.targets, err_msg=(
            f"example {i}: the labels must be every target once, in order"))
        np.testing.assert_array_equal(dec["input_ids"][i], x[:L])
        np.testing.assert_array_equal(dec["attention_mask"][i], np.ones(L, np.int64), err_msg=(
            f"example {i} ({len(ex.inputs)} inputs, {len(ex.targets)} targets): the "
            f"attention mask must be 1 on every real token, the targets included"))


def test_causal_lm_windows_fill_every_position(tok, stream):
    b = Batcher(stream, make_objective("causal_lm"), batch_size=B, encoder_length=S,
                decoder_length=T, arch="decoder", seed=0).next_batch()
    assert b["input_ids"].shape == (B, S + T)
    np.testing.assert_array_equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert (b["labels"] != -100).all() and (b["attention_mask"] == 1).all()
    with pytest.raises(ValueError, match="decoder-only"):
        Batcher(stream, make_objective("causal_lm"), batch_size=B, encoder_length=S,
                decoder_length=T, arch="encdec")


@pytest.mark.parametrize("name", ["prefix_lm", "span_corruption", "ul2", "t5gemma2"])
def test_both_architectures_see_the_same_examples(tok, stream, name):
    obj = make_objective(name, tok)
    kw = dict(batch_size=B, encoder_length=S, decoder_length=T, seed=5)
    enc = Batcher(stream, obj, arch="encdec", **kw).next_batch()
    dec = Batcher(stream, obj, arch="decoder", **kw).next_batch()
    for i in range(B):
        p = enc["attention_mask"][i].sum()
        np.testing.assert_array_equal(dec["input_ids"][i, :p], enc["input_ids"][i, :p])
        np.testing.assert_array_equal(dec["labels"][i][dec["labels"][i] != -100],
                                      enc["labels"][i][enc["labels"][i] != -100])


def test_equal_seeds_equal_batches_and_exact_resume(tok, stream):
    obj = make_objective("ul2", tok)
    kw = dict(batch_size=B, encoder_length=S, decoder_length=T, arch="encdec")
    a, b, c = (Batcher(stream, obj, seed=s, **kw) for s in (3, 3, 4))
    for _ in range(3):
        ba, bb, bc = a.next_batch(), b.next_batch(), c.next_batch()
        for k in ba:
            np.testing.assert_array_equal(ba[k], bb[k])
    assert not np.array_equal(ba["input_ids"], bc["input_ids"])
    state = json.loads(json.dumps(a.state_dict()))     # serialisable
    want = [a.next_batch() for _ in range(2)]
    fresh = Batcher(stream, obj, seed=0, **kw)
    fresh.load_state_dict(state)
    for w in want:
        got = fresh.next_batch()
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    with pytest.raises(ValueError, match="batch_size"):
        Batcher(stream, obj, seed=0, **dict(kw, batch_size=B + 1)).load_state_dict(state)


def test_epochs_cover_the_stream_and_reshuffle(tok):
    stream = np.arange(10_000) + 4  # token value = position + 4
    obj = make_objective("prefix_lm")
    b = Batcher(stream, obj, batch_size=7, encoder_length=16, decoder_length=16, seed=1)
    n = b._epoch_size(0)
    assert n == (10_000 - b._layout(0)[0]) // 32
    starts = [int(b.window_at(0, c)[0]) for c in range(n)]
    assert len(set(starts)) == n                       # no window twice in an epoch
    for _ in range(n // 7 + 2):
        b.next_batch()
    assert b.epoch == 1
    starts1 = [int(b.window_at(1, c)[0]) for c in range(b._epoch_size(1))]
    assert starts1 != starts[:len(starts1)]            # a new offset and order each epoch


def test_eval_batches_are_fixed(tok, stream):
    obj = make_objective("span_corruption", tok)
    a = eval_batches(stream, obj, batch_size=B, encoder_length=S, decoder_length=T,
                     max_batches=3)
    b = eval_batches(stream, obj, batch_size=B, encoder_length=S, decoder_length=T,
                     max_batches=3)
    assert len(a) == 3
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_example_batcher_and_split_teacher(tok):
    exs = _examples([(3, 2, i) for i in range(10)])
    eb = ExampleBatcher(exs, batch_size=4, encoder_length=S, decoder_length=T, seed=0)
    seen = [eb.next_batch()["labels"][:, 0] for _ in range(5)]  # 20 = two epochs
    first_epoch = np.sort(np.concatenate(seen)[:10])
    np.testing.assert_array_equal(first_epoch, np.sort([e.targets[0] for e in exs]))
    batch = make_batcher("test", make_objective("prefix_lm"), tok, batch_size=2,
                         encoder_length=S, decoder_length=S, with_teacher=True).next_batch()
    student, teacher, pos = split_teacher(batch)
    assert set(student) == {"input_ids", "attention_mask", "decoder_input_ids", "labels"}
    assert teacher["input_ids"].shape == (2, 2 * S)
    np.testing.assert_array_equal(pos[0], np.arange(S - 1, 2 * S - 1))


def test_bad_arguments(tok, stream):
    obj = make_objective("prefix_lm")
    with pytest.raises(ValueError, match="arch"):
        Batcher(stream, obj, batch_size=2, encoder_length=S, decoder_length=T, arch="gpt")
    with pytest.raises(ValueError, match="batch_size"):
        Batcher(stream, obj, batch_size=0, encoder_length=S, decoder_length=T)
    with pytest.raises(ValueError, match="encoder_length"):
        collate_encdec([Example(np.arange(S + 1), np.arange(3))], S, T)
    with pytest.raises(ValueError, match="stream"):
        Batcher(stream[:50], obj, batch_size=2, encoder_length=S, decoder_length=T)
