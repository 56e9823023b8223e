"""Adapt decoder-only checkpoint(s) into an encoder-decoder (SPEC 3).

Balanced (--encoder-from alone): encoder and decoder both start from the one model.
Unbalanced (--decoder-from a smaller model, e.g. 9B-2B): the decoder starts from it, its
cross-attention fresh (warmed up alone for cross_attn_warmup_steps). Sources: our model,
checkpoint or run directories, or Hugging Face Gemma 2 / Gemma 3 directories; the output
is a T5Gemma directory transformers loads (--format hf) or ours (--format checkpoint).
Gemma 3 parents (q/k norms) adapt the T5Gemma 2 way: merged attention, one tied table,
the split encoder window, nothing fresh; the output is then a T5Gemma 2 directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..usage import UsageError
from .common import SEED, hold_output, int_at_least, without_path

HELP = "adapt decoder-only checkpoint(s) into an encoder-decoder (SPEC 3)"


def add_arguments(p) -> None:
    p.add_argument("--encoder-from", "--from", dest="encoder_from", required=True,
                   metavar="PATH", help="decoder-only model (our model/checkpoint/run directory "
                   "or a Hugging Face Gemma 2 / Gemma 3 directory); alone: balanced adaptation")
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
                   help="hf: a T5Gemma (T5Gemma 2 from Gemma 3) directory transformers loads; checkpoint: our "
                        "config.json + model.safetensors (default: hf for Hugging Face "
                        "sources, checkpoint otherwise)")
    p.add_argument("--dtype", default=None, help="stored dtype for --format hf (e.g. bfloat16)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of fresh cross-attention weights")
    p.add_argument("--quiet", action="store_true", help="no mapping legend or progress bar")


def run(args) -> int:
    from ..storage.safetensors_io import dtype_code
    from ..training.adapt import adapt_command
    typed = getattr(args, "argv", None) or []
    alias = "--from" if any(a == "--from" or a.startswith("--from=") for a in typed) \
        else "--encoder-from"  # the flag the user typed
    sources = {alias: args.encoder_from, "--decoder-from": args.decoder_from}
    for opt, path in sources.items():
        if path is not None and not Path(path).exists():
            raise UsageError(f"{opt} {path}: no such model, checkpoint or run directory")
    hold_output(args, args.out, "--out")
    if args.dtype is not None:
        try:
            dtype_code(args.dtype)
        except ValueError as e:
            raise UsageError(f"--dtype {args.dtype}: {without_path(str(e), 'dtype')}") \
                from None
    try:
        adapt_command(args.encoder_from, args.decoder_from, args.out,
                      warmup_steps=args.warmup_steps, seed=args.seed,
                      out_format=args.out_format, dtype=args.dtype,
                      print_fn=None if args.quiet else print, progress=not args.quiet,
                      overwrite=args.overwrite, encoder_label=alias)
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
            return f"{opt} {path}: {without_path(message, path)}"
    return message
