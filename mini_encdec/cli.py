"""The command line: `python -m mini_encdec <command> [options]` (`--help` on each).

    tokenizer   train or inspect the SentencePiece model
    pretrain    decoder-only causal LM, or encoder-decoder with an objective
                (prefix_lm, span_corruption, ul2, t5gemma2; PrefixLM + KD with --teacher)
    adapt       decoder-only checkpoint(s) -> encoder-decoder (SPEC 3)
    finetune    a downstream task: reply (from the plays) or reverse / sort / addition
    evaluate    validation loss of a checkpoint on an objective, or a task metric
    generate    text from a prompt, or interactively
    bench       speed benchmark
    demo        the end-to-end demonstration
    study       the paper's claims at tiny scale (E1-E6, several seeds, a claims table)

Configuration: `--preset NAME` picks the model shape (config.PRESETS; "tiny" by default),
then `--set key=value` (repeatable) overrides any field:
    model.<field>                 both stacks of an encoder-decoder, or the decoder-only model
    model.encoder.<field>, model.decoder.<field>   one stack
    model.cross_attn_warmup_steps, model.tie_all_embeddings, model.merged_attention
    optim.<field>                 optim.OptimConfig (lr, schedule, warmup_steps, clip_norm, ...)
    train.<field>                 train.TrainConfig (steps, eval_every, checkpoint_every, ...)
    data.<field>                  DataConfig below (batch_size, encoder_length, ...)
A bare field name works when only one section has it (`--set lr=3e-3 steps=100`).
Values: numbers, true/false, none, comma-separated lists for tuples.

Every training command writes a run directory (default runs/<command>-<time>):
run_config.json (everything needed to rerun or resume), metrics.jsonl, log.txt,
checkpoints/step_NNNNNN/, loss.png (when matplotlib is installed). `--resume` continues
the run in --run-dir from its latest checkpoint, bit for bit (`--resume-from-good` when
the latest one is corrupt).

Mistakes never cost data and never show a traceback: every argument is checked before
anything is written; a bad one ends with one line, `<prog> <command>: error: <what was
given and what was expected>` (with "did you mean" for near-miss names) and exit status
2. Outputs go through safe_output: nothing that this run did not create is deleted or
overwritten, unless `--overwrite` is given, and then only once the new output is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .config import PRESETS, EncDecConfig, GemmaConfig, config_from_dict, encdec_preset, preset
from .training.optim import OptimConfig
from .training.train import TrainConfig
from .storage.safe_output import check_output, run_directory
from .usage import UsageError, did_you_mean

PROG = "python -m mini_encdec"
ARCHS = ("encdec", "decoder")
TASKS = ("reply", "reverse", "sort", "addition")
RUN_CONFIG = "run_config.json"  # in a run directory (config.json would look like a model)


@dataclass(frozen=True)
class DataConfig:
    """What the batches look like."""

    # Examples per micro-batch.
    batch_size: int = 8
    # S: encoder length (decoder-only runs use sequences of S + T tokens).
    encoder_length: int = 64
    # T: decoder (target) length.
    decoder_length: int = 64
    # Validation batches evaluated at each evaluation.
    eval_batches: int = 8
    # Span corruption: noise density and mean span length.
    density: float = 0.15
    mean_span: float = 3.0
    # Synthetic finetuning tasks: number of training examples.
    num_examples: int = 2000

    def __post_init__(self) -> None:
        for f in ("batch_size", "encoder_length", "decoder_length", "eval_batches",
                  "num_examples"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DataConfig.{f}: expected an integer >= 1, got {v!r}")
        if not (isinstance(self.density, (int, float)) and 0 < self.density < 1):
            raise ValueError(f"DataConfig.density: expected a number in (0, 1), got "
                             f"{self.density!r}")
        if not (isinstance(self.mean_span, (int, float)) and self.mean_span >= 1):
            raise ValueError(f"DataConfig.mean_span: expected a number >= 1, got "
                             f"{self.mean_span!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- --set key=value ------------------------------------------------------------------------------

_SECTIONS = {"optim": OptimConfig, "train": TrainConfig, "data": DataConfig}
_ENCDEC_TOP = ("tie_all_embeddings", "merged_attention", "cross_attn_warmup_steps")


def _field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def _parse_value(text: str, tp, key: str):
    """Convert the text of `--set key=text` to the field's type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if text.strip().lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"--set {key}={text}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--set {key}={text}: expected a number") from None
    if tp is tuple or origin is tuple:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    if tp is str:
        return text
    if tp is typing.Any or tp is object:
        return text
    raise UsageError(f"--set {key}={text}: cannot parse a value of type {tp}")


def _known_keys() -> dict:
    """Every settable key -> its type, with the qualified names."""
    keys = {}
    for sec, cls in _SECTIONS.items():
        for name, tp in _field_types(cls).items():
            keys[f"{sec}.{name}"] = tp
    gem = _field_types(GemmaConfig)
    for name, tp in gem.items():
        keys[f"model.{name}"] = tp
        keys[f"model.encoder.{name}"] = tp
        keys[f"model.decoder.{name}"] = tp
    ed = _field_types(EncDecConfig)
    for name in _ENCDEC_TOP:
        keys[f"model.{name}"] = ed[name]
    return keys


def parse_overrides(items) -> dict:
    """["lr=1e-3", "model.hidden_size=64"] -> {"optim.lr": 0.001, "model.hidden_size": 64}.
    Unknown, ambiguous or unparsable keys raise UsageError with the accepted choices."""
    known = _known_keys()
    out = {}
    for item in items or ():
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in known:
            cands = sorted(k for k in known if k.split(".")[-1] == key
                           and not k.startswith(("model.encoder.", "model.decoder.")))
            if len(cands) == 1:
                key = cands[0]
            elif len(cands) > 1:
                raise UsageError(f"--set {item}: ambiguous key {key!r}, write one of {cands}")
            else:
                raise UsageError(_unknown_key(item, key, known))
        out[key] = _parse_value(text, known[key], key)
    return out


