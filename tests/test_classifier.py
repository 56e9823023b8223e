"""The sequence-classification probe (SPEC.md section 7): gradients, properties, bad
inputs, training and checkpoints. Tiny float64 configs (D = 16, 2 layers, V = 50, window 3 < S)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_encdec.storage.checkpoint import load_model, save_model
from mini_encdec.config import (ClassifierConfig, EncDecConfig, GemmaConfig, config_from_dict,
                                count_parameters)
from mini_encdec.models import SequenceClassifier, build_model
from mini_encdec.models.classifier import last_token_index, shift_right
from mini_encdec.nn.gradcheck import numerical_grad

V, C = 50, 3
STACK = GemmaConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, intermediate_size=24, sliding_window=3)
# an unbalanced encoder-decoder: narrower decoder with other heads
UNBALANCED = EncDecConfig(encoder=STACK, decoder=STACK.replace(
    hidden_size=12, num_attention_heads=2, num_key_value_heads=1, head_dim=6,
    intermediate_size=20))
CONFIGS = {
    "decoder": ClassifierConfig(STACK, C),
    "encoder": ClassifierConfig(EncDecConfig(encoder=STACK, decoder=STACK), C, "encoder"),
    "encoder_decoder": ClassifierConfig(UNBALANCED, C, "encoder_decoder"),
}
MODES = list(CONFIGS)


def classifier(mode, seed=0, std=0.3):
    """A float64 classifier with O(1) random weights (norms and head included)."""
    clf = build_model(CONFIGS[mode], dtype=np.float64)
    rng = np.random.default_rng(seed)
    for v in clf.params.values():
        v[...] = rng.standard_normal(v.shape) * std
    return clf


def padded_batch(rng, lengths, S, side="right"):
    """Rows of real ids (never 0) padded with 0 on one side to length S."""
    ids = np.zeros((len(lengths), S), dtype=np.int64)
    for b, n in enumerate(lengths):
        real = rng.integers(3, V, n)
        if side == "right":
            ids[b, :n] = real
        else:
            ids[b, S - n:] = real
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64),
            "labels": rng.integers(0, C, len(lengths))}


# --- gradients ------------------------------------------------------------------------------

def check_all_gradients(clf, batch, rng, per_key=2):
    """Central differences on `per_key` random entries of every parameter."""
    loss, grads = clf.loss_and_grads(batch)
    assert set(grads) == set(clf.params)
    assert np.isclose(loss, clf.loss(batch))
    for key, p in clf.params.items():
        assert grads[key].shape == p.shape and grads[key].dtype == p.dtype, key
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(per_key, flat.size), replace=False):
            num = numerical_grad(lambda: clf.loss(batch), flat[i:i + 1], h=1e-5)[0]
            ana = grads[key].reshape(-1)[i]
            assert abs(num - ana) <= 1e-6 * max(1.0, abs(num)), (key, i, num, ana)


@pytest.mark.task5_4
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_whole_model_gradcheck(mode, side, backend):
    rng = np.random.default_rng(1)
    clf = classifier(mode, seed=2)
    batch = padded_batch(rng, [7, 4, 1], S=7, side=side)  # full, padded, one token
    check_all_gradients(clf, batch, rng)


@pytest.mark.task5_4
@settings(max_examples=6, deadline=None)
@given(mode=st.sampled_from(MODES), S=st.integers(1, 6),
       data=st.data(), seed=st.integers(0, 2**16))
def test_gradcheck_drawn_shapes(mode, S, data, seed):
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3))
    side = data.draw(st.sampled_from(["right", "left"]))
    rng = np.random.default_rng(seed)
    batch = padded_batch(rng, lengths, S, side)
    batch["labels"][0] = -100 if len(lengths) > 1 else batch["labels"][0]
    check_all_gradients(classifier(mode, seed=seed), batch, rng, per_key=1)


@pytest.mark.task5_4
def test_ignored_labels_count_for_nothing():
    rng = np.random.default_rng(0)
    clf = classifier("encoder")
    batch = padded_batch(rng, [5, 3], S=5)
    one = {k: v[:1] for k, v in batch.items()}
    batch["labels"][1] = -100
    loss, grads = clf.loss_and_grads(batch)
    loss1, grads1 = clf.loss_and_grads(one)
    assert np.isclose(loss, loss1)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads1[k], atol=1e-12, err_msg=k)
    batch["labels"][0] = -100  # nothing counted: loss 0, zero gradients
    loss, grads = clf.loss_and_grads(batch)
    assert loss == 0.0 and all(not g.any() for g in grads.values())


# --- semantics and properties ------------------------------------------------------------------

@pytest.mark.task5_4
def test_last_token_index_and_shift():
    ids = np.array([[5, 6, 0, 0], [0, 0, 7, 8], [9, 9, 9, 9], [0, 0, 0, 0], [4, 0, 5, 0]])
    np.testing.assert_array_equal(last_token_index(ids, 0), [1, 3, 3, 0, 2])
    np.testing.assert_array_equal(shift_right(ids[:1], 2), [[2, 5, 6, 0]])


@pytest.mark.task5_4
@pytest.mark.parametrize("mode", ["decoder", "encoder"])
def test_head_reads_the_last_real_token(mode):
    """logits = head(h[b, last_b]) with h the backbone's final-normed states."""
    rng = np.random.default_rng(3)
    clf = classifier(mode)
    batch = padded_batch(rng, [6, 3], S=6)
    if mode == "decoder":
        lm = build_model(STACK, {k: v for k, v in clf.params.items() if k.startswith("model.")})
        h = lm.hidden_states({"input_ids": batch["input_ids"],
                              "attention_mask": batch["attention_mask"]})
        expected = h[[0, 1], [5, 2]] @ clf.params["score.weight"].T
    else:
        enc_keys = {k for k in clf.params if k.startswith("model.encoder.")}
        full = build_model(CONFIGS["encoder"].backbone, dtype=np.float64)
        full.params.update({k: clf.params[k] for k in enc_keys})
        h = full.encode(batch["input_ids"], batch["attention_mask"])
        expected = h[[0, 1], [5, 2]] @ clf.params["score.out_proj.weight"].T \
            + clf.params["score.out_proj.bias"]
    np.testing.assert_allclose(clf.forward(batch), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.task5_4
def test_encoder_decoder_reads_one_past_the_last_token():
    """The decoder input is the shifted input; the head reads position last + 1 clamped."""
    rng = np.random.default_rng(4)
    clf = classifier("encoder_decoder")
    ed = build_model(UNBALANCED, {k: v for k, v in clf.params.items()
                                  if k.startswith("model.")})
    batch = padded_batch(rng, [4, 6], S=6)  # row 0 padded, row 1 full (clamped)
    logits = clf.forward(batch)
    for b, (n, pos) in enumerate([(4, 4), (6, 5)]):
        ids = batch["input_ids"][b:b + 1, :n]
        dec_in = shift_right(np.pad(ids, ((0, 0), (0, 1))), 2)[:, :pos + 1]  # BOS, x_0..
        enc = ed.encode(ids)
        h, _ = ed._decode(dec_in, enc, None)
        want = h[0, pos] @ clf.params["score.out_proj.weight"].T \
            + clf.params["score.out_proj.bias"]
        np.testing.assert_allclose(logits[b], want, rtol=1e-10, atol=1e-12)


@pytest.mark.task5_4
@settings(max_examples=10, deadline=None)
@given(mode=st.sampled_from(MODES), n=st.integers(1, 5), extra=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_padding_beyond_the_last_token_does_not_change_logits(mode, n, extra, seed):
    """Right padding (any amount) and, where positions count real tokens, left padding."""
    rng = np.random.default_rng(seed)
    clf = classifier(mode, seed=seed)
    base = padded_batch(rng, [n], S=n + 1)  # encoder-decoder: one pad, no clamp
    ids = base["input_ids"]
    more = {"input_ids": np.pad(ids, ((0, 0), (0, extra)))}
    np.testing.assert_allclose(clf.forward(more), clf.forward({"input_ids": ids}),
                               rtol=1e-10, atol=1e-12)
    if mode == "encoder_decoder" and n == 1:
        return  # left-padded [pad.., x_0]: the decoder's last input is a pad, not x_0's BOS
    real = {"input_ids": ids[:, :n]}
    left = {"input_ids": np.pad(ids[:, :n], ((0, 0), (extra, 0)))}
    np.testing.assert_allclose(clf.forward(left), clf.forward(real), rtol=1e-10, atol=1e-12)


def test_without_attention_mask_padding_is_found_from_ids():
    rng = np.random.default_rng(5)
    clf = classifier("encoder")
    batch = padded_batch(rng, [5, 2], S=5)
    no_mask = {"input_ids": batch["input_ids"]}
    np.testing.assert_array_equal(clf.forward(no_mask), clf.forward(batch))


def test_batch_equals_rows_one_by_one():
    rng = np.random.default_rng(6)
    for mode in MODES:
        clf = classifier(mode)
        batch = padded_batch(rng, [5, 2, 4], S=5)
        logits = clf.forward(batch)
        for b in range(3):
            row = {k: v[b:b + 1] for k, v in batch.items()}
            np.testing.assert_allclose(clf.forward(row)[0], logits[b], rtol=1e-10, atol=1e-12)


def test_keys_shapes_and_counts_follow_transformers():
    for mode, cfg in CONFIGS.items():
        clf = build_model(cfg)
        keys = set(clf.params)
        assert count_parameters(cfg) == sum(v.size for v in clf.params.values())
        if mode == "decoder":
            assert clf.params["score.weight"].shape == (C, 16)
            assert not any(k.startswith("score.out_proj") for k in keys)
        else:
            D = 16 if mode == "encoder" else 12
            assert clf.params["score.out_proj.weight"].shape == (C, D)
            assert not clf.params["score.out_proj.bias"].any()
            has_decoder = any(k.startswith("model.decoder.") for k in keys)
            assert has_decoder == (mode == "encoder_decoder")
        assert all(v.dtype == np.float32 for v in clf.params.values())


def test_from_backbone_copies_and_keeps_the_backbone_function():
    lm = build_model(STACK, seed=1)
    clf = SequenceClassifier.from_backbone(lm, 4, label_names=["a", "b", "c", "d"])
    assert clf.config.mode == "decoder" and clf.config.label_names == ("a", "b", "c", "d")
    for k, v in lm.params.items():
        np.testing.assert_array_equal(clf.params[k], v)
        assert clf.params[k] is not v
    ed = build_model(UNBALANCED, seed=1)
    enc_only = SequenceClassifier.from_backbone(ed, 2)
    assert enc_only.config.mode == "encoder"
    assert not any(k.startswith("model.decoder.") for k in enc_only.params)
    shared = SequenceClassifier.from_backbone(ed, 2, "encoder_decoder", copy=False)
    assert all(shared.params[k] is v for k, v in ed.params.items())
    # a fresh model from the same seed has the backbone's weights
    same = build_model(ClassifierConfig(STACK, 4), seed=1)
    for k in lm.params:
        np.testing.assert_array_equal(same.params[k], lm.params[k])


def test_replacing_a_parameter_array_is_seen():
    rng = np.random.default_rng(7)
    clf = classifier("encoder_decoder")
    batch = padded_batch(rng, [4], S=5)
    before = clf.forward(batch)
    k = "model.decoder.layers.0.mlp.up_proj.weight"
    clf.params[k] = clf.params[k] + 1.0  # assignment, not in place
    assert not np.allclose(clf.forward(batch), before)


# --- bad inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, match", [
    (np.array([0, 3]), r"batch\['labels'\].*\[0, 3\).*got 3 at index 1"),
    (np.array([-1, 0]), r"batch\['labels'\].*got -1 at index 0"),
    (np.array([[0, 1]]), r"batch\['labels'\].*shape \(B,\)"),
    (np.array([0.0, 1.0]), r"batch\['labels'\].*integer"),
    ([0, 1], r"batch\['labels'\].*integer numpy array"),
])
def test_bad_labels_raise_naming_the_key(labels, match):
    clf = classifier("encoder")
    batch = {"input_ids": np.array([[5, 6], [7, 0]]), "labels": labels}
    with pytest.raises(ValueError, match=match):
        clf.loss_and_grads(batch)
    with pytest.raises(ValueError, match=match):
        clf.forward(batch)  # labels are checked whenever given


