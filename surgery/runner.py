"""Run a plan end to end: data, surgery, training phases, evaluation, run directory.

    from surgery import run
    result = run("plan.yaml")                 # or run(plan, out_dir="runs/x", resume=True)
    print(result.metrics["accuracy"], result.model_path)

The run directory (`plan.outputs.dir`, or `out_dir`) receives `plan.yaml` (the resolved plan),
`state.json` (progress; what `--resume` reads), `checkpoints/` (while running), and at the end
`model.keras`, `metrics.json`, `history.csv`, `curves.png`, `confusion.png`, `plan.png` and
`report.html`. Every file is written atomically. See docs/apply.md.

`run` is the story; each step is a module: `run_data` (listing, split, pipeline spec), `prepare`
(the model and its surgery), `fallback` (scratch-vs-pretrained trial), `phase` (one training phase,
its checkpoints and resume), `evaluation` (metrics and the accuracy estimate), `run_dir` (the folder,
its state and commits), `report` and `plan_drawing` (what is written at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras

from graft.atomic import write_json
from graft.hardware import device
from graft.lock import hold_lock
from graft.plan import Plan, load_plan
from surgery import distribute, guard, refit
from surgery import run_dir as rundir
from surgery.evaluation import evaluate_run
from surgery.fallback import initial_model, scratch_trial
from surgery.memory import describe_memory, memory_record
from surgery.phase import PhaseReport, dry_run_phases, train_phase
from surgery.plan_drawing import draw_into_run
from surgery.prepare import Prepared, prepare_model, to_mixed_precision, trainable_region
from surgery.progress import Reporter
from surgery.report import write_run_outputs
from surgery.run_data import RunData, run_data
from surgery.run_log import RunLog
from surgery.run_time import describe_time, expected_line, time_record

# Streamed data sets skip undecodable files, so their length is unknown until an epoch ends; Keras
# then warns that the input "ran out of data" at the end of every epoch. That is expected here.
warnings.filterwarnings("ignore", message="Your input ran out of data")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed, but will be ignored")  # graft shuffles itself


@dataclass
class RunResult:
    """The outcome of `run`.

    Attributes:
        run_dir: where everything was written.
        model_path: the trained model (`model.keras`; loads with `safe_mode=True`), or None for a dry run.
        metrics: `metrics.json`'s content (empty for a dry run).
        history: one dict per epoch run (phase, epoch, loss, accuracy, val_loss, ...).
        phases: one `PhaseReport` per phase.
        timings: seconds per step (load, features, each phase, evaluate, write).
        splits: images per split (`train`, `val`, `test`).
        fallback: the scratch-vs-pretrained trial, when the plan asked for one.
        resumed: whether this call continued an interrupted run.
        dry_run: whether nothing was trained.
        summary: the edited model's summary.
        notes: things worth knowing (skipped files, settings not applied and why).
        device: the device trained on, the Keras backend, and why (`graft.hardware.Device.line`).
        mixed_precision: whether float16 compute was used (`training.mixed_precision` resolved).
        jit_compile: whether the training step was compiled (`training.jit_compile` resolved).
    """

    run_dir: Path
    model_path: Path | None
    metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    phases: list[PhaseReport] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    fallback: dict | None = None
    resumed: bool = False
    dry_run: bool = False
    summary: str = ""
    notes: list[str] = field(default_factory=list)
    device: str = ""
    mixed_precision: bool = False
    jit_compile: bool = False


def run(plan, out_dir: str | os.PathLike | None = None, *, resume: bool = False, dry_run: bool = False,
        safe_mode: bool | None = None, reporter: Reporter | None = None,
        stop_after_epochs: int | None = None, runner_up: Plan | None = None) -> RunResult:
    """Apply a plan: surgery, training phases, evaluation, and the run directory.

    Args:
        plan: a `graft.plan.Plan` or the path of a `plan.yaml`.
        out_dir: the run directory; default `plan.outputs.dir`.
        resume: continue the interrupted run in `out_dir` from its last completed epoch.
        dry_run: load the data listing and the model, do the surgery, report; train and write nothing.
        safe_mode: override `plan.model.safe_mode` when loading a model file.
        reporter: receives progress messages and per-epoch results.
        stop_after_epochs: stop (as if interrupted) after this many epochs in total; for tests and
            for splitting a long run across sessions, then `resume=True`.
        runner_up: the plan drawn beside this one in `plan.png`; default: the registered finder's
            (`graft.runner_up.find`: the advisor's runner-up from the plan's rules
            file once `advisor` is imported), else the plan is drawn alone.

    Returns:
        `RunResult`.

    Raises:
        PlanError, DatasetError, ModelLoadError, InputError: the plan, data or model is unusable;
            the run directory already holds another run (and `resume` is not set).
    """
    reporter = reporter or Reporter()
    plan = load_plan(plan) if not isinstance(plan, Plan) else plan
    check_backend(plan)
    t0 = time.perf_counter()
    data = run_data(plan)
    run_dir, state = rundir.choose(plan, out_dir, resume, dry_run)
    strategy = _strategy_scope(plan.training.distribution) if not dry_run else None
    if not distribute.writes_outputs():  # another process of a data_parallel run: process 0 writes run_dir
        run_dir, state = rundir.choose(plan, distribute.worker_dir(run_dir), resume, dry_run)
    own_plan, own_data, shard_notes = distribute.shard(plan, data)  # this process's images (data_parallel)

    def scope():
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    dev = device()
    mixed = _setting(plan.training.mixed_precision, dev.auto_mixed_precision())
    jit = _setting(plan.training.jit_compile, dev.auto_jit_compile())
    notes = list(data.notes) + shard_notes
    prepared = _prepare(plan, safe_mode, mixed, scope)
    timings: dict[str, float] = {"load_and_surgery": time.perf_counter() - t0}
    splits = {"train": len(data.train[0]), "val": len(data.val[0]), "test": len(data.test[0])}
    result = RunResult(run_dir=run_dir, model_path=None, splits=splits, resumed=state is not None,
                       summary=_summary(prepared.model), notes=notes + prepared.notes,
                       device=dev.line().removeprefix("device: "), mixed_precision=mixed, jit_compile=jit)
    if dry_run:
        result.dry_run, result.phases = True, dry_run_phases(plan, prepared)
        return result

    rundir.create(run_dir)
    # One apply at a time per run directory, held to the end; the kernel drops it if we are killed.
    with hold_lock(run_dir, "`graft apply`"), rundir.explain_write_errors(run_dir, len(plan.training.phases)):
        state = rundir.begin(run_dir, plan, resume)
        result.resumed = state is not None
        reporter = RunLog(run_dir / rundir.LOG_NAME, reporter)  # the same progress, as lines in the run directory
        reporter.message(expected_line(plan) or "expected time: none (the plan holds no estimate from advise)")
        state = state if state is not None else rundir.new_state(run_dir, plan)
        if state.get("finished"):
            reporter.message(f"{run_dir} already finished; nothing to resume")
            rundir.forget_scratch(run_dir)  # a kill after the last commit
            return _finished_result(run_dir, result, state)
        # The fallback trial: does pretrained initialization beat random on this data?
        if plan.training.fallback is not None and state.get("fallback") is None:
            with scope():
                state["fallback"] = scratch_trial(own_plan, own_data, reporter, jit, safe_mode)
            write_json(run_dir / "state.json", state)
        prepared = initial_model(plan, prepared, state, notes, scope)
        if state.get("weights_file"):
            prepared.model.load_weights(run_dir / "checkpoints" / state["weights_file"])
        if not _train_phases(own_plan, prepared, own_data, run_dir, state, reporter, jit, notes, stop_after_epochs, scope):
            result.history, result.notes = state["history"], notes  # stopped on request (stop_after_epochs)
            return result
        guard.check(plan, prepared.model, data, state, run_dir, notes, distributed=_mirrored(plan))
        metrics = None
        if refit.applies(plan, data):  # the held-out images join the head, scored before they do
            t1 = time.perf_counter()
            if not data.test[0]:
                metrics = evaluate_run(plan, prepared.model, data, state, notes, distributed=_mirrored(plan),
                                       reporter=reporter)
            refit.refit_head(plan, prepared, data, state, notes, run_dir)
            state.setdefault("timings", {})["refit_head"] = time.perf_counter() - t1
        timings.update(state.get("timings", {}))
        _finish(plan, prepared, data, run_dir, state, result, timings, notes, t0,
                distributed=_mirrored(plan), safe_mode=safe_mode, runner_up=runner_up, metrics=metrics,
                reporter=reporter)
        return result


def _prepare(plan, safe_mode: bool | None, mixed: bool, scope) -> Prepared:
    """The model with its surgery (seeded: the new head's weights), in float16 compute when `mixed`;
    a bad `trainable` in any phase fails now, before the run directory exists."""
    keras.utils.set_random_seed(plan.data.seed)  # the new head's initial weights, dropout, shuffles
    with scope():
        prepared = prepare_model(plan, safe_mode=safe_mode)
        if mixed:
            prepared = to_mixed_precision(prepared)
    graph = prepared.layer_graph()
    for ph in plan.training.phases:
        trainable_region(graph, prepared.head, ph.trainable)
    return prepared


def _train_phases(plan, prepared: Prepared, data: RunData, run_dir: Path, state: dict, reporter: Reporter,
                  jit: bool, notes: list[str], stop_after_epochs: int | None, scope) -> bool:
    """Every phase not yet done, in order; False when `stop_after_epochs` stopped the run."""
    total_done = len(state["history"])
    for i, ph in enumerate(plan.training.phases):
        if i < state["phases_done"]:
            continue
        with scope():
            report = train_phase(plan, i, ph, prepared, data, run_dir, state, reporter, jit, notes,
                                  stop_after_epochs, total_done)
        if report is None:
            return False
        total_done = len(state["history"])
        if i == 0:
            guard.keep_head_only(plan, prepared.model, run_dir)
    return True


def _finish(plan, prepared: Prepared, data: RunData, run_dir: Path, state: dict, result: RunResult,
            timings: dict, notes: list[str], t0: float, *, distributed: bool, safe_mode: bool | None,
            runner_up: Plan | None, metrics: dict | None = None, reporter: Reporter | None = None) -> None:
    """Evaluate on the test split (else validation; `metrics` when that was done before the head's
    refit), write every output file, commit the end."""
    t1 = time.perf_counter()
    if metrics is None:
        metrics = evaluate_run(plan, prepared.model, data, state, notes, distributed=distributed, reporter=reporter)
    if state.get("refit"):
        metrics["refit"] = state["refit"]
    timings["evaluate"] = time.perf_counter() - t1
    metrics["memory"] = memory_record(data, state)  # peak resident memory through evaluation
    metrics["time"] = time_record(plan, time.perf_counter() - t0, result.resumed)
    if not distribute.writes_outputs():  # every process evaluates (a collective); process 0 writes
        result.run_dir, result.metrics, result.history = distribute.drop_worker_dir(run_dir), metrics, state["history"]
        result.phases, result.notes = [PhaseReport(**p) for p in state["phases"]], notes
        return
    t2 = time.perf_counter()
    model_path = rundir.save_model(prepared.model, run_dir / "model.keras")
    _, drawing_note = draw_into_run(plan, run_dir, safe_mode, runner_up)  # plan.png, which the report shows
    notes.extend([drawing_note] if drawing_note else [])
    write_run_outputs(run_dir, history=rundir.history_columns(state["history"]),
                      phases=[dict(p) for p in state["phases"]], metrics=metrics, plan=plan.to_dict(),
                      model_summary=result.summary, timings={**timings, "total": time.perf_counter() - t0},
                      extra={"preprocessing": prepared.preprocessing, "splits": result.splits,
                             "fallback": state.get("fallback"), "guard": state.get("guard"),
                             "refit": state.get("refit"),
                             "mixed_precision": result.mixed_precision,
                             "jit_compile": result.jit_compile, "device": result.device,
                             "backend": keras.backend.backend(), "distribution": plan.training.distribution,
                             "resumed": result.resumed, **describe_memory(metrics["memory"]),
                             "time": describe_time(metrics["time"]).removeprefix("time: "), "notes": notes})
    timings["write"] = time.perf_counter() - t2
    rundir.finish(run_dir, state, timings)
    if isinstance(reporter, RunLog):  # the log's last line; the CLI prints it in its summary
        peak = metrics["memory"]["peak_rss_mib"]
        reporter.write(f"finished: {describe_time(metrics['time'])}; peak memory {peak or 0:,.0f} MiB")
    result.model_path, result.metrics, result.history = model_path, metrics, state["history"]
    result.phases = [PhaseReport(**p) for p in state["phases"]]
    result.timings, result.fallback, result.notes = timings, state.get("fallback"), notes


def _finished_result(run_dir: Path, result: RunResult, state: dict) -> RunResult:
    result.model_path = run_dir / "model.keras"
    result.metrics = json.loads((run_dir / "metrics.json").read_text())
    result.history = state["history"]
    result.phases = [PhaseReport(**p) for p in state["phases"]]
    result.fallback = state.get("fallback")
    result.timings = state.get("timings", {})
    return result


def _summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda s, **_: lines.append(s), line_length=100)
    return "\n".join(lines)


def _setting(value: str, auto: bool) -> bool:
    return {"on": True, "off": False}.get(value, auto)


def check_backend(plan) -> None:
    """Refuse, before anything runs, what the plan asks for that the active Keras backend cannot do.

    Raises:
        PlanError: a `training.distribution` the backend cannot do (`mirrored` is TensorFlow's,
            `data_parallel` JAX's; `surgery.distribute.check`), with what to use instead.
    """
    distribute.check(plan.training.distribution)


def _mirrored(plan) -> bool:
    """Whether the model lives under `tf.distribute` (its `predict` splits batches over the replicas;
    under `data_parallel` every process predicts whole batches on its replica instead)."""
    return plan.training.distribution == "mirrored"


def _strategy_scope(distribution: str):
    """What the plan distributes with (its `scope()` holds model building and training), or None
    (`check_backend` ran before; `multi_worker` was refused there, keras-team/keras#20585)."""
    if distribution == "none":
        return None
    if distribution == "data_parallel":
        return distribute.data_parallel()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy()


__all__ = ["PhaseReport", "Reporter", "RunResult", "check_backend", "run"]
