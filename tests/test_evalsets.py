"""Evaluation windows from every play: even spacing, determinism, every play present."""

import numpy as np
import pytest

from mini_encdec.experiments.evalsets import spread_eval_batches, spread_starts
from mini_encdec.objectives import make_objective
from mini_encdec.text.tokenizer import load_tokenizer


def test_spread_starts_values():
    assert spread_starts(100, 10, 1) == [0]
    assert spread_starts(100, 10, 4) == [0, 30, 60, 90]       # last window ends at 100
    assert spread_starts(10, 10, 3) == [0, 0, 0]
    with pytest.raises(ValueError, match="shorter"):
        spread_starts(9, 10, 2)
    with pytest.raises(ValueError, match="per_play"):
        spread_starts(100, 10, 0)


def test_spread_eval_batches_take_windows_from_every_stream():
    tok = load_tokenizer()
    # three synthetic "plays" whose ids say which play they are from
    streams = [(f"p{k}", np.full(200, 10 + k, dtype=np.int64)) for k in range(3)]
    kw = dict(per_play=3, batch_size=4, encoder_length=8, decoder_length=8, seed=0)
    causal = make_objective("causal_lm", tok)
    batches = spread_eval_batches(streams, causal, arch="decoder", **kw)
    assert [b["input_ids"].shape for b in batches] == [(4, 16), (4, 16), (1, 16)]
    ids = np.concatenate([b["input_ids"][:, 0] for b in batches])
    assert ids.tolist() == [10, 10, 10, 11, 11, 11, 12, 12, 12]
    again = spread_eval_batches(streams, causal, arch="decoder", **kw)
    assert all(np.array_equal(a["labels"], b["labels"]) for a, b in zip(batches, again))
    # the PrefixLM windows of the two architectures are the same tokens
    prefix = make_objective("prefix_lm", tok)
    dec = spread_eval_batches(streams, prefix, arch="decoder", **kw)
    enc = spread_eval_batches(streams, prefix, arch="encdec", **kw)
    for d, e in zip(dec, enc):
        assert np.array_equal(d["input_ids"][:, :8], e["input_ids"])


def test_play_streams_are_the_packed_split_cut_at_each_play():
    from mini_encdec.experiments.evalsets import play_streams
    from mini_encdec.text.batching import corpus_stream
    tok = load_tokenizer()
    streams = play_streams("validation", tok)
    assert len(streams) == 6 and all(ids[-1] == tok.eos_id for _, ids in streams)
    assert np.array_equal(np.concatenate([ids for _, ids in streams]),
                          corpus_stream("validation", tok))
