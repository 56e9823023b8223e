"""Train the SentencePiece tokenizer, or show a model's special ids.

    python -m mini_encdec tokenizer train [--vocab-size N] [--input FILE ...] [--out PATH]
    python -m mini_encdec tokenizer info [--model PATH]

`train` learns from the corpus training split (or plain-text --input files) and refuses to
replace an existing --out unless --overwrite.
"""

from __future__ import annotations

from pathlib import Path

from ..storage.safe_output import check_output
from ..usage import UsageError
from .common import POSITIVE, decode_text, first_line, hold_output, read_tokenizer

HELP = "train the SentencePiece tokenizer, or show a model's special ids"


def add_arguments(p) -> None:
    from ..text.tokenizer import DEFAULT_MODEL, NUM_SENTINELS
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
    return decode_text(data, f"{what} {path}", "a plain-text file")


def run(args) -> int:
    from ..text.tokenizer import min_vocab_size, summary as tokenizer_summary, train_tokenizer
    if args.action == "train":
        low = min_vocab_size(args.num_sentinels)
        if args.vocab_size < low:
            raise UsageError(f"--vocab-size {args.vocab_size}: expected an integer >= {low} "
                             f"(4 special ids, 256 byte pieces, {low - 276} user pieces with "
                             f"--num-sentinels {args.num_sentinels}, and some text)")
        sources = [("--input", f) for f in args.input or ()]
        check_output(args.out, overwrite=args.overwrite, sources=sources, what="--out",
                     kind="file")
        hold_output(args, args.out, "--out", kind="file")
        texts = None
        if args.input:
            texts = [_read_text_file(f, "--input") for f in args.input]
            if not any(line.strip() for t in texts for line in t.splitlines()):
                raise UsageError(f"--input {' '.join(args.input)}: no text to train on")
        try:
            tok = train_tokenizer(args.out, args.vocab_size, num_sentinels=args.num_sentinels,
                                  texts=texts, overwrite=args.overwrite, what="--out")
        except RuntimeError as e:  # sentencepiece's own complaints (e.g. too little text)
            raise UsageError(f"tokenizer train: {first_line(str(e))}") from None
        print(tokenizer_summary(tok, args.out, trained=True))
        return 0
    print(tokenizer_summary(read_tokenizer(args.model, "--model"), args.model))
    return 0
