"""The main job: the T5Gemma method end to end at `tiny` scale on the shipped corpus.

    python -m mini_encdec demo            about 10 minutes on 2 cores
    python -m mini_encdec demo --quick    about 1 minute (smoke test)

Stages (every one with a progress bar; every training stage writes its own run
directory with metrics.jsonl, a checkpoint and loss.png):

  1. pre-train a decoder-only Gemma 2 (causal LM)                  -> the parent, "M"
  2. adapt M into a balanced encoder-decoder (SPEC section 3)       -> "M-M"
     check: M-M's PrefixLM loss right after adaptation is finite and near M's
  3. continue pre-training
       a. M-M with PrefixLM + distillation, teacher = M (or UL2 with --objective ul2)
       b. M with the same extra budget (same steps, batch size and tokens per step),
          continuing its causal LM
  4. fine-tune both on the downstream mixture, with the same budget:
       reply (a speech -> the next speech) and genre (a speech -> its genre's name)
  5. evaluate both on the validation plays and write the results table

Metrics (results.md / results.json in the run directory):
  pretrain PrefixLM val loss  target NLL of the second half of a validation window given
                              the first half (same examples for both architectures)
  reply NLL                   target NLL per token of the reply task (validation plays)
  reply ROUGE-L               overlap of greedy replies with the real ones
  genre accuracy              rank classification: the genre name with the lowest NLL
  parameters                  count_parameters (as transformers counts them)
  inference GFLOPs / example  encode (or prefill) + KV-cached generation of the reply
  latency                     measured greedy generation time per example (batch 1)

At this scale the numbers are noisy and the budget tiny; the point is the method and the
measurement, not the paper's absolute gains.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

# What each scale runs. full: ~10 minutes on 2 cores; quick: ~1 minute.
SCALES = {
    "full": dict(batch_size=16, half=64, pretrain_steps=400, extra_steps=250,
                 finetune_steps=200, lr=3e-3, finetune_lr=1e-3, eval_batches=8,
                 eval_examples=96, generate_examples=16, new_tokens=32),
    "quick": dict(batch_size=8, half=32, pretrain_steps=40, extra_steps=25,
                  finetune_steps=20, lr=3e-3, finetune_lr=1e-3, eval_batches=2,
                  eval_examples=24, generate_examples=3, new_tokens=8),
}


@dataclass(frozen=True)
class DemoPlan:
    """The budget of one demo run (a scale preset, optionally overridden)."""

    batch_size: int       # sequences per update
    half: int             # S = T: encoder length = decoder length; decoder-only sees 2*half
    pretrain_steps: int   # stage 1 updates
    extra_steps: int      # stage 3 updates, for each of the two models
    finetune_steps: int   # stage 4 updates, for each of the two models
    lr: float             # peak learning rate of pre-training (stages 1 and 3)
    finetune_lr: float    # peak learning rate of fine-tuning
    eval_batches: int     # validation batches for losses
    eval_examples: int    # validation examples for reply NLL and genre accuracy
    generate_examples: int  # examples generated for ROUGE-L and latency
    new_tokens: int       # tokens generated per example


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="about 1 minute instead of ~10")
    p.add_argument("--objective", choices=("prefix_lm_kd", "prefix_lm", "ul2"),
                   default="prefix_lm_kd",
                   help="stage 3 objective of the encoder-decoder (default: PrefixLM + "
                        "distillation from the parent)")
    p.add_argument("--out", default=None, help="run directory, new or empty (default "
                   "runs/demo-<time>); written beside it and renamed into place when complete")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out, once the new run is complete")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--backend", choices=("numpy", "numba"), default=None,
                   help="compute backend (default: MINI_ENCDEC_BACKEND or numba)")
    for f in ("pretrain_steps", "extra_steps", "finetune_steps", "batch_size", "half"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None,
                       help=f"override the scale's {f}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def plan_from_args(args) -> DemoPlan:
    plan = DemoPlan(**SCALES["quick" if args.quick else "full"])
    changes = {f: getattr(args, f) for f in ("pretrain_steps", "extra_steps",
                                              "finetune_steps", "batch_size", "half")
               if getattr(args, f, None) is not None}
    for k, v in changes.items():
        if v < 1:
            raise ValueError(f"demo: --{k.replace('_', '-')}: expected an integer >= 1, got {v}")
    return replace(plan, **changes)


# --- pieces ------------------------------------------------------------------------------------

def _optim(lr: float, steps: int):
    from .optim import OptimConfig
    return OptimConfig(lr=lr, warmup_steps=max(1, min(50, steps // 10)), weight_decay=0.01)


def _train(model, batches, steps, lr, run_dir, *, teacher=None, eval_batches=None,
           progress=True, label=""):
    from .train import TrainConfig, train
    cfg = TrainConfig(steps=steps, eval_every=0, checkpoint_every=0, keep_checkpoints=1)
    if progress:
        print(f"\n== {label}: {steps} steps -> {run_dir}", flush=True)
    return train(model, batches, optim=_optim(lr, steps), config=cfg, run_dir=run_dir,
                 teacher=teacher, eval_batches=eval_batches, progress=progress,
                 run_info={"demo_stage": label})


def _genre_examples(split: str, tok, half: int, limit: Optional[int], seed: int):
    """Genre task as text-to-text: a speech -> the genre's name + EOS."""
    from .corpus import GENRES
    from .objectives.example import Example
    from .tasks import genre_examples
    exs = genre_examples(split, tok, length=half)
    if limit is not None and len(exs) > limit:
        pick = np.random.default_rng([seed, 11]).choice(len(exs), size=limit, replace=False)
        exs = [exs[i] for i in sorted(pick)]
    names = [np.concatenate([tok.encode(g), [tok.eos_id]]).astype(np.int64) for g in GENRES]
    return [Example(e.inputs, names[e.label]) for e in exs], exs, names


