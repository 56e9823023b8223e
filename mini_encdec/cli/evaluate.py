"""Evaluate a checkpoint: loss on a corpus split, or a task metric.

The loss uses the same lengths for both architectures, so their numbers compare: an
encoder-decoder reads encoder_length tokens and predicts decoder_length tokens; a
decoder-only model reads the encoder_length + decoder_length tokens and is scored on the
last decoder_length (default objective prefix_lm). With --task, the loss on the task's
examples and its metric (ROUGE-L or exact match). Prints one JSON object.
"""

from __future__ import annotations

import json
import math
import sys

from ..usage import UsageError
from .common import (POSITIVE, SEED, TASKS, add_common_arguments, arch_of, check_memory,
                     check_vocabulary, checked, corpus_split, read_model, read_tokenizer,
                     set_backend, task_examples, tok_default)
from .overrides import build_section, parse_overrides

HELP = "evaluate a checkpoint: loss on a corpus split, or a task metric"


def add_arguments(p) -> None:
    from ..objectives import OBJECTIVES
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
    add_common_arguments(p)


def run(args) -> int:
    from tqdm import tqdm

    from ..experiments.downstream import task_metric
    from ..objectives import make_objective
    from ..text.batching import ExampleBatcher, eval_batches
    from ..training.train import evaluate
    set_backend(args.backend)
    overrides = parse_overrides(args.overrides)
    other = sorted(k for k in overrides if not k.startswith("data."))
    if other:
        raise UsageError(f"--set {other[0]}: evaluate takes only data.* fields")
    data = build_section(overrides, "data")
    model = read_model(args.checkpoint)
    arch = arch_of(model.config)
    check_memory(data, model.config, arch)
    # The same lengths for both architectures: an encoder-decoder reads S and predicts T
    # tokens; a decoder-only model reads the S + T tokens and is scored on the last T.
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch)
    lengths = {"encoder_length": data.encoder_length, "decoder_length": data.decoder_length}

    def scored(batches: list) -> dict:
        bar = tqdm(batches, desc="evaluate", unit="batch", disable=args.quiet,
                   file=sys.stderr, dynamic_ncols=True)
        return checked("evaluation", lambda: evaluate(model, bar))

    if args.task:
        tok = read_tokenizer(args.tokenizer) if args.task == "reply" else None
        check_vocabulary(model, tok, args.task)
        exs = task_examples(args.task, args.split, data, tok, args.seed)
        vb = ExampleBatcher(exs, shuffle=False, **kw)
        n = min(args.batches, max(1, len(exs) // data.batch_size))
        batches = [vb.next_batch() for _ in range(n)]
        result = {"task": args.task, "split": args.split, **lengths, **scored(batches)}
        result.update(task_metric(model, args.task, exs[:args.batches * data.batch_size],
                                  max_new_tokens=data.decoder_length,
                                  progress=not args.quiet))
    else:
        tok = read_tokenizer(args.tokenizer)
        check_vocabulary(model, tok, f"--tokenizer {args.tokenizer or tok_default()}")
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
        objective = checked("objective", lambda: make_objective(
            name, tok, density=data.density, mean_span=data.mean_span))
        batches = checked("data", lambda: eval_batches(
            corpus_split(args.split, tok), objective, max_batches=args.batches,
            seed=args.seed, pad_id=tok.pad_id, bos_id=tok.bos_id, **kw))
        result = {"objective": name, "split": args.split, **lengths, **scored(batches)}
    bad = sorted(k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:  # JSON has no NaN or inf: null, and a line saying why
        print(f"evaluate: {', '.join(bad)} not finite (the model's outputs overflow or are "
              f"NaN); written as null", file=sys.stderr)
        result = {k: (None if k in bad else v) for k, v in result.items()}
    print(json.dumps(result, allow_nan=False))
    return 0
