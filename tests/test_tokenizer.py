"""The shipped SentencePiece model: special ids, single pieces, round trips, errors,
deterministic retraining."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mini_encdec.text.corpus import load_texts
from mini_encdec.objectives.span_corruption import max_spans
from mini_encdec.text.tokenizer import (DEFAULT_MODEL, MODE_TOKENS, TRAIN_COMMAND, load_tokenizer,
                                   sentinel_piece, train_tokenizer)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_shipped_model_sizes_and_special_ids(tok):
    assert tok.vocab_size == 8192  # the tiny/small presets' vocab_size
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert tok.num_sentinels == 256 >= max_spans(512) + 1
    assert len(set(tok.special_ids.tolist())) == len(tok.special_ids)


def test_special_pieces_are_single_ids(tok):
    for piece in MODE_TOKENS + tuple(sentinel_piece(i) for i in (0, 1, 99, 255)) + ("\n",):
        i = tok.piece_to_id(piece)
        assert i != tok.unk_id and tok.id_to_piece(i) == piece
        # inside text the piece is matched whole: exactly one occurrence of its id
        ids = tok.encode(f"to be{piece}or not")
        assert (ids == i).sum() == 1 and tok.decode(ids) == f"to be{piece}or not"
    np.testing.assert_array_equal(
        tok.sentinel_ids, [tok.piece_to_id(sentinel_piece(i)) for i in range(256)])
    assert tok.decode([tok.mode_ids["[NLU]"], tok.sentinel_ids[3]]) == "[NLU]<extra_id_3>"


def test_tokenizer_round_trips_the_corpus(tok):
    texts = load_texts()
    assert len(texts) == 38
    for text in texts:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.min() >= 4  # no pad/eos/bos/unk in text
        assert tok.decode(ids) == text


@given(text=st.text(max_size=60))
def test_tokenizer_round_trips_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_missing_or_corrupt_model_names_file_and_command(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(ValueError) as e:
        load_tokenizer(missing)
    assert str(missing) in str(e.value) and TRAIN_COMMAND in str(e.value)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError) as e:
        load_tokenizer(bad)
    assert str(bad) in str(e.value) and TRAIN_COMMAND in str(e.value)


def test_bad_arguments(tok):
    with pytest.raises(ValueError, match="text"):
        tok.encode(123)
    with pytest.raises(ValueError, match="ids"):
        tok.decode([8192])
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("/dev/null", vocab_size=100)


def test_training_is_deterministic(tmp_path):
    texts = load_texts("test")[:2]
    a = train_tokenizer(tmp_path / "a.model", 1000, num_sentinels=16, texts=texts)
    b = train_tokenizer(tmp_path / "b.model", 1000, num_sentinels=16, texts=texts)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.vocab_size == b.vocab_size == 1000 and a.num_sentinels == 16


def test_retraining_reproduces_the_shipped_model(tmp_path):
    # the shipped data/tokenizer.model is exactly what the documented command makes
    train_tokenizer(tmp_path / "t.model")
    assert (tmp_path / "t.model").read_bytes() == DEFAULT_MODEL.read_bytes()