def test_bad_batches_raise_naming_the_key():
    clf = classifier("decoder")
    with pytest.raises(ValueError, match="missing key 'labels'"):
        clf.loss({"input_ids": np.array([[5, 6]])})
    with pytest.raises(ValueError, match="missing key 'input_ids'"):
        clf.forward({"labels": np.array([0])})
    with pytest.raises(ValueError, match=r"batch\['input_ids'\].*\[0, 50\)"):
        clf.forward({"input_ids": np.array([[5, 50]])})
    with pytest.raises(ValueError, match=r"batch\['attention_mask'\]"):
        clf.forward({"input_ids": np.array([[5, 6]]), "attention_mask": np.array([[1]])})
    with pytest.raises(ValueError, match=r"batch\['input_ids'\].*at least one token"):
        clf.forward({"input_ids": np.zeros((2, 0), dtype=np.int64)})


@pytest.mark.parametrize("kwargs, field", [
    (dict(backbone=STACK, num_labels=1), "num_labels"),
    (dict(backbone=STACK, num_labels=2, mode="encoder"), "mode"),
    (dict(backbone=CONFIGS["encoder"].backbone, num_labels=2, mode="decoder"), "mode"),
    (dict(backbone=STACK, num_labels=2, label_names=("x",)), "label_names"),
    (dict(backbone=STACK, num_labels=2, label_names=("x", "x")), "label_names"),
    (dict(backbone="tiny", num_labels=2), "backbone"),
])
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"ClassifierConfig.{field}"):
        ClassifierConfig(**kwargs)


