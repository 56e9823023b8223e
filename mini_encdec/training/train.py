"""The training loop, shared by both models and every objective, and evaluation.

    history = train(model, batches, steps=200, optim=OptimConfig(lr=1e-3),
                    run_dir="runs/x", eval_batches=val, eval_every=50,
                    checkpoint_every=50, teacher=None, resume=False)
    metrics = evaluate(model, val)       # {"loss", "ppl", "tokens"}

One update (`step` counts completed updates, 0-based inside the loop):
    1. trainable = names not frozen (and, during the cross-attention warmup of an
       encoder-decoder, only names matching "cross_attn")
    2. for each of grad_accum micro-batches: loss and gradients (cross-entropy, or
       PrefixLM + distillation when a teacher is given), averaged
    3. a non-finite loss or gradient norm stops the run (TrainingDiverged) before the
       update: the weights on disk stay those of the last good checkpoint
    4. global-norm clipping over the trainable gradients, lr from the schedule, AdamW
    5. a JSONL record; every eval_every steps a validation record; every
       checkpoint_every steps an atomic checkpoint

Batches come from a Batcher (anything with next_batch/state_dict/load_state_dict) or a
list of batch dicts (cycled). Everything that decides the next step lives in the
checkpoint: weights, AdamW moments and update counts, the data position, the trainer's
np.random.Generator state, so `resume=True` continues bit for bit (same backend, same
thread count). The run stops after `steps` updates or when `time_budget` seconds have
passed, whichever comes first, and writes a final checkpoint.

Run directory: metrics.jsonl (one JSON object per line: train records with "loss",
"lr", "grad_norm", "tokens_per_s"; eval records with "val_loss"), log.txt (messages),
checkpoints/step_NNNNNN/ (checkpoint.py), loss.png when matplotlib is installed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..storage import checkpoint as ckpt
from ..config import EncDecConfig
from ..validate import check_bool, check_int, check_known_fields, check_number
from .optim import (AdamW, OptimConfig, accumulate, clip_by_global_norm, trainable_names)

IGNORE = -100
METRICS_FILE = "metrics.jsonl"
DAMAGED_FILE = "metrics.damaged.jsonl"  # lines of metrics.jsonl that did not parse, kept
LOG_FILE = "log.txt"
PLOT_FILE = "loss.png"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; nothing was updated."""


@dataclass(frozen=True)
class TrainConfig:
    """How long to train and what to do along the way."""

    # Number of optimizer updates of the whole run (a resumed run continues to this).
    steps: int = 200
    # Stop (with a final checkpoint) after this many seconds of this call; None: no limit.
    time_budget: Optional[float] = None
    # Validation every this many updates (and at the end); 0: only at the end.
    eval_every: int = 50
    # Checkpoint every this many updates (and at the end); 0: only at the end.
    checkpoint_every: int = 50
    # Checkpoints kept on disk (the newest ones).
    keep_checkpoints: int = 2
    # Distillation weight alpha and temperature (used when a teacher is given).
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    # Seed of the trainer's own np.random.Generator (saved in checkpoints).
    seed: int = 0
    # Write loss.png at the end (needs matplotlib; skipped silently without it).
    plot: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("steps", "keep_checkpoints"):
            check_int(getattr(self, f), f"{name}.{f}", low=1)
        for f in ("eval_every", "checkpoint_every", "seed"):
            check_int(getattr(self, f), f"{name}.{f}", low=0)
        check_number(self.time_budget, f"{name}.time_budget", low=0, low_open=True,
                     allow_none=True)  # seconds
        check_number(self.kd_alpha, f"{name}.kd_alpha", low=0, high=1)
        check_number(self.kd_temperature, f"{name}.kd_temperature", low=0, low_open=True)
        check_bool(self.plot, f"{name}.plot")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = check_known_fields(cls, d)
        return cls(**d)


# --- batches --------------------------------------------------------------------------------------

def student_batch(batch: dict) -> dict:
    """The batch without the teacher's keys (what the model itself reads)."""
    return {k: v for k, v in batch.items() if not k.startswith("teacher_")}


def target_tokens(batch: dict) -> int:
    """Number of predicted tokens (labels != -100)."""
    return int(np.count_nonzero(batch["labels"] != IGNORE))


