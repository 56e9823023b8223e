"""The study's report: results.md (claims table, reading, every arm, the budget sweep)
and the two figures."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...plots import new_figure
from ..stats import VERDICTS
from .claims import METRICS
from .protocol import ARM_LABELS, ARMS

def _pm(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}"


def _ms(v, digits: int) -> str:
    """A latency in ms, or "n/a" where the measurement could not give one (None)."""
    return "n/a" if v is None else f"{v:.{digits}f}"


def _minutes(v) -> str:
    return "n/a" if v is None else f"{v:.1f} min"


def _seed_values(results: dict, seeds, arm_budget: str, key: str) -> Optional[list]:
    """key of the fine-tuned unit arm_budget for every seed; None where the plan did not
    measure it (the genre rows, a probe of an arm no claim uses, ROUGE-L at budgets 0
    and sweep)."""
    v = [results["finetune"][f"seed{s}"][arm_budget].get(key) for s in seeds]
    return None if any(x is None for x in v) else v


def _cell(v: Optional[list]) -> str:
    return "not measured" if v is None else _pm(np.mean(v), np.std(v, ddof=1))


def claims_markdown(rows: list) -> str:
    lines = ["| exp. | claim (the paper) | paper's evidence | our setting | a vs b (mean ± sd "
             "over seeds) | a - b [95% CI] | p (Holm) | TOST p (± margin) | smallest "
             "detectable | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, t = r["claim"], r["test"]
        budget = {"zero": "budget 0", "extra": "", "sweep": "larger budget"}[c.budget]
        setting = f"{ARM_LABELS[c.a]} vs {ARM_LABELS[c.b]}: {METRICS[c.metric]}" + \
            (f", {budget}" if budget else "")
        claimed = "< 0" if c.better == "lower" else "> 0"  # the sign the claim predicts
        family = "**primary**" if t["family"] == "primary" else "secondary"
        lo, hi = t["ci95"]
        lines.append(
            f"| {c.experiment} | {c.claim} | {c.evidence} | {setting} ({family}) | "
            f"{_pm(t['mean_a'], t['std_a'])} vs {_pm(t['mean_b'], t['std_b'])} | "
            f"{t['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (claim: {claimed}) | "
            f"{t['p_holm']:.3f} (raw {t['p']:.3f}, n = {t['n']}) | "
            f"{t['p_tost']:.3f} (± {t['smallest_effect_of_interest']:g}) | "
            f"{t['mde']:.3f} | **{r['verdict']}** |")
    return "\n".join(lines)


def arms_markdown(results: dict, seeds, base: dict) -> str:
    """Every arm's mean ± sd per metric, with the baselines and the inference costs."""
    genre = results.get("plan", {}).get("genre", True)
    keys = ["prefix_val_loss", "reply_nll", "reply_rouge_l", "reply_repetition"] + \
        (["genre_rank_accuracy", "genre_probe_accuracy"] if genre else []) + ["rep_score"]
    head = ["arm", "PrefixLM val loss (pre-training)"] + [METRICS[k] for k in keys[1:]] + \
        ["parameters", "prompt GFLOPs", "GFLOPs / generated token", "GFLOPs / request",
         "ms / generated token", "ms / request"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        pre = [results["pretrain"][f"seed{s}"][arm]["prefix_val_loss"] for s in seeds]
        cells = [ARM_LABELS[arm], _pm(np.mean(pre), np.std(pre, ddof=1))]
        for k in keys[1:]:
            cells.append(_cell(_seed_values(results, seeds, f"{arm}@extra", k)))
        cost = results["cost"][arm]
        busy = "" if cost.get("quiet") else " *"  # measured on a busy machine
        cells += [f"{cost['parameters']:,}", f"{cost['prompt_gflops']:.4f}",
                  f"{cost['gflops_per_generated_token']:.5f}", f"{cost['total_gflops']:.4f}",
                  _ms(cost['ms_per_generated_token'], 2) + busy,
                  f"{cost['total_ms']:.1f}{busy}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| baseline | | unigram " + f"{np.mean(base['reply_nll_unigram']):.3f} | "
                 f"copy the input {np.mean(base['reply_rouge_l_copy_input']):.3f} | "
                 f"{_reference_repetition(results, seeds)} | " +
                 (f"chance {base['genre_chance'][0]:.3f}, majority "
                  f"{np.mean(base['genre_majority_class']):.3f} | (same) | " if genre else "")
                 + f"{_rep_baseline_cell(base['rep'])} | | | | | | |")
    return "\n".join(lines)


def _reference_repetition(results: dict, seeds) -> str:
    """The repetition measure of the reference replies (the same replies for every arm)."""
    v = [results["finetune"][f"seed{s}"]["dec@extra"].get("reply_repetition_of_references")
         for s in seeds]
    return "" if None in v else f"references {np.mean(v):.3f}"


def _rep_baseline_cell(rep: dict) -> str:
    """Chance, majority and bag of words, each the mean over the representation tasks."""
    tasks = [t for t in rep if isinstance(rep[t], dict)]
    mean = {k: np.mean([rep[t][k] for t in tasks]) for k in ("chance", "majority",
                                                             "bag_of_words")}
    return (f"chance {mean['chance']:.3f}, majority {mean['majority']:.3f}, bag of words "
            f"{mean['bag_of_words']:.3f}")


def rep_tasks_markdown(results: dict, seeds) -> str:
    """Every representation task: each arm's probe accuracy beside the task's baselines."""
    rep = results["baselines"]["rep"]
    tasks = [t for t in rep if isinstance(rep[t], dict)]
    head = ["arm"] + tasks
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ARMS:
        cells = [ARM_LABELS[arm]]
        for t in tasks:
            cells.append(_cell(_seed_values(results, seeds, f"{arm}@extra", f"{t}_accuracy")))
        lines.append("| " + " | ".join(cells) + " |")
    for k in ("chance", "majority", "bag_of_words"):
        lines.append("| " + " | ".join([k.replace("_", " ")] +
                                       [f"{rep[t][k]:.3f}" for t in tasks]) + " |")
    lines.append("| evaluation examples | " + " | ".join(str(rep[t]["eval_examples"])
                                                       for t in tasks) + " |")
    return "\n".join(lines)


def rep_thirds_markdown(results: dict, seeds) -> str:
    """The tasks whose evidence sits at one place of the input: each probed arm's accuracy
    by the third of the input that held the change, and on untouched inputs (a causal
    encoder has no right context early in the input). Empty when no such task ran."""
    rep = results["baselines"]["rep"]
    lines = []
    for t in [t for t in rep if "bag_of_words_by_third" in rep[t]]:
        key = f"{t}_accuracy_by_third"
        lines += [f"`{t}`:", "", "| arm | first third | middle third | last third | "
                  "untouched |", "|---|---|---|---|---|"]
        for arm in ARMS:
            v = _seed_values(results, seeds, f"{arm}@extra", key)
            if v is None:
                continue
            lines.append("| " + " | ".join([ARM_LABELS[arm]] + [
                _cell(None if None in (x := [d[k] for d in v]) else x)
                for k in ("first", "middle", "last", "untouched")]) + " |")
        b = rep[t]["bag_of_words_by_third"]
        lines += ["| bag of words | " + " | ".join(
            "-" if b[k] is None else f"{b[k]:.3f}"
            for k in ("first", "middle", "last", "untouched")) + " |", ""]
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
              "adapted representation score | decoder-only representation score |", "|---|---|---|---|---|"]
    for budget in ("zero", "extra", "sweep"):
        cells = []
        for key in ("reply_nll", "rep_score"):
            for arm in ("ed_kd", "dec"):
                cells.append(_cell(_seed_values(results, seeds, f"{arm}@{budget}", key)))
        plan = results.get("plan", {})
        n = {"zero": "0", "extra": f"{plan.get('extra_steps', 'extra_steps')} updates",
             "sweep": f"{plan.get('sweep_steps', 'sweep_steps')} updates"}[budget]
        lines.append(f"| {n} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines)


def parents_markdown(results: dict) -> str:
    """The parents' own quality (shared parents; empty otherwise)."""
    par = results.get("parents")
    if not par:
        return ""
    lines = ["## The parents (trained once, shared by every seed)", "",
             "| parent | parameters | updates | PrefixLM loss | causal-LM loss | training time |",
             "|---|---|---|---|---|---|"]
    for name, r in par.items():
        lines.append(f"| {name.replace('_', ' ')} | {r['parameters']:,} | {r['steps']} | "
                     f"{r['prefix_val_loss']:.3f} | {r['causal_val_loss']:.3f} | "
                     f"{_minutes(r['train_seconds'] / 60 if r.get('train_seconds') else None)}"
                     " |")
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
            lo, hi = t["ci95"]
            parts.append(f"{r['verdict']} on {what} ({t['mean_diff']:+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}], Holm p = {t['p_holm']:.2f}"
                         f"{', primary' if t['family'] == 'primary' else ''})")
        lines.append(f"- **{exp}, {title}:** " + "; ".join(parts) + ".")
    for family in ("primary", "secondary"):
        fam = [r for r in rows if r["test"]["family"] == family]
        if not fam:
            continue
        counts = {v: sum(r["verdict"] == v for r in fam) for v in VERDICTS}
        lines.append(f"\n{family.capitalize()} tests ({len(fam)}, Holm-corrected together, "
                     f"family-wise alpha 0.05, n = {fam[0]['test']['n']} seeds): "
                     f"{counts['reproduced']} reproduced, {counts['not reproduced']} not "
                     f"reproduced (the opposite direction), {counts['equivalent']} equivalent "
                     f"(TOST within the smallest effect of interest), "
                     f"{counts['inconclusive']} inconclusive.")
    lines.append("\n\"Inconclusive\" means the design could not tell: the difference is "
                 "neither significant after correction nor shown to lie within the margin; "
                 "compare it with the row's smallest detectable effect.")
    return "\n".join(lines)


def plot_curves(results: dict, seeds, path: Path) -> Optional[Path]:
    """PrefixLM validation loss vs tokens seen per experiment (seed means)."""
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
    fig = new_figure((10, 4))
    if fig is None:
        return None
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("reply_nll", "rep_score")):
        for arm in ARMS:
            v = _seed_values(results, seeds, f"{arm}@extra", key)
            if v is None:
                continue
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


