"""`--preprocessing` on the command line, plans that record a convention, and model paths that are
not regular files (a FIFO must never hang advise or inspect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT

import cli as cli_module
from advisor.advise import advise
from graft.conventions import apply_convention
from graft.errors import InputError
from graft.plan import Plan, load_plan
from surgery.prepare import prepare_model

DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=env)


@pytest.mark.parametrize("command", ["advise", "inspect"])
def test_bad_preprocessing_is_exit_2_with_the_choices(command, tmp_path, capsys):
    # in-process: argparse refuses the choice before anything is loaded (exit 2, the choices listed)
    args = [str(DATA), "--model", str(CNN)] if command == "advise" else [str(CNN), "--show", str(DATA)]
    with pytest.raises(SystemExit) as exc:
        cli_module.main([command, *args, "--preprocessing", "imagenet", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "'auto', 'model', 'raw', 'unit', 'tf', 'torch', 'caffe'" in capsys.readouterr().err
    with pytest.raises(InputError, match="auto, model, raw"):
        advise(DATA, preprocessing="imagenet")


def _model_path_cases(path, tmp_path):
    return (["advise", str(DATA), "--model", str(path), "--out", str(tmp_path / "p.yaml")], ["inspect", str(path)])


def test_a_fifo_model_path_is_exit_2_never_a_hang(tmp_path):
    # One child process runs every case (a FIFO named with and without .keras; advise and inspect),
    # so that a hang (opening the FIFO) fails the test on the timeout instead of stalling the suite.
    cases = []
    for kind in ("fifo", "fifo.keras"):
        os.mkfifo(tmp_path / kind)
        cases += _model_path_cases(tmp_path / kind, tmp_path)
    code = ("import contextlib, io, json, sys, cli\n"
            "out = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        out.append([cli.main(args), err.getvalue()])\n"
            "print(json.dumps(out))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)  # a hang fails here with TimeoutExpired
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    for rc, err in results:
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "not a model file" in lines[0], err


@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_model_path_that_is_not_a_file_is_exit_2(kind, tmp_path, capsys):
    path = tmp_path / kind
    if kind == "folder":
        path.mkdir()
    else:
        path = "/dev/null"
    for args in _model_path_cases(path, tmp_path):
        assert cli_module.main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "not a model file" in lines[0], lines


def test_advise_records_the_convention_and_apply_puts_it_in_front(tmp_path):
    advice = advise(DATA, model=CNN, per_class=10)
    d = advice.plan.data
    # the example CNN carries a Rescaling layer: honoured, and the measurement agrees
    assert d.preprocessing == "raw" and d.preprocessing_evidence["inside"] == "rescaling"
    assert d.preprocessing_evidence["best"] == "raw" and set(d.preprocessing_evidence["scores"]) >= {"tf", "caffe"}
    told = advise(DATA, model=CNN, per_class=10, preprocessing="caffe")
    assert told.plan.data.preprocessing == "caffe" and told.plan.data.preprocessing_evidence["asked"] == "caffe"
    unmeasured = advise(DATA, model=CNN, measure=False)
    assert unmeasured.plan.data.preprocessing == "model"
    text = (tmp_path / "p.yaml")
    from graft.plan import save_plan

    save_plan(told.plan, text)
    plan = load_plan(text)
    assert plan.data.preprocessing == "caffe" and plan.to_dict() == told.plan.to_dict()
    prepared = prepare_model(plan)
    assert prepared.model.layers[1].name == "graft_preprocess" and "caffe" in prepared.preprocessing
    backbone = keras.models.load_model(CNN)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    inner = keras.Model(prepared.model.inputs, prepared.model.layers[1].output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(inner(x)), apply_convention("caffe", x), atol=1e-3)
    assert backbone.input_shape == prepared.model.input_shape


def test_old_plans_without_evidence_still_load():
    data = Plan().to_dict()
    data["model"]["source"], data["data"]["path"] = "mobilenetv2", str(DATA)
    data["training"]["phases"] = [{"name": "head", "trainable": "head", "epochs": 1}]
    del data["data"]["preprocessing_evidence"]
    for value in ("model", "none", "tf"):
        data["data"]["preprocessing"] = value
        plan = Plan.from_dict(data)
        assert plan.data.preprocessing == value and plan.data.preprocessing_evidence == {}