def processed_tokens(batch: dict) -> int:
    """Tokens the model reads: real encoder tokens + decoder tokens (encoder-decoder), or
    real tokens (decoder-only). The numerator of tokens/s."""
    n = int(np.count_nonzero(batch["attention_mask"])) if "attention_mask" in batch \
        else int(batch["input_ids"].size)
    if "decoder_input_ids" in batch:
        n += target_tokens(batch)
    return n


class _ListSource:
    """A list of batches, cycled; its position is the index of the next batch."""

    def __init__(self, batches):
        if not batches:
            raise ValueError("train: argument 'batches': expected a non-empty list of batches")
        self.batches, self.index = list(batches), 0

    def next_batch(self) -> dict:
        b = self.batches[self.index % len(self.batches)]
        self.index += 1
        return b

    def state_dict(self) -> dict:
        return {"kind": "list", "num_batches": len(self.batches), "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "list" or state.get("num_batches") != len(self.batches):
            raise ValueError(f"data position {state} does not fit a list of "
                             f"{len(self.batches)} batches")
        self.index = int(state["index"])


def _as_source(batches):
    if all(hasattr(batches, a) for a in ("next_batch", "state_dict", "load_state_dict")):
        return batches
    if isinstance(batches, (list, tuple)):
        return _ListSource(batches)
    raise ValueError(f"train: argument 'batches': expected a Batcher (next_batch, state_dict, "
                     f"load_state_dict) or a list of batch dicts, got {type(batches).__name__}")


# --- evaluation -----------------------------------------------------------------------------------

def evaluate(model, batches, max_batches: Optional[int] = None) -> dict:
    """Token-weighted mean cross-entropy over the batches: {"loss", "ppl", "tokens"}."""
    total, count = 0.0, 0
    for k, batch in enumerate(batches):
        if max_batches is not None and k >= max_batches:
            break
        n = target_tokens(batch)
        if n:
            total += model.loss(student_batch(batch)) * n
            count += n
    if count == 0:
        raise ValueError("evaluate: argument 'batches': no target tokens (labels != -100)")
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}


# --- the run directory ----------------------------------------------------------------------------

