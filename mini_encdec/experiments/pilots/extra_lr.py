"""Pilot: the continued pre-training's peak learning rate, per architecture.

The same small grid (GRID) and the same effort for both architectures, once, on the
validation plays, before the confirmatory run:

  decoder   the parent, causal LM (the `dec` arm; `dec_prefix` takes the same rate)
  encdec    adapt(parent), PrefixLM (the `ed_prefix` arm; every adapted arm takes the
            same rate)

Each run: EXTRA updates of 16 windows of 2 x 64 tokens from the training plays,
warmup-stable-decay (warmup as downstream.warmup_steps_for, 20% linear cooldown to 0),
so every end point is annealed; then the PrefixLM loss on windows spread over every
validation play (evalsets.py). The chosen rate of an architecture is the grid point with
the lowest loss; a grid point at the edge of the grid is reported as such.

    python -m mini_encdec.experiments.pilots.extra_lr run --arch encdec \\
        --parent runs/.../checkpoints/step_002000 --out runs/extra_lr
    python -m mini_encdec.experiments.pilots.extra_lr collect --out runs/extra_lr \\
        --to data/results/study_pilots/2026-12-07_extra_lr
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from ..downstream import warmup_steps_for
from ..evalsets import play_streams, spread_eval_batches
from ...models import build_model
from ...objectives import make_objective
from ...storage.checkpoint import atomic_write_json, load_model
from ...text.batching import make_batcher
from ...text.tokenizer import load_tokenizer
from ...training.adapt import adapt
from ...training.optim import OptimConfig
from ...training.schedules import wsd_decay_steps
from ...training.train import evaluate, train
from . import pilot_parser, write_collected

GRID = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)  # first run: (3e-4, 1e-3, 3e-3), 3e-4 won at its edge
EXTRA = 300
HALF = 64
BATCH = 16
VAL_PER_PLAY = 21      # 6 plays x 21 = 126 windows (the study's 8 batches of 16)
ARCHS = ("decoder", "encdec")


def run(arch: str, lr: float, parent_path: Path, out: Path, seed: int = 0,
        steps: int = EXTRA, progress: bool = True) -> dict:
    path = out / f"{arch}_lr{lr:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    tok = load_tokenizer()
    parent = load_model(parent_path)
    kw = dict(batch_size=BATCH, encoder_length=HALF, decoder_length=HALF, seed=seed)
    if arch == "decoder":
        model = build_model(parent.config, params=parent.params)
        batches = make_batcher("train", make_objective("causal_lm", tok), tok, arch="decoder",
                               **kw)
    else:
        model = adapt(parent, rng=np.random.default_rng([seed, 21]))
        batches = make_batcher("train", make_objective("prefix_lm", tok), tok, arch="encdec",
                               **kw)
    val = spread_eval_batches(play_streams("validation", tok), make_objective("prefix_lm", tok),
                              per_play=VAL_PER_PLAY, arch=arch, pad_id=tok.pad_id,
                              bos_id=tok.bos_id, **{k: v for k, v in kw.items() if k != "seed"})
    start = float(evaluate(model, val)["loss"])
    optim = OptimConfig(lr=lr, schedule="wsd", warmup_steps=warmup_steps_for(steps),
                        total_steps=steps, decay_steps=wsd_decay_steps(steps),
                        min_lr_ratio=0.0, weight_decay=0.01)
    history = train(model, batches, optim=optim, steps=steps, eval_every=0,
                    checkpoint_every=100, run_dir=out / "runs" / f"{arch}_lr{lr:g}",
                    resume=True, progress=progress, plot=False,
                    run_info={"pilot": "extra_lr", "arch": arch, "lr": lr})
    res = {"arch": arch, "lr": lr, "steps": steps, "parent": str(parent_path),
           "prefix_val_loss_at_start": start,
           "prefix_val_loss": float(evaluate(model, val)["loss"]),
           "final_train_loss": float(np.mean([h["loss"] for h in history if "loss" in h][-20:])),
           "load_average": list(os.getloadavg())}
    atomic_write_json(path, res)
    return res


def collect(out: Path, to: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_lr*.json"))]
    choice = {}
    for arch in ARCHS:
        mine = sorted((r for r in runs if r["arch"] == arch), key=lambda r: r["lr"])
        if not mine:
            continue
        best = min(mine, key=lambda r: r["prefix_val_loss"])
        choice[arch] = {"lr": best["lr"], "prefix_val_loss": best["prefix_val_loss"],
                        "complete_grid": len(mine) == len(GRID),
                        "at_grid_edge": best["lr"] in (min(GRID), max(GRID))}
    res = {"pilot": "extra_lr", "design": {"grid": list(GRID), "steps": EXTRA,
                                           "batch_size": BATCH, "half": HALF,
                                           "val_windows_per_play": VAL_PER_PLAY},
           "runs": runs, "choice": choice}
    return write_collected(to, res)


def main(argv=None) -> int:
    ap, r = pilot_parser("extra_lr", __doc__, "every grid point of one architecture",
                         "gather the runs and the choice into one json")
    r.add_argument("--arch", choices=ARCHS, required=True)
    r.add_argument("--parent", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        if not a.parent.exists():
            ap.error(f"--parent: {a.parent} does not exist")
        for lr in GRID:
            print(json.dumps(run(a.arch, lr, a.parent, a.out)), flush=True)
    else:
        if not a.out.is_dir():
            ap.error(f"--out: {a.out} is not a directory")
        print(json.dumps(collect(a.out, a.to)["choice"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
