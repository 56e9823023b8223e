"""Pre-train a decoder-only LM or an encoder-decoder on the corpus.

Objectives (--objective): prefix_lm (the encoder-decoder default), span_corruption, ul2,
t5gemma2, and causal_lm (the decoder-only default); PrefixLM + distillation from a
decoder-only --teacher. The run writes a run directory (default runs/pretrain-<time>);
--resume continues it.
"""

from __future__ import annotations

from ..text.batching import ARCHS, DataConfig
from ..usage import UsageError
from .common import (arch_of, check_vocabulary, checked, corpus_split, read_model,
                     read_tokenizer, set_backend)
from .runs import add_run_arguments, model_for_run, open_run, setup_run, train_run

HELP = "pre-train a decoder-only LM or an encoder-decoder on the corpus"


def add_arguments(p) -> None:
    from ..objectives import OBJECTIVES
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="encdec (default) or decoder (decoder-only Gemma 2)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="default prefix_lm (encdec) or causal_lm (decoder); decoder-only "
                        "runs may also use prefix_lm/span_corruption/ul2 (the decoder-only "
                        "form: loss on the targets)")
    p.add_argument("--teacher", default=None, metavar="PATH",
                   help="decoder-only model for PrefixLM + distillation (encdec, prefix_lm); "
                        "alpha and temperature: train.kd_alpha, train.kd_temperature")
    add_run_arguments(p)


def run(args) -> int:
    from ..objectives import make_objective
    from ..text.batching import Batcher, eval_batches
    set_backend(args.backend)
    run_dir, run_config, resumed = setup_run(args, "pretrain", dict(
        arch=args.arch, objective=args.objective, preset=args.preset, teacher=args.teacher))
    tok = read_tokenizer(run_config.get("tokenizer"))
    data = DataConfig(**run_config["data"])
    # the architecture: --arch, else that of the --init model, else encoder-decoder
    model, arch = model_for_run(run_config, data, run_dir=run_dir)
    objective_name = run_config["objective"] or ("causal_lm" if arch == "decoder"
                                                 else "prefix_lm")
    run_config.update(arch=arch, objective=objective_name)
    if objective_name == "causal_lm" and arch != "decoder":
        raise UsageError("--objective causal_lm is decoder-only; use --arch decoder")
    teacher_path = run_config.get("teacher")
    if teacher_path and (arch != "encdec" or objective_name != "prefix_lm"):
        raise UsageError("--teacher: distillation is PrefixLM + KD: needs --arch encdec and "
                         "--objective prefix_lm")
    if model.config.vocab_size < tok.vocab_size:
        raise UsageError(f"model.vocab_size={model.config.vocab_size} is smaller than the "
                         f"tokenizer's {tok.vocab_size}")
    if run_config.get("init") and not resumed:  # trained weights: the tokenizer must match
        check_vocabulary(model, tok, f"--init {run_config['init']}")
    teacher = read_model(teacher_path, "--teacher") if teacher_path else None
    if teacher is not None and arch_of(teacher.config) != "decoder":
        raise UsageError(f"--teacher {teacher_path}: expected a decoder-only model")
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise UsageError(f"--teacher {teacher_path}: its vocabulary "
                         f"({teacher.config.vocab_size} ids) differs from the student's "
                         f"({model.config.vocab_size}); expected a model on the same tokenizer")
    objective = checked("objective", lambda: make_objective(
        objective_name, tok, density=data.density, mean_span=data.mean_span))
    kw = dict(batch_size=data.batch_size, encoder_length=data.encoder_length,
              decoder_length=data.decoder_length, arch=arch, pad_id=tok.pad_id,
              bos_id=tok.bos_id, with_teacher=teacher is not None)
    batcher = checked("data", lambda: Batcher(corpus_split("train", tok), objective,
                                              seed=run_config["train"]["seed"], **kw))
    val = checked("data", lambda: eval_batches(corpus_split("validation", tok), objective,
                                               max_batches=data.eval_batches, **kw))
    with open_run(args, run_dir, resumed) as rd:
        train_run(args, rd, run_config, resumed, model, batcher, val, teacher)
    return 0