class _RunLog:
    """metrics.jsonl + log.txt of a run directory (or nothing without one)."""

    def __init__(self, run_dir: Optional[Path], progress: bool):
        self.dir, self.progress = run_dir, progress
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)

    def records(self) -> tuple:
        """(records, damaged): the JSON objects of metrics.jsonl with an integer "step",
        and [(line number, text)] of every other line (a line cut short by a kill, an
        edit); a damaged line hides nothing after it."""
        if self.dir is None or not (self.dir / METRICS_FILE).exists():
            return [], []
        out, damaged = [], []
        text = (self.dir / METRICS_FILE).read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                record = None
            if isinstance(record, dict) and isinstance(record.get("step", 0), int):
                out.append(record)
            else:
                damaged.append((number, line))
        return out, damaged

    def truncate_after(self, step: int) -> list:
        """Keep only records up to `step` (a resumed run re-creates the rest). Damaged
        lines go to metrics.damaged.jsonl beside it (appended, with their line number),
        with one message."""
        records, damaged = self.records()
        keep = [r for r in records if r.get("step", 0) <= step]
        if self.dir is not None:
            if damaged:
                with open(self.dir / DAMAGED_FILE, "a") as f:
                    for number, line in damaged:
                        f.write(json.dumps({"line": number, "text": line}) + "\n")
                self.message(f"{METRICS_FILE}: {len(damaged)} damaged line(s) "
                             f"({', '.join(str(n) for n, _ in damaged[:5])}"
                             f"{', ...' if len(damaged) > 5 else ''}) moved to {DAMAGED_FILE}; "
                             f"the {len(keep)} records up to step {step} are kept")
            ckpt.atomic_write_bytes(self.dir / METRICS_FILE,
                                    "".join(json.dumps(r) + "\n" for r in keep).encode())
        return keep

    def write(self, record: dict) -> None:
        if self.dir is not None:
            path = self.dir / METRICS_FILE
            try:
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # a full disk: name the file
                raise OSError(e.errno, e.strerror, str(path)) from None

    def message(self, text: str, pbar=None) -> None:
        if self.dir is not None:
            with open(self.dir / LOG_FILE, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if self.progress:
            (pbar.write if pbar is not None else print)(text, file=sys.stderr)


# --- training -------------------------------------------------------------------------------------

def _default_loss(model, batch):
    return model.loss_and_grads(student_batch(batch))


def train(model, batches, *, optim: Optional[OptimConfig] = None,
          config: Optional[TrainConfig] = None, run_dir=None, teacher=None,
          eval_batches=None, resume: bool = False, progress: bool = True,
          run_info: Optional[dict] = None,
          loss_fn: Optional[Callable] = None, **overrides) -> list:
    """Train `model` in place; return the metrics history (list of dicts).

    batches: a Batcher or a list of batch dicts. optim: OptimConfig (default settings).
    config: TrainConfig; keyword `overrides` replace its fields (e.g. steps=100).
    run_dir: where metrics, log and checkpoints go (None: nothing is written).
    teacher: a decoder-only model for PrefixLM + distillation (batches must carry the
    teacher keys); eval_batches: a list of batches for validation.
    resume: continue from the latest checkpoint of run_dir (if there is one).
    run_info: JSON-serialisable description stored in every checkpoint.
    loss_fn(model, batch) -> (loss, grads) or (loss, grads, {name: float}): a custom
    objective (default cross-entropy); the extra floats are averaged into the records.
    """
    optim = optim or OptimConfig()
    config = (config or TrainConfig()).replace(**overrides) if overrides else \
        (config or TrainConfig())
    if not isinstance(optim, OptimConfig):
        raise ValueError(f"train: argument 'optim': expected an OptimConfig, got "
                         f"{type(optim).__name__}")
    source = _as_source(batches)
    run_dir = Path(run_dir) if run_dir is not None else None
    log = _RunLog(run_dir, progress)
    ckpt_root = run_dir / ckpt.CHECKPOINTS_DIR if run_dir is not None else None
    if teacher is not None:
        if loss_fn is not None:
            raise ValueError("train: give either a teacher or a loss_fn, not both")
        if teacher.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"train: argument 'teacher': vocabulary {teacher.config.vocab_size}"
                             f" differs from the student's {model.config.vocab_size}")

        def loss_fn(m, b, _t=teacher, _a=config.kd_alpha, _tau=config.kd_temperature):
            from .distill import kd_loss_and_grads
            return kd_loss_and_grads(m, _t, b, alpha=_a, temperature=_tau)  # + ce, soft, kl
    loss_fn = loss_fn or _default_loss
    warmup = model.config.cross_attn_warmup_steps \
        if isinstance(model.config, EncDecConfig) else 0

    opt = AdamW(model.params, optim)
    # The trainer's own generator, checkpointed with everything else, for objectives
    # that draw randomness during training (the batchers need none: each example is
    # seeded by its (seed, epoch, cursor) position).
    rng = np.random.default_rng(config.seed)
    step, tokens_seen, history = 0, 0, []
    if resume:
        if ckpt_root is None:
            raise ValueError("train: resume=True needs a run_dir")
        latest = ckpt.latest_checkpoint(ckpt_root)
        if latest is not None:
            step, tokens_seen = _restore(latest, model, opt, source, rng)
            history = log.truncate_after(step)
            log.message(f"resumed from {latest} at step {step}")
    elif ckpt_root is not None and ckpt.latest_checkpoint(ckpt_root) is not None:
        raise ValueError(f"train: {run_dir} already holds checkpoints; pass resume=True to "
                         f"continue it, or use a new run directory")
    if step == 0:
        log.truncate_after(0)  # records of an earlier attempt that never checkpointed

    def save():
        state = {"optimizer": opt.state_json(), "rng": rng.bit_generator.state,
                 "data": source.state_dict(), "tokens_seen": tokens_seen,
                 "metrics": history[-1] if history else {},
                 "train_config": config.to_dict(), "run": run_info or {}}
        return ckpt.save_checkpoint(ckpt_root, step, config=model.config, params=model.params,
                                    optimizer_arrays=opt.state_arrays(), state=state,
                                    keep=config.keep_checkpoints)

    def run_eval(pbar):
        m = evaluate(model, eval_batches)
        rec = {"step": step, "val_loss": m["loss"], "val_ppl": m["ppl"], "val_tokens": m["tokens"]}
        history.append(rec)
        log.write(rec)
        log.message(f"step {step}: validation loss {m['loss']:.4f} (ppl {m['ppl']:.2f})", pbar)

    from tqdm import tqdm
    start = time.perf_counter()
    pbar = tqdm(total=config.steps, initial=step, disable=not progress, unit="step",
                dynamic_ncols=True, file=sys.stderr)
    saved_at = evaluated_at = step if step else -1
    stop_reason = "steps"
    try:
        while step < config.steps:
            if config.time_budget is not None and time.perf_counter() - start > config.time_budget:
                stop_reason = "time_budget"
                break
            t0 = time.perf_counter()
            names = trainable_names(model.params, step, freeze=optim.freeze,
                                    warmup_steps=warmup)
            grads, losses, extras, ntok = None, [], [], 0
            for _ in range(optim.grad_accum):
                batch = source.next_batch()
                loss, g, *extra = loss_fn(model, batch)
                extras.extend(extra)
                if not np.isfinite(loss):
                    _diverged(log, pbar, ckpt_root, step, f"the loss is {loss}")
                grads = accumulate(grads, g, 1.0 / optim.grad_accum)
                losses.append(float(loss))
                ntok += processed_tokens(batch)
            norm = clip_by_global_norm(grads, optim.clip_norm, names)
            if not np.isfinite(norm):
                _diverged(log, pbar, ckpt_root, step, f"the gradient norm is {norm}")
            lr = optim.lr_at(step, config.steps)
            opt.step(model.params, grads, lr, names)
            step += 1
            tokens_seen += ntok
            dt = time.perf_counter() - t0
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "grad_norm": norm,
                   "tokens": tokens_seen, "tokens_per_s": ntok / dt if dt > 0 else 0.0,
                   "time": time.perf_counter() - start}
            for name in (extras[0] if extras else {}):
                rec[name] = float(np.mean([e[name] for e in extras]))
            history.append(rec)
            log.write(rec)
            pbar.update(1)
            pbar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}",
                             lr=f"{lr:.2e}", refresh=False)
            if eval_batches and config.eval_every and step % config.eval_every == 0:
                run_eval(pbar)
                evaluated_at = step
            if ckpt_root is not None and config.checkpoint_every and \
                    step % config.checkpoint_every == 0:
                save()
                saved_at = step
        if eval_batches and evaluated_at != step:
            run_eval(pbar)
        if ckpt_root is not None and saved_at != step:
            save()
    finally:
        pbar.close()
    why = "time budget reached" if stop_reason == "time_budget" else "all steps done"
    log.message(f"stopped at step {step} ({why}); {tokens_seen} tokens in "
                f"{time.perf_counter() - start:.1f} s")
    if run_dir is not None and config.plot:
        from ..plots import plot_loss_curve
        plot_loss_curve(history, run_dir / PLOT_FILE)
    return history


