"""Where every command prints: results to stdout (`out`), progress and errors to stderr (`err`)."""

import sys

from rich.console import Console

# Tables get room when the output is a file or a pipe.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)
