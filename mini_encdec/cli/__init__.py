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
    data.<field>                  batching.DataConfig (batch_size, encoder_length, ...)
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

The package: this module (the parser, the table of commands, main), overrides.py (the
`--set` grammar), runs.py (the run directory of the training commands), common.py (argument
types, loading inputs, checks), and one module per command; bench, demo and study live in
mini_encdec/experiments/. A command module has HELP (its line in the list above), a
docstring (its --help description), add_arguments(parser) and run(args) -> exit status.
"""

from __future__ import annotations

import contextlib
import argparse
import re
import sys

from ..experiments import bench, demo, study
from ..usage import UsageError, did_you_mean
from . import adapt, evaluate, finetune, generate, pretrain, tokenizer
from .common import first_line

PROG = "python -m mini_encdec"

COMMANDS = {
    "tokenizer": tokenizer,
    "pretrain": pretrain,
    "adapt": adapt,
    "finetune": finetune,
    "evaluate": evaluate,
    "generate": generate,
    "bench": bench,
    "demo": demo,
    "study": study,
}


def _fail(prog: str, message: str) -> None:
    """Print `<prog>: error: <message>` as one line on stderr and exit with status 2."""
    print(f"{prog}: error: {first_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block: `--help` has it) and "did you mean"
    for an invalid choice, e.g. `--method greedyy` or a misspelt command."""

    def error(self, message: str):
        m = re.match(r"argument (.+?): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if m:
            message += did_you_mean(m.group(2), re.findall(r"'([^']*)'", m.group(3)))
        _fail(self.prog, f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser: one sub-parser per command of COMMANDS."""
    ap = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="Run `%(prog)s <command> --help` for a command's options.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="<command>")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return ap


def _subparser(parser: argparse.ArgumentParser, command):
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


def _how_to_continue(args) -> str:
    """What to type to continue an interrupted command, if it can be continued."""
    command = getattr(args, "command", None)
    if command in ("pretrain", "finetune") and getattr(args, "run_dir", None):
        return (f"; continue with: python -m mini_encdec {command} --resume --run-dir "
                f"{args.run_dir} (from its latest checkpoint)")
    if command in ("pretrain", "finetune"):
        return "; continue with --resume --run-dir runs/<the run directory printed above>"
    if command == "demo":
        return "; run the same command again to continue from its finished stages"
    if command == "study":
        return "; continue with the same command and --resume"
    return ""


def main(argv=None) -> int:
    """Run one command; its exit status. Every mistake (a UsageError, an argparse error, a
    file system refusal) ends as one `error:` line on stderr with exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    sub = _subparser(parser, getattr(args, "command", None))
    if extras:
        _fail(sub.prog, _unknown_options(sub, extras))
    try:
        with contextlib.ExitStack() as locks:  # the outputs a command locks (hold_output)
            args.locks, args.argv = locks, argv
            status = args.func(args)
    except UsageError as e:
        _fail(sub.prog, str(e))
    except OSError as e:  # the file system said no: disk full, permission denied, ...
        where = f"{e.filename}: " if e.filename else ""
        _fail(sub.prog, f"{where}{e.strerror or e}")
    except MemoryError:
        hint = ("a shorter prompt or fewer --max-new-tokens"
                if getattr(args, "command", None) == "generate"
                else "a smaller model, batch_size or lengths")
        _fail(sub.prog, f"out of memory; expected {hint}")
    except KeyboardInterrupt:
        print(f"interrupted{_how_to_continue(args)}", file=sys.stderr)
        return 130
    return int(status or 0)