def _diverged(log: _RunLog, pbar, ckpt_root, step: int, what: str):
    last = ckpt.latest_checkpoint(ckpt_root) if ckpt_root is not None else None
    where = f"the last good checkpoint is {last}" if last is not None else \
        "no checkpoint was written before"
    msg = (f"training stopped at step {step + 1}: {what}. The weights were not updated and "
           f"nothing was saved; {where}. Try a lower learning rate (optim.lr) or a "
           f"tighter clip_norm.")
    log.write({"step": step + 1, "event": "diverged", "message": msg})
    log.message(msg, pbar)
    raise TrainingDiverged(msg)


def _restore(path: Path, model, opt: AdamW, source, rng: np.random.Generator):
    """Load checkpoint `path` into model, optimizer, data source and rng; (step, tokens)."""
    ck = ckpt.load_checkpoint(path, require_optimizer=True)
    if ck.config != model.config:
        raise ckpt.CheckpointError(f"{path / ckpt.CONFIG_FILE}: the checkpoint's model config "
                                   f"differs from the model being trained")
    for k, a in ck.params.items():
        if a.dtype != model.params[k].dtype:
            raise ckpt.CheckpointError(f"{path / ckpt.MODEL_FILE}: {k} is {a.dtype}, the "
                                       f"model {model.params[k].dtype}")
        np.copyto(model.params[k], a)
    state = ck.state
    opt.load_state(ck.optimizer_arrays, state.get("optimizer", {}),
                   source=str(path / ckpt.OPTIMIZER_FILE))
    try:
        source.load_state_dict(state["data"])
        rng.bit_generator.state = state["rng"]
    except (KeyError, ValueError, TypeError) as e:
        raise ckpt.CheckpointError(f"{path / ckpt.STATE_FILE}: cannot restore the data "
                                   f"position / RNG state ({e})") from None
    return ck.step, int(state.get("tokens_seen", 0))
