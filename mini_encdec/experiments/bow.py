"""The bag-of-words baseline of a classification task: logistic regression on token
counts, in NumPy (what a model must beat to have learnt more than which words occur).

Features of an input x (token ids), one per vocabulary entry v:

    f_v(x) = log(1 + count of v in x),  then f / ||f||_2          (a sparse row)

Model and fit, for labels y in {0, 1}, n training rows, L2 penalty lam:

    p(y = 1 | x) = sigmoid(w . f(x) + b)
    minimise  mean_i [ -y_i log p_i - (1 - y_i) log(1 - p_i) ] + lam / 2 ||w||^2

by full-batch gradient descent with Adam (deterministic; the loss is convex, so the
optimiser only decides how close to the optimum `iterations` get). lam is chosen from
LAMBDAS by accuracy on the last `dev_fraction` of the training rows, then the model is
refitted on all of them: the same small grid for every task.

Rows are stored sparse (CSR: indptr, indices, values), so the 8192-word vocabulary costs
only the tokens an input holds:  X w = add.reduceat(values * w[indices], indptr[:-1]),
X^T g = bincount(indices, values * repeat(g, row lengths)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAMBDAS = (1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class Rows:
    """Sparse feature rows (CSR)."""
    indptr: np.ndarray    # (n + 1,)
    indices: np.ndarray   # (nnz,) vocabulary ids
    values: np.ndarray    # (nnz,) feature values
    dim: int              # vocabulary size

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    def dot(self, w: np.ndarray) -> np.ndarray:
        """X w: (n,)."""
        return np.add.reduceat(self.values * w[self.indices], self.indptr[:-1])

    def tdot(self, g: np.ndarray) -> np.ndarray:
        """X^T g: (dim,)."""
        return np.bincount(self.indices, weights=self.values * np.repeat(g, np.diff(self.indptr)),
                           minlength=self.dim)

    def take(self, rows: np.ndarray) -> "Rows":
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        idx = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends)])
        return Rows(np.concatenate([[0], np.cumsum(ends - starts)]), self.indices[idx],
                    self.values[idx], self.dim)


def features(inputs: list, dim: int) -> Rows:
    """Rows of log(1 + count), L2-normalised, for a list of token-id arrays (none empty)."""
    indptr, indices, values = [0], [], []
    for ids in inputs:
        v, c = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
        if len(v) == 0:
            raise ValueError("bow.features: an input without tokens")
        f = np.log1p(c.astype(np.float64))
        indices.append(v)
        values.append(f / np.linalg.norm(f))
        indptr.append(indptr[-1] + len(v))
    return Rows(np.asarray(indptr, dtype=np.int64), np.concatenate(indices),
                np.concatenate(values), dim)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit(x: Rows, y: np.ndarray, lam: float, *, iterations: int = 400,
        lr: float = 0.1) -> tuple:
    """(w, b) of the penalised logistic regression (module docstring)."""
    y = np.asarray(y, dtype=np.float64)
    w, b = np.zeros(x.dim), 0.0
    m, v = np.zeros(x.dim + 1), np.zeros(x.dim + 1)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, iterations + 1):
        g = (_sigmoid(x.dot(w) + b) - y) / x.n           # d loss / d logit, (n,)
        grad = np.concatenate([x.tdot(g) + lam * w, [g.sum()]])
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        step = lr * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
        w, b = w - step[:-1], b - step[-1]
    return w, b


def predict(x: Rows, w: np.ndarray, b: float) -> np.ndarray:
    """Predicted labels (0/1), (n,)."""
    return (x.dot(w) + b > 0).astype(np.int64)


def bow_baseline(train_inputs: list, train_labels, eval_inputs: list, dim: int, *,
                 dev_fraction: float = 0.1) -> dict:
    """Fit on the training rows (lam from LAMBDAS on a held-out tail), predict the
    evaluation rows: {"predictions", "lambda", "dev_accuracy"}."""
    y = np.asarray(train_labels, dtype=np.int64)
    xt, xe = features(train_inputs, dim), features(eval_inputs, dim)
    n_dev = max(1, int(round(dev_fraction * xt.n)))
    fit_rows, dev_rows = np.arange(xt.n - n_dev), np.arange(xt.n - n_dev, xt.n)
    x_fit, x_dev = xt.take(fit_rows), xt.take(dev_rows)
    dev_acc = {lam: float(np.mean(predict(x_dev, *fit(x_fit, y[fit_rows], lam)) == y[dev_rows]))
               for lam in LAMBDAS}
    lam = max(LAMBDAS, key=lambda k: (dev_acc[k], k))   # ties: the stronger penalty
    w, b = fit(xt, y, lam)
    return {"predictions": predict(xe, w, b), "lambda": lam, "dev_accuracy": dev_acc}
