"""The CLI's rich tables stay readable when stdout is a pipe (captured output is not a terminal)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

from graft.console import PIPED_WIDTH


def _advise(tmp_path, env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "advise", str(ROOT / "examples/data/cifar_b"),
         "--similarity", "0.8", "--out", str(tmp_path / "plan.yaml")],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=True,
    )
    return out.stdout


def test_advise_piped_is_120_columns_wide_with_whole_words(tmp_path):
    text = _advise(tmp_path, {})
    widths = [len(line) for line in text.splitlines()]
    assert max(widths) == PIPED_WIDTH  # the panels span the width
    for word in ("trainable", "optimizer", "backbone lr", "images_per_class_median",
                 "small_different_lower_cut", "Data set", str(ROOT / "examples/data/cifar_b")):
        assert word in text, word
    # the plan panel's phase table keeps one line per phase (no cell wrapped into a second line)
    assert re.search(r"head\s+head\s+convex fit, C by CV\s+l-bfgs", text)


def test_columns_still_wins_when_set(tmp_path):
    text = _advise(tmp_path, {"COLUMNS": "100"})
    assert max(len(line) for line in text.splitlines()) == 100
