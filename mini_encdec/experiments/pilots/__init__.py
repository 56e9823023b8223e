"""Pilots of the study: small runs that fix a choice of the protocol (a budget, a task,
a learning rate) on the validation plays before any confirmatory run."""

import argparse
import json
from pathlib import Path


def _new_result(text: str) -> Path:
    """--to: a path whose result files do not exist yet (a collect never replaces one)."""
    to = Path(text)
    for suffix in (".json", ".png"):
        if to.with_suffix(suffix).exists():
            raise argparse.ArgumentTypeError(f"{to.with_suffix(suffix)} exists; give a new name")
    return to


def pilot_parser(module: str, doc: str, run_help: str, collect_help: str) -> tuple:
    """(parser, its `run` subparser) of a pilot's command line: `run` (the caller adds its
    options) and `collect --out DIR --to PATH` (gather the runs into the committed files)."""
    ap = argparse.ArgumentParser(prog=f"python -m mini_encdec.experiments.pilots.{module}",
                                 description=doc.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help=run_help)
    collect = sub.add_parser("collect", help=collect_help)
    collect.add_argument("--out", type=Path, required=True)
    collect.add_argument("--to", type=_new_result, required=True,
                         help="where the result goes (PATH.json, for some pilots PATH.png); "
                              "an existing file is never replaced")
    return ap, run


def write_collected(to: Path, result: dict) -> dict:
    """Write a pilot's gathered result to <to>.json (creating its directory); returns it."""
    to.parent.mkdir(parents=True, exist_ok=True)
    to.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return result
