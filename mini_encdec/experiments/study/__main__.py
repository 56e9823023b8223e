"""`python -m mini_encdec.experiments.study`: the study's command (the seed workers of
`--jobs` run this)."""

from .runner import main

raise SystemExit(main())
