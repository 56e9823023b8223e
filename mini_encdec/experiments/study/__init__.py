"""`python -m mini_encdec study`: the paper's claims reproduced at tiny scale.

One module per role:
  protocol   the plan (budgets, arms) and the protocol text
  units      the training and evaluation units, each cached and resumable
  claims     the claims and the statistics applied to them
  report     results.md and the figures
  runner     the command line, the parallel seed workers, resuming
"""

from .claims import CLAIMS, METRICS, Claim, claims_table
from .protocol import ARM_LABELS, ARMS, HELP, SCALES, SWEEP_ARMS, StudyPlan
from .report import (_report, arms_markdown, claims_markdown, plot_curves,
                     plot_quality_vs_flops, reading, sweep_markdown)
from .runner import add_arguments, machine_info, main, run, run_study
from .units import (UNITS_PER_SEED, Study, causal_encoder, load_average, read_metrics,
                    seed_units, with_probes)

# the package's public names (what demo.py, the CLI and the tests use)
__all__ = ["ARMS", "ARM_LABELS", "CLAIMS", "Claim", "HELP", "METRICS", "SCALES", "SWEEP_ARMS",
           "Study", "StudyPlan", "UNITS_PER_SEED", "_report", "add_arguments", "arms_markdown",
           "causal_encoder", "claims_markdown", "claims_table", "load_average", "machine_info",
           "main", "plot_curves", "plot_quality_vs_flops", "read_metrics", "reading", "run",
           "run_study", "seed_units", "sweep_markdown", "with_probes"]
