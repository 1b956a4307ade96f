"""The one rich Console the commands print through."""

from __future__ import annotations

import sys

from rich.console import Console

# Tables are unreadable folded into 80 columns; when output goes to a file or a CI log,
# where there is no terminal width to respect, print them wide.
console = Console() if sys.stdout.isatty() else Console(width=160)
