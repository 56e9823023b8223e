"""The run directory of the training commands (pretrain, finetune): their shared options,
setting up a new or resumed run, building its model and training it.

A run directory (default runs/<command>-<time>) holds run_config.json (everything needed
to rerun or resume: the command, its options, the optim/train/data configs, the model
config), metrics.jsonl, log.txt, checkpoints/step_NNNNNN/ and loss.png. Everything is
checked before anything is created; the directory itself is made by
safe_output.run_directory, which never deletes or overwrites what this run did not create.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from ..config import PRESETS, T5GEMMA2_PRESETS, config_from_dict
from ..storage.safe_output import check_output, run_directory
from ..text.batching import DataConfig
from ..training.optim import OptimConfig
from ..training.train import TrainConfig
from ..usage import UsageError, did_you_mean
from .common import (add_common_arguments, arch_of, check_memory, check_trainable, checked,
                     hold_output, read_model)
from .overrides import build_model_config, build_section, parse_overrides, section

RUN_CONFIG = "run_config.json"  # in a run directory (config.json would look like a model)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a training run: model, --set, run directory, resume, inputs."""
    p.add_argument("--preset", default="tiny",
                   help=f"model shape: one of {', '.join(PRESETS)}; encoder-decoder also "
                        f"ENC-DEC such as 9b-2b, and T5Gemma 2's "
                        f"{', '.join(T5GEMMA2_PRESETS)} (default tiny)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE",
                   help="override a config field (repeatable); keys: model.*, optim.*, "
                        "train.*, data.*, or a bare field name")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default runs/<command>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint (its "
                        "run_config.json is reused; only train.* may be changed with --set)")
    p.add_argument("--resume-from-good", action="store_true",
                   help="with --resume, when the latest checkpoint is corrupt: resume from "
                        "the newest good one (the corrupt ones are kept, renamed *.corrupt)")
    p.add_argument("--overwrite", action="store_true",
                   help="a new run may replace a non-empty --run-dir; the old content is "
                        "replaced only when the new run completes")
    p.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights (model directory, checkpoint or run "
                        "directory, e.g. the output of `adapt`) instead of a fresh model")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="SentencePiece model (default data/tokenizer.model)")
    add_common_arguments(p)


# --- checks before anything is written ------------------------------------------------------------

def _check_preset(name: str) -> None:
    """`--preset`: a preset name, or ENC-DEC (two names) for an encoder-decoder."""
    if name.lower() in T5GEMMA2_PRESETS:  # T5Gemma 2 (encoder-decoder commands)
        return
    parts = name.split("-")
    names = {k.lower() for k in PRESETS}
    if 1 <= len(parts) <= 2 and all(part.lower() in names for part in parts):
        return
    bad = next((part for part in parts if part.lower() not in names), name)
    raise UsageError(f"--preset {name}: expected one of {', '.join(PRESETS)} (an "
                     f"encoder-decoder also ENC-DEC, e.g. 9b-2b, or "
                     f"{', '.join(T5GEMMA2_PRESETS)})"
                     f"{did_you_mean(bad, list(PRESETS))}")


_KD_KEYS = ("train.kd_alpha", "train.kd_temperature")


def _check_distillation(overrides: dict, teacher: Optional[str], command: str) -> None:
    """kd_alpha / kd_temperature mean something only with a teacher: refuse them without."""
    kd = [k for k in _KD_KEYS if k in overrides]
    if kd and not teacher:
        how = "add --teacher PATH (a decoder-only model to distil from)" \
            if command == "pretrain" else "distillation is a pretrain option (--teacher)"
        raise UsageError(f"--set {kd[0]}={overrides[kd[0]]}: distillation settings need a "
                         f"teacher, and this run has none: {how}, or drop the setting")


def _run_sources(args) -> dict:
    """The inputs a run reads, which its run directory must not replace."""
    return {"--init": args.init, "--teacher": getattr(args, "teacher", None),
            "--tokenizer": args.tokenizer}