def _report(results: dict, rows: list, seeds, curves, qf) -> str:
    p = results["plan"]
    m = results["machine"]
    parts = [
        "# mini_encdec study: the paper's claims at tiny scale", "",
        f"Command: `{results['command']}`  ",
        f"Date {m['date']}; {m['cpus']} CPUs ({m['processor']}), Python {m['python']}, NumPy "
        f"{m['numpy']}; wall-clock time from the first unit's start to the last one's end "
        f"{_minutes(results.get('timeline', {}).get('wall_clock_minutes'))} (the shared "
        f"parents {_minutes(results.get('timeline', {}).get('parents_minutes'))}; "
        f"interruptions count); single-process time inside the units "
        f"{results['seconds_all_units'] / 60:.1f} min; this invocation "
        f"{results['seconds_this_call'] / 60:.1f} min; load average at the end "
        f"{m['load_average_at_end']}.", "",
        f"Setting: preset `{p['preset']}` parents ({p['parent_steps']} causal-LM updates), "
        f"{len(seeds)} seeds, windows of {2 * p['half']} tokens, batch {p['batch_size']}, "
        f"extra budget {p['extra_steps']} updates (sweep {p['sweep_steps']}), fine-tuning "
        f"{p['finetune_steps']} updates, representation probes "
        f"{p.get('rep_probe_steps', p['probe_steps'])} updates x {len(p.get('probe_seeds', ()))} head "
        f"seeds; evaluated on the {p.get('eval_split', 'validation')} plays. The protocol is "
        f"`mini_encdec/experiments/study/PROTOCOL.md`.", "",
        parents_markdown(results), "",
        "## Claims", "", claims_markdown(rows), "", "### Reading", "", reading(rows), "",
        "## Every arm (after the extra budget; mean ± sd over seeds)", "",
        arms_markdown(results, seeds, results["baselines"]), "",
        "## Representation tasks (probe accuracy after the extra budget; mean ± sd over "
        "seeds, each seed the mean over the probe head seeds)", "",
        rep_tasks_markdown(results, seeds), "",
        rep_thirds_markdown(results, seeds),
        "Costs: one request at batch 1 with the same prompt and the same forced number of "
        "generated tokens; per request = the prompt plus every generated token. Latency "
        "measured on seed 0's models; * marks a latency measured while the 1-minute load "
        f"average was above {results['plan'].get('quiet_load', 0.5)} after every "
        "re-measurement (indicative only; the FLOPs are exact).", "",
        "## E6: the budget sweep", "", sweep_markdown(results, seeds), "",
    ]
    if curves:
        parts += [f"![loss curves]({curves.name})", ""]
    if qf:
        parts += [f"![quality vs FLOPs]({qf.name})", ""]
    return "\n".join(parts)