def _unknown_key(item: str, key: str, known: dict) -> str:
    """The message for an unknown --set key: the nearest keys if some are close, else all."""
    short = sorted({k.split(".")[-1] for k in known})
    section, _, name = key.rpartition(".")
    fields = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    if not section:
        hint = did_you_mean(key, short)
    elif fields:  # a known section: the nearest field of that section
        hint = did_you_mean(name, fields, prefix=section + ".")
    else:
        hint = did_you_mean(key, known)
    if hint:
        return f"--set {item}: unknown key {key!r}{hint}"
    return (f"--set {item}: unknown key {key!r}; known keys: {', '.join(short)} (optionally "
            f"qualified as model.*, model.encoder.*, model.decoder.*, optim.*, train.*, data.*)")


def _section(overrides: dict, name: str) -> dict:
    p = name + "."
    return {k[len(p):]: v for k, v in overrides.items() if k.startswith(p)}


def _checked(what: str, build):
    try:
        return build()
    except (ValueError, TypeError) as e:
        raise UsageError(f"invalid {what}: {e}") from None


def build_model_config(arch: str, preset_name: str, model_overrides: dict, base=None):
    """The model config from a preset (or a given base config) and model.* overrides."""
    both = {k: v for k, v in model_overrides.items()
            if "." not in k and k not in _ENCDEC_TOP}
    top = {k: v for k, v in model_overrides.items() if k in _ENCDEC_TOP}
    enc = {k.split(".", 1)[1]: v for k, v in model_overrides.items() if k.startswith("encoder.")}
    dec = {k.split(".", 1)[1]: v for k, v in model_overrides.items() if k.startswith("decoder.")}
    if arch == "decoder":
        if top or enc or dec:
            bad = sorted(list(top) + [f"encoder.{k}" for k in enc] + [f"decoder.{k}" for k in dec])
            raise UsageError(f"--set model.{bad[0]}: only for encoder-decoder models "
                             f"(--arch encdec)")

        def build():
            cfg = base if base is not None else preset(preset_name)
            return cfg.replace(**both) if both else cfg
        return _checked("model config", build)

    def build():
        if base is not None:
            cfg = base
        else:
            cfg = encdec_preset(preset_name)
        e = cfg.encoder.replace(**{**both, **enc}) if (both or enc) else cfg.encoder
        d = cfg.decoder.replace(**{**both, **dec}) if (both or dec) else cfg.decoder
        return cfg.replace(encoder=e, decoder=d, **top)
    return _checked("model config", build)


# --- argument types: numbers checked by argparse, with the expected range in the message ----------

def int_at_least(low: int, high: Optional[int] = None):
    """An argparse type: an integer >= low (and <= high when given)."""
    expected = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    parse.__name__ = expected
    return parse


def float_in(low: float, high: float = math.inf, *, low_open: bool = True):
    """An argparse type: a finite number in (low, high] (or [low, high] with
    low_open=False)."""
    lo = "(" if low_open else "["
    hi = "]" if math.isfinite(high) else ")"
    expected = f"a number in {lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        ok = math.isfinite(value) and value <= high and (value > low if low_open
                                                         else value >= low)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    parse.__name__ = expected
    return parse


POSITIVE = int_at_least(1)
SEED = int_at_least(0)
MAX_NEW_TOKENS = 65536  # generate: beyond this the KV cache of even a tiny model grows large


# --- checks that need the model: memory, trainable parameters -----------------------------------

def _available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux MemAvailable, else physical), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(data: "DataConfig", config, arch: str) -> None:
    """Refuse lengths whose attention cannot fit in memory: masks and scores are
    (B, H, L, L) arrays, L = encoder_length + decoder_length for a decoder-only model.
    The estimate (forward + backward) is rough; it only stops the impossible."""
    stacks = [config] if arch == "decoder" else [config.encoder, config.decoder]
    heads = max(c.num_attention_heads for c in stacks)
    S, T = data.encoder_length, data.decoder_length
    L = S + T if arch == "decoder" else max(S, T)
    need = 2 * data.batch_size * L * L * (8 + 4 * heads)
    avail = _available_memory()
    if avail is not None and need > avail:
        raise UsageError(f"--set batch_size={data.batch_size} encoder_length={S} "
                         f"decoder_length={T}: attention over {L} positions needs about "
                         f"{need / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB "
                         f"available; expected shorter lengths or a smaller batch_size")


def _check_trainable(model, optim: OptimConfig) -> None:
    """Every freeze pattern must match a parameter, and something must still train."""
    from .training.optim import trainable_names
    names = list(model.params)
    for pattern in optim.freeze:
        if not any(re.search(pattern, n) for n in names):
            raise UsageError(f"--set optim.freeze={','.join(optim.freeze)}: pattern "
                             f"{pattern!r} matches no parameter; expected regular expressions "
                             f"found in names such as {names[1]!r}")
    warmup = model.config.cross_attn_warmup_steps if isinstance(model.config, EncDecConfig) \
        else 0
    try:
        trainable_names(names, 0, freeze=optim.freeze, warmup_steps=warmup)
    except ValueError as e:
        raise UsageError(f"--set optim.freeze: {e}") from None


# --- shared helpers -------------------------------------------------------------------------------

_STREAMS: dict = {}


def _without_path(message: str, path) -> str:
    """`message` without a leading "<path>: " (when the caller names the path already)."""
    head = f"{path}: "
    return message[len(head):] if message.startswith(head) else message


def _tokenizer(path: Optional[str], what: str = "--tokenizer"):
    from .text.tokenizer import DEFAULT_MODEL, load_tokenizer
    try:
        return load_tokenizer(path)
    except ValueError as e:
        raise UsageError(f"{what} {path if path is not None else DEFAULT_MODEL}: {e}") \
            from None


