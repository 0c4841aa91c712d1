"""What the CLI does around the commands: start-up imports and the training progress display."""

from __future__ import annotations

import io
import subprocess
import sys

from conftest import ROOT
from rich.console import Console

from commands.apply_cmd import _ConsoleReporter


def test_commands_without_keras_do_not_import_tensorflow():
    code = ("import sys, cli; rc = cli.main(['rules', 'check', 'rules.yaml']); "
            "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "0 False False"


def test_progress_is_a_live_bar_on_a_terminal_and_plain_lines_otherwise():
    for terminal in (True, False):
        buf = io.StringIO()
        console = Console(file=buf, force_terminal=terminal, width=100, color_system=None)
        reporter = _ConsoleReporter(quiet=False, console=console)
        assert (reporter.progress is not None) == terminal
        for step in (1, 2, 3):
            reporter.batch("head", 1, step, 3)
        reporter.epoch("head", 1, 5, {"loss": 0.5, "accuracy": 0.75, "lr": 1.0}, 1.25)
        reporter.close()
        out = buf.getvalue()
        assert "head epoch 1/5  loss 0.5000  accuracy 0.7500  (1.2 s)" in out and "lr" not in out
        assert ("/3 " in out) == terminal  # the bar's step counter (n/3), only on a terminal


def test_quiet_reporter_prints_nothing():
    buf = io.StringIO()
    reporter = _ConsoleReporter(quiet=True, console=Console(file=buf, force_terminal=True))
    reporter.batch("head", 1, 1, 3)
    reporter.epoch("head", 1, 5, {"loss": 0.5}, 1.0)
    reporter.message("hello")
    reporter.close()
    assert buf.getvalue() == ""


def test_progress_bar_counts_a_phase_in_images_with_their_rate_and_eta():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120, color_system=None)
    reporter = _ConsoleReporter(quiet=False, console=console)
    reporter.phase("finetune", 0, 2, 2, 100, 4)  # 2 epochs of 100 images in 4 batches
    for epoch in (1, 2):
        for step in range(1, 5):
            reporter.batch("finetune", epoch, step, 4)
        reporter.epoch("finetune", epoch, 2, {"loss": 0.5}, 2.0)
    reporter.forward("evaluate (test images)", 0, 60)
    reporter.forward("evaluate (test images)", 60, 60)
    reporter.close()
    out = buf.getvalue()
    assert "finetune epoch 1/2  loss 0.5000  (2.0 s, 50.0 images/s)" in out
    assert "/200 images" in out and "/s" in out and "ETA" in out  # the phase's images, rate, time left
    assert "evaluate (test images)" in out and "/60 images" in out
