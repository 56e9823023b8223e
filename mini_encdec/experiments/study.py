"""`python -m mini_encdec study`: the paper's claims reproduced at tiny scale, one named
experiment per claim, several seeds, a significance test, a claims table.

THE PROTOCOL (fixed before any result of the study was looked at)

Per seed s (every arm of a seed shares the parent, the data order and the evaluation
examples; the seeds differ in initialisation, data order and example subsamples):

  parent       decoder-only Gemma 2 (`preset`), causal LM, `parent_steps` updates,
               cosine schedule at `lr`
  big_parent   a wider and deeper decoder-only model (`big_overrides`), same recipe: the
               encoder source of the unbalanced arms (E4)

  Continued pre-training: every arm below gets the same extra budget of `extra_steps`
  updates of `batch_size` windows of about 2 * half tokens from the training plays (the
  PrefixLM arms of a seed read the same windows in the same order; the causal-LM window is
  one token longer and UL2's has its own length, so those arms draw their own windows of
  the same plays), AdamW at `extra_lr`, constant after
  a linear warmup (constant, so that a checkpoint on the way is a legitimate smaller
  budget, E6). The arms trained from scratch use the parent's pre-training rate `lr`.

  dec              the parent, causal LM over both halves        (tokens seen matched)
  dec_prefix       the parent, PrefixLM loss on the second half only (loss-bearing tokens
                   and objective matched)
  ed_kd            adapt(parent), PrefixLM + distillation from the frozen parent
                   (kd_alpha, kd_temperature of TrainConfig)
  ed_prefix        adapt(parent), PrefixLM
  ed_ul2           adapt(parent), UL2 (the 7 denoisers, SPEC 4)
  ed_scratch       a fresh encoder-decoder of the same shape, PrefixLM, at `lr`
  ed_causal        adapt(parent) with a causal encoder (decoder-style masks), PrefixLM
  ed_unbal_warm    encoder from big_parent, decoder from parent, fresh cross-attention,
                   only cross-attention trains for the first extra_steps // 8 updates,
                   PrefixLM
  ed_unbal_nowarm  the same without the warmup

  dec and ed_kd continue to `sweep_steps` updates (E6), checkpointed at extra_steps.

  Fine-tuning (downstream.py), identical for every arm (no cross-attention warmup: that
  belongs to adaptation): the generation model on the reply
  + genre-as-text mixture (`finetune_steps` at `finetune_lr`, cosine), and the
  classification probe on genre (`probe_steps` at `finetune_lr`). Nobody tunes anything
  per arm: the rates above are the same for both architectures and were fixed here.

  Evaluation on the validation plays: the PrefixLM validation loss (target NLL of the
  second half of a window given the first; the same windows for both architectures);
  reply NLL per token; reply ROUGE-L of greedy replies; genre accuracy by rank
  classification and by the probe; baselines beside them (downstream.baselines).
  Inference cost (downstream.inference_cost): FLOPs per request and per generated token at
  the same prompt and the same forced output length, and measured latency (seed 0's models,
  median of `latency_repeats`, with the load average).

  Statistics: for each claim, arm a vs arm b seed by seed, mean and standard deviation
  over seeds and a two-sided paired t-test (stats.py); verdict "reproduced" when the
  paper's direction holds with p < 0.05, "not reproduced" when the opposite direction
  does, "inconclusive" otherwise.

The experiments (the claims, from SPEC section 6 and the paper's abstract):
  E1 adaptation vs the same encoder-decoder from scratch, same PrefixLM budget
  E2 adapted encoder-decoder vs its decoder-only parent given the same extra budget, at
     about the same inference FLOPs: after pre-training and after fine-tuning (generation
     task and classification probe)
  E3 objectives: PrefixLM, PrefixLM + KD, UL2, on the generation task and on the probe
  E4 unbalanced (encoder from a larger parent) vs balanced at similar decoding cost, with
     and without the cross-attention warmup
  E5 bidirectional vs causal encoder
  E6 budget sweep: PrefixLM loss along the way (matched by tokens seen and by loss-bearing
     tokens) and the fine-tuned tasks at budgets 0, extra_steps and sweep_steps

Everything is cached in the output directory (models, each training run's checkpoints,
each finished unit's results), so an interrupted study resumes where it stopped
(`--resume`). Writes results.md, results.json, loss_curves.png, quality_vs_flops.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import downstream
from .stats import paired_test, verdict
from ..usage import UsageError

HELP = ("the paper's claims at tiny scale: experiments E1-E6 over several seeds, with a "
        "claims table")  # its line in `python -m mini_encdec --help`


# --- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyPlan:
    """The budget of a study (a scale, optionally overridden)."""

    preset: str = "tiny"
    big_overrides: tuple = (("hidden_size", 192), ("num_hidden_layers", 4),
                            ("intermediate_size", 576), ("head_dim", 48))
    half: int = 64                # S = T; the decoder-only model sees 2 * half tokens
    batch_size: int = 16
    parent_steps: int = 600
    extra_steps: int = 300
    sweep_steps: int = 600
    finetune_steps: int = 150
    probe_steps: int = 100
    lr: float = 3e-3              # pre-training from scratch
    extra_lr: float = 1e-3        # continued pre-training (constant after warmup)
    finetune_lr: float = 1e-3
    eval_every: int = 75          # PrefixLM validation loss along the continued pre-training
    eval_batches: int = 8
    train_examples: int = 2400    # reply examples in the fine-tuning mixture (+ half genre)
    eval_examples: int = 160
    generate_examples: int = 32
    new_tokens: int = 32
    latency_repeats: int = 3
    seeds: tuple = (0, 1, 2)

    @property
    def warmup_steps(self) -> int:
        """Cross-attention warmup of the unbalanced arm (the paper: 1K of its budget)."""
        return max(1, self.extra_steps // 8)


SCALES = {
    "full": StudyPlan(),
    "quick": StudyPlan(half=16, batch_size=4, parent_steps=8, extra_steps=4, sweep_steps=8,
                       finetune_steps=4, probe_steps=4, eval_every=4, eval_batches=1,
                       train_examples=32, eval_examples=12, generate_examples=2,
                       new_tokens=4, latency_repeats=1, seeds=(0, 1),
                       big_overrides=(("hidden_size", 160), ("num_hidden_layers", 3))),
}

ARMS = ("dec", "dec_prefix", "ed_kd", "ed_prefix", "ed_ul2", "ed_scratch", "ed_causal",
        "ed_unbal_warm", "ed_unbal_nowarm")
SWEEP_ARMS = ("dec", "ed_kd")  # E6: continued to sweep_steps
ARM_LABELS = {
    "dec": "decoder-only, causal LM", "dec_prefix": "decoder-only, PrefixLM loss",
    "ed_kd": "adapted, PrefixLM + KD", "ed_prefix": "adapted, PrefixLM",
    "ed_ul2": "adapted, UL2", "ed_scratch": "from scratch, PrefixLM",
    "ed_causal": "adapted, causal encoder", "ed_unbal_warm": "unbalanced, warmup",
    "ed_unbal_nowarm": "unbalanced, no warmup",
}


# --- the causal-encoder ablation (E5) --------------------------------------------------------------

def causal_encoder(model):
    """`model` (an EncDecLM) switched to decoder-style (causal) masks in its encoder, for
    training, generation and a probe built on it alike: the paper's causal-encoder
    ablation (EncDecLM.causal_encoder)."""
    model.causal_encoder = True
    return model


# --- the study -------------------------------------------------------------------------------------

class Study:
    """Runs the units of the protocol, caching every finished one under `out`."""

    def __init__(self, out: Path, plan: StudyPlan, progress: bool = True):
        from ..text.tokenizer import load_tokenizer
        self.out, self.plan, self.progress = out, plan, progress
        self.tok = load_tokenizer()
        self._data: dict = {}
        self._val: Optional[dict] = None

    # --- bookkeeping ---------------------------------------------------------------------
    def say(self, *a) -> None:
        if self.progress:
            print(*a, flush=True)

    def cached(self, name: str, fn: Callable[[], dict]) -> dict:
        """fn()'s JSON result, computed once: results/<name>.json."""
        from ..storage.checkpoint import atomic_write_json
        path = self.out / "results" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        res = fn()
        res["seconds"] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, res)
        return res

    def model_path(self, seed: int, name: str) -> Path:
        return self.out / "models" / f"seed{seed}" / name

    def saved(self, seed: int, name: str, build: Callable[[], object]):
        """The model `name` of `seed`, built by `build()` once and then loaded."""
        from ..storage.checkpoint import load_model, save_model
        path = self.model_path(seed, name)
        if (path / "config.json").is_file():
            model = load_model(path)
        else:
            model = build()
            save_model(path, model.config, model.params)
        return causal_encoder(model) if name.startswith("ed_causal") else model

    # --- shared inputs ------------------------------------------------------------------
    def config(self, big: bool = False):
        from ..config import preset
        over = dict(self.plan.big_overrides) if big else {}
        return preset(self.plan.preset, vocab_size=self.tok.vocab_size, **over)

    def batch_kw(self, seed: int) -> dict:
        p = self.plan
        return dict(batch_size=p.batch_size, encoder_length=p.half, decoder_length=p.half,
                    seed=seed)

    def val(self) -> dict:
        """The PrefixLM validation batches of each architecture (the same windows)."""
        if self._val is None:
            from ..text.batching import corpus_stream, eval_batches
            from ..objectives import make_objective
            stream = corpus_stream("validation", self.tok)
            prefix = make_objective("prefix_lm", self.tok)
            self._val = {arch: eval_batches(stream, prefix, arch=arch,
                                            max_batches=self.plan.eval_batches,
                                            **self.batch_kw(0))
                         for arch in ("encdec", "decoder")}
        return self._val

    def data(self, seed: int) -> downstream.TaskData:
        if seed not in self._data:
            p = self.plan
            self._data[seed] = downstream.build_task_data(
                self.tok, encoder_length=p.half, decoder_length=p.half,
                train_examples=p.train_examples, eval_examples=p.eval_examples,
                generate_examples=p.generate_examples, seed=seed)
        return self._data[seed]

    def prefix_loss(self, model) -> float:
        from ..training.train import evaluate
        arch = "encdec" if hasattr(model, "enc_spec") else "decoder"
        return float(evaluate(model, self.val()[arch])["loss"])

    # --- training units -----------------------------------------------------------------
    def _train(self, model, batches, steps: int, lr: float, run: str, *, schedule: str,
               warmup: int, teacher=None, eval_batches=None):
        from ..training.optim import OptimConfig
        from ..training.train import TrainConfig, train
        p = self.plan
        optim = OptimConfig(lr=lr, schedule=schedule, weight_decay=0.01, warmup_steps=warmup)
        cfg = TrainConfig(steps=steps, eval_every=p.eval_every if eval_batches else 0,
                          checkpoint_every=max(p.eval_every, 1), keep_checkpoints=2,
                          plot=False)
        return train(model, batches, optim=optim, config=cfg, run_dir=self.out / "runs" / run,
                     teacher=teacher, eval_batches=eval_batches, resume=True,
                     progress=self.progress, run_info={"study_unit": run})

    def parent(self, seed: int, big: bool = False):
        from ..text.batching import make_batcher
        from ..models import build_model
        from ..objectives import make_objective
        name = "big_parent" if big else "parent"

        def build():
            self.say(f"\n== seed {seed}: pre-train the {'big ' if big else ''}decoder-only "
                     f"parent ({self.plan.parent_steps} steps)")
            model = build_model(self.config(big), seed=seed + (1000 if big else 0))
            batches = make_batcher("train", make_objective("causal_lm", self.tok), self.tok,
                                   arch="decoder", **self.batch_kw(seed))
            steps = self.plan.parent_steps
            self._train(model, batches, steps, self.plan.lr, f"seed{seed}/{name}",
                        schedule="cosine", warmup=downstream.warmup_steps_for(steps))
            return model
        return self.saved(seed, name, build)

    def initial(self, seed: int, arm: str):
        """The model an arm starts its continued pre-training from."""
        from ..training.adapt import adapt
        from ..config import EncDecConfig
        from ..models import build_model
        if arm in ("dec", "dec_prefix"):
            return self.parent(seed)
        rng = np.random.default_rng([seed, 21])
        if arm == "ed_scratch":
            cfg = self.config()
            return build_model(EncDecConfig(encoder=cfg, decoder=cfg), seed=seed + 2000)
        if arm.startswith("ed_unbal"):
            warm = self.plan.warmup_steps if arm == "ed_unbal_warm" else 0
            return adapt(self.parent(seed, big=True), self.parent(seed), rng=rng,
                         warmup_steps=warm)
        model = adapt(self.parent(seed), rng=rng)
        return causal_encoder(model) if arm == "ed_causal" else model

    def pretrained(self, seed: int, arm: str, budget: str = "extra"):
        """An arm after its continued pre-training: budget "zero" (the starting point),
        "extra" (extra_steps) or "sweep" (sweep_steps; dec and ed_kd only)."""
        if budget == "zero":
            return self.initial(seed, arm)
        if budget == "sweep" and not (self.model_path(seed, f"{arm}@extra") /
                                      "config.json").is_file():
            self.pretrained(seed, arm, "extra")  # the first extra_steps come first
        steps = self.plan.sweep_steps if budget == "sweep" else self.plan.extra_steps
        return self.saved(seed, f"{arm}@{budget}", lambda: self._continue(seed, arm, steps))

    def _continue(self, seed: int, arm: str, steps: int):
        from ..text.batching import make_batcher
        from ..models import build_model
        from ..objectives import make_objective
        p, tok = self.plan, self.tok
        model = self.initial(seed, arm)
        kw = self.batch_kw(seed)
        teacher = None
        if arm == "dec":
            batches = make_batcher("train", make_objective("causal_lm", tok), tok,
                                   arch="decoder", **kw)
        elif arm == "dec_prefix":
            batches = make_batcher("train", make_objective("prefix_lm", tok), tok,
                                   arch="decoder", **kw)
        elif arm == "ed_ul2":
            batches = make_batcher("train", make_objective("ul2", tok), tok, arch="encdec",
                                   **kw)
        else:
            kd = arm == "ed_kd"
            batches = make_batcher("train", make_objective("prefix_lm", tok), tok,
                                   arch="encdec", with_teacher=kd, **kw)
            if kd:
                parent = self.parent(seed)
                teacher = build_model(parent.config, params=parent.params)
        arch = "decoder" if arm.startswith("dec") else "encdec"
        lr = p.lr if arm == "ed_scratch" else p.extra_lr
        self.say(f"\n== seed {seed}: {ARM_LABELS[arm]}: continued pre-training to step "
                 f"{steps}")
        self._train(model, batches, steps, lr, f"seed{seed}/{arm}", schedule="constant",
                    # the same warmup for the sweep's continuation of this run
                    warmup=downstream.warmup_steps_for(p.extra_steps),
                    teacher=teacher, eval_batches=self.val()[arch])
        return model

    def _text(self, ids) -> str:
        """Token ids as text, without EOS and padding."""
        return self.tok.decode([int(t) for t in ids if t not in (self.tok.eos_id,
                                                                  self.tok.pad_id)])

    # --- result units ------------------------------------------------------------------
    def pretrain_result(self, seed: int, arm: str) -> dict:
        """PrefixLM validation loss after the extra budget, and the curve along the way
        (to the sweep's end for the SWEEP_ARMS: call pretrained(..., "sweep") first)."""
        def run():
            model = self.pretrained(seed, arm, "extra")
            return {"prefix_val_loss": self.prefix_loss(model),
                    "prefix_val_loss_at_start": self.prefix_loss(self.initial(seed, arm)),
                    "curve": _val_curve(self.out / "runs" / f"seed{seed}" / arm)}
        return self.cached(f"seed{seed}/pretrain_{arm}", run)

    def finetune_result(self, seed: int, arm: str, budget: str = "extra") -> dict:
        """Fine-tuned metrics of an arm at a budget (generation model and probe)."""
        def run():
            p = self.plan
            arch = "decoder" if arm.startswith("dec") else "encdec"
            data = self.data(seed)
            model = self.pretrained(seed, arm, budget)
            runs = self.out / "runs" / f"seed{seed}"
            res = {"prefix_val_loss": self.prefix_loss(model)}
            self.say(f"\n== seed {seed}: {ARM_LABELS[arm]} (budget {budget}): fine-tune the "
                     f"classification probe")
            clf, _ = downstream.finetune_probe(model, data, steps=p.probe_steps,
                                               lr=p.finetune_lr, batch_size=p.batch_size,
                                               seed=seed, progress=self.progress,
                                               run_dir=runs / f"probe_{arm}@{budget}")
            res["genre_probe_accuracy"] = downstream.probe_accuracy(clf, data)
            self.say(f"\n== seed {seed}: {ARM_LABELS[arm]} (budget {budget}): fine-tune on "
                     f"reply + genre")
            downstream.finetune_generation(model, arch, data, steps=p.finetune_steps,
                                           lr=p.finetune_lr, batch_size=p.batch_size,
                                           seed=seed, progress=self.progress,
                                           run_dir=runs / f"finetune_{arm}@{budget}")
            ev = downstream.evaluate_generation(model, arch, data, new_tokens=p.new_tokens,
                                                progress=self.progress)
            res.update({k: v for k, v in ev.items() if k != "replies"})
            res["samples"] = [{"speech": self._text(e.inputs[data.prefix_len:]),
                               "reply": self._text(e.targets), "generated": self._text(r)}
                              for e, r in zip(data.reply_val[:3], ev["replies"][:3])]
            return res
        return self.cached(f"seed{seed}/finetune_{arm}@{budget}", run)

    def cost_result(self, arm: str) -> dict:
        """Inference FLOPs and latency of an arm's architecture (seed 0's model)."""
        def run():
            seed = self.plan.seeds[0]
            arch = "decoder" if arm.startswith("dec") else "encdec"
            model = self.pretrained(seed, arm, "extra")
            prompt = downstream.typical_prompt(self.data(seed))
            res = downstream.inference_cost(model, arch, prompt, self.plan.new_tokens,
                                            self.plan.latency_repeats)
            res["load_average"] = load_average()
            from ..config import count_parameters
            res["parameters"] = int(count_parameters(model.config))
            return res
        return self.cached(f"cost_{arm}", run)