def _stream(split: str, tok):
    """The tokenised corpus split (memoised per process: tokenising takes a second)."""
    key = (split, tok.fingerprint())
    if key not in _STREAMS:
        from .text.batching import corpus_stream
        _STREAMS[key] = corpus_stream(split, tok)
    return _STREAMS[key]


def _load_model(path: str, what: str = "--checkpoint"):
    from .storage.checkpoint import load_model
    try:
        return load_model(path)
    except ValueError as e:  # CheckpointError names the file
        raise UsageError(f"{what} {path}: {_without_path(str(e), path)}") from None


def _set_backend(name: Optional[str]) -> None:
    if name:
        from .backend import set_backend
        set_backend(name)


def _default_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _arch_of(config) -> str:
    return "encdec" if isinstance(config, EncDecConfig) else "decoder"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("numpy", "numba"), default=None,
                   help="compute backend (default: $MINI_ENCDEC_BACKEND or numba)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or messages")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny",
                   help=f"model shape: one of {', '.join(PRESETS)}; encoder-decoder also "
                        f"ENC-DEC such as 9b-2b (default tiny)")
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
    _common(p)


# --- run setup shared by pretrain and finetune ----------------------------------------------------

def _check_preset(name: str) -> None:
    """`--preset`: a preset name, or ENC-DEC (two names) for an encoder-decoder."""
    parts = name.split("-")
    names = {k.lower() for k in PRESETS}
    if 1 <= len(parts) <= 2 and all(part.lower() in names for part in parts):
        return
    bad = next((part for part in parts if part.lower() not in names), name)
    raise UsageError(f"--preset {name}: expected one of {', '.join(PRESETS)} (an "
                     f"encoder-decoder also ENC-DEC, e.g. 9b-2b)"
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
    from .storage.checkpoint import CHECKPOINTS_DIR, newest_good_checkpoint, set_aside
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


def _setup_run(args, command: str, defaults: dict) -> tuple:
    """(run_dir, run_config dict, resumed) for a new or resumed run. Checks everything it
    can without creating anything (the directory is made by run_directory, later)."""
    overrides = parse_overrides(args.overrides)
    if args.resume:
        if args.overwrite:
            raise UsageError("--overwrite: not with --resume (--resume continues the run in "
                             "--run-dir, --overwrite replaces it)")
        if not args.run_dir:
            raise UsageError("--resume needs --run-dir (the run to continue)")
        run_dir = Path(args.run_dir)
        cfg_path = run_dir / RUN_CONFIG
        if not _holds_run(run_dir):
            raise UsageError(f"--resume: {cfg_path} not found (--run-dir {run_dir} is not a "
                             f"run directory)")
        try:
            run = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"--resume: {cfg_path} is not valid JSON ({e})") from None
        if not isinstance(run, dict) or not isinstance(run.get("train"), dict):
            raise UsageError(f"--resume: {cfg_path} is not a run configuration (no 'train' "
                             f"section)")
        if run.get("command") != command:
            raise UsageError(f"--resume: {run_dir} is a {run.get('command')!r} run, not "
                             f"{command!r}")
        other = sorted(k for k in overrides if not k.startswith("train."))
        if other:
            raise UsageError(f"--set {other[0]}: only train.* fields may change when resuming")
        _check_distillation(overrides, run.get("teacher"), command)
        run["train"] = dataclasses.asdict(_checked(
            "train config", lambda: TrainConfig.from_dict(run["train"]).replace(
                **_section(overrides, "train"))))
        _check_resumable(run_dir, args.resume_from_good)
        return run_dir, run, True
    if args.resume_from_good:
        raise UsageError("--resume-from-good: only with --resume")
    _check_preset(args.preset)
    _check_distillation(overrides, getattr(args, "teacher", None), command)
    run_dir = Path(args.run_dir) if args.run_dir is not None else _default_run_dir(command)
    if args.run_dir == "":
        raise UsageError("--run-dir '': expected a directory path")
    if _holds_run(run_dir) and not args.overwrite:
        from .storage.checkpoint import CHECKPOINTS_DIR, latest_checkpoint
        holds = "checkpoints" if latest_checkpoint(run_dir / CHECKPOINTS_DIR) else "a run"
        raise UsageError(f"--run-dir {run_dir} already holds {holds}: add --resume to "
                         f"continue that run, --overwrite to replace it once the new run "
                         f"completes, or choose a new --run-dir")
    check_output(run_dir, overwrite=args.overwrite, sources=_run_sources(args),
                 what="--run-dir")
    optim = _checked("optim config", lambda: OptimConfig(**_section(overrides, "optim")))
    train = _checked("train config", lambda: TrainConfig(**_section(overrides, "train")))
    data = _checked("data config", lambda: DataConfig(**_section(overrides, "data")))
    run = dict(defaults, command=command, optim=optim.to_dict(), train=train.to_dict(),
               data=data.to_dict(), init=args.init, tokenizer=args.tokenizer,
               model_overrides=_section(overrides, "model"))
    return run_dir, run, False


def _write_run_config(run_dir: Path, run: dict) -> None:
    from .storage.checkpoint import atomic_write_json
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_CONFIG, run)


def _model_for_run(run: dict, arch: str, preset_name: str, vocab_default=None):
    """Build (or load with --init) the model of a run; fills run["model"]."""
    from .models import build_model
    overrides = dict(run.get("model_overrides") or {})
    if run.get("model") is not None:  # resumed: the exact config of the run
        config = config_from_dict(run["model"])
        init_model = _load_model(run["init"], "--init") if run.get("init") else None
        params = init_model.params if init_model is not None else None
        return build_model(config, params=params, seed=run["train"]["seed"])
    if run.get("init"):
        init_model = _load_model(run["init"], "--init")
        base = init_model.config
        config = build_model_config(_arch_of(base), preset_name, overrides, base=base)
        if config != base:
            from .models.params import param_shapes
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


