"""The run directory: which folder a run writes to, whether this call may use it (resume, same plan,
no foreign files), its `state.json` commits, and the files written at the end. Every write is
atomic; a failed write says what the folder still holds and how to continue."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
from pathlib import Path

import keras

from graft.atomic import (
    NO_SPACE,
    as_write_error,
    atomic_path,
    is_temporary,
    remove_temporaries,
    write_json,
)
from graft.errors import InputError, PlanError, WriteError
from graft.lock import LOCK_NAME
from graft.plan import save_plan
from surgery.train import read_state

#: The run's progress log (surgery/run_log.py), appended from the start of a run.
LOG_NAME = "run.log"


def plan_hash(plan) -> str:
    """Hash of what decides the training (not outputs, provenance or the human-facing parts)."""
    d = plan.to_dict()
    d = {k: d[k] for k in ("model", "surgery", "training", "data")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def choose(plan, out_dir, resume: bool, dry_run: bool) -> tuple[Path, dict | None]:
    """The run directory and the state of the run it holds (None when none): `out_dir`, else the
    plan's directory or the next free `DIR-N`. A dry run only reads.

    Raises:
        InputError, PlanError: the folder is a file, holds foreign files, or holds a run that this
            call may not continue.
    """
    run_dir = Path(out_dir if out_dir is not None else plan.outputs.dir)
    if dry_run:
        return run_dir, (read_state(run_dir) if run_dir.is_dir() else None)
    run_dir = _choose_run_dir(run_dir, explicit=out_dir is not None, resume=resume)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} is a file; choose a folder with --out DIR (nothing was "
                         "overwritten)")
    return run_dir, existing_run(run_dir, plan_hash(plan), resume)


def create(run_dir: Path) -> None:
    """Make the run directory (a failure is a `WriteError`)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise as_write_error(run_dir, exc) from exc


def begin(run_dir: Path, plan, resume: bool) -> dict | None:
    """Under the lock: the run's state, checked again (another apply may have started or finished
    since); what a killed write left is cleared. None when the folder holds no run yet."""
    plan_sha = plan_hash(plan)
    state = existing_run(run_dir, plan_sha, resume)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "features"):
        remove_temporaries(folder)  # a process killed mid-write leaves its temporary file
    return state


def new_state(run_dir: Path, plan) -> dict:
    """The first commit of a new run: the resolved plan and `state.json`."""
    state = {"graft_run": 1, "plan_sha": plan_hash(plan), "phases_done": 0, "history": [], "phases": [],
             "weights_file": None, "fallback": None, "finished": False, "phase": None}
    resolved = copy.deepcopy(plan)
    resolved.outputs.dir = str(run_dir)
    resolved.data.path = str(Path(plan.data.path).resolve())
    try:
        save_plan(resolved, run_dir / "plan.yaml")
        write_json(run_dir / "state.json", state)
    except OSError:  # no state.json: leave nothing that looks like a run
        (run_dir / "plan.yaml").unlink(missing_ok=True)
        raise
    return state


def forget_scratch(run_dir: Path) -> None:
    """Remove the checkpoints and cached features: the run is finished."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(run_dir / "features", ignore_errors=True)


def finish(run_dir: Path, state: dict, timings: dict) -> None:
    """The last commit: the run is finished; its checkpoints and features go."""
    state["finished"] = True
    state["timings"] = timings
    write_json(run_dir / "state.json", state)
    forget_scratch(run_dir)


def existing_run(run_dir: Path, plan_sha: str, resume: bool) -> dict | None:
    """The state of the run in `run_dir` (None when there is none), after checking that this call
    may use the folder: it holds no foreign files, and a run there is continued only with `resume`
    and the same plan."""
    if not run_dir.is_dir():
        return None
    state = read_state(run_dir)
    # the lock and the log of a start that never committed (a full disk before the first state) are ours
    if state is None and any(p.name not in (LOCK_NAME, LOG_NAME) and not is_temporary(p.name)
                             for p in run_dir.iterdir()):
        raise InputError(f"run directory {run_dir} is not empty and holds no graft run; choose another "
                         "with --out DIR (nothing was overwritten)")
    if state is not None and not resume:
        raise InputError(f"run directory {run_dir} already holds a run; continue it with --resume or choose "
                         "another with --out DIR (nothing was overwritten)")
    if state is not None and state.get("plan_sha") != plan_sha:
        raise PlanError(f"the run in {run_dir} was started from a different plan (training, data, model or "
                        "surgery changed); apply the original plan with --resume, or start a new run with "
                        "--out DIR")
    return state


@contextlib.contextmanager
def explain_write_errors(run_dir: Path, phases: int):
    """Turn a failed write (a full disk, ...) into a `WriteError` that also says what the run
    directory still holds and how to continue."""
    try:
        yield
    except OSError as exc:
        if not isinstance(exc, WriteError) and exc.errno not in NO_SPACE:
            raise  # not a write: a checkpoint that will not read, a file that vanished
        err = as_write_error(Path(exc.filename or run_dir), exc)
        raise WriteError(f"apply stopped: {err}. {_committed(run_dir, phases)}; "
                         f"{'free space on the disk' if err.no_space else 'fix that'}, then continue with "
                         "--resume", path=err.path, no_space=err.no_space) from exc


def _committed(run_dir: Path, phases: int) -> str:
    """What the last commit of `state.json` in `run_dir` holds, in words."""
    try:
        state = read_state(run_dir)
    except (OSError, ValueError):
        state = None
    if state is None:
        return "Nothing was trained yet"
    epochs = len(state.get("history", []))
    if state.get("phases_done", 0) >= phases:
        return (f"Training is complete and committed ({epochs} epoch(s)); a resume redoes only the evaluation "
                "and the output files")
    return f"The last committed checkpoint (epoch {epochs}, in state.json) is kept"


def _numbered(base: Path):
    yield base
    k = 2
    while True:
        yield base.with_name(f"{base.name}-{k}")
        k += 1


def _choose_run_dir(base: Path, explicit: bool, resume: bool) -> Path:
    """Where a run goes. The plan's directory, or when a finished run holds it (and no --out was
    given), the first free `DIR-2`, `DIR-3`, ...; with `resume`, the newest of those holding a run."""
    if explicit:
        return base
    taken = []
    for d in _numbered(base):
        if not d.exists():
            break
        taken.append(d)
    if resume:
        return taken[-1] if taken else base
    if not taken:
        return base
    last = read_state(taken[-1])
    if last is None or not last.get("finished"):
        return taken[-1]  # an unfinished run (or a foreign folder or file): let the checks explain
    return base.with_name(f"{base.name}-{len(taken) + 1}")


def history_columns(rows: list[dict]) -> dict[str, list]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: [r.get(k) for r in rows] for k in keys}


def save_model(model: keras.Model, path: Path) -> Path:
    """Save an uncompiled copy (layers shared) so the file loads in safe mode without graft."""
    plain = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp:
        plain.save(tmp)
    return path


__all__ = ["begin", "choose", "create", "existing_run", "explain_write_errors", "finish", "forget_scratch",
           "history_columns", "new_state", "plan_hash", "save_model"]
