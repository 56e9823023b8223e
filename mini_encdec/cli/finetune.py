"""Fine-tune on a downstream task (reply, reverse, sort, addition).

reply: the next speech of the plays (the shipped tokenizer); reverse / sort / addition:
synthetic seq2seq tasks with their own 41-id vocabulary. The task metric (ROUGE-L or exact
match) on --eval-examples validation examples is printed at the end and appended to the
run's metrics.jsonl. The run writes a run directory (default runs/finetune-<time>);
--resume continues it.
"""

from __future__ import annotations

import json

from ..text.batching import ARCHS, DataConfig
from ..usage import UsageError
from .common import (TASKS, check_vocabulary, checked, read_tokenizer, set_backend,
                     task_examples)
from .runs import add_run_arguments, model_for_run, open_run, setup_run, train_run

HELP = "fine-tune on a downstream task (reply, reverse, sort, addition)"


def add_arguments(p) -> None:
    p.add_argument("--task", choices=TASKS, default=None,
                   help="reply: the next speech of the plays; reverse/sort/addition: "
                        "synthetic seq2seq tasks with their own 41-id vocabulary "
                        "(required, except with --resume)")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="for a fresh model (no --init): encdec (default) or decoder")
    p.add_argument("--eval-examples", type=int, default=64,
                   help="validation examples for the task metric at the end (default 64)")
    add_run_arguments(p)


def run(args) -> int:
    from ..experiments.downstream import task_metric
    from ..text.batching import ExampleBatcher
    from ..text.tasks import SYNTH_VOCAB_SIZE
    from ..training.train import METRICS_FILE
    set_backend(args.backend)
    if args.task is None and not args.resume:
        raise UsageError("--task is required (except with --resume)")
    run_dir, run_config, resumed = setup_run(args, "finetune", dict(
        task=args.task, arch=args.arch, preset=args.preset,
        eval_examples=args.eval_examples))
    task = run_config["task"]
    data = DataConfig(**run_config["data"])
    tok = read_tokenizer(run_config.get("tokenizer")) if task == "reply" else None
    vocab = tok.vocab_size if tok is not None else SYNTH_VOCAB_SIZE
    model, arch = model_for_run(run_config, data, vocab_default=vocab, run_dir=run_dir)
    run_config["arch"] = arch
    if model.config.vocab_size < vocab:
        raise UsageError(f"model.vocab_size={model.config.vocab_size} is smaller than the "
                         f"task's vocabulary of {vocab}")
    if run_config.get("init") and not resumed and tok is not None:  # trained weights
        check_vocabulary(model, tok, f"--init {run_config['init']}")
    seed = run_config["train"]["seed"]
    train_ex = task_examples(task, "train", data, tok, seed)
    val_ex = task_examples(task, "validation", data, tok, seed)
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch)
    batcher = checked("data", lambda: ExampleBatcher(train_ex, seed=seed, **kw))
    vb = ExampleBatcher(val_ex, shuffle=False, **kw)
    n_val = min(data.eval_batches, max(1, len(val_ex) // data.batch_size))
    val = [vb.next_batch() for _ in range(n_val)]
    with open_run(args, run_dir, resumed) as rd:
        train_run(args, rd, run_config, resumed, model, batcher, val)
        metric = task_metric(model, task, val_ex[:run_config.get("eval_examples", 64)],
                             max_new_tokens=data.decoder_length, progress=not args.quiet)
        with open(rd.path / METRICS_FILE, "a") as f:
            f.write(json.dumps({"step": run_config["train"]["steps"], "task": task, **metric})
                    + "\n")
    print(f"{task}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in metric.items()))
    return 0
