"""Generate text from a prompt, or for every line of stdin.

Greedy decoding by default, or sampling (temperature, top-k, top-p) or beam search. Without
--prompt, prompts are read from stdin as UTF-8, one per line, until EOF (at a terminal, an
empty line also ends the session); every input line gets exactly one output line, in
order: the reply, with a newline inside it written as the two characters \\n (and a
backslash as \\\\). A prompt that cannot be answered (an empty line, a prompt too long for
the memory) gets an empty output line and one error line on stderr, the rest still run,
and the exit status is 2. With --jsonl, each input line is a JSON object {"prompt": ...}
(or a JSON string) and each output line a JSON object {"prompt", "reply"} or {"prompt",
"error"}, for prompts and replies that hold newlines. A model fine-tuned on a synthetic
task (its 41-id vocabulary) reads and writes that task's characters.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ..config import EncDecConfig
from ..usage import UsageError
from .common import (POSITIVE, SEED, add_common_arguments, check_vocabulary, decode_text,
                     float_in, int_at_least, read_model, read_tokenizer, refuse_beyond_memory,
                     set_backend, tok_default)

HELP = "generate text from a prompt, or for every line of stdin (one reply per line)"
MAX_NEW_TOKENS = 65536  # beyond this the KV cache of even a tiny model grows large
MAX_PROMPT_TOKENS = 65536  # RoPE sets no context limit; memory and time do
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
    p.add_argument("--jsonl", action="store_true",
                   help="stdin lines are JSON ({\"prompt\": ...} or a string), stdout lines "
                        "JSON objects {prompt, reply} or {prompt, error}")
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


def one_line(reply: str) -> str:
    """A reply as one output line: backslash, newline and carriage return escaped."""
    return reply.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _jsonl_prompt(line: str, what: str) -> str:
    """The prompt of one --jsonl input line."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise UsageError(f"{what}: not valid JSON; expected {{\"prompt\": \"...\"}} or a "
                         f"JSON string") from None
    if isinstance(obj, dict):
        obj = obj.get("prompt")
    if not isinstance(obj, str):
        raise UsageError(f"{what}: expected {{\"prompt\": \"...\"}} or a JSON string")
    return _utf8(obj, what)


def prompt_memory(config, length: int) -> int:
    """Bytes the prefill of a `length`-token prompt needs, roughly: the (L, L) mask and,
    per head, scores and probabilities (float32) with a copy, plus the KV cache."""
    stacks = [config.encoder, config.decoder] if isinstance(config, EncDecConfig) else [config]
    heads = max(c.num_attention_heads for c in stacks)
    layers = sum(c.num_hidden_layers for c in stacks)
    kv = max(c.num_key_value_heads * c.head_dim for c in stacks)
    return length * length * (8 + 12 * heads) + length * layers * kv * 2 * 4


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
        check_vocabulary(model, tok, f"--tokenizer {args.tokenizer or tok_default()}")
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
        if len(ids) > MAX_PROMPT_TOKENS:
            raise UsageError(f"{what}: {len(ids)} tokens; expected at most "
                             f"{MAX_PROMPT_TOKENS}")
        refuse_beyond_memory(prompt_memory(model.config, len(ids) + args.max_new_tokens),
                             f"{what}: {len(ids)} tokens (+ --max-new-tokens "
                             f"{args.max_new_tokens}) need", "a shorter prompt")
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
            reply = respond(text, f"--prompt #{i}" if len(args.prompt) > 1 else "--prompt")
            print(json.dumps({"prompt": text, "reply": reply}, ensure_ascii=False)
                  if args.jsonl else reply)
        return 0
    interactive = sys.stdin.isatty()
    refused = total = 0
    for number, line in enumerate(_stdin_lines(interactive), 1):
        if not line:  # EOF
            break
        text = line.rstrip("\r\n")
        if interactive and not text.strip():
            break
        what = f"stdin line {number}"
        total += 1
        prompt = text
        try:
            if args.jsonl:
                prompt = None
                prompt = _jsonl_prompt(text, what)
            reply, error = respond(prompt, what), None
        except UsageError as e:
            reply, error = "", str(e)
            refused += 1
            print(f"generate: error: {error}", file=sys.stderr, flush=True)
        if args.jsonl:
            out = {"prompt": prompt, "error": error} if error else {"prompt": prompt,
                                                                    "reply": reply}
            print(json.dumps(out, ensure_ascii=False), flush=True)
        else:
            print(one_line(reply), flush=True)
    if refused:
        print(f"generate: error: {refused} of {total} prompts could not be answered (their "
              f"output lines are empty)", file=sys.stderr)
        return 2
    return 0