# --- training and checkpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_train_and_checkpoint_round_trip(mode, tmp_path):
    """train() fits a separable toy task; the run's checkpoint and save_model/load_model
    give back the config and the weights."""
    from mini_encdec.training.optim import OptimConfig
    from mini_encdec.training.train import evaluate, train
    rng = np.random.default_rng(8)
    clf = build_model(CONFIGS[mode], seed=0)
    batch = padded_batch(rng, [6, 4, 5, 3, 6, 2], S=6)
    batch["labels"] = batch["input_ids"][:, 0] % C  # the class is a function of token 0
    before = clf.loss(batch)
    train(clf, [batch], optim=OptimConfig(lr=1e-2, warmup_steps=0), steps=25,
          run_dir=tmp_path / "run", checkpoint_every=25, eval_batches=[batch],
          progress=False, plot=False)
    after = evaluate(clf, [batch])["loss"]
    assert after < 0.5 * before, (before, after)
    back = load_model(tmp_path / "run")
    assert isinstance(back, SequenceClassifier) and back.config == clf.config
    np.testing.assert_array_equal(back.forward(batch), clf.forward(batch))
    save_model(tmp_path / "model", clf.config, clf.params)
    again = load_model(tmp_path / "model", dtype=np.float64)
    assert again.dtype == np.float64 and again.config == clf.config
    assert config_from_dict(clf.config.to_dict()) == clf.config