def _subsample(xs: list, limit: int, seed: int) -> list:
    if len(xs) <= limit:
        return list(xs)
    pick = np.random.default_rng([seed, 12]).choice(len(xs), size=limit, replace=False)
    return [xs[i] for i in sorted(pick)]


def _generation_cost(model, sources, plan: DemoPlan):
    """(mean seconds per example at batch 1, mean generated tokens, outputs)."""
    from .models.generate import generate
    outs, times, lengths = [], [], []
    for src in sources:
        prompt = [int(t) for t in src]  # the source (encoder-decoder) or the prompt (decoder-only)
        t0 = time.perf_counter()
        new = generate(model, [prompt], max_new_tokens=plan.new_tokens)[0]
        times.append(time.perf_counter() - t0)
        outs.append(new)
        lengths.append(len(new))
    return float(np.mean(times)), float(np.mean(lengths)), outs


def _inference_flops(config, arch: str, prompt_len: int, new_tokens: int) -> float:
    """FLOPs of one request: encode (encoder-decoder) or prefill (decoder-only), then
    `new_tokens` KV-cached decoding steps."""
    from .models.flops import encode_flops, forward_flops, token_flops
    if arch == "encdec":
        total = encode_flops(config, prompt_len)
        total += sum(token_flops(config, i, prompt_len) for i in range(new_tokens))
    else:
        total = forward_flops(config, prompt_len)
        total += sum(token_flops(config, prompt_len + i) for i in range(new_tokens - 1))
    return float(total)


def _fmt(v, digits=3):
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def results_table(results: dict) -> str:
    """Markdown table of the two models side by side."""
    rows = [
        ("validation loss after pre-training (PrefixLM target NLL)", "pretrain_val_loss", 3),
        ("reply NLL per token (validation plays)", "reply_nll", 3),
        ("reply ROUGE-L F1 (greedy)", "reply_rouge_l", 3),
        ("genre accuracy (6 classes, rank classification)", "genre_accuracy", 3),
        ("parameters", "parameters", 0),
        ("inference GFLOPs per example", "inference_gflops", 4),
        ("generation latency per example, batch 1 (ms)", "latency_ms", 1),
    ]
    d, e = results["decoder_only"], results["encoder_decoder"]
    lines = ["| metric | decoder-only (Gemma 2) | encoder-decoder (T5Gemma, adapted) |",
             "|---|---|---|"]
    for label, key, digits in rows:
        lines.append(f"| {label} | {_fmt(d[key], digits)} | {_fmt(e[key], digits)} |")
    return "\n".join(lines)


