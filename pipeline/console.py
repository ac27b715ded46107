"""Where every command prints: results to stdout (`out`), progress and errors to stderr (`err`)."""

import math
import sys

from rich.console import Console

# Tables get room when the output is a file or a pipe.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def cell(value, fmt: str) -> str:
    """A table's entry, as the compare and doctor tables write it: `fmt` applied, a missing
    value blank (text) or '-' (a number), NaN and infinity as themselves."""
    if value is None or value == "":
        return "" if fmt == "{}" else "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)
