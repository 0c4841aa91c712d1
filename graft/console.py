"""The rich `Console` the CLI prints through: readable when its output is piped or redirected.

Rich sizes a console to the terminal; without one (``graft advise ... | cat``, a log file, a
subprocess) it falls back to 80 columns, which squeezes the wide tables of `advise` into wrapped,
truncated cells. A console made here is `PIPED_WIDTH` columns wide when its stream is not a
terminal, unless ``COLUMNS`` says otherwise.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console

#: Width, in columns, of a console whose stream is not a terminal (and COLUMNS is not set).
PIPED_WIDTH = 120


def make_console(stderr: bool = False, **kwargs: Any) -> Console:
    """A rich Console on stdout (or stderr), `PIPED_WIDTH` wide when that stream is not a terminal.

    Args:
        stderr: print to stderr instead of stdout.
        **kwargs: passed to `rich.console.Console`; an explicit `width` wins.

    Returns:
        The console.
    """
    stream = sys.stderr if stderr else sys.stdout
    if kwargs.get("width") is None and not os.environ.get("COLUMNS"):
        try:
            piped = not stream.isatty()
        except (AttributeError, ValueError):  # a closed or replaced stream
            piped = True
        if piped:
            kwargs["width"] = PIPED_WIDTH
    return Console(stderr=stderr, **kwargs)
