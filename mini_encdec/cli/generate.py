"""Generate text from a prompt, or interactively (one prompt per line).

Greedy decoding by default, or sampling (temperature, top-k, top-p) or beam search. Without
--prompt, prompts are read from stdin as UTF-8, one per line, until EOF or an empty line;
each reply is printed on its own line. A model fine-tuned on a synthetic task (its 41-id
vocabulary) reads and writes that task's characters.
"""

from __future__ import annotations

import sys

import numpy as np

from ..config import EncDecConfig
from ..usage import UsageError
from .common import (POSITIVE, SEED, add_common_arguments, check_vocabulary, decode_text,
                     float_in, int_at_least, read_model, read_tokenizer, set_backend)

HELP = "generate text from a prompt, or interactively (one prompt per line)"
MAX_NEW_TOKENS = 65536  # beyond this the KV cache of even a tiny model grows large
EMPTY_REPLY_HINT = ("(the model ended its reply at once: its first token was EOS. Try "
                    "--method sample, a longer-trained model, or --eos if it was fine-tuned "
                    "on prompts that end with EOS)")


def add_arguments(p) -> None:
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
    add_common_arguments(p)


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
            if "\0" in line:
                raise UsageError(f"stdin line {number}: holds a NUL byte (binary input?); "
                                 f"expected UTF-8 text, one prompt per line")
        else:
            line = decode_text(raw.readline(), f"stdin line {number}",
                               "UTF-8 text, one prompt per line")
        yield line


def run(args) -> int:
    from ..models.generate import generate
    from ..text.tasks import SYNTH_VOCAB_SIZE, synth_decode, synth_encode
    set_backend(args.backend)
    if args.prompt:
        for i, text in enumerate(args.prompt, 1):
            _utf8(text, f"--prompt #{i}")
    model = read_model(args.checkpoint)
    synthetic = model.config.vocab_size == SYNTH_VOCAB_SIZE
    tok = None if synthetic else read_tokenizer(args.tokenizer)
    if tok is not None:
        check_vocabulary(model, tok, "--tokenizer")
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