# --- Hugging Face directories without torch --------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_save_hf_load_hf_round_trip(mode, tmp_path):
    import json
    from mini_encdec.storage.interop import load_hf, save_hf
    clf = build_model(CONFIGS[mode].replace(label_names=("a", "b", "c")), seed=3)
    save_hf(clf, tmp_path / "hf")
    d = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert d["architectures"] == ["Gemma2ForSequenceClassification" if mode == "decoder"
                                  else "T5GemmaForSequenceClassification"]
    assert d["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert d.get("is_encoder_decoder", mode == "encoder_decoder") == (mode == "encoder_decoder")
    back = load_hf(tmp_path / "hf")
    assert isinstance(back, SequenceClassifier) and back.config == clf.config
    for k, v in clf.params.items():
        np.testing.assert_array_equal(back.params[k], v, err_msg=k)
    assert isinstance(load_model(tmp_path / "hf"), SequenceClassifier)


@pytest.mark.parametrize("change, match", [
    (dict(problem_type="multi_label_classification"), "problem_type"),
    (dict(id2label={"0": "only"}), "num_labels"),
    (dict(id2label={"0": "a", "2": "b"}), "id2label"),
    (dict(pad_token_id=5), "pad_token_id"),
])
def test_bad_classifier_configs_are_refused(change, match):
    from mini_encdec.storage.interop import InteropError, config_from_hf, hf_config
    d = dict(hf_config(CONFIGS["encoder"]), **change)
    with pytest.raises(InteropError, match=match):
        config_from_hf(d)


def test_adapt_refuses_a_classifier_as_its_source(tmp_path):
    from mini_encdec.training.adapt import AdaptError, load_source
    from mini_encdec.storage.interop import save_hf
    clf = build_model(CONFIGS["decoder"])
    save_hf(clf, tmp_path / "hf")
    save_model(tmp_path / "ck", clf.config, clf.params)
    for path in (tmp_path / "hf", tmp_path / "ck"):
        with pytest.raises(AdaptError, match="sequence classifier"):
            load_source(path)
