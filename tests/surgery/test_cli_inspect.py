"""`python cli.py inspect`: the report, the JSON, and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import keras
from conftest import ROOT, cli_in_process
from rich.console import Console
from zoo import nested_backbone

import cli
from commands.inspect_cmd import inspect_model, render


def test_inspect_resnet50_json_lists_block_outputs(capsys):
    assert cli.main(["inspect", "resnet50", "--weights", "none", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in data["cut_points"]]
    assert "conv2_block1_out" in names and "conv5_block3_out" in names
    assert "conv2_block1_1_conv" not in names
    assert data["summary"]["params"] == 25636712
    assert data["summary"]["batchnorm_layers"] == 53
    first = data["cut_points"][0]
    assert set(first) == {"name", "depth", "shape", "params", "index"}


def test_inspect_a_model_file_renders_a_table(tmp_path):
    path = tmp_path / "nested.keras"
    nested_backbone().save(path)
    data = inspect_model(str(path))
    assert data["summary"]["nested_models"] == ["backbone"]
    console = Console(file=io.StringIO(), width=100)
    render(data, console)
    text = console.file.getvalue()
    assert "Valid cut points" in text and "backbone/bb_add" in text and "nested models  backbone" in text


def test_inspect_bad_inputs_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip file")
    for args, needle in (
        ([str(tmp_path / "missing.keras")], "does not exist"),
        ([str(bad)], "Cannot load model file"),
        (["resnet5O"], "Did you mean resnet50"),
        (["resnet50", "--weights", str(tmp_path / "nope.weights.h5")], "does not exist"),
    ):
        if needle == "does not exist" and "--weights" not in args:  # one case as a child process
            proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "inspect", *args],
                                  capture_output=True, text=True, cwd=tmp_path)
        else:
            proc = cli_in_process("inspect", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("graft: error:") and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_usage_error_exits_2(capsys):
    try:
        cli.main(["inspect"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "required" in capsys.readouterr().err


def test_inspect_keeps_the_file_untouched(tmp_path):
    path = tmp_path / "m.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")]).save(path)
    before = path.read_bytes()
    inspect_model(str(path))
    assert path.read_bytes() == before
