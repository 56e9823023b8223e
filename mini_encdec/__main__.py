"""`python -m mini_encdec <command>`: see mini_encdec/cli/__init__.py."""

import sys

from .ops import tune_process
from .cli import main as run_command


def main(argv=None) -> int:
    """The command line: opts the process in to the numba backend's process-wide settings
    (`ops.tune_process`: OpenMP wait policy, allocator), then runs the command."""
    tune_process()
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