def _train_run(args, rd, run: dict, resumed: bool, model, batches, eval_batches,
               teacher=None) -> list:
    """Train in run directory `rd` (safe_output.RunDirectory); print the summary line."""
    from .training.train import TrainingDiverged, train
    rd.started()  # from here on the directory holds a (resumable) run: never removed
    run_dir = rd.path
    _write_run_config(run_dir, run)
    try:
        history = train(model, batches, optim=OptimConfig.from_dict(run["optim"]),
                        config=TrainConfig.from_dict(run["train"]), run_dir=run_dir,
                        teacher=teacher, eval_batches=eval_batches, resume=resumed,
                        progress=not args.quiet, run_info={"command": run["command"]})
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


# --- pretrain -------------------------------------------------------------------------------------

PRETRAIN_HELP = "pre-train a decoder-only LM or an encoder-decoder on the corpus"


def _pretrain_args(p) -> None:
    from .objectives import OBJECTIVES
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="encdec (default) or decoder (decoder-only Gemma 2)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="default prefix_lm (encdec) or causal_lm (decoder); decoder-only "
                        "runs may also use prefix_lm/span_corruption/ul2 (the decoder-only "
                        "form: loss on the targets)")
    p.add_argument("--teacher", default=None, metavar="PATH",
                   help="decoder-only model for PrefixLM + distillation (encdec, prefix_lm); "
                        "alpha and temperature: train.kd_alpha, train.kd_temperature")
    _run_args(p)


def cmd_pretrain(args) -> int:
    from .text.batching import Batcher, eval_batches
    from .objectives import make_objective
    _set_backend(args.backend)
    run_dir, run, resumed = _setup_run(args, "pretrain", dict(
        arch=args.arch, objective=args.objective, preset=args.preset, teacher=args.teacher))
    tok = _tokenizer(run.get("tokenizer"))
    data = DataConfig(**run["data"])
    # the architecture: --arch, else that of the --init model, else encoder-decoder
    model = _model_for_run(run, run["arch"] or "encdec", run["preset"])
    arch = _arch_of(model.config)
    if run["arch"] not in (None, arch):
        raise UsageError(f"--arch {run['arch']}: the --init model is {arch}")
    _check_memory(data, model.config, arch)
    _check_trainable(model, OptimConfig.from_dict(run["optim"]))
    objective_name = run["objective"] or ("causal_lm" if arch == "decoder" else "prefix_lm")
    run.update(arch=arch, objective=objective_name)
    if objective_name == "causal_lm" and arch != "decoder":
        raise UsageError("--objective causal_lm is decoder-only; use --arch decoder")
    if run.get("teacher") and (arch != "encdec" or objective_name != "prefix_lm"):
        raise UsageError("--teacher: distillation is PrefixLM + KD: needs --arch encdec and "
                         "--objective prefix_lm")
    if model.config.vocab_size < tok.vocab_size:
        raise UsageError(f"model.vocab_size={model.config.vocab_size} is smaller than the "
                         f"tokenizer's {tok.vocab_size}")
    teacher = _load_model(run["teacher"], "--teacher") if run.get("teacher") else None
    if teacher is not None and _arch_of(teacher.config) != "decoder":
        raise UsageError(f"--teacher {run['teacher']}: expected a decoder-only model")
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise UsageError(f"--teacher {run['teacher']}: its vocabulary "
                         f"({teacher.config.vocab_size} ids) differs from the student's "
                         f"({model.config.vocab_size}); expected a model on the same tokenizer")
    objective = _checked("objective", lambda: make_objective(
        objective_name, tok, density=data.density, mean_span=data.mean_span))
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch, pad_id=tok.pad_id,
              bos_id=tok.bos_id, with_teacher=teacher is not None)
    batcher = _checked("data", lambda: Batcher(_stream("train", tok), objective,
                                              seed=run["train"]["seed"], **kw))
    val = _checked("data", lambda: eval_batches(_stream("validation", tok), objective,
                                                max_batches=data.eval_batches, **kw))
    with run_directory(run_dir, overwrite=args.overwrite, resume=resumed,
                       sources=_run_sources(args), what="--run-dir") as rd:
        _train_run(args, rd, run, resumed, model, batcher, val, teacher)
    return 0


# --- finetune -------------------------------------------------------------------------------------

FINETUNE_HELP = "fine-tune on a downstream task (reply, reverse, sort, addition)"


