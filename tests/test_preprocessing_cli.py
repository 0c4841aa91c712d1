"""`--preprocessing` on the command line, plans that record a convention, and model paths that are
not regular files (a FIFO must never hang advise or inspect)."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT

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
def test_bad_preprocessing_is_exit_2_with_the_choices(command, tmp_path):
    args = [str(DATA), "--model", str(CNN)] if command == "advise" else [str(CNN), "--show", str(DATA)]
    proc = cli(command, *args, "--preprocessing", "imagenet", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "'auto', 'model', 'raw', 'unit', 'tf', 'torch', 'caffe'" in proc.stderr
    with pytest.raises(InputError, match="auto, model, raw"):
        advise(DATA, preprocessing="imagenet")


@pytest.mark.parametrize("kind", ["fifo", "fifo.keras", "folder", "device"])
def test_a_model_path_that_is_not_a_file_is_exit_2_never_a_hang(kind, tmp_path):
    path = tmp_path / kind
    if kind.startswith("fifo"):
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path = "/dev/null"
    for args in (["advise", str(DATA), "--model", str(path), "--out", str(tmp_path / "p.yaml")],
                 ["inspect", str(path)]):
        proc = cli(*args, timeout=60)  # a hang fails here with TimeoutExpired
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a model file" in lines[0], proc.stderr


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