def _holds_run(run_dir: Path) -> bool:
    try:
        return (run_dir / RUN_CONFIG).is_file()
    except OSError:  # unreadable: check_output reports it
        return False


def _check_resumable(run_dir: Path, from_good: bool) -> None:
    """--resume: the latest checkpoint must load. If it does not, name the newest good one;
    with --resume-from-good, set the bad ones aside (renamed, kept) so the run continues
    from the good one."""
    from ..storage.checkpoint import CHECKPOINTS_DIR, newest_good_checkpoint, set_aside
    root = run_dir / CHECKPOINTS_DIR
    good, bad = newest_good_checkpoint(root)
    if not bad:
        return
    latest, why = bad[0]
    if good is None:
        raise UsageError(f"--resume: no usable checkpoint in {root}: {why}; start a new "
                         f"run (add --overwrite to replace this one)")
    good_path, good_step = good
    if not from_good:
        raise UsageError(f"--resume: the latest checkpoint is unusable: {why}; the newest "
                         f"good one is {good_path} (step {good_step}): add "
                         f"--resume-from-good to resume from it (the unusable one is kept, "
                         f"renamed {latest.name}.corrupt)")
    for path, _ in bad:
        kept = set_aside(path)
        print(f"--resume-from-good: set aside the unusable checkpoint {path} as {kept.name}; "
              f"resuming from {good_path} (step {good_step})", file=sys.stderr)


# --- a new or resumed run -------------------------------------------------------------------------

def _resumed_run(args, command: str, overrides: dict) -> tuple:
    """(run_dir, run_config dict) of the run in --run-dir, with its train.* overrides."""
    if args.overwrite:
        raise UsageError("--overwrite: not with --resume (--resume continues the run in "
                         "--run-dir, --overwrite replaces it)")
    if not args.run_dir:
        raise UsageError("--resume needs --run-dir (the run to continue)")
    run_dir = Path(args.run_dir)
    cfg_path = run_dir / RUN_CONFIG
    if run_dir.is_dir():
        hold_output(args, run_dir, "--run-dir")  # refused while the run is still going
    if not _holds_run(run_dir):
        raise UsageError(f"--resume: {cfg_path} not found (--run-dir {run_dir} is not a "
                         f"run directory)")
    try:
        run = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--resume: {cfg_path} is not valid JSON ({e})") from None
    except RecursionError:
        raise UsageError(f"--resume: {cfg_path}: JSON nested too deeply") from None
    if not isinstance(run, dict) or not isinstance(run.get("train"), dict):
        raise UsageError(f"--resume: {cfg_path} is not a run configuration (no 'train' "
                         f"section)")
    if run.get("command") != command:
        raise UsageError(f"--resume: {run_dir} is a {run.get('command')!r} run, not "
                         f"{command!r}")
    other = sorted(k for k in overrides if not k.startswith("train."))
    if other:
        raise UsageError(f"--set {other[0]}: only train.* fields may change when resuming")
    _check_sections(run, cfg_path)
    _check_distillation(overrides, run.get("teacher"), command)
    before = run["train"]
    run["train"] = dataclasses.asdict(checked(
        "train config", lambda: TrainConfig.from_dict(run["train"]).replace(
            **section(overrides, "train"))))
    _check_resumable(run_dir, args.resume_from_good)
    _check_against_checkpoint(run_dir, run, cfg_path)
    for key in sorted(run["train"]):
        if before.get(key) != run["train"][key] and not args.quiet:
            print(f"--set train.{key}: {before.get(key)!r} -> {run['train'][key]!r}, in "
                  f"effect from the resumed step on", file=sys.stderr)
    return run_dir, run


