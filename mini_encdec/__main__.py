"""`python -m mini_encdec <command>`: see mini_encdec/cli/__init__.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
