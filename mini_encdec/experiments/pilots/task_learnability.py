"""Pilot: is each representation task (text/rep_tasks.py) learnable at this scale, well
above its baselines, before it enters the protocol?

Per task, on the validation plays (the FULL validation set, never a subsample):
  chance        0.5 (every task is binary)
  majority      the training set's majority label
  bag of words  logistic regression on token counts (experiments/bow.py)
  probe         models/classifier.py on a pre-trained backbone (the parent checkpoint
                given, as a decoder-only model, or adapted to an encoder-decoder with no
                further training: the two starting points of the study's arms),
                everything fine-tuned for STEPS updates of BATCH examples at LR (cosine,
                warmup as downstream.py), `seed` for the head and the data order
Accuracies come with their binomial standard error sqrt(p (1 - p) / N); replaced_word's
and word_order's also by the third of the input that held the change (and on untouched
inputs).

    python -m mini_encdec.experiments.pilots.task_learnability run --task next_speech \\
        --arch decoder --backbone runs/.../checkpoints/step_001000 --out runs/tasks
    python -m mini_encdec.experiments.pilots.task_learnability collect --out runs/tasks \\
        --to data/results/study_pilots/2026-12-07_task_learnability

`run` caches every finished result (<out>/<task>_<arch>_seed<s>.json, the baselines in
<out>/baselines_<task>.json) and resumes a probe's training from its checkpoints.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..bow import bow_baseline
from ..study.representation import third_masks
from ..downstream import _ClassBatcher, _class_batches, _optim
from ...models.classifier import SequenceClassifier
from ...storage.checkpoint import atomic_write_json, load_model
from ...text.rep_tasks import POSITIONAL_TASKS, REPLACED, SPAN, TASKS, task_examples
from ...text.tokenizer import load_tokenizer
from ...training.adapt import adapt
from ...training.train import train
from . import pilot_parser, write_collected

LENGTH = 128
STEPS = 400
BATCH = 16
LR = 1e-3
ARCHS = ("decoder", "encdec")


def accuracy_with_se(pred, labels) -> dict:
    pred, labels = np.asarray(pred), np.asarray(labels)
    p = float(np.mean(pred == labels))
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / len(labels)), "n": int(len(labels))}


def by_third(pred, examples) -> dict:
    """Accuracy (with its SE) on changed inputs by the third that held the change, and on
    untouched inputs (representation.third_masks; empty parts left out)."""
    pred = np.asarray(pred)
    labels = np.array([e.label for e in examples])
    return {(name if name == "untouched" else f"{name} third"):
            accuracy_with_se(pred[sel], labels[sel])
            for name, sel in third_masks(examples).items() if sel.any()}


def task_parameters(task: str) -> dict:
    """The task's own settings (text/rep_tasks.py), recorded with every result."""
    return {"word_order": {"span": SPAN}, "replaced_words": {"replaced": REPLACED}}.get(task, {})


def baselines(task: str, train_ex: list, val_ex: list, vocab_size: int) -> dict:
    y_train = np.array([e.label for e in train_ex])
    y_val = np.array([e.label for e in val_ex])
    majority = int(np.mean(y_train) >= 0.5)
    bow = bow_baseline([e.inputs for e in train_ex], y_train, [e.inputs for e in val_ex],
                       vocab_size)
    res = {"task": task, "task_parameters": task_parameters(task), "train_examples": len(train_ex), "val_examples": len(val_ex),
           "val_label_mean": float(y_val.mean()), "chance": 0.5,
           "majority": accuracy_with_se(np.full(len(val_ex), majority), y_val),
           "bag_of_words": dict(accuracy_with_se(bow["predictions"], y_val),
                                **{"lambda": bow["lambda"],
                                   "dev_accuracy": {str(k): v for k, v in
                                                    bow["dev_accuracy"].items()}})}
    if task in POSITIONAL_TASKS:
        res["bag_of_words"]["by_third"] = by_third(bow["predictions"], val_ex)
    return res


def backbone(path: Path, arch: str, seed: int):
    """The parent (decoder-only), or adapt(parent) for arch "encdec"."""
    model = load_model(path)
    if arch == "encdec":
        model = adapt(model, rng=np.random.default_rng([seed, 21]))
    return model


def probe_predictions(clf, examples: list, pad_id: int, progress: bool) -> np.ndarray:
    out = []
    batches = _class_batches(examples, 32, LENGTH, pad_id)
    for b in tqdm(batches, total=math.ceil(len(examples) / 32), desc="evaluate",
                  disable=not progress, file=sys.stderr, leave=False):
        out.append(clf.forward(b).argmax(axis=-1))
    return np.concatenate(out)