def _finetune_args(p) -> None:
    p.add_argument("--task", choices=TASKS, default=None,
                   help="reply: the next speech of the plays; reverse/sort/addition: "
                        "synthetic seq2seq tasks with their own 41-id vocabulary "
                        "(required, except with --resume)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="for a fresh model (no --init): encdec (default) or decoder")
    p.add_argument("--eval-examples", type=int, default=64,
                   help="validation examples for the task metric at the end (default 64)")
    _run_args(p)


def _task_examples(task: str, split: str, data: DataConfig, tok, seed: int) -> list:
    from .text import tasks
    if task == "reply":
        return tasks.reply_examples(split, tok, encoder_length=data.encoder_length,
                                    decoder_length=data.decoder_length)
    n = data.num_examples if split == "train" else max(64, data.batch_size * data.eval_batches)
    offset = {"train": 0, "validation": 1, "test": 2}[split]
    exs = tasks.synthetic_examples(task, n, seed=seed * 3 + offset)
    too_long = [e for e in exs if len(e.inputs) > data.encoder_length
                or len(e.targets) > data.decoder_length]
    if too_long:
        raise UsageError(f"task {task}: examples need encoder_length >= "
                         f"{max(len(e.inputs) for e in exs)} and decoder_length >= "
                         f"{max(len(e.targets) for e in exs)} (--set data.encoder_length=...)")
    return exs


def task_metric(model, task: str, examples: list, *, batch_size: int = 16,
                max_new_tokens: int = 64, progress: bool = False) -> dict:
    """Greedy outputs scored: exact match (synthetic tasks) or ROUGE-L (reply).
    progress: a tqdm bar over the examples on stderr."""
    from tqdm import tqdm

    from .text import tasks
    from .models.generate import generate
    preds, refs = [], []
    with tqdm(total=len(examples), desc=f"{task}: generating", unit="example",
              disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            out = generate(model, [e.inputs for e in chunk], max_new_tokens=max_new_tokens)
            preds.extend(list(out))
            refs.extend(e.targets for e in chunk)
            bar.update(len(chunk))
    if task == "reply":
        return {"rouge_l": float(np.mean([tasks.rouge_l(p, r) for p, r in zip(preds, refs)])),
                "examples": len(examples)}
    return {"exact_match": tasks.exact_match(preds, refs), "examples": len(examples)}


def cmd_finetune(args) -> int:
    from .text.batching import ExampleBatcher
    from .text.tasks import SYNTH_VOCAB_SIZE
    _set_backend(args.backend)
    if args.task is None and not args.resume:
        raise UsageError("--task is required (except with --resume)")
    run_dir, run, resumed = _setup_run(args, "finetune", dict(
        task=args.task, arch=args.arch, preset=args.preset,
        eval_examples=args.eval_examples))
    task = run["task"]
    data = DataConfig(**run["data"])
    tok = _tokenizer(run.get("tokenizer")) if task == "reply" else None
    vocab = tok.vocab_size if tok is not None else SYNTH_VOCAB_SIZE
    model = _model_for_run(run, run["arch"] or "encdec", run["preset"], vocab_default=vocab)
    arch = _arch_of(model.config)
    if run["arch"] not in (None, arch):
        raise UsageError(f"--arch {run['arch']}: the --init model is {arch}")
    _check_memory(data, model.config, arch)
    _check_trainable(model, OptimConfig.from_dict(run["optim"]))
    run["arch"] = arch
    if model.config.vocab_size < vocab:
        raise UsageError(f"model.vocab_size={model.config.vocab_size} is smaller than the "
                         f"task's vocabulary of {vocab}")
    seed = run["train"]["seed"]
    train_ex = _task_examples(task, "train", data, tok, seed)
    val_ex = _task_examples(task, "validation", data, tok, seed)
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch)
    batcher = _checked("data", lambda: ExampleBatcher(train_ex, seed=seed, **kw))
    vb = ExampleBatcher(val_ex, shuffle=False, **kw)
    n_val = min(data.eval_batches, max(1, len(val_ex) // data.batch_size))
    val = [vb.next_batch() for _ in range(n_val)]
    with run_directory(run_dir, overwrite=args.overwrite, resume=resumed,
                       sources=_run_sources(args), what="--run-dir") as rd:
        _train_run(args, rd, run, resumed, model, batcher, val)
        metric = task_metric(model, task, val_ex[:run.get("eval_examples", 64)],
                             max_new_tokens=data.decoder_length, progress=not args.quiet)
        from .training.train import METRICS_FILE
        with open(rd.path / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": run["train"]["steps"], "task": task, **metric}) + "\n")
    print(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in metric.items()))
    return 0


# --- evaluate -------------------------------------------------------------------------------------

EVALUATE_HELP = "evaluate a checkpoint: loss on a corpus split, or a task metric"


def _evaluate_args(p) -> None:
    from .objectives import OBJECTIVES
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="model directory, checkpoint, or run directory (its latest checkpoint)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="loss on the corpus split with this objective (default prefix_lm for "
                        "both architectures, so their numbers compare: the loss of the "
                        "second half of each window given the first half)")
    g.add_argument("--task", choices=TASKS, default=None, help="task metric instead")
    p.add_argument("--split", choices=("validation", "test"), default="validation")
    p.add_argument("--batches", type=POSITIVE, default=8, help="batches to evaluate (default 8)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE",
                   help="data.* fields (batch_size, encoder_length, decoder_length, ...); "
                        "the same for both architectures (a decoder-only model reads "
                        "encoder_length + decoder_length tokens)")
    p.add_argument("--tokenizer", default=None, metavar="PATH")
    p.add_argument("--seed", type=SEED, default=0)
    _common(p)


def cmd_evaluate(args) -> int:
    from tqdm import tqdm

    from .text.batching import ExampleBatcher, eval_batches
    from .objectives import make_objective
    from .training.train import evaluate
    _set_backend(args.backend)
    overrides = parse_overrides(args.overrides)
    other = sorted(k for k in overrides if not k.startswith("data."))
    if other:
        raise UsageError(f"--set {other[0]}: evaluate takes only data.* fields")
    data = _checked("data config", lambda: DataConfig(**_section(overrides, "data")))
    model = _load_model(args.checkpoint)
    arch = _arch_of(model.config)
    _check_memory(data, model.config, arch)
    # The same lengths for both architectures: an encoder-decoder reads S and predicts T
    # tokens; a decoder-only model reads the S + T tokens and is scored on the last T.
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch)
    lengths = {"encoder_length": data.encoder_length, "decoder_length": data.decoder_length}

    def scored(batches: list) -> dict:
        bar = tqdm(batches, desc="evaluate", unit="batch", disable=args.quiet,
                   file=sys.stderr, dynamic_ncols=True)
        return _checked("evaluation", lambda: evaluate(model, bar))

    if args.task:
        tok = _tokenizer(args.tokenizer) if args.task == "reply" else None
        _check_vocabulary(model, tok, args.task)
        exs = _task_examples(args.task, args.split, data, tok, args.seed)
        vb = ExampleBatcher(exs, shuffle=False, **kw)
        n = min(args.batches, max(1, len(exs) // data.batch_size))
        batches = [vb.next_batch() for _ in range(n)]
        result = {"task": args.task, "split": args.split, **lengths, **scored(batches)}
        result.update(task_metric(model, args.task, exs[:args.batches * data.batch_size],
                                  max_new_tokens=data.decoder_length,
                                  progress=not args.quiet))
    else:
        tok = _tokenizer(args.tokenizer)
        _check_vocabulary(model, tok, "--tokenizer")
        name = args.objective or "prefix_lm"
        if name == "causal_lm" and arch != "decoder":
            raise UsageError("--objective causal_lm: decoder-only; an encoder-decoder model "
                             "needs an encoder input (prefix_lm, span_corruption, ul2, ...)")
        if not args.quiet:
            how = "chosen with --objective" if args.objective else \
                "the default for both architectures, so the numbers compare"
            print(f"evaluate: objective {name} ({how}), encoder_length {data.encoder_length}, "
                  f"decoder_length {data.decoder_length}, {args.batches} batches of "
                  f"{data.batch_size} from the {args.split} split", file=sys.stderr)
        objective = _checked("objective", lambda: make_objective(
            name, tok, density=data.density, mean_span=data.mean_span))
        batches = _checked("data", lambda: eval_batches(
            _stream(args.split, tok), objective, max_batches=args.batches, seed=args.seed,
            pad_id=tok.pad_id, bos_id=tok.bos_id, **kw))
        result = {"objective": name, "split": args.split, **lengths, **scored(batches)}
    print(json.dumps(result))
    return 0


def _check_vocabulary(model, tok, what: str) -> None:
    """The model must have an id for every token the data uses."""
    from .text.tasks import SYNTH_VOCAB_SIZE
    need = tok.vocab_size if tok is not None else SYNTH_VOCAB_SIZE
    if model.config.vocab_size < need:
        source = "the tokenizer" if tok is not None else "the synthetic tasks"
        raise UsageError(f"{what}: the model's vocabulary ({model.config.vocab_size} ids) is "
                         f"smaller than {source}' ({need}): this model was trained on other "
                         f"data")


# --- generate -------------------------------------------------------------------------------------

GENERATE_HELP = "generate text from a prompt, or interactively (one prompt per line)"


def _generate_args(p) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="model directory, checkpoint, or run directory")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt text (repeatable); without it, prompts are read from stdin "
                        "(UTF-8), one per line, until EOF or an empty line")
    p.add_argument("--max-new-tokens", type=int_at_least(1, MAX_NEW_TOKENS), default=50)
    p.add_argument("--method", choices=("greedy", "sample", "beam"), default="greedy")
    p.add_argument("--temperature", type=float_in(0.0), default=1.0)
    p.add_argument("--top-k", type=POSITIVE, default=None)
    p.add_argument("--top-p", type=float_in(0.0, 1.0), default=None)
    p.add_argument("--num-beams", type=POSITIVE, default=4)
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed")
    p.add_argument("--eos", action="store_true",
                   help="append EOS to the prompt (models fine-tuned on tasks expect it; "
                        "automatic for the synthetic vocabulary)")
    p.add_argument("--tokenizer", default=None, metavar="PATH")
    _common(p)


def _utf8(text: str, what: str) -> str:
    """`text` if it is valid Unicode text (no lone surrogates: invalid UTF-8 bytes that
    Python smuggled in through the command line or a non-UTF-8 locale), else UsageError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what}: not valid UTF-8 text (an undecodable byte at character "
                         f"{e.start + 1}); expected UTF-8 text") from None
    return text


def _stdin_lines(interactive: bool):
    """Prompts from stdin, one per line, decoded as strict UTF-8 whatever the locale
    (a binary or mis-encoded input is a UsageError naming the line). interactive: show a
    "> " prompt on stderr before each line."""
    raw = getattr(sys.stdin, "buffer", None)
    number = 0
    while True:
        number += 1
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        if raw is None:  # a text stream (tests, embedding): already decoded
            line = sys.stdin.readline()
            _utf8(line, f"stdin line {number}")
        else:
            data = raw.readline()
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"stdin line {number}: not valid UTF-8 text (byte "
                                 f"0x{data[e.start]:02x} at position {e.start + 1}); expected "
                                 f"UTF-8 text, one prompt per line") from None
        if "\0" in line:
            raise UsageError(f"stdin line {number}: holds a NUL byte (binary input?); "
                             f"expected UTF-8 text, one prompt per line")
        yield line


EMPTY_REPLY_HINT = ("(the model ended its reply at once: its first token was EOS. Try "
                    "--method sample, a longer-trained model, or --eos if it was fine-tuned "
                    "on prompts that end with EOS)")


def cmd_generate(args) -> int:
    from .models.generate import generate
    from .text.tasks import SYNTH_VOCAB_SIZE, synth_decode, synth_encode
    _set_backend(args.backend)
    if args.prompt:
        for i, text in enumerate(args.prompt, 1):
            _utf8(text, f"--prompt #{i}")
    model = _load_model(args.checkpoint)
    synthetic = model.config.vocab_size == SYNTH_VOCAB_SIZE
    tok = None if synthetic else _tokenizer(args.tokenizer)
    if tok is not None:
        _check_vocabulary(model, tok, "--tokenizer")
    eos = model.config.decoder.eos_token_id if isinstance(model.config, EncDecConfig) \
        else model.config.eos_token_id
    rng = np.random.default_rng(args.seed)

    def encode(text: str, what: str) -> np.ndarray:
        if synthetic:
            try:
                ids = synth_encode(text.replace(" ", ""))
            except ValueError as e:
                raise UsageError(f"{what}: {e}") from None
        else:
            ids = tok.encode(text).astype(np.int64)
        # both architectures need at least one prompt token (EOS alone is no prompt)
        if len(ids) == 0:
            raise UsageError(f"{what}: empty prompt; expected at least one token of text")
        return np.append(ids, eos) if (synthetic or args.eos) else ids

    def respond(text: str, what: str) -> str:
        ids = encode(text, what)
        try:
            out = generate(model, [ids], max_new_tokens=args.max_new_tokens,
                           method=args.method, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, num_beams=args.num_beams,
                           rng=rng if args.method == "sample" else None)
        except ValueError as e:
            raise UsageError(str(e)) from None
        new = np.asarray(out[0]).reshape(-1)
        if len(new) == 0 or int(new[0]) == eos:
            print(EMPTY_REPLY_HINT, file=sys.stderr, flush=True)
        # pad, eos and bos decode to nothing
        return synth_decode(new) if synthetic else tok.decode(new)

    if args.prompt:
        for i, text in enumerate(args.prompt, 1):
            print(respond(text, f"--prompt #{i}" if len(args.prompt) > 1 else "--prompt"))
        return 0
    for number, line in enumerate(_stdin_lines(sys.stdin.isatty()), 1):
        if not line or not line.strip():
            break
        print(respond(line.rstrip("\r\n"), f"stdin line {number}"), flush=True)
    return 0


# --- tokenizer ------------------------------------------------------------------------------------

TOKENIZER_HELP = "train the SentencePiece tokenizer, or show a model's special ids"


def _tokenizer_args(p) -> None:
    from .text.tokenizer import DEFAULT_MODEL, NUM_SENTINELS
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,info}")
    t = sub.add_parser("train", help="train on the corpus training split (or --input files)")
    t.add_argument("--out", default=str(DEFAULT_MODEL), help=f"default {DEFAULT_MODEL}")
    t.add_argument("--vocab-size", type=POSITIVE, default=8192)
    t.add_argument("--num-sentinels", type=POSITIVE, default=NUM_SENTINELS)
    t.add_argument("--input", nargs="+", default=None, metavar="FILE",
                   help="plain-text (UTF-8) files to train on instead of the corpus")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (once the new model is complete); "
                        "needed to rebuild the shipped model")
    i = sub.add_parser("info", help="print the sizes and special ids of a model")
    i.add_argument("--model", default=str(DEFAULT_MODEL))


def _read_text_file(path: str, what: str) -> str:
    """A UTF-8 text file's content, or a UsageError naming it and what was wrong."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: " + ("is a directory; expected a text file"
                                               if p.is_dir() else "file not found"))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path}: not valid UTF-8 text (byte 0x{data[e.start]:02x} at "
                         f"offset {e.start}); expected a plain-text file") from None
    if "\0" in text:
        raise UsageError(f"{what} {path}: holds NUL bytes (a binary file?); expected a "
                         f"plain-text file")
    return text