def _read_metrics(run_dir: Path) -> list:
    """The records of a run's metrics.jsonl ([] when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _val_curve(run_dir: Path) -> list:
    """[(step, tokens seen, validation loss)] from a run's metrics.jsonl."""
    tokens, curve = {}, []
    for r in _read_metrics(run_dir):
        if "tokens" in r:
            tokens[r["step"]] = r["tokens"]
        if "val_loss" in r:
            curve.append([r["step"], tokens.get(r["step"], 0), r["val_loss"]])
    return curve


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- the claims ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One row of the claims table: arm a vs arm b on one metric."""

    experiment: str
    claim: str          # the paper's words
    evidence: str       # what the paper measured
    a: str              # the arm the claim favours
    b: str
    metric: str         # a key of the results
    better: str         # "higher" or "lower": the direction the claim predicts for a - b
    budget: str = "extra"
    stage: str = "finetune"   # "pretrain" or "finetune"


METRICS = {
    "prefix_val_loss": "PrefixLM validation loss",
    "reply_nll": "reply NLL / token (fine-tuned)",
    "reply_rouge_l": "reply ROUGE-L (fine-tuned)",
    "genre_rank_accuracy": "genre accuracy, rank classification",
    "genre_probe_accuracy": "genre accuracy, classification probe",
}

CLAIMS = (
    Claim("E1", "adaptation reduces the computation needed compared with pre-training "
          "from scratch", "Gemma 2 2B/9B and the mT5-sized suite", "ed_prefix", "ed_scratch",
          "prefix_val_loss", "lower", stage="pretrain"),
    Claim("E1", "(same, after fine-tuning)", "", "ed_prefix", "ed_scratch", "reply_nll",
          "lower"),
    Claim("E2", "under a similar inference budget, encoder-decoder LLMs achieve comparable "
          "(often better) pre-training performance", "2B-2B vs 2B: +1.8 PT",
          "ed_kd", "dec", "prefix_val_loss", "lower", stage="pretrain"),
    Claim("E2", "(same, against a decoder-only model trained on the same loss-bearing "
          "tokens)", "", "ed_kd", "dec_prefix", "prefix_val_loss", "lower", stage="pretrain"),
    Claim("E2", "but substantially better fine-tuning performance", "2B-2B vs 2B: +7 IT",
          "ed_kd", "dec", "reply_nll", "lower"),
    Claim("E2", "(same, generation quality)", "", "ed_kd", "dec", "reply_rouge_l", "higher"),
    Claim("E2", "(same, classification with the generation model)", "", "ed_kd", "dec",
          "genre_rank_accuracy", "higher"),
    Claim("E2", "the adapted encoder representation yields better results on SuperGLUE",
          "every scale", "ed_kd", "dec", "genre_probe_accuracy", "higher"),
    Claim("E3", "PrefixLM (+KD) is better for generation", "PrefixLM+KD vs UL2, IT",
          "ed_kd", "ed_ul2", "reply_nll", "lower"),
    Claim("E3", "UL2 is better for representation", "UL2 vs PrefixLM+KD, SuperGLUE",
          "ed_ul2", "ed_kd", "genre_probe_accuracy", "higher"),
    Claim("E3", "distillation helps PrefixLM", "PrefixLM+KD is the paper's default",
          "ed_kd", "ed_prefix", "reply_nll", "lower"),
    Claim("E4", "an unbalanced model (9B-2B) surpasses the balanced one (2B-2B) at about "
          "the same latency", "9B-2B vs 2B-2B: > +3", "ed_unbal_warm", "ed_prefix",
          "reply_nll", "lower"),
    Claim("E4", "(same, classification probe)", "", "ed_unbal_warm", "ed_prefix",
          "genre_probe_accuracy", "higher"),
    Claim("E4", "a cross-attention warmup helps unbalanced adaptation",
          "1K steps 62.5 vs none 61.8", "ed_unbal_warm", "ed_unbal_nowarm", "reply_nll",
          "lower"),
    Claim("E5", "a causal encoder loses to a bidirectional one", "-4.1 PT / -4.7 IT",
          "ed_prefix", "ed_causal", "prefix_val_loss", "lower", stage="pretrain"),
    Claim("E5", "(same, after fine-tuning)", "", "ed_prefix", "ed_causal", "reply_nll",
          "lower"),
    Claim("E5", "(same, classification probe)", "", "ed_prefix", "ed_causal",
          "genre_probe_accuracy", "higher"),
    Claim("E6", "adaptation converges fast: with a larger extra budget the adapted model "
          "pulls ahead", "converges within tens of billions of tokens", "ed_kd", "dec",
          "reply_nll", "lower", budget="sweep"),
    Claim("E6", "(same, PrefixLM loss)", "", "ed_kd", "dec", "prefix_val_loss", "lower",
          budget="sweep", stage="finetune"),
    Claim("E6", "(at budget 0: right after adaptation vs the parent, fine-tuned)", "",
          "ed_kd", "dec", "reply_nll", "lower", budget="zero"),
)


def _value(results: dict, seed: int, arm: str, c: Claim) -> float:
    if c.stage == "pretrain":
        return results["pretrain"][f"seed{seed}"][arm][c.metric]
    return results["finetune"][f"seed{seed}"][f"{arm}@{c.budget}"][c.metric]


def claims_table(results: dict, seeds) -> list:
    rows = []
    for c in CLAIMS:
        a = [_value(results, s, c.a, c) for s in seeds]
        b = [_value(results, s, c.b, c) for s in seeds]
        test = paired_test(a, b)
        rows.append({"claim": c, "test": test, "verdict": verdict(test, c.better)})
    return rows


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def claims_markdown(rows: list) -> str:
    lines = ["| exp. | claim (the paper) | paper's evidence | our setting | our numbers "
             "(mean ± sd over seeds; paired t-test) | verdict |", "|---|---|---|---|---|---|"]
    for r in rows:
        c, t = r["claim"], r["test"]
        budget = {"zero": "budget 0", "extra": "", "sweep": "larger budget"}[c.budget]
        setting = f"{ARM_LABELS[c.a]} vs {ARM_LABELS[c.b]}: {METRICS[c.metric]}" + \
            (f", {budget}" if budget else "")
        claimed = "< 0" if c.better == "lower" else "> 0"  # the sign the claim predicts
        nums = (f"{_pm(t['mean_a'], t['std_a'])} vs {_pm(t['mean_b'], t['std_b'])}; "
                f"diff {t['mean_diff']:+.3f} (claim: {claimed}), p = {t['p']:.3f} "
                f"(n = {t['n']})")
        lines.append(f"| {c.experiment} | {c.claim} | {c.evidence} | {setting} | {nums} | "
                     f"**{r['verdict']}** |")
    return "\n".join(lines)


def arms_markdown(results: dict, seeds, base: dict) -> str:
    """Every arm's mean ± sd per metric, with the baselines and the inference costs."""
    keys = ["prefix_val_loss", "reply_nll", "reply_rouge_l", "genre_rank_accuracy",
            "genre_probe_accuracy"]
    head = ["arm", "PrefixLM val loss (pre-training)"] + [METRICS[k] for k in keys[1:]] + \
        ["parameters", "prompt GFLOPs", "GFLOPs / generated token", "ms / generated token"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        pre = [results["pretrain"][f"seed{s}"][arm]["prefix_val_loss"] for s in seeds]
        cells = [ARM_LABELS[arm], _pm(np.mean(pre), np.std(pre, ddof=1))]
        for k in keys[1:]:
            v = [results["finetune"][f"seed{s}"][f"{arm}@extra"][k] for s in seeds]
            cells.append(_pm(np.mean(v), np.std(v, ddof=1)))
        cost = results["cost"][arm]
        cells += [f"{cost['parameters']:,}", f"{cost['prompt_gflops']:.4f}",
                  f"{cost['gflops_per_generated_token']:.5f}",
                  f"{cost['ms_per_generated_token']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| baseline | | unigram " + f"{np.mean(base['reply_nll_unigram']):.3f} | "
                 f"copy the input {np.mean(base['reply_rouge_l_copy_input']):.3f} | "
                 f"chance {base['genre_chance'][0]:.3f}, majority "
                 f"{np.mean(base['genre_majority_class']):.3f} | (same) | | | | |")
    return "\n".join(lines)


def sweep_markdown(results: dict, seeds) -> str:
    """E6: PrefixLM validation loss of ed_kd and dec along the budget, by tokens seen and
    by loss-bearing tokens; fine-tuned reply NLL and probe accuracy at the three budgets.

    Loss-bearing tokens: causal LM puts a loss on every position of a window, PrefixLM on
    its second half only, so dec after u/2 updates has had as many loss-bearing tokens as
    ed_kd after u."""
    lines = ["| budget (updates) | adapted PrefixLM+KD | decoder-only, same tokens seen | "
             "decoder-only, same loss-bearing tokens (half the updates) |", "|---|---|---|---|"]
    curves = {arm: [dict((c[0], c[2]) for c in results["pretrain"][f"seed{s}"][arm]["curve"])
                    for s in seeds] for arm in ("ed_kd", "dec")}
    for arm in curves:  # budget 0: the model each arm starts from (the adapted model, M)
        for c, s in zip(curves[arm], seeds):
            c.setdefault(0, results["pretrain"][f"seed{s}"][arm]["prefix_val_loss_at_start"])
    steps = sorted(set.intersection(*[set(c) for c in curves["ed_kd"]]))
    for st in steps:
        ed = [c[st] for c in curves["ed_kd"]]
        dec = [c.get(st) for c in curves["dec"]]
        half = [c.get(st // 2) if st % 2 == 0 else None for c in curves["dec"]]
        fmt = (lambda v: _pm(np.mean(v), np.std(v, ddof=1)) if None not in v else "")
        lines.append(f"| {st} | {fmt(ed)} | {fmt(dec)} | {fmt(half)} |")
    lines += ["", "(A blank cell: the decoder-only run was not evaluated at that update; it is "
              "evaluated every eval_every updates.)"]
    lines += ["", "| budget | adapted PrefixLM+KD reply NLL | decoder-only reply NLL | "
              "adapted probe accuracy | decoder-only probe accuracy |", "|---|---|---|---|---|"]
    for budget in ("zero", "extra", "sweep"):
        cells = []
        for key in ("reply_nll", "genre_probe_accuracy"):
            for arm in ("ed_kd", "dec"):
                v = [results["finetune"][f"seed{s}"][f"{arm}@{budget}"][key] for s in seeds]
                cells.append(_pm(np.mean(v), np.std(v, ddof=1)))
        plan = results.get("plan", {})
        n = {"zero": "0", "extra": f"{plan.get('extra_steps', 'extra_steps')} updates",
             "sweep": f"{plan.get('sweep_steps', 'sweep_steps')} updates"}[budget]
        lines.append(f"| {n} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def reading(rows: list) -> str:
    """The verdicts in plain words, one line per experiment."""
    names = {"E1": "Adaptation vs training from scratch", "E2": "Adapted encoder-decoder vs "
             "its decoder-only parent", "E3": "Objectives", "E4": "Unbalanced adaptation",
             "E5": "Bidirectional vs causal encoder", "E6": "The budget sweep"}
    lines = []
    for exp, title in names.items():
        parts = []
        for r in rows:
            c, t = r["claim"], r["test"]
            if c.experiment != exp:
                continue
            what = f"{ARM_LABELS[c.a]} vs {ARM_LABELS[c.b]}, {METRICS[c.metric]}" + \
                {"zero": " at budget 0", "extra": "", "sweep": " at the larger budget"}[c.budget]
            parts.append(f"{r['verdict']} on {what} ({t['mean_diff']:+.3f}, p = {t['p']:.2f})")
        lines.append(f"- **{exp}, {title}:** " + "; ".join(parts) + ".")
    counts = {v: sum(r["verdict"] == v for r in rows)
              for v in ("reproduced", "not reproduced", "inconclusive")}
    lines.append(f"\nIn all: {counts['reproduced']} reproduced, {counts['not reproduced']} "
                 f"not reproduced (the opposite direction, significant), "
                 f"{counts['inconclusive']} inconclusive (p >= 0.05 with "
                 f"{rows[0]['test']['n']} seeds). Each row is its own test at p < 0.05, with "
                 f"no correction for testing {len(rows)} claims: if no claim held either way, "
                 f"about {0.05 * len(rows):.0f} of them would still come out significant "
                 f"by chance.")
    return "\n".join(lines)


def plot_curves(results: dict, seeds, path: Path) -> Optional[Path]:
    """PrefixLM validation loss vs tokens seen per experiment (seed means)."""
    from ..plots import new_figure
    fig = new_figure((12, 7))
    if fig is None:
        return None
    groups = [("E1 adapted vs scratch", ("ed_prefix", "ed_scratch")),
              ("E2/E6 adapted vs decoder-only", ("ed_kd", "dec", "dec_prefix")),
              ("E3 objectives", ("ed_kd", "ed_prefix", "ed_ul2")),
              ("E4 unbalanced vs balanced", ("ed_prefix", "ed_unbal_warm", "ed_unbal_nowarm")),
              ("E5 encoder masks", ("ed_prefix", "ed_causal"))]
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, arms) in zip(axes, groups):
        for arm in arms:
            cs = [results["pretrain"][f"seed{s}"][arm]["curve"] for s in seeds]
            n = min(len(c) for c in cs)
            if n == 0:
                continue
            x = [c[1] for c in cs[0][:n]]
            y = np.mean([[c[2] for c in cc[:n]] for cc in cs], axis=0)
            ax.plot(np.array(x) / 1e6, y, "o-", markersize=3, label=ARM_LABELS[arm])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("tokens seen in continued pre-training (M)")
        ax.set_ylabel("PrefixLM validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_quality_vs_flops(results: dict, seeds, path: Path) -> Optional[Path]:
    """Fine-tuned reply NLL and probe accuracy against inference GFLOPs per request."""
    from ..plots import new_figure
    fig = new_figure((10, 4))
    if fig is None:
        return None
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("reply_nll", "genre_probe_accuracy")):
        for arm in ARMS:
            v = [results["finetune"][f"seed{s}"][f"{arm}@extra"][key] for s in seeds]
            x = results["cost"][arm]["total_gflops"]
            ax.errorbar([x], [np.mean(v)], yerr=[np.std(v, ddof=1)], fmt="o", capsize=3,
                        label=ARM_LABELS[arm])
        ax.set_xlabel("inference GFLOPs per request (same prompt, same forced length)")
        ax.set_ylabel(METRICS[key])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


# --- the command -----------------------------------------------------------------------------------

def seed_units(study: "Study", s: int, on_unit: Callable[[], None] = lambda: None) -> tuple:
    """Every unit of seed s (cached): (pretrain results, finetune results)."""
    pre, ft = {}, {}
    for arm in ARMS:
        if arm in SWEEP_ARMS:  # E6: these continue to sweep_steps (the curve goes on)
            study.pretrained(s, arm, "sweep")
        pre[arm] = study.pretrain_result(s, arm)
        ft[f"{arm}@extra"] = study.finetune_result(s, arm, "extra")
        on_unit()
    for arm in SWEEP_ARMS:
        for budget in ("zero", "sweep"):
            ft[f"{arm}@{budget}"] = study.finetune_result(s, arm, budget)
            on_unit()
    return pre, ft


UNITS_PER_SEED = len(ARMS) + 4


def _run_workers(out: Path, plan: StudyPlan, jobs: int, progress: bool) -> None:
    """The seeds in `jobs` parallel worker processes, each single-threaded (one BLAS and
    one Numba thread: on 2 cores, two single-threaded processes get more done than one
    two-threaded one, and do not fight over the cores). Logs: out/logs/seed<S>.log."""
    import subprocess
    from tqdm.auto import tqdm
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    (out / "logs").mkdir(exist_ok=True)
    pending, running = list(plan.seeds), []
    done_units = lambda: sum(1 for s in plan.seeds  # noqa: E731
                             for _ in (out / "results" / f"seed{s}").glob("finetune_*.json")) \
        if (out / "results").is_dir() else 0
    bar = tqdm(total=UNITS_PER_SEED * len(plan.seeds), desc=f"study units ({jobs} workers)",
               disable=not progress, file=sys.stderr, initial=done_units())
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            log = open(out / "logs" / f"seed{s}.log", "a")
            cmd = [sys.executable, "-m", "mini_encdec.experiments.study", "--out", str(out),
                   "--worker-seed", str(s), "--no-progress"]  # the plan: study_plan.json
            running.append((s, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                env=env), log))
        time.sleep(2.0)
        for item in list(running):
            s, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append(s)
        bar.n = done_units()
        bar.refresh()
    bar.close()
    if failed:
        raise RuntimeError(f"study: the worker of seed(s) {failed} failed; see "
                           f"{out / 'logs'}; rerun with --resume to continue")


def run_study(out: Path, plan: StudyPlan, progress: bool = True, command: str = "",
              jobs: int = 1) -> dict:
    """Run (or resume) every unit of the protocol and write the reports."""
    from ..storage.checkpoint import atomic_write_json
    t0 = time.perf_counter()
    if jobs > 1:
        _run_workers(out, plan, jobs, progress)
    study = Study(out, plan, progress and jobs == 1)
    seeds = plan.seeds
    results: dict = {"pretrain": {}, "finetune": {}, "cost": {}, "baselines": {}}
    from tqdm.auto import tqdm
    bar = tqdm(total=UNITS_PER_SEED * len(seeds) + len(ARMS), desc="study units",
               disable=not progress, file=sys.stderr)
    for s in seeds:
        pre, ft = seed_units(study, s, lambda: bar.update(1))
        results["pretrain"][f"seed{s}"], results["finetune"][f"seed{s}"] = pre, ft
        base = downstream.baselines(study.data(s))
        for k, v in base.items():
            results["baselines"].setdefault(k, []).append(v)
    for arm in ARMS:
        results["cost"][arm] = study.cost_result(arm)
        bar.update(1)
    bar.close()
    rows = claims_table(results, seeds)
    results["claims"] = [{"experiment": r["claim"].experiment, "claim": r["claim"].claim,
                          "a": r["claim"].a, "b": r["claim"].b, "metric": r["claim"].metric,
                          "budget": r["claim"].budget, "better": r["claim"].better,
                          "test": r["test"], "verdict": r["verdict"]} for r in rows]
    results["plan"] = dataclasses.asdict(plan)
    results["machine"] = machine_info()
    results["command"] = command
    results["seconds_this_call"] = time.perf_counter() - t0
    results["seconds_all_units"] = _unit_seconds(out)
    atomic_write_json(out / "results.json", results)
    curves = plot_curves(results, seeds, out / "loss_curves.png")
    qf = plot_quality_vs_flops(results, seeds, out / "quality_vs_flops.png")
    md = _report(results, rows, seeds, curves, qf)
    (out / "results.md").write_text(md)
    return results


def _unit_seconds(out: Path) -> float:
    total = 0.0
    for p in (out / "results").rglob("*.json"):
        total += float(json.loads(p.read_text()).get("seconds", 0.0))
    return total


def machine_info() -> dict:
    import numpy
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
            "numpy": numpy.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_end": load_average()}


def _report(results: dict, rows: list, seeds, curves, qf) -> str:
    p = results["plan"]
    m = results["machine"]
    parts = [
        "# mini_encdec study: the paper's claims at tiny scale", "",
        f"Command: `{results['command']}`  ",
        f"Date {m['date']}; {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, NumPy "
        f"{m['numpy']}; wall-clock time of this invocation "
        f"{results['seconds_this_call'] / 60:.1f} min (a resumed study: only the last "
        f"invocation); time inside the cached result units "
        f"{results['seconds_all_units'] / 60:.1f} min (not counting the parent's pre-training "
        f"and the E6 arms' continued pre-training, which run before those units); load "
        f"average at the end "
        f"{m['load_average_at_end']}.", "",
        f"Setting: preset `{p['preset']}` parents ({p['parent_steps']} causal-LM updates), "
        f"{len(seeds)} seeds, windows of {2 * p['half']} tokens, batch {p['batch_size']}, "
        f"extra budget {p['extra_steps']} updates (sweep {p['sweep_steps']}), fine-tuning "
        f"{p['finetune_steps']} updates, probe {p['probe_steps']} updates. The protocol is in "
        f"`mini_encdec/experiments/study.py`'s docstring, fixed before the results were seen.", "",
        "## Claims", "", claims_markdown(rows), "", "### Reading", "", reading(rows), "",
        "## Every arm (after the extra budget; mean ± sd over seeds)", "",
        arms_markdown(results, seeds, results["baselines"]), "",
        "Costs: one request at batch 1 with the same prompt and the same forced number of "
        "generated tokens; latency measured on seed 0's models (load average "
        f"{results['cost']['dec'].get('load_average')}).", "",
        "## E6: the budget sweep", "", sweep_markdown(results, seeds), "",
    ]
    if curves:
        parts += [f"![loss curves]({curves.name})", ""]
    if qf:
        parts += [f"![quality vs FLOPs]({qf.name})", ""]
    return "\n".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a smoke-test budget (2 seeds, a few updates each; under a minute)")
    p.add_argument("--out", default=None,
                   help="study directory (default runs/study-<time>, or runs/study-quick-"
                        "<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the study in --out (its finished units are reused)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out, once the new study is complete")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (at least 2)")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the seeds in this many parallel single-threaded worker "
                        "processes (default 1: one process, the default threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--worker-seed", type=int, default=None, help=argparse.SUPPRESS)


def plan_from_args(args) -> StudyPlan:
    plan = SCALES["quick" if args.quick else "full"]
    if args.seeds is not None:
        if args.seeds < 2:
            raise UsageError(f"--seeds: expected an integer >= 2 (a paired test needs "
                             f"two seeds), got {args.seeds}")
        plan = dataclasses.replace(plan, seeds=tuple(range(args.seeds)))
    return plan


def _check_resume(out: Path, plan: StudyPlan) -> None:
    """--resume continues only a study of the same plan."""
    marker = out / "study_plan.json"
    if not marker.is_file():
        raise UsageError(f"--resume: {out} holds no study (no study_plan.json)")
    if json.loads(marker.read_text()) != _plan_dict(plan):
        raise UsageError(f"--resume: {out} was run with another plan (see its "
                         f"study_plan.json); use the same --quick/--seeds")


def _plan_dict(plan: StudyPlan) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(plan)))