def recipe_tag(steps: int, lr: float) -> str:
    """The part of a probe's file name that names its recipe ('' for the first pilot's)."""
    return "" if (steps, lr) == (STEPS, LR) else f"_steps{steps}_lr{lr:g}"


def run(task: str, arch: str, backbone_path: Path, out: Path, seed: int,
        progress: bool = True, steps: int = STEPS, lr: float = LR) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{task}_{arch}_seed{seed}{recipe_tag(steps, lr)}"
    result_path = out / f"{name}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    tok = load_tokenizer()
    train_ex = task_examples(task, "train", tok, length=LENGTH, seed=seed)
    val_ex = task_examples(task, "validation", tok, length=LENGTH, seed=seed)
    base_path = out / f"baselines_{task}.json"
    if not base_path.is_file():
        atomic_write_json(base_path, baselines(task, train_ex, val_ex, tok.vocab_size))
    model = backbone(backbone_path, arch, seed)
    clf = SequenceClassifier.from_backbone(model, num_labels=2, seed=seed,
                                           label_names=("no", "yes"))
    batches = _ClassBatcher(train_ex, BATCH, LENGTH, tok.pad_id, seed)
    history = train(clf, batches, optim=_optim(lr, steps), steps=steps, eval_every=0,
                    checkpoint_every=100, run_dir=out / "runs" / name,
                    resume=True, progress=progress, plot=False,
                    run_info={"pilot": "task_learnability", "task": task, "arch": arch})
    pred = probe_predictions(clf, val_ex, tok.pad_id, progress)
    labels = [e.label for e in val_ex]
    res = {"task": task, "arch": arch, "seed": seed, "backbone": str(backbone_path),
           "steps": steps, "batch_size": BATCH, "lr": lr, "length": LENGTH,
           "task_parameters": task_parameters(task),
           "final_train_loss": float(np.mean([h["loss"] for h in history
                                              if "loss" in h][-20:])),
           "probe": accuracy_with_se(pred, labels)}
    if task in POSITIONAL_TASKS:
        res["probe"]["by_third"] = by_third(pred, val_ex)
    atomic_write_json(result_path, res)
    return res


def collect(out: Path, to: Path) -> dict:
    tasks = {}
    for task in TASKS:
        base = out / f"baselines_{task}.json"
        if not base.is_file():
            continue
        entry = json.loads(base.read_text())
        entry["probes"] = [json.loads(p.read_text())
                           for p in sorted(out.glob(f"{task}_*_seed*.json"))]
        for pr in entry["probes"]:  # above the bag of words by how many standard errors
            a, b = pr["probe"], entry["bag_of_words"]
            pr["probe"]["minus_bag_of_words"] = a["accuracy"] - b["accuracy"]
            pr["probe"]["z_vs_bag_of_words"] = (a["accuracy"] - b["accuracy"]) / \
                math.sqrt(a["se"] ** 2 + b["se"] ** 2 + 1e-12)
        tasks[task] = entry
    res = {"pilot": "task_learnability", "design": {"length": LENGTH, "batch_size": BATCH,
                                                    "steps": sorted({p["steps"] for e in
                                                                     tasks.values() for p in e["probes"]}),
                                                    "lr": sorted({p["lr"] for e in
                                                                  tasks.values() for p in e["probes"]})},
           "tasks": tasks}
    return write_collected(to, res)


def main(argv=None) -> int:
    ap, r = pilot_parser("task_learnability", __doc__, "baselines and one probe of one task",
                         "gather the results into one json")
    r.add_argument("--task", choices=TASKS, required=True)
    r.add_argument("--arch", choices=ARCHS, required=True)
    r.add_argument("--backbone", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=STEPS, help=f"probe updates (default {STEPS})")
    r.add_argument("--lr", type=float, default=LR, help=f"peak learning rate (default {LR:g})")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        if not a.backbone.exists():
            ap.error(f"--backbone: {a.backbone} does not exist")
        if a.steps < 1:
            ap.error(f"--steps: expected a whole number >= 1, got {a.steps}")
        if not (math.isfinite(a.lr) and a.lr > 0):
            ap.error(f"--lr: expected a positive number, got {a.lr}")
        print(json.dumps(run(a.task, a.arch, a.backbone, a.out, a.seed, steps=a.steps,
                             lr=a.lr), indent=1))
    else:
        if not a.out.is_dir():
            ap.error(f"--out: {a.out} is not a directory")
        print(json.dumps(collect(a.out, a.to), indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
