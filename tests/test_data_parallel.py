"""`training.distribution`: what each backend can do, and `data_parallel` (Keras's own
`keras.distribution.DataParallel`, JAX) over several processes.

The two-process test starts two local CPU processes under KERAS_BACKEND=jax that train one plan
together, next to a one-process run of the same recipe; it runs in `.ci/run`'s
`KERAS_BACKEND=jax pytest -m backends` step and skips under the other backends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import pytest

from graft.errors import InputError, PlanError
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
from surgery import distribute
from surgery.run_data import RunData

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar_b"  # 5 classes x 60 images: 180 train, 60 validation, 60 test
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"

#: How far the two-process accuracy may be from the one-process one: 0.15 on 60 test images is
#: about 2.4 binomial standard errors of one run (sqrt(0.6 * 0.4 / 60) = 0.063). The runs differ only
#: in which images share a batch (each process shuffles its own half), so this is training noise.
NOISE = 0.15
TIMEOUT = 300  # seconds for the whole test; the children are killed past it


def _plan(run_dir: Path, distribution: str) -> Plan:
    plan = Plan(
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(cut=None, bn="freeze", head=HeadPlan(classes=5, dropout=0.0)),
        # bottleneck off in both runs: a distribution never uses it, so both train the same way
        training=TrainingPlan(phases=[Phase(name="head", trainable="head", epochs=4, learning_rate=3e-3,
                                            solver="gradient")],
                              bottleneck="off", distribution=distribution),
        data=DataPlan(path=str(DATA), input_size=[32, 32], channels=3, validation_split=0.2, test_split=0.2,
                      batch_size=32, seed=0),
        outputs=OutputPlan(dir=str(run_dir)),
    )
    return Plan.from_dict(plan.to_dict())


def _env(backend: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    return {**env, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _apply(plan_file: Path, env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True)  # its own process group, killed whole on failure


def _finish_all(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, tuple[int, str, str]]:
    """Every process's (exit code, stdout, stderr); all of them killed if one is still running at the
    deadline (a process waiting for a peer that died would wait forever)."""
    deadline, out = time.monotonic() + timeout, {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out[name] = (proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return out


def _result(name: str, run: tuple[int, str, str]) -> dict:
    rc, stdout, stderr = run
    assert rc == 0, f"{name} exited {rc}:\n{stderr[-3000:]}"
    return json.loads(stdout[stdout.index("{"):])


@pytest.mark.backends
def test_two_processes_train_one_plan_and_process_0_writes_it(tmp_path):
    if keras.backend.backend() != "jax":
        pytest.skip("data_parallel runs under KERAS_BACKEND=jax (.ci/run's backends step)")
    pytest.importorskip("jax")
    save_plan(_plan(tmp_path / "two", "data_parallel"), tmp_path / "two.yaml")
    save_plan(_plan(tmp_path / "one", "none"), tmp_path / "one.yaml")
    cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{_free_port()}",
               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    t0 = time.monotonic()
    procs = {"one process": _apply(tmp_path / "one.yaml", _env("jax"), tmp_path)}
    for i in range(2):
        procs[f"process {i}"] = _apply(tmp_path / "two.yaml",
                                       _env("jax", **cluster, KERAS_DISTRIBUTION_PROCESS_ID=str(i)), tmp_path)
    runs = _finish_all(procs, TIMEOUT)
    seconds = time.monotonic() - t0
    one, p0, p1 = (_result(name, runs[name]) for name in ("one process", "process 0", "process 1"))

    # one model, trained together: both processes evaluate the same weights and report the same run
    # (each process measures its own clock and memory; everything the model decides must agree)
    per_process = ("time", "memory")
    m0, m1 = ({k: v for k, v in p["metrics"].items() if k not in per_process} for p in (p0, p1))
    assert m0 == m1 and p0["epochs"] == p1["epochs"] == 4
    assert p0["run_dir"] == p1["run_dir"] == str(tmp_path / "two")
    # saved once: process 0 wrote the run directory; process 1's checkpoint folder is gone
    assert (tmp_path / "two" / "model.keras").is_file() and (tmp_path / "two" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "one.yaml", "two", "two.yaml"]
    assert len(list(tmp_path.rglob("model.keras"))) == 2  # two's and one's, nothing else
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["accuracy"] == p0["metrics"]["accuracy"]

    a1, a2 = one["metrics"]["accuracy"], p0["metrics"]["accuracy"]
    print(f"test accuracy on {p0['metrics']['n_samples']} images: one process {a1:.3f}, two processes "
          f"{a2:.3f}; {seconds:.1f} s for the three processes")
    assert a1 > 0.4 and a2 > 0.4  # both learned (chance is 0.2)
    assert abs(a1 - a2) <= NOISE, f"one process {a1:.3f}, two processes {a2:.3f}"


# What each backend can do: refused before anything runs, with what to use instead.

REFUSALS = [  # (distribution, backend, what the message must say)
    ("data_parallel", "tensorflow", "Use mirrored (every GPU of this machine, tf.distribute), or run with "
                                    "KERAS_BACKEND=jax"),
    ("data_parallel", "torch", "Run with KERAS_BACKEND=jax"),
    ("mirrored", "jax", "Use data_parallel"),
    ("mirrored", "torch", "KERAS_BACKEND=jax (data_parallel)"),
]


@pytest.mark.parametrize(("distribution", "backend", "instead"), REFUSALS)
def test_a_distribution_the_backend_cannot_do_says_what_to_use_instead(distribution, backend, instead):
    with pytest.raises(PlanError, match="needs the") as exc:
        distribute.check(distribution, backend)
    assert f"training.distribution: {distribution}" in str(exc.value) and f"KERAS_BACKEND is {backend}" in str(exc.value)
    assert instead in str(exc.value)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_what_each_backend_can_do(backend):
    for distribution in distribute.SUPPORTED[backend]:
        distribute.check(distribution, backend)
    with pytest.raises(PlanError, match="keras-team/keras#20585.*data_parallel with KERAS_BACKEND=jax"):
        distribute.check("multi_worker", backend)


@pytest.mark.parametrize(("distribution", "backend", "instead"), [REFUSALS[0], REFUSALS[2]])
def test_the_cli_refuses_it_with_exit_2_before_anything_runs(tmp_path, distribution, backend, instead):
    if not importlib.util.find_spec(backend):
        pytest.skip(f"{backend} is not installed (pip install -e '.[backends]')")
    plan_file = save_plan(_plan(tmp_path / "run", distribution), tmp_path / "plan.yaml")
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file)], capture_output=True,
                          text=True, env=_env(backend), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"graft: error: training.distribution: {distribution} needs the")
    assert instead in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_several_processes_need_data_parallel(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "localhost:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    with pytest.raises(PlanError, match="only data_parallel trains one model over several processes"):
        distribute.check("none", "tensorflow")
    distribute.check("data_parallel", "jax")


@pytest.mark.parametrize(("env", "message"), [
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "KERAS_DISTRIBUTION_NUM_PROCESSES is 'two'; expected a whole"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "2",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "h:1"}, "expected a process id from 0 to 1"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"},
     "KERAS_DISTRIBUTION_JOB_ADDRESSES is not set; give process 0's host:port"),
])
def test_the_cluster_variables_are_checked(env, message):
    with pytest.raises(InputError, match=message):
        distribute.cluster(env)


def test_the_cluster_from_the_environment():
    assert distribute.cluster({}) == distribute.Cluster(None, 1, 0)
    env = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
           "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert distribute.cluster(env) == distribute.Cluster("10.0.0.1:1234", 2, 1)


def test_each_process_gets_an_equal_disjoint_share(tmp_path, monkeypatch):
    from surgery.run_data import run_data

    plan = _plan(tmp_path / "run", "data_parallel")
    plan.data.skip_corrupt = False  # (the bundled images all decode)
    data: RunData = run_data(plan)
    assert distribute.shard(_plan(tmp_path / "run", "none"), data)[:2] == (_plan(tmp_path / "run", "none"), data)
    # two processes of one device each (what the two-process test runs)
    monkeypatch.setattr(keras.distribution, "list_devices", lambda: ["cpu:0", "cpu:1"])
    shares = []
    for pid in range(2):
        monkeypatch.setattr(distribute, "_started", distribute.Cluster("localhost:1", 2, pid))
        shares.append(distribute.shard(plan, data))
    (plan0, d0, notes0), (plan1, d1, _) = shares
    assert plan0.data.batch_size == d0.spec.batch_size == 16 and plan.data.batch_size == 32
    for split in ("train", "val"):
        a, b, whole = getattr(d0, split), getattr(d1, split), getattr(data, split)
        assert len(a[0]) == len(b[0]) == len(whole[0]) // 2 and not set(a[0]) & set(b[0])
        assert set(a[0]) | set(b[0]) <= set(whole[0])
        label = dict(zip(*whole))
        assert all(label[f] == y for f, y in zip(*a)) and all(label[f] == y for f, y in zip(*b))
    assert d0.test == data.test and notes0 == []  # 180 and 60 images split evenly
    odd = RunData(data.classes, (data.train[0][:-1], data.train[1][:-1]), data.val, data.test, data.spec, [])
    _, d0, notes = distribute.shard(plan, odd)
    assert len(d0.train[0]) == 89 and notes == ["data_parallel: 1 of 179 training image(s) left out so that "
                                                "each of the 2 devices gets as many"]
    plan.data.batch_size = 33
    with pytest.raises(PlanError, match="data.batch_size is 33; data_parallel splits each batch over 2 devices"):
        distribute.shard(plan, data)
