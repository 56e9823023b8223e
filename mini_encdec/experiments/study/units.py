"""The study's units: the models of the protocol (protocol.py) built, trained and
evaluated once each, every finished one cached under the study directory, so an
interrupted study resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .. import downstream
from ..evalsets import play_streams, spread_eval_batches
from ...config import EncDecConfig, count_parameters, preset
from ...models import build_model
from ...objectives import make_objective
from ...storage.lock import LockedError, hold
from ...storage.checkpoint import (CHECKPOINTS_DIR, atomic_write_json, latest_checkpoint,
                                  load_model, save_model, step_dir_name)
from ...text.batching import make_batcher
from ...text.rep_tasks import TASKS
from ...text.tokenizer import load_tokenizer
from ...training.adapt import adapt
from ...training.optim import OptimConfig
from ...training.schedules import wsd_decay_steps
from ...training.train import TrainConfig, evaluate, train
from .protocol import ARM_LABELS, ARMS, SWEEP_ARMS, StudyPlan
from .representation import RepData, build_rep_data, probe_scores, rep_baselines
from .repetition import mean_repetition
from .ul2_modes import (CLASSIFICATION_MODE, GENERATION_MODE, MODE_ARMS, rep_data_with_mode,
                        task_data_with_mode)

PARENT_WAIT = 20.0        # seconds between looks at a shared parent another worker trains
LOSS_BEARING_SAMPLE = 20  # batches per objective when matching UL2's batch size

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
        self.out, self.plan, self.progress = out, plan, progress
        self.tok = load_tokenizer()
        self._data: dict = {}
        self._val: Optional[dict] = None
        self._rep: dict = {}
        self._ul2_batch: Optional[int] = None

    # --- bookkeeping ---------------------------------------------------------------------
    def say(self, *a) -> None:
        if self.progress:
            print(*a, flush=True)

    def cached(self, name: str, fn: Callable[[], dict]) -> dict:
        """fn()'s JSON result, computed once: results/<name>.json."""
        path = self.out / "results" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        t0 = time.perf_counter()
        res = fn()
        res["seconds"] = time.perf_counter() - t0
        res["finished_at"] = time.time()  # the study's wall-clock time (runner.timeline)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, res)
        return res

    def model_path(self, seed: int, name: str) -> Path:
        return self.out / "models" / f"seed{seed}" / name

    def saved(self, seed: int, name: str, build: Callable[[], object]):
        """The model `name` of `seed`, built by `build()` once and then loaded."""
        path = self.model_path(seed, name)
        if (path / "config.json").is_file():
            model = load_model(path)
        else:
            model = build()
            save_model(path, model.config, model.params)
        return causal_encoder(model) if name.startswith("ed_causal") else model

    # --- shared inputs ------------------------------------------------------------------
    def config(self, big: bool = False):
        over = dict(self.plan.big_overrides) if big else {}
        return preset(self.plan.preset, vocab_size=self.tok.vocab_size, **over)

    def batch_kw(self, seed: int) -> dict:
        p = self.plan
        return dict(batch_size=p.batch_size, encoder_length=p.half, decoder_length=p.half,
                    seed=seed)

    def ul2_batch_size(self) -> int:
        """UL2's batch size that matches PrefixLM's loss-bearing (target) tokens per update:
        round(batch_size * PrefixLM targets per example / UL2 targets per example), the
        means over LOSS_BEARING_SAMPLE batches of each (seed 0; the same for every seed)."""
        if self._ul2_batch is None:
            def targets_per_example(name: str) -> float:
                b = make_batcher("train", make_objective(name, self.tok), self.tok,
                                 arch="encdec", **self.batch_kw(0))
                return float(np.mean([np.count_nonzero(b.next_batch()["labels"] != -100)
                                      for _ in range(LOSS_BEARING_SAMPLE)])) / b.batch_size
            ratio = targets_per_example("prefix_lm") / targets_per_example("ul2")
            self._ul2_batch = max(1, round(self.plan.batch_size * ratio))
        return self._ul2_batch

    def val(self) -> dict:
        """The PrefixLM evaluation batches of each architecture: the same windows, spread
        evenly over every play of plan.eval_split (evalsets.py)."""
        if self._val is None:
            p = self.plan
            streams = play_streams(p.eval_split, self.tok)
            per_play = max(1, p.eval_batches * p.batch_size // len(streams))
            prefix = make_objective("prefix_lm", self.tok)
            self._val = {arch: spread_eval_batches(
                streams, prefix, per_play=per_play, batch_size=p.batch_size,
                encoder_length=p.half, decoder_length=p.half, arch=arch, seed=0,
                pad_id=self.tok.pad_id, bos_id=self.tok.bos_id)
                for arch in ("encdec", "decoder")}
        return self._val

    def data(self, seed: int, mode: Optional[str] = None) -> downstream.TaskData:
        """The fine-tuning and evaluation examples of `seed`; with a UL2 `mode`, its token
        before every input (ul2_modes.py)."""
        if (seed, mode) not in self._data:
            p = self.plan
            self._data[seed, mode] = downstream.build_task_data(
                self.tok, encoder_length=p.half, decoder_length=p.half,
                train_examples=p.train_examples, eval_examples=p.eval_examples,
                generate_examples=p.generate_examples, seed=seed, eval_split=p.eval_split,
                genre_eval_examples=p.genre_eval_examples) if mode is None else \
                task_data_with_mode(self.tok, p, seed, mode)
        return self._data[seed, mode]

    def rep_data(self, mode: Optional[str] = None) -> RepData:
        """The representation tasks' examples (the same for every seed and arm; with a
        UL2 `mode`, its token before every input)."""
        if mode not in self._rep:
            self._rep[mode] = build_rep_data(self.plan, self.tok) if mode is None else \
                rep_data_with_mode(self.tok, self.plan, mode, base=self.rep_data())
        return self._rep[mode]

    def rep_baselines(self) -> dict:
        """Chance, majority and bag-of-words accuracy of every representation task (one
        cached result per task)."""
        return {t: self.cached(f"rep_baselines_{t}", lambda t=t: rep_baselines(
            self.rep_data(), self.tok.vocab_size, t)) for t in self.plan.rep_tasks}

    def prefix_loss(self, model) -> float:
        arch = "encdec" if hasattr(model, "enc_spec") else "decoder"
        return float(evaluate(model, self.val()[arch])["loss"])

    # --- training units -----------------------------------------------------------------
    def _train(self, model, batches, steps: int, lr: float, run: str, *, warmup: int,
               total: int, teacher=None, eval_batches=None):
        """Train on run dir `run` to update `steps` of a warmup-stable-decay schedule of
        `total` updates (steps < total: a stop in the stable phase, where a cooldown
        branch may start; schedules.wsd)."""
        p = self.plan
        optim = OptimConfig(lr=lr, schedule="wsd", weight_decay=0.01, warmup_steps=warmup,
                            total_steps=total, decay_steps=wsd_decay_steps(total),
                            min_lr_ratio=0.0)
        cfg = TrainConfig(steps=steps, eval_every=p.eval_every if eval_batches else 0,
                          checkpoint_every=max(p.eval_every, 1), keep_checkpoints=2,
                          plot=False)
        return train(model, batches, optim=optim, config=cfg, run_dir=self.out / "runs" / run,
                     teacher=teacher, eval_batches=eval_batches, resume=True,
                     progress=self.progress, run_info={"study_unit": run})

    def parent(self, seed: int, big: bool = False):
        """The decoder-only parent (big: E4's big parent) of `seed`: with
        plan.shared_parents one model, trained once with plan.parent_seed, for every seed."""
        name = "big_parent" if big else "parent"
        p = self.plan
        if p.shared_parents:
            seed, where = p.parent_seed, "shared"
        else:
            where = f"seed{seed}"

        def build():
            self.say(f"\n== {where}: pre-train the {'big ' if big else ''}decoder-only "
                     f"parent ({p.parent_steps} steps)")
            model = build_model(self.config(big), seed=seed + (1000 if big else 0))
            batches = make_batcher("train", make_objective("causal_lm", self.tok), self.tok,
                                   arch="decoder", **self.batch_kw(seed))
            self._train(model, batches, p.parent_steps, p.lr, f"{where}/{name}",
                        warmup=downstream.warmup_steps_for(p.parent_steps),
                        total=p.parent_steps)
            return model
        path = self.out / "models" / where / name
        if (path / "config.json").is_file():
            return load_model(path)
        if p.shared_parents:  # one trainer per shared parent; a seed worker waits for it
            while True:
                try:
                    with hold(path, what="the shared parent"):
                        if (path / "config.json").is_file():
                            return load_model(path)
                        return self._train_parent(path, name, where, build)
                except LockedError as e:
                    self.say(f"{e}: waiting")
                    time.sleep(PARENT_WAIT)
        return self._train_parent(path, name, where, build)

    def _train_parent(self, path: Path, name: str, where: str, build: Callable):
        t0 = time.perf_counter()
        model = build()
        save_model(path, model.config, model.params)
        record = self.out / "results" / where / f"{name}_training.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record,
                          {"seconds": time.perf_counter() - t0, "finished_at": time.time(),
                           "load_average": load_average()})
        return model

    def parent_result(self, big: bool = False) -> dict:
        """A parent's quality: PrefixLM and causal-LM loss on the evaluation plays (the
        PrefixLM windows of val()), and its parameters (shared parents only)."""
        name = "big_parent" if big else "parent"

        def run():
            model = self.parent(self.plan.parent_seed, big)
            causal = make_objective("causal_lm", self.tok)
            p = self.plan
            streams = play_streams(p.eval_split, self.tok)
            windows = spread_eval_batches(
                streams, causal, per_play=max(1, p.eval_batches * p.batch_size // len(streams)),
                batch_size=p.batch_size, encoder_length=p.half, decoder_length=p.half,
                arch="decoder", seed=0, pad_id=self.tok.pad_id, bos_id=self.tok.bos_id)
            trained = self.out / "results" / "shared" / f"{name}_training.json"
            return {"prefix_val_loss": self.prefix_loss(model),
                    "train_seconds": json.loads(trained.read_text())["seconds"]
                    if trained.is_file() else None,
                    "causal_val_loss": float(evaluate(model, windows)["loss"]),
                    "parameters": int(count_parameters(model.config)),
                    "steps": p.parent_steps,
                    "curve": read_metrics(self.out / "runs" / "shared" / name)[-3:]}
        return self.cached(f"shared/{name}", run)

    def initial(self, seed: int, arm: str):
        """The model an arm starts its continued pre-training from."""
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
        """Continued pre-training of `arm` to an annealed budget of `steps` updates.

        The arm's stable run (runs/seed<S>/<arm>) is the WSD run of its largest budget
        (sweep_steps for the SWEEP_ARMS, else extra_steps). A smaller budget B is a
        cooldown branch (runs/seed<S>/<arm>@cooldown<B>): the stable run's checkpoint at
        B - decay(B), then decay(B) updates of the cooldown. ed_unbal_warm's
        cross-attention warmup comes on top of its budget (plan.warmup_steps)."""
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
        elif arm == "ed_ul2":  # matched to PrefixLM on loss-bearing tokens per update
            batches = make_batcher("train", make_objective("ul2", tok), tok, arch="encdec",
                                   **dict(kw, batch_size=self.ul2_batch_size()))
        else:
            kd = arm == "ed_kd"
            batches = make_batcher("train", make_objective("prefix_lm", tok), tok,
                                   arch="encdec", with_teacher=kd, **kw)
            if kd:
                parent = self.parent(seed)
                teacher = build_model(parent.config, params=parent.params)
        arch = "decoder" if arm.startswith("dec") else "encdec"
        lr = p.extra_lr(arm)
        self.say(f"\n== seed {seed}: {ARM_LABELS[arm]}: continued pre-training to step "
                 f"{steps}")
        extra = p.warmup_steps if arm == "ed_unbal_warm" else 0  # outside the budget
        largest = (p.sweep_steps if arm in SWEEP_ARMS else p.extra_steps) + extra
        steps += extra
        kw = dict(warmup=downstream.warmup_steps_for(p.extra_steps), teacher=teacher,
                  eval_batches=self.val()[arch])
        stable = f"seed{seed}/{arm}"
        if steps == largest:
            self._train(model, batches, steps, lr, stable, total=largest, **kw)
            return model
        branch_at = steps - wsd_decay_steps(steps)
        branch = f"{stable}@cooldown{steps}"
        if latest_checkpoint(self.out / "runs" / branch / CHECKPOINTS_DIR) is None:
            self._train(model, batches, branch_at, lr, stable, total=largest, **kw)
            src = self.out / "runs" / stable / CHECKPOINTS_DIR / step_dir_name(branch_at)
            if not src.is_dir():
                raise RuntimeError(f"study: the cooldown branch {branch} needs the stable "
                                   f"run's checkpoint {src}, which is gone; delete "
                                   f"{self.out / 'runs' / stable} to retrain it")
            shutil.copytree(src, self.out / "runs" / branch / CHECKPOINTS_DIR / src.name)
        self._train(model, batches, steps, lr, branch, total=steps, **kw)
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
            extra = {"batch_size": self.ul2_batch_size()} if arm == "ed_ul2" else {}
            return {**extra, "prefix_val_loss": self.prefix_loss(model),
                    "prefix_val_loss_at_start": self.prefix_loss(self.initial(seed, arm)),
                    "curve": _val_curve(self.out / "runs" / f"seed{seed}" / arm)}
        return self.cached(f"seed{seed}/pretrain_{arm}", run)

    def finetune_result(self, seed: int, arm: str, budget: str = "extra") -> dict:
        """Fine-tuned metrics of an arm at a budget (the generation model; the genre probe
        when plan.genre)."""
        def run():
            p = self.plan
            arch = "decoder" if arm.startswith("dec") else "encdec"
            modes = arm in MODE_ARMS  # UL2's mode tokens: [S2S] generation, [NLU] probes
            data = self.data(seed, GENERATION_MODE if modes else None)
            probe_data = self.data(seed, CLASSIFICATION_MODE if modes else None)
            model = self.pretrained(seed, arm, budget)
            runs = self.out / "runs" / f"seed{seed}"
            res = {"prefix_val_loss": self.prefix_loss(model)}
            if p.genre:
                self.say(f"\n== seed {seed}: {ARM_LABELS[arm]} (budget {budget}): fine-tune "
                         f"the genre probe")
                clf, _ = downstream.finetune_probe(model, probe_data, steps=p.probe_steps,
                                                   lr=p.finetune_lr, batch_size=p.batch_size,
                                                   seed=seed, progress=self.progress,
                                                   run_dir=runs / f"probe_{arm}@{budget}")
                res["genre_probe_accuracy"] = downstream.probe_accuracy(clf, probe_data)
            self.say(f"\n== seed {seed}: {ARM_LABELS[arm]} (budget {budget}): fine-tune on "
                     f"reply + genre")
            downstream.finetune_generation(model, arch, data, steps=p.finetune_steps,
                                           lr=p.finetune_lr, batch_size=p.batch_size,
                                           seed=seed, progress=self.progress,
                                           run_dir=runs / f"finetune_{arm}@{budget}")
            if budget != "extra":  # only reply NLL is claimed at the other budgets (E6)
                data = dataclasses.replace(data, generate_examples=0)
            ev = downstream.evaluate_generation(model, arch, data, new_tokens=p.new_tokens,
                                                genre=p.genre, progress=self.progress)
            res.update({k: v for k, v in ev.items() if k != "replies"})
            gen = data.reply_val[:data.generate_examples]
            if gen:
                res["reply_repetition"] = mean_repetition(ev["replies"], data.eos_id)
                res["reply_repetition_of_references"] = mean_repetition(
                    [e.targets for e in gen], data.eos_id)
            res["samples"] = [{"speech": self._text(e.inputs[data.prefix_len:]),
                               "reply": self._text(e.targets), "generated": self._text(r)}
                              for e, r in zip(gen[:3], ev["replies"][:3])]
            return res
        return self.cached(f"seed{seed}/finetune_{arm}@{budget}", run)

    def rep_result(self, seed: int, arm: str) -> dict:
        """The representation probes of an arm's model after the extra budget
        (representation.py); the UL2 arm's probes read [NLU] first."""
        def run():
            self.say(f"\n== seed {seed}: {ARM_LABELS[arm]}: representation probes "
                     f"({', '.join(self.plan.rep_tasks)})")
            model = self.pretrained(seed, arm, "extra")
            rep = self.rep_data(CLASSIFICATION_MODE if arm in MODE_ARMS else None)
            return probe_scores(model, rep, self.plan, progress=self.progress)
        return self.cached(f"seed{seed}/rep_{arm}", run)

    def cost_result(self, arm: str) -> dict:
        """Inference FLOPs and latency of an arm's architecture (seed 0's model)."""
        def run():
            seed = self.plan.seeds[0]
            arch = "decoder" if arm.startswith("dec") else "encdec"
            model = self.pretrained(seed, arm, "extra")
            prompt = downstream.typical_prompt(self.data(seed))
            p = self.plan
            attempts = []  # (load average before, cost): re-measured while the machine is busy
            for k in range(p.latency_attempts):
                if k:
                    time.sleep(p.latency_wait)
                load = (load_average() or [float("nan")])[0]
                attempts.append((load, downstream.inference_cost(
                    model, arch, prompt, p.new_tokens, p.latency_repeats)))
                if load <= p.quiet_load:
                    break
            load, res = min(attempts, key=lambda a: (not a[0] <= p.quiet_load, a[0]))
            res["load_average_before"] = load
            res["quiet"] = bool(load <= p.quiet_load)
            res["latency_attempts"] = len(attempts)
            res["load_average"] = load_average()
            res["parameters"] = int(count_parameters(model.config))
            return res
        return self.cached(f"cost_{arm}", run)


def read_metrics(run_dir: Path) -> list:
    """The records of a run's metrics.jsonl ([] when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _val_curve(run_dir: Path) -> list:
    """[(step, tokens seen, validation loss)] from a run's metrics.jsonl."""
    tokens, curve = {}, []
    for r in read_metrics(run_dir):
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



# --- the command -----------------------------------------------------------------------------------

def seed_units(study: "Study", s: int, on_unit: Callable[[], None] = lambda: None) -> tuple:
    """Every unit of seed s (cached): (pretrain results, finetune results), in ARMS order.

    E4's arms, which need the big parent, run last, after the E6 sweep, so that a seed
    started beside the (longer) big parent's training waits for it as late as possible.
    Every unit draws from its own (seed, arm) random streams, so the order changes no
    number."""
    pre, ft = {}, {}
    big = [arm for arm in ARMS if arm.startswith("ed_unbal")]

    p = study.plan

    def arm_units(arm):
        if arm in SWEEP_ARMS:  # E6: these continue to sweep_steps (the curve goes on)
            study.pretrained(s, arm, "sweep")
        pre[arm] = study.pretrain_result(s, arm)
        probed = p.rep_tasks and arm in p.rep_arms
        # an unprobed arm's result drops the probe scores an older run may have left in it
        ft[f"{arm}@extra"] = with_probes(study.finetune_result(s, arm, "extra"),
                                         study.rep_result(s, arm) if probed else {})
        on_unit()

    for arm in ARMS:
        if arm not in big:
            arm_units(arm)
    for arm in SWEEP_ARMS:
        for budget in ("zero", "sweep"):
            ft[f"{arm}@{budget}"] = study.finetune_result(s, arm, budget)
            on_unit()
    for arm in big:
        arm_units(arm)
    order = [f"{arm}@extra" for arm in ARMS] + [f"{a}@{b}" for a in SWEEP_ARMS
                                                 for b in ("zero", "sweep")]
    return {arm: pre[arm] for arm in ARMS}, {k: ft[k] for k in order}


def with_probes(finetuned: dict, probes: dict) -> dict:
    """An arm's fine-tuning result with its representation probes' scores. A result from
    before the probes were a unit of their own (they ran inside fine-tuning) drops its
    probe scores first, so only the rep unit's are read."""
    probe_key = lambda k: k == "rep_score" or any(  # noqa: E731
        k.startswith(f"{t}_accuracy") for t in TASKS)
    return {**{k: v for k, v in finetuned.items() if not probe_key(k)}, **probes}


UNITS_PER_SEED = len(ARMS) + 4  # fine-tuned models per seed (results["finetune"])


def units_per_seed(plan: StudyPlan) -> int:
    """Fine-tuning units and representation-probe units of one seed."""
    return UNITS_PER_SEED + (len(plan.rep_arms) if plan.rep_tasks else 0)