def _check_sections(run: dict, cfg_path: Path) -> None:
    """Every section of run_config.json that decides the run must still be valid (an edit
    by hand is named, not a traceback)."""
    for name, cls in (("optim", OptimConfig), ("train", TrainConfig), ("data", DataConfig)):
        if not isinstance(run.get(name), dict):
            raise UsageError(f"--resume: {cfg_path}: '{name}' must be a JSON object, got "
                             f"{json.dumps(run.get(name))[:40]}")
        checked(f"'{name}' in {cfg_path}", lambda: cls.from_dict(run[name]) if hasattr(
            cls, "from_dict") else cls(**run[name]))
    if run.get("model") is not None:
        checked(f"'model' in {cfg_path}", lambda: config_from_dict(run["model"]))
    for key in ("init", "teacher", "tokenizer"):
        if run.get(key) is not None and not isinstance(run[key], str):
            raise UsageError(f"--resume: {cfg_path}: '{key}' must be a path or null")


# what a resumed run must share with its checkpoint: anything else changes the experiment
_FIXED = ("command", "arch", "objective", "preset", "task", "init", "teacher", "tokenizer",
          "model", "data", "optim", "model_overrides")


def _check_against_checkpoint(run_dir: Path, run: dict, cfg_path: Path) -> None:
    """run_config.json must still describe the run its latest checkpoint belongs to: the
    checkpoint stores the run configuration it was trained with (runs before it did: the
    model config only)."""
    from ..storage.checkpoint import CHECKPOINTS_DIR, latest_checkpoint, load_checkpoint
    latest = latest_checkpoint(run_dir / CHECKPOINTS_DIR)
    if latest is None:
        return
    ck = load_checkpoint(latest)
    saved = (ck.state.get("run") or {}).get("run_config")
    if run.get("model") is not None and config_from_dict(run["model"]) != ck.config:
        raise UsageError(f"--resume: {cfg_path}: 'model' differs from the model of the "
                         f"checkpoint {latest}; expected the run's own model config")
    if not isinstance(saved, dict):
        return
    for key in _FIXED:
        if key in saved and key != "model" and run.get(key) != saved[key]:
            field = key
            if isinstance(saved[key], dict) and isinstance(run.get(key), dict):
                field += "." + next(k for k in sorted(set(saved[key]) | set(run[key]))
                                    if saved[key].get(k) != run[key].get(k))
            raise UsageError(f"--resume: {cfg_path}: '{field}' differs from the checkpoint "
                             f"{latest} (trained with {json.dumps(_get(saved, field))[:60]}, now "
                             f"{json.dumps(_get(run, field))[:60]}); only train.* may change "
                             f"when resuming")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def setup_run(args, command: str, defaults: dict) -> tuple:
    """(run_dir, run_config dict, resumed) for a new or resumed run. Checks everything it
    can without creating anything (the directory is made by run_directory, later).
    defaults: the command's own options, stored in run_config.json."""
    overrides = parse_overrides(args.overrides)
    if args.resume:
        return (*_resumed_run(args, command, overrides), True)
    if args.resume_from_good:
        raise UsageError("--resume-from-good: only with --resume")
    _check_preset(args.preset)
    _check_distillation(overrides, getattr(args, "teacher", None), command)
    run_dir = Path(args.run_dir) if args.run_dir is not None else \
        Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.run_dir == "":
        raise UsageError("--run-dir '': expected a directory path")
    hold_output(args, run_dir, "--run-dir")
    if _holds_run(run_dir) and not args.overwrite:
        from ..storage.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
        holds = "checkpoints" if latest_checkpoint(run_dir / CHECKPOINTS_DIR) else "a run"
        raise UsageError(f"--run-dir {run_dir} already holds {holds}: add --resume to "
                         f"continue that run, --overwrite to replace it once the new run "
                         f"completes, or choose a new --run-dir")
    check_output(run_dir, overwrite=args.overwrite, sources=_run_sources(args),
                 what="--run-dir")
    configs = {name: build_section(overrides, name).to_dict()
               for name in ("optim", "train", "data")}
    run = dict(defaults, command=command, **configs, init=_absolute(args.init),
               tokenizer=_absolute(args.tokenizer), model_overrides=section(overrides, "model"))
    if run.get("teacher"):
        run["teacher"] = _absolute(run["teacher"])
    return run_dir, run, False


