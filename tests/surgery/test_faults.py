"""Faults while `apply` runs: two runs on one directory, a full disk, a read-only data set, SIGKILL.

Real training on the bundled example (CIFAR-B, 5 classes x 60 images of 32 px) with the bundled CNN,
1-5 epochs a run. Faults are real where a test can make them (two processes, SIGKILL) and injected
where it cannot (a full disk: `OSError(ENOSPC)` from `graft.atomic`'s write or rename, the two
places every file of a run directory goes through). A CLI process is paused at a chosen write by a
small launcher that wraps the same two functions, so a kill lands exactly there.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from test_apply import DATA, ROOT, make_plan

import cli
import graft.atomic as atomic
from graft.atomic import is_temporary
from graft.errors import WriteError
from graft.lock import LOCK_NAME
from graft.plan import Phase, load_plan, save_plan
from surgery import run

FINAL_FILES = ("model.keras", "metrics.json", "history.csv", "curves.png", "confusion.png", "report.html")

LAUNCHER = r'''
"""`python cli.py ARGS...` that stops just before one write, chosen by environment variables:
PAUSE_AT (write | rename), PAUSE_BEFORE (a regex on the target file's name), PAUSE_NTH (which
match), PAUSE_MARKER (a file written when paused), PAUSE_UNTIL (a file that ends the pause; without
it, the process waits to be killed)."""
import os, re, sys, time
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import graft.atomic as atomic

at, pattern = os.environ.get("PAUSE_AT", "rename"), os.environ.get("PAUSE_BEFORE")
nth, seen = int(os.environ.get("PAUSE_NTH", "1")), 0


def pause(target):
    global seen
    if pattern and re.fullmatch(pattern, Path(target).name):
        seen += 1
        if seen == nth:
            Path(os.environ["PAUSE_MARKER"]).write_text(str(target))
            until = os.environ.get("PAUSE_UNTIL")
            while not (until and os.path.exists(until)):
                time.sleep(0.02)


write, rename = atomic._write, atomic._rename
if at == "write":  # the temporary file exists and is empty; its name is .TARGET.XXXXXXXX.tmp
    atomic._write = lambda fh, data: (pause(re.sub(r"^\.(.*)\.[a-z0-9_]{8}\.tmp$", r"\1", Path(fh.name).name)), write(fh, data))
else:  # the temporary file is complete, the target not yet replaced
    atomic._rename = lambda src, dst: (pause(dst), rename(src, dst))
sys.argv = ["cli.py", *sys.argv[2:]]
import cli
sys.exit(cli.main())
'''


@pytest.fixture(autouse=True)
def commit_every_epoch(monkeypatch):
    monkeypatch.setenv("GRAFT_CHECKPOINT_SECONDS", "0")  # so that a fault lands between two commits


def _plan_file(tmp_path: Path, phases: list[Phase], **kwargs) -> Path:
    return save_plan(make_plan(tmp_path / "run", phases, **kwargs), tmp_path / "plan.yaml")


def _launch(tmp_path: Path, *args: str, pause: dict | None = None) -> subprocess.Popen:
    launcher = tmp_path / "launch.py"
    if not launcher.exists():
        launcher.write_text(LAUNCHER)
    env = {**os.environ, **(pause or {})}
    return subprocess.Popen([sys.executable, str(launcher), str(ROOT), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=cwd)


def _wait_for(condition, what: str, procs=(), timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        for p in procs:
            assert p.poll() is None, f"the run ended before {what}: {p.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "state.json").read_text())["history"]


def _listing(root: Path) -> dict[str, tuple]:
    """Every file and folder below `root` with its size, modification time and mode."""
    out = {}
    for path in sorted([root, *(root.rglob("*") if root.is_dir() else [])]):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else None, st.st_mtime_ns, st.st_mode)
    return out


def assert_committed_checkpoint_usable(run_dir: Path) -> None:
    """state.json parses and every checkpoint it names exists and reads."""
    state = json.loads((run_dir / "state.json").read_text())
    ckpt = run_dir / "checkpoints"
    names = [state.get("weights_file")]
    if state.get("phase"):
        names += [state["phase"].get(k) for k in ("last_file", "optimizer_file", "best_file")]
    for name in filter(None, names):
        path = ckpt / name
        if name.endswith(".npz"):
            with np.load(path) as z:
                assert z.files
        else:
            with h5py.File(path, "r") as f:
                assert len(f.keys())


def assert_every_file_parses(run_dir: Path) -> None:
    """Every file of a run directory reads as what it claims to be; no temporary file is left."""
    for path in sorted(run_dir.rglob("*")):
        if path.is_dir():
            continue
        assert not is_temporary(path.name), f"a temporary file was left behind: {path}"
        if path.name == LOCK_NAME:
            assert path.read_text() == "" or path.read_text().startswith("pid ")
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".keras":
            keras.models.load_model(path, safe_mode=True)
        elif path.suffix == ".yaml":
            load_plan(path)
        elif path.suffix == ".csv":
            rows = list(csv.reader(path.read_text().splitlines()))
            assert len(rows) > 1 and len({len(r) for r in rows}) == 1, path
        elif path.suffix == ".png":
            import matplotlib.image

            assert matplotlib.image.imread(path).ndim == 3
        elif path.suffix == ".html":
            assert path.read_text().rstrip().endswith("</html>"), path
        elif path.suffix == ".h5":
            with h5py.File(path, "r"):
                pass
        elif path.suffix == ".npz":
            with np.load(path):
                pass
        elif path.name == "run.log":  # whole, timestamped lines (appended one write each)
            text = path.read_text()
            assert text.endswith("\n") and all(line[:4].isdigit() for line in text.splitlines()), path
        else:
            pytest.fail(f"unexpected file in the run directory: {path}")


# ------------------------------------------------------------------------------------------ two runs


def test_two_applies_at_once_one_refuses_and_neither_corrupts_the_other(tmp_path):
    phases = [Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-4)]
    plan_file = _plan_file(tmp_path, phases)
    run_dir, go = tmp_path / "run", tmp_path / "go"
    # Both start at once; each would pause at its first checkpoint, holding the run directory.
    procs = [_launch(tmp_path, "apply", str(plan_file), pause={
        "PAUSE_BEFORE": r"last-00-001\.weights\.h5", "PAUSE_MARKER": str(tmp_path / f"paused{k}"),
        "PAUSE_UNTIL": str(go)}) for k in range(2)]

    def settled():
        return (any(p.poll() is not None for p in procs)
                and any((tmp_path / f"paused{k}").exists() for k in range(2)))

    deadline = time.time() + 120
    while not settled():
        codes = [p.poll() for p in procs]
        ended = [p.communicate()[1][-2000:] for p, c in zip(procs, codes) if c is not None]
        assert None in codes and all(c in (None, 2) for c in codes), ended  # one waits, the other refuses
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
    winner = procs[0] if (tmp_path / "paused0").exists() else procs[1]
    loser = procs[1] if winner is procs[0] else procs[0]
    err = loser.communicate()[1]
    lines = [line for line in err.splitlines() if line.strip()]
    assert loser.returncode == 2 and len(lines) == 1 and lines[0].startswith("graft: error:"), err
    # Which refusal depends on whether the winner had committed its state.json when the loser looked.
    assert "is in use by another `graft apply`" in err or "already holds a run" in err, err

    # While the winner holds the directory, a resume of the same run is refused and changes nothing.
    before = _listing(run_dir)
    third = _cli("apply", str(plan_file), "--resume", cwd=tmp_path)
    assert third.returncode == 2, third.stderr
    assert f"is in use by another `graft apply` (pid {winner.pid} on " in third.stderr, third.stderr
    assert "--out DIR" in third.stderr and len(third.stderr.strip().splitlines()) == 1
    assert _listing(run_dir) == before

    go.write_text("")
    out, err = winner.communicate(timeout=120)
    assert winner.returncode == 0, err[-3000:]
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2]
    assert_every_file_parses(run_dir)
    with open(run_dir / LOCK_NAME) as fh:  # released at exit
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ------------------------------------------------------------------------------------------ full disk


def _no_space_at(monkeypatch, name: str, at: str) -> None:
    """Make `graft.atomic` fail with ENOSPC when it writes (or renames onto) the file `name`."""
    def fail_if(target: str) -> None:
        if Path(target).name == name or Path(target).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.undo()  # one fault at a time
    monkeypatch.setenv("GRAFT_CHECKPOINT_SECONDS", "0")
    write, rename = atomic._write, atomic._rename
    if at == "write":
        monkeypatch.setattr(atomic, "_write", lambda fh, data: (fail_if(fh.name), write(fh, data)))
    else:
        monkeypatch.setattr(atomic, "_rename", lambda src, dst: (fail_if(dst), rename(src, dst)))


def _apply_in_process(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(["apply", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_full_disk_during_a_checkpoint_and_the_final_writes_is_clear_and_resume_finishes(
        tmp_path, monkeypatch, capsys):
    phases = [Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=2, learning_rate=1e-4)]
    plan_file = _plan_file(tmp_path, phases)
    run_dir = tmp_path / "run"

    # 1. The disk fills while the optimizer state of the last epoch is written.
    _no_space_at(monkeypatch, "optimizer-01-002.npz", "write")
    rc, _, err = _apply_in_process(capsys, str(plan_file), "--json")  # --json: no progress lines
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("graft: error: apply stopped: cannot write "), err
    for needle in (str(run_dir / "checkpoints" / "optimizer-01-002.npz"), "no space left on device",
                   "last committed checkpoint (epoch 2", "free space on the disk",
                   f"(`python cli.py apply {plan_file} --resume`)"):
        assert needle in lines[0], (needle, lines[0])
    assert len(_history(run_dir)) == 2
    assert_committed_checkpoint_usable(run_dir)
    assert not [p for p in run_dir.rglob("*") if is_temporary(p.name)]

    # 2. Resumed, the disk fills again while the model is saved.
    _no_space_at(monkeypatch, "model.keras", "rename")
    rc, _, err = _apply_in_process(capsys, str(plan_file), "--resume", "--json")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "cannot write " + str(run_dir / "model.keras") + ": no space left on device" in err, err
    assert "Training is complete and committed (3 epoch(s))" in err and "--resume" in err
    assert not (run_dir / "model.keras").exists()
    assert_committed_checkpoint_usable(run_dir)

    # 3. And once more while the report is written (from Python: a WriteError, also an OSError).
    _no_space_at(monkeypatch, "report.html", "write")
    with pytest.raises(WriteError, match="report.html: no space left on device") as caught:
        run(plan_file, resume=True)
    assert caught.value.no_space and caught.value.path == str(run_dir / "report.html")
    assert isinstance(caught.value, OSError)
    assert not json.loads((run_dir / "state.json").read_text())["finished"]

    # 4. Space is back: the resume finishes with the planned epochs, and every file parses.
    monkeypatch.undo()
    monkeypatch.setenv("GRAFT_CHECKPOINT_SECONDS", "0")
    rc, out, err = _apply_in_process(capsys, str(plan_file), "--resume", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["resumed"] and result["epochs"] == 3
    assert [r["epoch"] for r in _history(run_dir)] == [1, 2, 3]
    assert not (run_dir / "checkpoints").exists()
    assert_every_file_parses(run_dir)


def test_full_disk_before_the_first_commit_leaves_a_directory_a_new_run_can_use(tmp_path, monkeypatch):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    _no_space_at(monkeypatch, "state.json", "write")
    with pytest.raises(WriteError, match="Nothing was trained yet; free space on the disk"):
        run(plan)
    # no plan.yaml without state: only the lock and the log of the failed start are left
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {LOCK_NAME, "run.log"}
    monkeypatch.undo()
    result = run(plan)  # no --resume needed, no "not empty" refusal
    assert result.model_path.exists() and len(result.history) == 1


def test_resume_of_a_finished_run_clears_what_a_kill_after_the_last_commit_left(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    run(plan)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir()  # killed after state.json said finished, before the clean-up
    (run_dir / "checkpoints" / "phase-00.weights.h5").write_bytes(b"")
    (run_dir / ".metrics.json.abcd1234.tmp").write_text('{"accura')  # and a write cut short earlier
    done = run(plan, resume=True)
    assert done.resumed and done.metrics["accuracy"] > 0.2
    assert not (run_dir / "checkpoints").exists() and not (run_dir / ".metrics.json.abcd1234.tmp").exists()
    assert_every_file_parses(run_dir)


# ------------------------------------------------------------------------------------------ read-only data


def test_a_read_only_data_set_is_never_written(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA, data)  # copy2: the copy keeps the originals' times
    model = tmp_path / "model.keras"
    shutil.copy2(ROOT / "examples" / "models" / "cifar_a_cnn.keras", model)
    for path in [data, *data.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    phases = [Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-4)]
    plan = make_plan(tmp_path / "run", phases, augmentation={"flip": "horizontal"})
    plan.data.path, plan.model.source = str(data), str(model)
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    inputs = {"data": data, "model": model, "plan": plan_file}
    # Tests run as root, where the mode bits do not stop a write: compare every entry instead.
    before = {k: _listing(v) for k, v in inputs.items()}
    result = run(plan_file)
    assert result.model_path.parent == tmp_path / "run" and len(result.history) == 2
    assert {k: _listing(v) for k, v in inputs.items()} == before
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


# ------------------------------------------------------------------------------------------ SIGKILL


def test_sigkill_during_training_a_checkpoint_and_the_final_writes_then_resume_finishes(tmp_path):
    rng = random.Random(13)
    phases = [Phase(name="head", trainable="head", epochs=2, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=3, learning_rate=1e-4)]
    plan_file = _plan_file(tmp_path, phases, augmentation={"flip": "horizontal"})
    run_dir = tmp_path / "run"
    state = run_dir / "state.json"

    # 1. During training: after a seeded number of committed epochs and a seeded delay.
    epochs, delay = rng.randint(1, 2), rng.uniform(0.0, 0.3)
    proc = _launch(tmp_path, "apply", str(plan_file))
    _wait_for(lambda: state.exists() and len(json.loads(state.read_text())["history"]) >= epochs,
              f"epoch {epochs}", [proc])
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    _kill(proc)
    assert 1 <= len(_history(run_dir)) <= 4  # at least one epoch, so one checkpoint, left to run
    assert_committed_checkpoint_usable(run_dir)

    # 2. During a checkpoint write: the temporary file empty (write) or complete (rename).
    kind, at = rng.choice([("last", "rename"), ("optimizer", "write"), ("optimizer", "rename")])
    done = len(_history(run_dir))
    marker = tmp_path / "paused-checkpoint"
    proc = _launch(tmp_path, "apply", str(plan_file), "--resume", pause={
        "PAUSE_AT": at, "PAUSE_BEFORE": rf"{kind}-\d\d-\d\d\d\..+", "PAUSE_MARKER": str(marker)})
    _wait_for(marker.exists, f"a {kind} checkpoint write", [proc])
    _kill(proc)
    assert [p for p in (run_dir / "checkpoints").iterdir() if is_temporary(p.name)]  # the kill left it
    assert len(_history(run_dir)) == done  # that epoch was not committed
    assert_committed_checkpoint_usable(run_dir)

    # 3. During the final writes.
    name = rng.choice(FINAL_FILES)
    marker = tmp_path / "paused-final"
    proc = _launch(tmp_path, "apply", str(plan_file), "--resume", pause={
        "PAUSE_BEFORE": re.escape(name), "PAUSE_MARKER": str(marker)})
    _wait_for(marker.exists, f"the write of {name}", [proc])
    _kill(proc)
    assert [p for p in run_dir.iterdir() if is_temporary(p.name)]
    assert not json.loads(state.read_text())["finished"] and len(_history(run_dir)) == 5
    assert_committed_checkpoint_usable(run_dir)

    # 4. The resume finishes with the planned epochs; every file parses, no temporary file is left.
    resumed = _cli("apply", str(plan_file), "--resume", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = json.loads(resumed.stdout)
    assert out["resumed"] and out["epochs"] == 5
    history = _history(run_dir)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in history] == ["head"] * 2 + ["finetune"] * 3
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "features").exists()
    assert_every_file_parses(run_dir)