def cmd_tokenizer(args) -> int:
    from .text.tokenizer import min_vocab_size, summary as tokenizer_summary, train_tokenizer
    if args.action == "train":
        low = min_vocab_size(args.num_sentinels)
        if args.vocab_size < low:
            raise UsageError(f"--vocab-size {args.vocab_size}: expected an integer >= {low} "
                             f"(4 special ids, 256 byte pieces, {low - 276} user pieces with "
                             f"--num-sentinels {args.num_sentinels}, and some text)")
        sources = [("--input", f) for f in args.input or ()]
        check_output(args.out, overwrite=args.overwrite, sources=sources, what="--out",
                     kind="file")
        texts = None
        if args.input:
            texts = [_read_text_file(f, "--input") for f in args.input]
            if not any(line.strip() for t in texts for line in t.splitlines()):
                raise UsageError(f"--input {' '.join(args.input)}: no text to train on")
        try:
            tok = train_tokenizer(args.out, args.vocab_size, num_sentinels=args.num_sentinels,
                                  texts=texts, overwrite=args.overwrite)
        except RuntimeError as e:  # sentencepiece's own complaints (e.g. too little text)
            raise UsageError(f"tokenizer train: {_first_line(str(e))}") from None
        print(tokenizer_summary(tok, args.out, trained=True))
        return 0
    print(tokenizer_summary(_tokenizer(args.model, "--model"), args.model))
    return 0


