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
from .report import (arms_markdown, claims_markdown, plot_curves, plot_quality_vs_flops,
                     reading, sweep_markdown, _report)
from .runner import add_arguments, machine_info, main, run, run_study
from .units import (UNITS_PER_SEED, Study, _read_metrics, _val_curve, causal_encoder,
                    load_average, seed_units)
