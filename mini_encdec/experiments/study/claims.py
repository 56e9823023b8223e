"""The claims table: one row per claim of the paper, arm a vs arm b on one metric, with
the paired test over seeds and what a reviewer needs beside it (stats.py).

Per row, with d_s = a_s - b_s over the seeds:
  the mean difference and its 95% t interval;
  the paired t-test's p, Holm-adjusted within its family: the PRIMARY family (one metric
  per claim, declared here before the run, `primary=True`) or the secondary family (every
  other row);
  the TOST p of equivalence within +- the smallest effect of interest of the metric
  (SMALLEST_EFFECT, fixed here before the run);
  the smallest effect the design detects (80% power, paired, two-sided, at the strictest
  Holm level alpha / m of its family, from the observed sd of d);
  the verdict (stats.corrected_verdict): reproduced / not reproduced / equivalent /
  inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..stats import (confidence_interval, corrected_verdict, holm, minimum_detectable_effect,
                     paired_test, tost)

ALPHA = 0.05      # family-wise error rate of each family
POWER = 0.8       # of the minimum detectable effect
# The smallest effect of interest of each metric (the TOST margin): 0.02 nats per token
# for the losses (the parent pilot's tolerance), 2 points of accuracy, 0.01 of ROUGE-L.
SMALLEST_EFFECT = {"prefix_val_loss": 0.02, "reply_nll": 0.02, "reply_rouge_l": 0.01,
                   "genre_rank_accuracy": 0.02, "genre_probe_accuracy": 0.02,
                   "rep_score": 0.02}

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
    primary: bool = False     # one of the pre-declared primary tests (Holm over them)


METRICS = {
    "prefix_val_loss": "PrefixLM loss (evaluation plays)",
    "reply_nll": "reply NLL / token (fine-tuned)",
    "reply_rouge_l": "reply ROUGE-L (fine-tuned)",
    "genre_rank_accuracy": "genre accuracy, rank classification",
    "genre_probe_accuracy": "genre accuracy, classification probe",
    "rep_score": "representation score (probe accuracy, mean over the tasks)",
    "reply_repetition": "reply repeated-trigram fraction (fine-tuned)",
}

CLAIMS = (
    Claim("E1", "adaptation reduces the computation needed compared with pre-training "
          "from scratch", "Gemma 2 2B/9B and the mT5-sized suite", "ed_prefix", "ed_scratch",
          "prefix_val_loss", "lower", stage="pretrain", primary=True),
    Claim("E1", "(same, after fine-tuning)", "", "ed_prefix", "ed_scratch", "reply_nll",
          "lower"),
    Claim("E2", "under a similar inference budget, encoder-decoder LLMs achieve comparable "
          "(often better) pre-training performance", "2B-2B vs 2B: +1.8 PT",
          "ed_kd", "dec", "prefix_val_loss", "lower", stage="pretrain", primary=True),
    Claim("E2", "(same, against a decoder-only model trained on the same loss-bearing "
          "tokens)", "", "ed_kd", "dec_prefix", "prefix_val_loss", "lower", stage="pretrain"),
    Claim("E2", "but substantially better fine-tuning performance", "2B-2B vs 2B: +7 IT",
          "ed_kd", "dec", "reply_nll", "lower", primary=True),
    Claim("E2", "(same, generation quality)", "", "ed_kd", "dec", "reply_rouge_l", "higher"),
    Claim("E2", "the adapted encoder representation yields better results on SuperGLUE",
          "every scale", "ed_kd", "dec", "rep_score", "higher", primary=True),
    Claim("E3", "PrefixLM (+KD) is better for generation", "PrefixLM+KD vs UL2, IT",
          "ed_kd", "ed_ul2", "reply_nll", "lower", primary=True),
    Claim("E3", "UL2 is better for representation", "UL2 vs PrefixLM+KD, SuperGLUE",
          "ed_ul2", "ed_kd", "rep_score", "higher", primary=True),
    Claim("E3", "distillation helps PrefixLM", "PrefixLM+KD is the paper's default",
          "ed_kd", "ed_prefix", "reply_nll", "lower"),
    Claim("E4", "an unbalanced model (9B-2B) surpasses the balanced one (2B-2B) at about "
          "the same latency", "9B-2B vs 2B-2B: > +3", "ed_unbal_warm", "ed_prefix",
          "reply_nll", "lower", primary=True),
    Claim("E4", "a cross-attention warmup helps unbalanced adaptation",
          "1K steps 62.5 vs none 61.8", "ed_unbal_warm", "ed_unbal_nowarm", "reply_nll",
          "lower"),
    Claim("E5", "a causal encoder loses to a bidirectional one", "-4.1 PT / -4.7 IT",
          "ed_prefix", "ed_causal", "prefix_val_loss", "lower", stage="pretrain",
          primary=True),
    Claim("E5", "(same, after fine-tuning)", "", "ed_prefix", "ed_causal", "reply_nll",
          "lower"),
    Claim("E5", "(same, classification probe)", "", "ed_prefix", "ed_causal",
          "rep_score", "higher"),
    Claim("E6", "adaptation converges fast: with a larger extra budget the adapted model "
          "pulls ahead", "converges within tens of billions of tokens", "ed_kd", "dec",
          "reply_nll", "lower", budget="sweep", primary=True),
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
    """One row per claim (module docstring): {"claim", "test", "verdict"}."""
    rows = []
    for c in CLAIMS:
        a = [_value(results, s, c.a, c) for s in seeds]
        b = [_value(results, s, c.b, c) for s in seeds]
        test = paired_test(a, b)
        d = [x - y for x, y in zip(a, b)]
        test["ci95"] = list(confidence_interval(d, 0.95))
        test["smallest_effect_of_interest"] = SMALLEST_EFFECT[c.metric]
        test["p_tost"] = tost(d, SMALLEST_EFFECT[c.metric])
        test["family"] = "primary" if c.primary else "secondary"
        rows.append({"claim": c, "test": test})
    for family in ("primary", "secondary"):
        members = [r for r in rows if r["test"]["family"] == family]
        for r, p in zip(members, holm([r["test"]["p"] for r in members])):
            t = r["test"]
            t["p_holm"] = p
            t["mde"] = minimum_detectable_effect(t["std_diff"], t["n"],
                                                 alpha=ALPHA / len(members), power=POWER)
            r["verdict"] = corrected_verdict(t["mean_diff"], p, r["claim"].better,
                                             p_equivalence=t["p_tost"], alpha=ALPHA)
    return rows