# --- adapt ----------------------------------------------------------------------------------------

ADAPT_HELP = "adapt decoder-only checkpoint(s) into an encoder-decoder (SPEC 3)"


def _adapt_args(p) -> None:
    p.add_argument("--encoder-from", "--from", dest="encoder_from", required=True,
                   metavar="PATH", help="decoder-only model (our model/checkpoint/run directory "
                   "or a Hugging Face Gemma 2 directory); alone: balanced adaptation")
    p.add_argument("--decoder-from", default=None, metavar="PATH",
                   help="a smaller decoder-only model for the decoder (unbalanced, e.g. 9B-2B); "
                        "its cross-attention starts fresh")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output directory: new or empty (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out (even a source) once the new output is "
                        "complete")
    p.add_argument("--warmup-steps", type=int_at_least(0), default=None,
                   help="cross_attn_warmup_steps stored in the config (default: 0 balanced, "
                        "the adapt module's default unbalanced)")
    p.add_argument("--format", dest="out_format", choices=("hf", "checkpoint"), default=None,
                   help="hf: a T5Gemma directory transformers loads; checkpoint: our "
                        "config.json + model.safetensors (default: hf for Hugging Face "
                        "sources, checkpoint otherwise)")
    p.add_argument("--dtype", default=None, help="stored dtype for --format hf (e.g. bfloat16)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of fresh cross-attention weights")
    p.add_argument("--quiet", action="store_true", help="no mapping legend or progress bar")


def cmd_adapt(args) -> int:
    from .training.adapt import adapt_command
    from .storage.safetensors_io import dtype_code
    sources = {"--encoder-from": args.encoder_from, "--decoder-from": args.decoder_from}
    for opt, path in sources.items():
        if path is not None and not Path(path).exists():
            raise UsageError(f"{opt} {path}: no such model, checkpoint or run directory")
    if args.dtype is not None:
        try:
            dtype_code(args.dtype)
        except ValueError as e:
            raise UsageError(f"--dtype {args.dtype}: {_without_path(str(e), 'dtype')}") \
                from None
    try:
        adapt_command(args.encoder_from, args.decoder_from, args.out,
                      warmup_steps=args.warmup_steps, seed=args.seed,
                      out_format=args.out_format, dtype=args.dtype,
                      print_fn=None if args.quiet else print, progress=not args.quiet,
                      overwrite=args.overwrite)
    except UsageError:
        raise
    except ValueError as e:  # a source that cannot be read: name its option
        raise UsageError(_name_source(str(e), sources)) from None
    return 0