def _plan_of(out: Path) -> StudyPlan:
    """The plan a study directory was started with (study_plan.json)."""
    d = json.loads((out / "study_plan.json").read_text())
    d["seeds"] = tuple(d["seeds"])
    d["big_overrides"] = tuple(tuple(x) for x in d["big_overrides"])
    return StudyPlan(**d)


def run(args) -> int:
    if args.worker_seed is not None:  # one seed's units, for run_study's workers
        out = Path(args.out)
        seed_units(Study(out, _plan_of(out), progress=not args.no_progress), args.worker_seed)
        return 0
    from ..storage.checkpoint import atomic_write_json
    from ..storage.safe_output import run_directory
    plan = plan_from_args(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    if args.out == "":
        raise UsageError("--out '': expected a directory path")
    default = f"study-{'quick-' if args.quick else ''}{time.strftime('%Y%m%d-%H%M%S')}"
    target = Path(args.out) if args.out else Path("runs") / default
    if args.resume:
        _check_resume(target, plan)
    command = "python -m mini_encdec study" + (" --quick" if args.quick else "") + \
        (f" --seeds {args.seeds}" if args.seeds else "") + \
        (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    # a new study needs a new or empty --out (--overwrite: replaced once complete); a
    # resumed one only adds to its own directory (safe_output.run_directory)
    with run_directory(target, overwrite=args.overwrite, resume=args.resume,
                       what="--out") as rd:
        out = rd.path
        if not args.resume:
            atomic_write_json(out / "study_plan.json", _plan_dict(plan))
        rd.started()
        results = run_study(out, plan, progress=not args.no_progress, command=command,
                            jobs=args.jobs)
    rows = [r for r in results["claims"]]
    n = {v: sum(r["verdict"] == v for r in rows) for v in
         ("reproduced", "not reproduced", "inconclusive")}
    print(f"\nstudy: {n['reproduced']} reproduced, {n['not reproduced']} not reproduced, "
          f"{n['inconclusive']} inconclusive; {target / 'results.md'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mini_encdec study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
