"""Command-line mistakes: the one error type every command raises for them, and "did you
mean".

    raise UsageError("--preset nosuch: expected one of tiny, small, ... (did you mean ...?)")

`cli.main` turns a UsageError into one line on stderr, `<prog> <command>: error: <message>`,
and exit status 2 (no traceback). A message names the argument, the value given and what
was expected. Library functions may raise it too (it is a ValueError), so calling them
from Python gives the same message.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class UsageError(ValueError):
    """A bad command-line value; reported as one `error: ...` line with exit status 2."""


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """" (did you mean 'steps'?)" when `word` is close to one of `choices`, else "".
    prefix: put before each suggestion (e.g. "train." for a field of that section)."""
    choices = [str(c) for c in choices]
    # case-insensitive match first ("Tiny" -> "tiny"), then difflib's similarity ratio
    lower = {c.lower(): c for c in choices}
    close = [lower[word.lower()]] if word.lower() in lower else \
        difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(prefix + c) for c in close) + "?)"