def _absolute(path: Optional[str]) -> Optional[str]:
    """A path as run_config.json stores it: absolute, so --resume works from anywhere."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def model_for_run(run: dict, data: DataConfig, vocab_default: Optional[int] = None,
                  run_dir: Optional[Path] = None) -> tuple:
    """(model, arch) of a run: built (or loaded with --init; resumed: the run's exact
    config); fills run["model"]. Checks it against --arch, the memory the data.* lengths
    need and the freeze patterns."""
    model = _build_run_model(run, run["arch"] or "encdec", run["preset"], vocab_default,
                             run_dir)
    arch = arch_of(model.config)
    if run["arch"] not in (None, arch):
        raise UsageError(f"--arch {run['arch']}: the --init model is {arch}")
    check_memory(data, model.config, arch)
    check_trainable(model, OptimConfig.from_dict(run["optim"]))
    return model, arch


def _build_run_model(run: dict, arch: str, preset_name: str, vocab_default: Optional[int],
                     run_dir: Optional[Path] = None):
    from ..models import build_model
    from ..storage.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
    overrides = dict(run.get("model_overrides") or {})
    if run.get("model") is not None:  # resumed: the exact config of the run
        config = config_from_dict(run["model"])
        # the weights come from the checkpoint; --init only if none was written yet
        restored = run_dir is not None and latest_checkpoint(run_dir / CHECKPOINTS_DIR)
        init_model = read_model(run["init"], "--init") if run.get("init") and not restored \
            else None
        params = init_model.params if init_model is not None else None
        return build_model(config, params=params, seed=run["train"]["seed"])
    if run.get("init"):
        init_model = read_model(run["init"], "--init")
        base = init_model.config
        config = build_model_config(arch_of(base), preset_name, overrides, base=base)
        if config != base:
            from ..models.params import param_shapes
            if param_shapes(config) != param_shapes(base):
                raise UsageError("--set model.*: changes the parameter shapes of the --init "
                                 "model; only shape-free fields may change")
        model = build_model(config, params=init_model.params)
    else:
        if vocab_default is not None and "vocab_size" not in overrides:
            overrides["vocab_size"] = vocab_default
        config = build_model_config(arch, preset_name, overrides)
        model = build_model(config, seed=run["train"]["seed"])
    run["model"] = model.config.to_dict()
    return model


def open_run(args, run_dir: Path, resumed: bool):
    """The run directory as a context (safe_output.run_directory): the run's inputs are
    never replaced; a non-empty --run-dir (with --overwrite) only when the new run
    completes."""
    return run_directory(run_dir, overwrite=args.overwrite, resume=resumed,
                         sources=_run_sources(args), what="--run-dir")


def train_run(args, rd, run: dict, resumed: bool, model, batches, eval_batches,
              teacher=None) -> list:
    """Train in run directory `rd` (safe_output.RunDirectory); print the summary line."""
    from ..storage.checkpoint import atomic_write_json
    from ..training.train import TrainingDiverged, train
    rd.started()  # from here on the directory holds a (resumable) run: never removed
    run_dir = rd.path
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_CONFIG, run)
    try:
        history = train(model, batches, optim=OptimConfig.from_dict(run["optim"]),
                        config=TrainConfig.from_dict(run["train"]), run_dir=run_dir,
                        teacher=teacher, eval_batches=eval_batches, resume=resumed,
                        progress=not args.quiet,
                        run_info={"command": run["command"],
                                  "run_config": {k: v for k, v in run.items() if k != "train"}})
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except ValueError as e:
        raise UsageError(str(e)) from None
    last = next((r for r in reversed(history) if "loss" in r), {})
    val = next((r for r in reversed(history) if "val_loss" in r), {})
    msg = (f"run {rd.target}: step {last.get('step', 0)}, train loss "
           f"{last.get('loss', float('nan')):.4f}")
    if val:
        msg += f", validation loss {val['val_loss']:.4f}"
    print(msg)
    return history
