"""`python -m mini_encdec study`: the paper's claims reproduced at tiny scale, one named
experiment per claim, several seeds, a significance test, a claims table.

THE PROTOCOL (the confirmatory version, with the pilots' choices and the amendments
log, is PROTOCOL.md next to this file)

The parents, trained once (plan.shared_parents, with parent_seed) and shared by every seed:

  parent       decoder-only Gemma 2 (`preset`), causal LM, `parent_steps` updates,
               warmup-stable-decay schedule at `lr` (20% linear cooldown to 0)
  big_parent   a wider and deeper decoder-only model (`big_overrides`), same recipe: the
               encoder source of the unbalanced arms (E4)

Per seed s (every arm of a seed shares the data order and the evaluation examples; the
seeds differ in the continued pre-training's data order, the adaptation's fresh tensors,
the scratch model and fine-tuning; the probe heads are the same `probe_seeds` for all):

  Continued pre-training: every arm below gets the same extra budget of `extra_steps`
  updates of `batch_size` windows of about 2 * half tokens from the training plays (the
  PrefixLM arms of a seed read the same windows in the same order; the causal-LM window is
  one token longer and UL2's has its own length, so those arms draw their own windows of
  the same plays), AdamW at `extra_lr(arm)` (one rate per architecture), warmup-stable-decay: every budget the study
  reports is annealed (a 20% linear cooldown to 0). The largest budget of an arm is its
  stable run; a smaller budget (E6's extra_steps of dec and ed_kd) is a cooldown branch
  from the stable run's checkpoint at 80% of that budget, never a mid-schedule
  checkpoint. The arms trained from scratch use the parent's pre-training rate `lr`.

  dec              the parent, causal LM over both halves        (tokens seen matched)
  dec_prefix       the parent, PrefixLM loss on the second half only (loss-bearing tokens
                   and objective matched)
  ed_kd            adapt(parent), PrefixLM + distillation from the frozen parent
                   (kd_alpha, kd_temperature of TrainConfig)
  ed_prefix        adapt(parent), PrefixLM
  ed_ul2           adapt(parent), UL2 (the 7 denoisers, SPEC 4), its batch size scaled
                   so that an update carries as many loss-bearing (target) tokens as a
                   PrefixLM update (units.Study.ul2_batch_size; about 1.9x at half = 64)
  ed_scratch       a fresh encoder-decoder of the same shape, PrefixLM, at `lr`
  ed_causal        adapt(parent) with a causal encoder (decoder-style masks), PrefixLM
  ed_unbal_warm    encoder from big_parent, decoder from parent, fresh cross-attention,
                   only cross-attention trains for the first warmup_steps updates (3% of
                   extra_steps), which come ON TOP of the shared budget, PrefixLM
  ed_unbal_nowarm  the same without the warmup

  dec and ed_kd continue to `sweep_steps` updates (E6); their extra_steps budget is a
  cooldown branch of that run.

  Representation (representation.py), for the arms of `rep_arms` at the extra budget: for
  each task of `rep_tasks` (text/rep_tasks.py) and each head seed of `probe_seeds`, a
  classification probe fine-tuned for `rep_probe_steps` at `finetune_lr`; the representation score is the mean accuracy over the
  tasks (each averaged over the head seeds), on the full evaluation set, beside chance,
  the majority class and a bag-of-words logistic regression.

  Fine-tuning (downstream.py), identical for every arm (no cross-attention warmup: that
  belongs to adaptation): the generation model on the reply + genre-as-text mixture
  (`finetune_steps` at `finetune_lr`, cosine); with `genre` (the demo) also the
  classification probe on genre (`probe_steps`). Nobody tunes anything per arm.

  Evaluation: the PrefixLM validation loss (target NLL of the second half of a window
  given the first; the same windows for both architectures, spread evenly over every
  play of `eval_split`);
  reply NLL per token on every reply of eval_split; ROUGE-L and a repetition measure of
  greedy replies (every reply, at the extra budget); with `genre`, genre accuracy by rank
  classification and by the probe; baselines beside them (downstream.baselines).
  Inference cost (downstream.inference_cost): FLOPs per request and per generated token at
  the same prompt and the same forced output length, and measured latency (seed 0's models,
  median of `latency_repeats`, with the load average).

  Statistics (claims.py, stats.py): for each claim, arm a vs arm b seed by seed: the
  mean difference with its 95% t interval; a two-sided paired t-test, Holm-corrected
  over the nine pre-declared PRIMARY tests (one metric per claim; the other rows form a
  secondary family, corrected among themselves); a TOST equivalence test within +- the
  metric's smallest effect of interest (0.02 nats per token for losses, 0.02 accuracy,
  0.01 ROUGE-L); the smallest effect the design detects (80% power at the strictest
  Holm level). Verdict: "reproduced" / "not reproduced" when the Holm-adjusted p < 0.05
  in the claimed / the opposite direction, else "equivalent" when the TOST p < 0.05, else
  "inconclusive".

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

from dataclasses import dataclass

HELP = ("the paper's claims at tiny scale: experiments E1-E6 over several seeds, with a "
        "claims table")  # its line in `python -m mini_encdec --help`


# the arms whose representation score a claim uses (claims.py), probed at the extra budget
REP_ARMS = ("dec", "ed_kd", "ed_prefix", "ed_ul2", "ed_causal")


# --- the plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyPlan:
    """The budget of a study (a scale, optionally overridden)."""

    preset: str = "tiny"
    big_overrides: tuple = (("hidden_size", 192), ("num_hidden_layers", 4),
                            ("intermediate_size", 576), ("head_dim", 48))
    half: int = 64                # S = T; the decoder-only model sees 2 * half tokens
    batch_size: int = 16
    parent_steps: int = 4000     # pilot 1 (PROTOCOL.md section 7)
    extra_steps: int = 300
    sweep_steps: int = 600
    finetune_steps: int = 150
    probe_steps: int = 100        # the genre probe (plan.genre)
    rep_probe_steps: int = 400    # a representation probe (the learnability pilot's recipe)
    lr: float = 3e-3              # pre-training from scratch
    extra_lr_decoder: float = 3e-3  # continued pre-training of the decoder-only arms and
    extra_lr_encdec: float = 3e-4   # of the adapted ones (WSD peaks; pilot 3)
    finetune_lr: float = 1e-3
    eval_every: int = 75          # PrefixLM validation loss along the continued pre-training
    eval_batches: int = 8         # PrefixLM windows: eval_batches * batch_size, every play
    eval_split: str = "test"      # the plays evaluated (the pilots used "validation")
    train_examples: int = 2400    # reply examples in the fine-tuning mixture (+ half genre)
    eval_examples: int = 0        # reply examples evaluated (0: every one of eval_split)
    generate_examples: int = 0    # of them, greedily generated for ROUGE-L (0: every one)
    genre: bool = False           # genre rows (rank classification and probe): retired from
    genre_eval_examples: int = 160  # the study, kept for the demo
    new_tokens: int = 32
    latency_repeats: int = 3
    quiet_load: float = 0.5          # latency counts as measured on a quiet machine below
    latency_attempts: int = 3        # this 1-minute load average; else re-measured after
    latency_wait: float = 60.0       # latency_wait seconds, keeping the quietest attempt
    seeds: tuple = (0, 1, 2, 3, 4, 5)
    # one parent and one big parent, trained once with parent_seed, shared by every seed
    # (the seeds vary the continued pre-training's data order, the adaptation's fresh
    # tensors, the scratch model and fine-tuning); False: one per seed
    shared_parents: bool = True
    parent_seed: int = 0
    # representation.py: the tasks that passed the learnability pilots (probe >= 3 standard
    # errors above the bag of words: data/results/study_pilots/*task_learnability*.json);
    # speaker, replaced_word, replaced_words and same_scene stayed at the floor
    rep_tasks: tuple = ("next_speech", "word_order")
    probe_seeds: tuple = (0, 1, 2)   # probe heads per model and task, averaged
    rep_arms: tuple = REP_ARMS       # the arms probed (at the extra budget)
    rep_length: int = 128            # tokens of a representation task's input
    rep_train_examples: int = 0      # 0: every training example (smoke tests cap it)
    rep_eval_examples: int = 0       # 0: the full evaluation set (smoke tests cap it)

    @property
    def warmup_steps(self) -> int:
        """Cross-attention warmup of the unbalanced arm: 3% of extra_steps, on top of the
        shared budget (the paper: 1K updates, under 1% of its budget)."""
        return max(1, round(0.03 * self.extra_steps))

    def extra_lr(self, arm: str) -> float:
        """The continued pre-training's peak rate of `arm` (the scratch arm pre-trains at
        `lr`)."""
        if arm == "ed_scratch":
            return self.lr
        return self.extra_lr_decoder if arm.startswith("dec") else self.extra_lr_encdec


SCALES = {
    "full": StudyPlan(),
    "quick": StudyPlan(half=16, batch_size=4, parent_steps=8, extra_steps=4, sweep_steps=8,
                       finetune_steps=4, probe_steps=4, rep_probe_steps=4, eval_every=4,
                       eval_batches=1, train_examples=32, eval_examples=12,
                       generate_examples=2, new_tokens=4, latency_repeats=1, seeds=(0, 1),
                       eval_split="validation",
                       probe_seeds=(0,), latency_attempts=1, latency_wait=0.0, genre=True,
                       genre_eval_examples=12,
                       rep_tasks=("next_speech", "word_order"),
                       rep_length=96, rep_train_examples=32, rep_eval_examples=16,
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

