"""The study's representation score: classification probes on the representation
tasks of text/rep_tasks.py (in the spirit of SuperGLUE), with their baselines.

Per task (plan.rep_tasks): training examples from the training plays, evaluation on every
example of plan.eval_split's plays (plan.rep_eval_examples > 0 caps both, for smoke
tests only). The examples are the same for every seed and arm (task seed 0), so the arms
differ only in their model.

Per model and task, one probe per head seed in plan.probe_seeds (models/classifier.py,
everything fine-tuned for plan.rep_probe_steps updates at plan.finetune_lr, the head and the
data order from the probe seed): the task's accuracy is the mean over the head seeds.
The representation score is the mean accuracy over the tasks.

Baselines per task (computed once per study): chance 0.5, the training majority class,
and the bag-of-words logistic regression (experiments/bow.py).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from ..bow import bow_baseline
from ..downstream import _ClassBatcher, _class_batches, _optim
from ...models.classifier import SequenceClassifier
from ...text.rep_tasks import POSITIONAL_TASKS, task_examples
from ...training.train import train

TASK_SEED = 0  # the examples (and their labels) are the same for every study seed


@dataclass
class RepData:
    """Every representation task's examples: {task: (train examples, eval examples)}."""
    tasks: dict
    length: int
    pad_id: int


def build_rep_data(plan, tok) -> RepData:
    cap = plan.rep_eval_examples or None
    train_cap = plan.rep_train_examples or None
    tasks = {t: (task_examples(t, "train", tok, length=plan.rep_length, seed=TASK_SEED,
                               max_examples=train_cap),
                 task_examples(t, plan.eval_split, tok, length=plan.rep_length,
                               seed=TASK_SEED, max_examples=cap))
             for t in plan.rep_tasks}
    return RepData(tasks, plan.rep_length, tok.pad_id)


def rep_baselines(data: RepData, vocab_size: int, task: str) -> dict:
    """{"chance", "majority", "bag_of_words", "eval_examples"} of one task (accuracies;
    the bag of words also by thirds for the POSITIONAL_TASKS)."""
    tr, ev = data.tasks[task]
    y_tr = np.array([e.label for e in tr])
    y_ev = np.array([e.label for e in ev])
    bow = bow_baseline([e.inputs for e in tr], y_tr, [e.inputs for e in ev], vocab_size)
    out = {"chance": 0.5, "majority": float(np.mean(y_ev == int(y_tr.mean() >= 0.5))),
           "bag_of_words": float(np.mean(bow["predictions"] == y_ev)),
           "eval_examples": int(len(ev))}
    if task in POSITIONAL_TASKS:
        out["bag_of_words_by_third"] = by_third(bow["predictions"] == y_ev, ev)
    return out


THIRDS = {"first": 0, "middle": 1, "last": 2, "untouched": -1}


def third_masks(examples: list) -> dict:
    """{THIRDS name: (N,) bool mask}: the changed inputs by the third of the input that
    held the change, and the untouched ones."""
    where = np.array([e.where for e in examples])
    return {name: where == k for name, k in THIRDS.items()}


def by_third(hit: np.ndarray, examples: list) -> dict:
    """Mean of `hit` (per-example correctness) on each part of third_masks (None where a
    part is empty)."""
    return {name: float(np.mean(hit[sel])) if sel.any() else None
            for name, sel in third_masks(examples).items()}


def _accuracy(clf, examples: list, length: int, pad_id: int) -> np.ndarray:
    """Per-example correctness (0/1) of a probe."""
    hits = [clf.forward(b).argmax(axis=-1) == b["labels"]
            for b in _class_batches(examples, 32, length, pad_id)]
    return np.concatenate(hits).astype(np.float64)


def probe_scores(model, data: RepData, plan, progress: bool) -> dict:
    """{<task>_accuracy, <task>_accuracy_per_head_seed, rep_score, and for the
    POSITIONAL_TASKS <task>_accuracy_by_third} of one model."""
    res, means = {}, []
    for task, (tr, ev) in data.tasks.items():
        accs, thirds = [], []
        for ps in plan.probe_seeds:
            clf = SequenceClassifier.from_backbone(model, num_labels=2, seed=ps,
                                                   label_names=("no", "yes"))
            batches = _ClassBatcher(tr, plan.batch_size, data.length, data.pad_id, ps)
            # no run directory: a probe is short, and models x tasks x head seeds of
            # checkpoints per seed would fill the disk; an interrupted unit reruns whole
            train(clf, batches, optim=_optim(plan.finetune_lr, plan.rep_probe_steps),
                  steps=plan.rep_probe_steps, eval_every=0, checkpoint_every=0,
                  progress=progress, plot=False)
            hit = _accuracy(clf, ev, data.length, data.pad_id)
            accs.append(float(hit.mean()))
            thirds.append(by_third(hit, ev))
        res[f"{task}_accuracy"] = float(np.mean(accs))
        res[f"{task}_accuracy_per_head_seed"] = accs
        if task in POSITIONAL_TASKS:
            res[f"{task}_accuracy_by_third"] = {
                k: None if None in (v := [t[k] for t in thirds]) else float(np.mean(v))
                for k in THIRDS}
        means.append(res[f"{task}_accuracy"])
    res["rep_score"] = float(np.mean(means))
    return res
