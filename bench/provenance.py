"""Which code produced a bench row: the short commit, marked `+dirty` when tracked files differ from it.

Every bench script stamps its rows with this, so a figure in docs/bench.md can be traced to the code
that measured it (and rows from an uncommitted working tree are visibly so).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """`git rev-parse --short HEAD` of the checkout, `+dirty` when tracked files other than
    bench/results/ are modified; `unknown` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        # the result files the benches append to are data, not code: they do not make a row dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")