def _name_source(message: str, sources: dict) -> str:
    """Prefix "<option> <path>: " to a message about a file of that source."""
    head = message.split(": ", 1)[0]
    for opt, path in sources.items():
        if path is None:
            continue
        root = os.path.realpath(path)
        where = os.path.realpath(head) if head else ""
        if where == root or where.startswith(root.rstrip(os.sep) + os.sep):
            return f"{opt} {path}: {_without_path(message, path)}"
    return message


# --- commands from other modules (loaded only when used) ------------------------------------------

# name -> (module, one-line help). The module provides add_arguments(parser) and
# run(args) -> exit status (or main(argv) taking the remaining arguments).
PLUGINS = {
    "bench": ("mini_encdec.experiments.bench", "benchmark tokens/s and matmul-peak fraction (and PyTorch "
                                   "when installed)"),
    "demo": ("mini_encdec.experiments.demo", "the end-to-end demonstration on tiny models"),
    "study": ("mini_encdec.experiments.study", "the paper's claims at tiny scale: experiments E1-E6 over "
                                   "several seeds, with a claims table"),
}


def _plugin(name: str):
    module, _ = PLUGINS[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


# --- the parser -----------------------------------------------------------------------------------

def _first_line(text: str) -> str:
    """A message as one line (tabs and newlines of wrapped library messages folded)."""
    return " ".join(str(text).split()) or "(no message)"


def _fail(prog: str, message: str) -> None:
    """Print `<prog>: error: <message>` as one line on stderr and exit with status 2."""
    print(f"{prog}: error: {_first_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block: `--help` has it) and "did you mean"
    for an invalid choice, e.g. `--method greedyy` or a misspelt command."""

    def error(self, message: str):
        m = re.match(r"argument (.+?): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if m:
            message += did_you_mean(m.group(2), re.findall(r"'([^']*)'", m.group(3)))
        _fail(self.prog, f"{message} (see --help)")


def _subparser(parser: argparse.ArgumentParser, command: Optional[str]):
    """The parser of `command` (for its prog name and options), else `parser`."""
    if command and parser._subparsers is not None:
        return parser._subparsers._group_actions[0].choices.get(command, parser)
    return parser


def _unknown_options(sub: argparse.ArgumentParser, extras: list) -> str:
    """The message for arguments argparse did not recognise, with the nearest options."""
    first = next((a for a in extras if a.startswith("-")), extras[0])
    options = [o for o in sub._option_string_actions if o not in ("-h", "--help")]
    hint = did_you_mean(first.split("=", 1)[0], options) if first.startswith("-") else ""
    return f"unrecognized arguments: {' '.join(extras)}{hint} (see --help)"


COMMANDS = {
    "tokenizer": (TOKENIZER_HELP, _tokenizer_args, cmd_tokenizer),
    "pretrain": (PRETRAIN_HELP, _pretrain_args, cmd_pretrain),
    "adapt": (ADAPT_HELP, _adapt_args, cmd_adapt),
    "finetune": (FINETUNE_HELP, _finetune_args, cmd_finetune),
    "evaluate": (EVALUATE_HELP, _evaluate_args, cmd_evaluate),
    "generate": (GENERATE_HELP, _generate_args, cmd_generate),
    "bench": None,
    "demo": None,
    "study": None,
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; plugin commands get their full arguments only when `command` names
    them (so their modules are imported only when used)."""
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="Run `%(prog)s <command> --help` for a command's options.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, entry in COMMANDS.items():
        if entry is not None:
            help_, add, run = entry
            p = sub.add_parser(name, help=help_, description=help_)
            add(p)
            p.set_defaults(func=run)
            continue
        _, help_ = PLUGINS[name]
        if command != name:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        mod = _plugin(name)
        if mod is not None and hasattr(mod, "add_arguments") and hasattr(mod, "run"):
            p = sub.add_parser(name, help=help_, description=getattr(mod, "__doc__", None)
                               or help_, formatter_class=argparse.RawDescriptionHelpFormatter)
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)
        elif mod is not None and hasattr(mod, "main"):
            p = sub.add_parser(name, help=help_, add_help=False)
            p.add_argument("argv", nargs=argparse.REMAINDER)
            p.set_defaults(func=lambda a, _m=mod: _m.main(a.argv))
        else:
            why = f"{PLUGINS[name][0]} is not installed in this tree" if mod is None else \
                f"{PLUGINS[name][0]} has no add_arguments/run"
            p = sub.add_parser(name, help=help_, description=f"{help_}. Not available: {why}.")
            p.set_defaults(func=lambda a, _w=why: _unavailable(_w))
    return ap


def _unavailable(why: str) -> int:
    raise UsageError(f"this command is not available: {why}")


def _command_of(argv) -> Optional[str]:
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def main(argv=None) -> int:
    """Run one command; its exit status. Every mistake (a UsageError, an argparse error, a
    file system refusal) ends as one `error:` line on stderr with exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args, extras = parser.parse_known_args(argv)
    sub = _subparser(parser, getattr(args, "command", None))
    if extras:
        _fail(sub.prog, _unknown_options(sub, extras))
    try:
        status = args.func(args)
    except UsageError as e:
        _fail(sub.prog, str(e))
    except OSError as e:  # the file system said no: disk full, permission denied, ...
        where = f"{e.filename}: " if e.filename else ""
        _fail(sub.prog, f"{where}{e.strerror or e}")
    except MemoryError:
        _fail(sub.prog, "out of memory; expected a smaller model, batch_size or lengths")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(status or 0)