def plot_stages(histories: dict, path: Path) -> Optional[Path]:
    """All training stages' loss curves in one PNG (None without matplotlib)."""
    from .plots import new_figure
    fig = new_figure((10, 4))
    if fig is None:
        return None
    axes = fig.subplots(1, 3)
    groups = [("pre-training", ["1 decoder causal LM"]),
              ("continued pre-training (3a: PrefixLM+KD or UL2 loss; 3b: causal LM)",
               ["3a encoder-decoder", "3b decoder-only"]),
              ("fine-tuning", ["4a encoder-decoder", "4b decoder-only"])]
    for ax, (title, names) in zip(axes, groups):
        for name in names:
            hist = histories.get(name, [])
            pts = [(r["step"], r["loss"]) for r in hist if "loss" in r]
            if pts:
                ax.plot(*zip(*pts), label=name, linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss (nats / token)")
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- the run -------------------------------------------------------------------------------------

def run(args) -> int:
    """Check the arguments, then run the stages in a new directory beside --out that is
    renamed to --out once everything is written (safe_output: a non-empty --out is refused
    unless --overwrite, and nothing else is touched, even if the run fails)."""
    from .config import PRESETS
    from .safe_output import new_output_dir
    from .usage import UsageError, did_you_mean
    try:
        plan_from_args(args)
    except ValueError as e:
        raise UsageError(str(e).removeprefix("demo: ")) from None
    if args.preset.lower() not in {k.lower() for k in PRESETS}:
        raise UsageError(f"--preset {args.preset}: expected one of {', '.join(PRESETS)}"
                         f"{did_you_mean(args.preset, list(PRESETS))}")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected an integer >= 0")
    if args.out == "":
        raise UsageError("--out '': expected a directory path")
    target = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    with new_output_dir(target, overwrite=getattr(args, "overwrite", False),
                        what="--out") as out:
        status = _run_stages(args, out)
    print(f"run directory: {target}")
    return status


def _run_stages(args, out: Path) -> int:
    """The five stages, writing into directory `out`."""
    from . import backend
    from .adapt import adapt
    from .batching import ExampleBatcher, corpus_stream, eval_batches, make_batcher
    from .config import count_parameters, preset
    from .models import build_model
    from .objectives import make_objective
    from .scoring import mean_token_nll, rank_classify
    from .tasks import reply_examples, rouge_l
    from .tokenizer import load_tokenizer
    from .train import evaluate

    if getattr(args, "backend", None):
        backend.set_backend(args.backend)
    plan = plan_from_args(args)
    progress = not args.no_progress
    t_start = time.perf_counter()
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)

    tok = load_tokenizer()
    cfg = preset(args.preset, vocab_size=tok.vocab_size)
    S = T = plan.half
    B = plan.batch_size
    kw = dict(batch_size=B, encoder_length=S, decoder_length=T, seed=args.seed)
    causal = make_objective("causal_lm", tok)
    prefix = make_objective("prefix_lm", tok)
    val_stream = corpus_stream("validation", tok)
    val_prefix = {arch: eval_batches(val_stream, prefix, arch=arch, max_batches=plan.eval_batches,
                                     **{k: v for k, v in kw.items()})
                  for arch in ("encdec", "decoder")}
    val_causal = eval_batches(val_stream, causal, arch="decoder", max_batches=plan.eval_batches,
                              **kw)
    histories = {}

    # 1. the decoder-only parent
    parent = build_model(cfg, seed=args.seed)
    histories["1 decoder causal LM"] = _train(
        parent, make_batcher("train", causal, tok, arch="decoder", **kw), plan.pretrain_steps,
        plan.lr, out / "1_pretrain_decoder", eval_batches=val_causal, progress=progress,
        label="1. pre-train the decoder-only Gemma 2 (causal LM)")
    parent_prefix_loss = evaluate(parent, val_prefix["decoder"])["loss"]

    # 2. adaptation
    say("\n== 2. adapt the decoder-only model into a balanced encoder-decoder")
    encdec = adapt(parent, rng=np.random.default_rng(args.seed))
    adapted_loss = evaluate(encdec, val_prefix["encdec"])["loss"]
    say(f"   PrefixLM validation loss: parent {parent_prefix_loss:.3f}, adapted "
        f"encoder-decoder right after adaptation {adapted_loss:.3f}")

    # 3. the same extra pre-training budget for both
    teacher = None
    if args.objective == "ul2":
        ed_batches = make_batcher("train", make_objective("ul2", tok), tok, arch="encdec", **kw)
    else:
        with_teacher = args.objective == "prefix_lm_kd"
        ed_batches = make_batcher("train", prefix, tok, arch="encdec", with_teacher=with_teacher,
                                  **kw)
        if with_teacher:
            teacher = build_model(cfg, params={k: v.copy() for k, v in parent.params.items()})
    histories["3a encoder-decoder"] = _train(
        encdec, ed_batches, plan.extra_steps, plan.lr, out / "3a_encdec_pretrain",
        teacher=teacher, eval_batches=val_prefix["encdec"], progress=progress,
        label=f"3a. continue pre-training the encoder-decoder ({args.objective})")
    decoder = parent  # the parent itself continues (it is not needed unchanged any more)
    histories["3b decoder-only"] = _train(
        decoder, make_batcher("train", causal, tok, arch="decoder", seed=args.seed + 1,
                              **{k: v for k, v in kw.items() if k != "seed"}),
        plan.extra_steps, plan.lr, out / "3b_decoder_pretrain", eval_batches=val_causal,
        progress=progress, label="3b. the decoder-only model: the same extra budget (causal LM)")
    pretrain_val = {"encdec": evaluate(encdec, val_prefix["encdec"])["loss"],
                    "decoder": evaluate(decoder, val_prefix["decoder"])["loss"]}

    # 4. fine-tune both on the downstream mixture with the same budget
    n_train = plan.finetune_steps * B
    reply_train = _subsample(reply_examples("train", tok, encoder_length=S, decoder_length=T),
                             n_train, args.seed)
    genre_train, _, _ = _genre_examples("train", tok, S, n_train // 2, args.seed)
    mixture = reply_train + genre_train
    reply_val = _subsample(reply_examples("validation", tok, encoder_length=S, decoder_length=T),
                           plan.eval_examples, args.seed)
    _, genre_val, genre_names = _genre_examples("validation", tok, S, plan.eval_examples,
                                                args.seed)
    models = {"encdec": encdec, "decoder": decoder}
    for tag, arch in (("4a encoder-decoder", "encdec"), ("4b decoder-only", "decoder")):
        batches = ExampleBatcher(mixture, batch_size=B, encoder_length=S, decoder_length=T,
                                 arch=arch, seed=args.seed, pad_id=tok.pad_id, bos_id=tok.bos_id)
        histories[tag] = _train(models[arch], batches, plan.finetune_steps, plan.finetune_lr,
                                out / f"{tag.split()[0]}_{arch}_finetune", progress=progress,
                                label=f"{tag[:2]}. fine-tune the {tag[3:]} model (reply + genre)")

    # 5. evaluation
    say("\n== 5. evaluate both models on the validation plays")
    results = {"plan": plan.__dict__, "objective": args.objective, "preset": args.preset,
               "backend": backend.get_backend(), "seed": args.seed,
               "parent_prefix_loss_before_adaptation": parent_prefix_loss,
               "adapted_prefix_loss_right_after_adaptation": adapted_loss}
    gen_examples = reply_val[:plan.generate_examples]
    from tqdm import tqdm
    bar = tqdm(total=6, desc="5. evaluate", unit="part", disable=not progress,
               dynamic_ncols=True)  # 2 models x (reply NLL, genre, generation)
    for key, arch in (("encoder_decoder", "encdec"), ("decoder_only", "decoder")):
        m = models[arch]
        bar.set_postfix_str(f"{arch}: reply NLL")
        reply_nll = mean_token_nll(m, reply_val, arch, S, T)
        bar.update(1)
        bar.set_postfix_str(f"{arch}: genre")
        pred = rank_classify(m, [e.inputs for e in genre_val], genre_names, arch, S, T)
        acc = float(np.mean(pred == np.array([e.label for e in genre_val])))
        bar.update(1)
        bar.set_postfix_str(f"{arch}: generation")
        latency, mean_len, outs = _generation_cost(m, [e.inputs for e in gen_examples],
                                                   plan)
        bar.update(1)
        rouge = float(np.mean([rouge_l(o, e.targets, eos_id=tok.eos_id)
                               for o, e in zip(outs, gen_examples)]))
        prompt_len = int(round(np.mean([len(e.inputs) for e in gen_examples])))
        results[key] = {
            "pretrain_val_loss": pretrain_val[arch],
            "reply_nll": reply_nll,
            "reply_rouge_l": rouge,
            "genre_accuracy": acc,
            "parameters": int(count_parameters(m.config)),
            "inference_gflops": _inference_flops(m.config, arch, prompt_len, plan.new_tokens) / 1e9,
            "latency_ms": latency * 1e3,
            "mean_generated_tokens": mean_len,
            "sample_reply": tok.decode([int(t) for t in outs[0] if t != tok.eos_id])
            if outs else "",
        }
    bar.close()
    results["seconds"] = time.perf_counter() - t_start
    table = results_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(
        f"# mini_encdec demo ({'quick' if args.quick else 'full'}, preset {args.preset}, "
        f"objective {args.objective}, backend {results['backend']})\n\n{table}\n\n"
        f"PrefixLM validation loss of the parent before adaptation: {parent_prefix_loss:.3f}; "
        f"of the adapted encoder-decoder right after adaptation: {adapted_loss:.3f}.\n"
        f"Total time: {results['seconds']:.0f} s.\n")
    png = plot_stages(histories, out / "loss_curves.png")
    print("\n" + table)
    print(f"\nresults: {out / 'results.md'}" + (f", curves: {png}" if png else ""))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mini_encdec demo", description=__doc__)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
