"""graft under every Keras backend: models move between backends, TensorFlow-only features are
refused before anything runs, and the device line says which device and why.

The whole suite runs under the active backend (KERAS_BACKEND, TensorFlow by default); `.ci/run` also
runs the tests marked `backends` under JAX and PyTorch. The tests here reach the other backends in
subprocesses, for the ones installed (`pip install -e ".[backends]"`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from graft.errors import PlanError
from graft.hardware import device
from graft.plan import (
    DataPlan,
    HeadPlan,
    ModelSpec,
    OutputPlan,
    Phase,
    Plan,
    SurgeryPlan,
    TrainingPlan,
    save_plan,
)
from surgery import run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
BACKENDS = ("tensorflow", "jax", "torch")
OTHERS = [b for b in BACKENDS if b != keras.backend.backend() and importlib.util.find_spec(b)]

PREDICT = """
import sys
import numpy as np
import keras
model = keras.models.load_model(sys.argv[1], safe_mode=True, compile=False)
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(keras.ops.convert_to_numpy(model(x, training=False))))
print(keras.backend.backend())
"""


def _env(backend: str) -> dict:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _plan(run_dir: Path, **training) -> Plan:
    plan = Plan(
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(cut=None, bn="freeze", head=HeadPlan(classes=5, dropout=0.2)),
        training=TrainingPlan(phases=[
            Phase(name="head", trainable="head", epochs=2, learning_rate=3e-3, solver="gradient"),
            Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-3, backbone_learning_rate=1e-4)],
            **training),
        data=DataPlan(path=str(DATA), input_size=[32, 32], channels=3, augmentation={"flip": "horizontal"},
                      validation_split=0.2, test_split=0.2, batch_size=32, seed=0),
        outputs=OutputPlan(dir=str(run_dir)),
    )
    return Plan.from_dict(plan.to_dict())


@pytest.mark.backends
def test_a_model_trained_under_one_backend_predicts_the_same_under_the_others(tmp_path):
    if not OTHERS:
        pytest.skip("no other Keras backend installed (pip install -e '.[backends]')")
    result = run(_plan(tmp_path / "run"))
    x = np.random.default_rng(0).uniform(0, 255, size=(8, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    model = keras.models.load_model(result.model_path, safe_mode=True, compile=False)
    here = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    assert np.allclose(here.sum(axis=1), 1.0, atol=1e-5)
    script = tmp_path / "predict.py"
    script.write_text(PREDICT)
    for backend in OTHERS:
        out = tmp_path / f"{backend}.npy"
        proc = subprocess.run([sys.executable, str(script), str(result.model_path), str(tmp_path / "x.npy"), str(out)],
                              capture_output=True, text=True, env=_env(backend), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split()[-1] == backend
        there = np.load(out)
        assert np.max(np.abs(there - here)) < 1e-5, backend
        assert (there.argmax(axis=1) == here.argmax(axis=1)).all(), backend


def _non_tf_backend() -> str:
    for backend in ("jax", "torch"):
        if importlib.util.find_spec(backend):
            return backend
    pytest.skip("neither JAX nor PyTorch is installed (pip install -e '.[backends]')")


@pytest.mark.backends
def test_distribution_under_jax_or_torch_is_refused_before_anything_runs(tmp_path):
    plan = _plan(tmp_path / "run", distribution="mirrored")
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    backend = keras.backend.backend() if keras.backend.backend() != "tensorflow" else _non_tf_backend()
    if keras.backend.backend() != "tensorflow":
        with pytest.raises(PlanError, match="needs the TensorFlow backend"):
            run(plan, dry_run=True)
    for extra in ([], ["--dry-run"]):
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file), *extra],
                              capture_output=True, text=True, env=_env(backend), cwd=tmp_path, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "training.distribution: mirrored needs the TensorFlow backend" in proc.stderr
        assert f"KERAS_BACKEND is {backend}" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.backends
def test_the_device_line_names_device_backend_and_reason():
    d = device()
    line = d.line()
    assert line.startswith("device: ") and f"{keras.backend.backend()} backend" in line
    if d.gpu:
        assert d.gpus >= 1 and d.name
    else:
        assert d.name.startswith("CPU (") and "no GPU: " in line and "docs/backends.md" in line
        assert not d.auto_mixed_precision()  # float16 on a CPU is slower than float32
    # jit_compile auto: always under JAX (un-jitted JAX runs op by op), never under PyTorch
    assert d.auto_jit_compile() == {"jax": True, "torch": False, "tensorflow": d.gpu}[keras.backend.backend()]


@pytest.mark.backends
def test_apply_reports_the_device_and_the_resolved_settings(tmp_path):
    plan = _plan(tmp_path / "run")
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file), "--dry-run"],
                          capture_output=True, text=True, env=_env(keras.backend.backend()), cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = device()
    assert " ".join(d.line().split()) in " ".join(proc.stdout.split())  # rich may wrap the line
    assert f"mixed precision {'on' if d.auto_mixed_precision() else 'off'} (auto)" in proc.stdout
    assert f"jit_compile {'on' if d.auto_jit_compile() else 'off'} (auto)" in proc.stdout
    result = run(plan, dry_run=True)  # what --json prints
    assert result.device == d.line().removeprefix("device: ")
    assert result.jit_compile is d.auto_jit_compile() and result.mixed_precision is d.auto_mixed_precision()


def test_advise_prints_the_device_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "advise", str(DATA), "--similarity", "0.8",
                           "--out", str(tmp_path / "plan.yaml")],
                          capture_output=True, text=True, env=_env(keras.backend.backend()), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert " ".join(device().line().split()) in " ".join(proc.stdout.split())
