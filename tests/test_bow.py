"""The bag-of-words logistic-regression baseline: sparse algebra against dense, a
separable problem learnt, an uninformative one not."""

import numpy as np

from mini_encdec.experiments.bow import bow_baseline, features, fit, predict


def _dense(rows):
    x = np.zeros((rows.n, rows.dim))
    for i in range(rows.n):
        a, b = rows.indptr[i], rows.indptr[i + 1]
        x[i, rows.indices[a:b]] = rows.values[a:b]
    return x


def test_features_and_sparse_products_match_dense():
    rows = features([np.array([3, 3, 5]), np.array([1]), np.array([5, 2, 2, 2])], dim=7)
    x = _dense(rows)
    # log(1 + count), unit norm: [3, 3, 5] -> log 3, log 2 at ids 3, 5
    want = np.array([np.log(3), np.log(2)]) / np.hypot(np.log(3), np.log(2))
    assert np.allclose(x[0, [3, 5]], want) and np.allclose(np.linalg.norm(x, axis=1), 1)
    w, g = np.arange(7.0), np.array([1.0, -2.0, 0.5])
    assert np.allclose(rows.dot(w), x @ w) and np.allclose(rows.tdot(g), x.T @ g)
    sub = rows.take(np.array([2, 0]))
    assert np.allclose(_dense(sub), x[[2, 0]])


def test_a_keyword_task_is_learnt_and_a_shuffled_one_is_not():
    rng = np.random.default_rng(0)
    inputs = [rng.integers(10, 200, size=20) for _ in range(600)]
    labels = np.array([int(7 in x) for x in inputs])
    for x, y in zip(inputs, rng.integers(0, 2, size=600)):
        if y:
            x[rng.integers(20)] = 7   # label 1: the keyword 7 somewhere in the input
    labels = np.array([int(7 in x) for x in inputs])
    res = bow_baseline(inputs[:500], labels[:500], inputs[500:], dim=200)
    assert np.mean(res["predictions"] == labels[500:]) > 0.97
    noise = rng.integers(0, 2, size=600)
    res = bow_baseline(inputs[:500], noise[:500], inputs[500:], dim=200)
    assert np.mean(res["predictions"] == noise[500:]) < 0.65


def test_fit_is_deterministic():
    rows = features([np.array([1, 2]), np.array([2, 3])], dim=4)
    a, b = fit(rows, np.array([0, 1]), 1e-3), fit(rows, np.array([0, 1]), 1e-3)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert predict(rows, *a).tolist() == [0, 1]
