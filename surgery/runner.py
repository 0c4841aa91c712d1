"""Run a plan end to end: data, surgery, training phases, evaluation, run directory.

    from surgery import run
    result = run("plan.yaml")                 # or run(plan, out_dir="runs/x", resume=True)
    print(result.metrics["accuracy"], result.model_path)

The run directory (`plan.outputs.dir`, or `out_dir`) receives `plan.yaml` (the resolved plan),
`state.json` (progress; what `--resume` reads), `checkpoints/` (while running), and at the end
`model.keras`, `metrics.json`, `history.csv`, `curves.png`, `confusion.png` and `report.html`.
Every file is written atomically. See docs/apply.md.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from graft.atomic import (
    NO_SPACE,
    as_write_error,
    atomic_path,
    is_temporary,
    remove_temporaries,
    write_bytes,
    write_json,
)
from graft.errors import DatasetError, InputError, PlanError, WriteError
from graft.lock import LOCK_NAME, hold_lock

# Streamed data sets skip undecodable files, so their length is unknown until an epoch ends; Keras
# then warns that the input "ran out of data" at the end of every epoch. That is expected here.
warnings.filterwarnings("ignore", message="Your input ran out of data")
warnings.filterwarnings("ignore", message="`shuffle=True` was passed, but will be ignored")  # graft shuffles itself

#: Decoded, resized training images are cached in memory when all of them fit in this many bytes
#: (float32); larger data sets stream from disk every epoch. Set GRAFT_CACHE_BYTES to change it.
CACHE_BUDGET = int(os.environ.get("GRAFT_CACHE_BYTES", 2**30))

@dataclass
class PhaseReport:
    """What one phase did."""

    name: str
    trainable: str
    epochs: int
    epochs_run: int = 0
    learning_rate: float = 0.0
    backbone_learning_rate: float | None = None
    trainable_params: int = 0
    frozen_params: int = 0
    bottleneck: bool = False
    stopped_early: bool = False
    best_epoch: int | None = None
    seconds: float = 0.0
    images_per_second: float = 0.0
    solver: str = "gradient"
    steps: int = 0
    start_loss: float | None = None


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


class Reporter:
    """Receives progress; the CLI renders it, the library default stays silent."""

    def message(self, text: str) -> None:  # pragma: no cover - default is silent
        pass

    def epoch(self, phase: str, epoch: int, epochs: int, logs: dict, seconds: float) -> None:
        pass

    def batch(self, phase: str, epoch: int, step: int, steps: int) -> None:
        """Called after every training batch (step counts from 1)."""


class _BatchProgress(keras.callbacks.Callback):
    def __init__(self, reporter: Reporter, phase: str, steps: int):
        super().__init__()
        self.reporter, self.phase, self.steps, self.current = reporter, phase, steps, 0
        self.first_loss: float | None = None  # the loss of the phase's first batch, before any update

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.first_loss is None and logs and "loss" in logs:
            self.first_loss = float(logs["loss"])
        self.reporter.batch(self.phase, self.current, batch + 1, self.steps)


# ------------------------------------------------------------------------------------------ helpers


def _plan_of(plan):
    from advisor.plan import Plan, load_plan

    if isinstance(plan, Plan):
        return plan
    return load_plan(plan)


def _plan_hash(plan) -> str:
    """Hash of what decides the training (not outputs, provenance or the human-facing parts)."""
    d = plan.to_dict()
    d = {k: d[k] for k in ("model", "surgery", "training", "data")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _summary(model: keras.Model) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda s, **_: lines.append(s), line_length=100)
    return "\n".join(lines)


def _params(model) -> tuple[int, int]:
    t = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    f = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return t, f


def _setting(value: str, auto: bool) -> bool:
    return {"on": True, "off": False}.get(value, auto)


def check_backend(plan) -> None:
    """Refuse, before anything runs, what the plan asks for that the active Keras backend cannot do.

    Raises:
        PlanError: `training.distribution` other than `none` under JAX or PyTorch (graft distributes
            with `tf.distribute`, which only the TensorFlow backend has).
    """
    backend = keras.backend.backend()
    distribution = plan.training.distribution
    if distribution != "none" and backend != "tensorflow":
        raise PlanError(f"training.distribution: {distribution} needs the TensorFlow backend (graft distributes "
                        f"with tf.distribute); KERAS_BACKEND is {backend}. Set distribution: none (one device), "
                        "or run with KERAS_BACKEND=tensorflow")


def _strategy_scope(distribution: str):
    """The `tf.distribute` strategy the plan names, or None (`check_backend` ran before)."""
    if distribution == "none":
        return None
    import tensorflow as tf

    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    # Measured here (Keras 3.15, TensorFlow 2.21, two workers on loopback): fit fails inside Keras'
    # TF trainer with "Attempt to convert a value (PerReplica ...)"; upstream: keras-team/keras#20585.
    raise PlanError("training.distribution: multi_worker is not supported: Keras 3's fit does not run under "
                    "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585); use mirrored (every "
                    "GPU of one machine) or none")


def _class_weights(labels: list[int], classes: int) -> dict[int, float]:
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=classes).astype(float)
    n = counts.sum()
    return {i: float(n / (classes * c)) if c else 0.0 for i, c in enumerate(counts)}


# ------------------------------------------------------------------------------------------ data


@dataclass
class _Data:
    classes: list[str]
    train: tuple[list[str], list[int]]
    val: tuple[list[str], list[int]]
    test: tuple[list[str], list[int]]
    spec: object
    notes: list[str]


def _data(plan) -> _Data:
    from advisor.dataset import list_images
    from surgery.pipeline import DataSpec, find_unreadable, stratified_split

    d = plan.data
    listing = list_images(d.path)
    classes = listing.classes
    if len(classes) != plan.surgery.head.classes:
        raise PlanError(f"surgery.head.classes is {plan.surgery.head.classes} but {d.path} has {len(classes)} "
                        f"classes ({', '.join(classes[:8])}{' ...' if len(classes) > 8 else ''}); "
                        f"set surgery.head.classes: {len(classes)} or run advise again")
    notes = list(listing.warnings)
    files, labels, split = listing.files, listing.labels, listing.split
    if not d.skip_corrupt:
        bad = find_unreadable(files)
        if bad:
            raise DatasetError(f"{len(bad)} image(s) cannot be decoded, e.g. {bad[0]}; remove them or set "
                               "data.skip_corrupt: true")
    has_splits = any(split)
    splits = stratified_split(files, labels, split if has_splits else None, d.validation_split,
                              d.test_split, d.seed)
    decoded = len(files) * d.input_size[0] * d.input_size[1] * d.channels * 4
    cache = decoded <= CACHE_BUDGET
    if cache:
        notes.append(f"decoded images are kept in memory after the first epoch ({decoded / 2**20:,.0f} MiB, "
                     f"under the {CACHE_BUDGET / 2**30:g} GiB budget)")
    spec = DataSpec(input_size=tuple(d.input_size), channels=d.channels, batch_size=d.batch_size,
                    validation_split=d.validation_split, test_split=d.test_split, seed=d.seed,
                    augment=_augment(d.augmentation), cache=cache)
    return _Data(classes, splits.train, splits.val, splits.test, spec, notes)


def _augment(aug: dict) -> dict:
    out = {}
    for key, value in (aug or {}).items():
        if key == "flip":
            out["flip"] = "horizontal" if value is True else (None if value is False else value)
        else:
            out[key] = float(value)
    return out


# ------------------------------------------------------------------------------------------ features


PREDICT_BATCH = 64


def _predict(model: keras.Model, files: list[str], labels: list[int], spec, distributed: bool = False):
    """Outputs of `model` for the decodable files, and their labels, streamed in batches.

    Every batch has the same shape (the last one padded), so the compiled predict function is traced
    once; under a distribution strategy, `predict` splits each batch across the replicas.
    """
    from surgery.pipeline import indexed_image_batches

    outs, ys = [], []
    labels_arr = np.asarray(labels)
    for idx, images in indexed_image_batches(files, spec, batch_size=PREDICT_BATCH):
        n = len(images)
        if n < PREDICT_BATCH:
            images = np.concatenate([images, np.zeros((PREDICT_BATCH - n, *images.shape[1:]), images.dtype)])
        out = (model.predict(images, batch_size=PREDICT_BATCH, verbose=0) if distributed
               else model.predict_on_batch(images))
        outs.append(np.asarray(out, dtype="float32")[:n])
        ys.append(labels_arr[idx])
    if not outs:
        raise DatasetError("none of the images could be decoded; check the data set with `python cli.py advise`")
    return np.concatenate(outs), np.concatenate(ys).astype("int32")


def _features(feat_model: keras.Model, files: list[str], labels: list[int], spec,
              cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features (through the head's weightless pooling layer) of the files, once."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return z["x"], z["y"]
    x, y = _predict(feat_model, files, labels, spec)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        write_bytes(cache, buf.getvalue())
    return x, y


def _feature_batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int, phase: int, start: int, end: int):
    """Batches of features for epochs start..end-1, each epoch in its own seeded order (a tf.data
    stream that `fit` reads across epochs with `steps_per_epoch`)."""
    import tensorflow as tf

    features, labels = tf.constant(x), tf.constant(y)
    orders = np.stack([np.random.default_rng([seed, phase, e]).permutation(len(y)) for e in range(start, end)])
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(lambda o: tf.data.Dataset.from_tensor_slices(o).batch(batch))
    return ds.map(lambda idx: (tf.gather(features, idx), tf.gather(labels, idx))).prefetch(tf.data.AUTOTUNE)


def _frozen_head_start(model: keras.Model, head: list[str]) -> int:
    """How many leading head layers have no weights (pooling, flatten): they join the features."""
    k = 0
    for name in head:
        layer = model.get_layer(name)
        if layer.weights or isinstance(layer, keras.layers.Dropout):
            break
        k += 1
    return k


def _feature_model(model: keras.Model, head: list[str]) -> keras.Model:
    k = _frozen_head_start(model, head)
    out = model.get_layer(head[k - 1]).output if k else model.get_layer(head[0]).input
    return keras.Model(model.inputs, out, name="bottleneck_features")


def _head_model(model: keras.Model, head: list[str], feature_shape: tuple) -> keras.Model:
    """A model of the head's trainable layers on precomputed features; the layers are shared."""
    k = _frozen_head_start(model, head)
    inp = keras.Input(shape=feature_shape, name="features")
    x = inp
    for name in head[k:]:
        x = model.get_layer(name)(x)
    return keras.Model(inp, x, name="head")


# ------------------------------------------------------------------------------------------ run


def run(plan, out_dir: str | os.PathLike | None = None, *, resume: bool = False, dry_run: bool = False,
        safe_mode: bool | None = None, reporter: Reporter | None = None,
        stop_after_epochs: int | None = None) -> RunResult:
    """Apply a plan: surgery, training phases, evaluation, and the run directory.

    Args:
        plan: an `advisor.plan.Plan` or the path of a `plan.yaml`.
        out_dir: the run directory; default `plan.outputs.dir`.
        resume: continue the interrupted run in `out_dir` from its last completed epoch.
        dry_run: load the data listing and the model, do the surgery, report; train and write nothing.
        safe_mode: override `plan.model.safe_mode` when loading a model file.
        reporter: receives progress messages and per-epoch results.
        stop_after_epochs: stop (as if interrupted) after this many epochs in total; for tests and
            for splitting a long run across sessions, then `resume=True`.

    Returns:
        `RunResult`.

    Raises:
        PlanError, DatasetError, ModelLoadError, InputError: the plan, data or model is unusable;
            the run directory already holds another run (and `resume` is not set).
    """
    from advisor.plan import save_plan
    from surgery import guard
    from surgery.graph import layer_graph
    from surgery.prepare import (
        prepare_model,
        scratch,
        set_phase_trainable,
        to_mixed_precision,
        trainable_region,
    )
    from surgery.train import read_state, save_weights_atomic

    reporter = reporter or Reporter()
    plan = _plan_of(plan)
    check_backend(plan)
    run_dir = Path(out_dir if out_dir is not None else plan.outputs.dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = _data(plan)
    plan_sha = _plan_hash(plan)

    if not dry_run:
        run_dir = _choose_run_dir(run_dir, explicit=out_dir is not None, resume=resume)
        if run_dir.exists() and not run_dir.is_dir():
            raise InputError(f"run directory {run_dir} is a file; choose a folder with --out DIR (nothing was "
                             "overwritten)")
        state = _existing_run(run_dir, plan_sha, resume)
    else:
        state = read_state(run_dir) if run_dir.is_dir() else None
    resumed = state is not None

    strategy = _strategy_scope(plan.training.distribution) if not dry_run else None

    def scope():
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    from graft.hardware import device

    dev = device()
    mixed = _setting(plan.training.mixed_precision, dev.auto_mixed_precision())
    jit = _setting(plan.training.jit_compile, dev.auto_jit_compile())
    notes = list(data.notes)
    keras.utils.set_random_seed(plan.data.seed)  # the new head's initial weights, dropout, shuffles
    with scope():
        prepared = prepare_model(plan, safe_mode=safe_mode)
        if mixed:
            prepared = to_mixed_precision(prepared)
    graph = layer_graph(prepared.model)
    for ph in plan.training.phases:  # a bad `trainable` fails now, before the run directory exists
        trainable_region(graph, prepared.head, ph.trainable)
    timings["load_and_surgery"] = time.perf_counter() - t0
    splits = {"train": len(data.train[0]), "val": len(data.val[0]), "test": len(data.test[0])}
    result = RunResult(run_dir=run_dir, model_path=None, splits=splits, resumed=resumed,
                       summary=_summary(prepared.model), notes=notes + prepared.notes,
                       device=dev.line().removeprefix("device: "), mixed_precision=mixed, jit_compile=jit)
    if dry_run:
        result.dry_run = True
        for index, ph in enumerate(plan.training.phases):
            set_phase_trainable(prepared, ph.trainable, plan.surgery.bn)
            t, f = _params(prepared.model)
            result.phases.append(PhaseReport(
                name=ph.name, trainable=ph.trainable, epochs=ph.epochs, learning_rate=ph.learning_rate,
                backbone_learning_rate=ph.backbone_learning_rate, trainable_params=t, frozen_params=f,
                bottleneck=_use_bottleneck(plan, ph, index)))
        return result

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise as_write_error(run_dir, exc) from exc
    # One apply at a time per run directory, held to the end; the kernel drops it if we are killed.
    with hold_lock(run_dir, "`graft apply`"), _explain_write_errors(run_dir, len(plan.training.phases)):
        # Checked again under the lock: another apply may have started or finished since.
        state = _existing_run(run_dir, plan_sha, resume)
        result.resumed = resumed = state is not None
        for folder in (run_dir, run_dir / "checkpoints", run_dir / "features"):
            remove_temporaries(folder)  # a process killed mid-write leaves its temporary file
        if state is None:
            state = {"graft_run": 1, "plan_sha": plan_sha, "phases_done": 0, "history": [], "phases": [],
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
        if state.get("finished"):
            reporter.message(f"{run_dir} already finished; nothing to resume")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # a kill after the last commit
            shutil.rmtree(run_dir / "features", ignore_errors=True)
            return _finished_result(run_dir, result, state)

        ckpt_dir = run_dir / "checkpoints"
        # The fallback trial: does pretrained initialization beat random on this data?
        if plan.training.fallback is not None and state.get("fallback") is None:
            with scope():
                state["fallback"] = _scratch_trial(plan, data, reporter, jit, safe_mode)
            write_json(run_dir / "state.json", state)
        if state.get("fallback") and state["fallback"]["chosen"] == "random":
            with scope():
                prepared = scratch(prepared, seed=plan.data.seed)
        elif plan.training.phases[0].weights == "random":
            with scope():
                prepared = scratch(prepared, seed=plan.data.seed)
            notes.append("the first phase asks for random weights: the backbone starts from scratch")
        if state.get("weights_file"):
            prepared.model.load_weights(ckpt_dir / state["weights_file"])

        total_done = len(state["history"])
        for i, ph in enumerate(plan.training.phases):
            if i < state["phases_done"]:
                continue
            with scope():
                report = _train_phase(plan, i, ph, prepared, data, run_dir, state, reporter, jit, notes,
                                      stop_after_epochs, total_done)
            if report is None:  # stopped on request (stop_after_epochs)
                result.history = state["history"]
                result.notes = notes
                return result
            total_done = len(state["history"])
            if i == 0 and guard.applies(plan) and not guard.head_only_file(run_dir).exists():
                save_weights_atomic(prepared.model, guard.head_only_file(run_dir))
        if guard.applies(plan) and state.get("guard") is None and guard.head_only_file(run_dir).exists():
            state["guard"] = _guard(plan, prepared.model, data, state, run_dir, strategy is not None)
            write_json(run_dir / "state.json", state)
        if (state.get("guard") or {}).get("keep") == "head_only":
            prepared.model.load_weights(guard.head_only_file(run_dir))
        if state.get("guard"):
            notes.append("guard: " + state["guard"]["reason"])
        timings.update(state.get("timings", {}))

        # Evaluate on the test split (else validation), write everything.
        t1 = time.perf_counter()
        eval_name, (files, labels) = ("test", data.test) if data.test[0] else ("val", data.val)
        if not files:
            eval_name, (files, labels) = "train", data.train
            notes.append("no validation or test images: metrics are on the training set")
        metrics = _evaluate(prepared.model, files, labels, data, distributed=strategy is not None)
        metrics["split"] = eval_name
        metrics["estimate"] = _estimate(metrics, eval_name, state, plan)
        if state.get("guard"):
            metrics["guard"] = state["guard"]
        d = plan.data
        metrics["model_input"] = {
            "size": list(d.input_size), "channels": d.channels, "channel_mode": d.channel_mode,
            "pixels": "raw values 0..255; the preprocessing is inside the model",
            "resize": f"resize images to {d.input_size[0]}x{d.input_size[1]} (bilinear) before calling the model: "
                      "the accuracy above was measured at that size"}
        timings["evaluate"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        model_path = _save_model(prepared.model, run_dir / "model.keras")
        from advisor.plan_drawing import draw_into_run
        from surgery.report import write_run_outputs

        _, drawing_note = draw_into_run(plan, run_dir, safe_mode)  # plan.png, which the report shows
        notes.extend([drawing_note] if drawing_note else [])
        phases = [dict(p) for p in state["phases"]]
        history = _history_columns(state["history"])
        write_run_outputs(run_dir, history=history, phases=phases, metrics=metrics,
                          plan=plan.to_dict(),
                          model_summary=result.summary, timings={**timings, "total": time.perf_counter() - t0},
                          extra={"preprocessing": prepared.preprocessing, "splits": splits,
                                 "fallback": state.get("fallback"), "guard": state.get("guard"),
                                 "mixed_precision": mixed, "jit_compile": jit,
                                 "device": result.device, "backend": keras.backend.backend(),
                                 "distribution": plan.training.distribution, "resumed": resumed,
                                 "notes": notes})
        timings["write"] = time.perf_counter() - t2
        state["finished"] = True
        state["timings"] = timings
        write_json(run_dir / "state.json", state)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(run_dir / "features", ignore_errors=True)
        result.model_path = model_path
        result.metrics = metrics
        result.history = state["history"]
        result.phases = [PhaseReport(**p) for p in state["phases"]]
        result.timings = timings
        result.fallback = state.get("fallback")
        result.notes = notes
        return result


def _existing_run(run_dir: Path, plan_sha: str, resume: bool) -> dict | None:
    """The state of the run in `run_dir` (None when there is none), after checking that this call
    may use the folder: it holds no foreign files, and a run there is continued only with `resume`
    and the same plan."""
    from surgery.train import read_state

    if not run_dir.is_dir():
        return None
    state = read_state(run_dir)
    if state is None and any(p.name != LOCK_NAME and not is_temporary(p.name) for p in run_dir.iterdir()):
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
def _explain_write_errors(run_dir: Path, phases: int):
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
    from surgery.train import read_state

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
    from surgery.train import read_state

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


def _finished_result(run_dir: Path, result: RunResult, state: dict) -> RunResult:
    result.model_path = run_dir / "model.keras"
    result.metrics = json.loads((run_dir / "metrics.json").read_text())
    result.history = state["history"]
    result.phases = [PhaseReport(**p) for p in state["phases"]]
    result.fallback = state.get("fallback")
    result.timings = state.get("timings", {})
    return result


def _history_columns(rows: list[dict]) -> dict[str, list]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: [r.get(k) for r in rows] for k in keys}


def _use_bottleneck(plan, ph, index: int) -> bool:
    """A head-only phase on a backbone no earlier phase changed. Augmentation does not switch it
    off: a frozen-backbone phase fits on the features of the images as they are (augmentation
    applies to the phases that train the backbone)."""
    if ph.trainable != "head" or plan.training.bottleneck == "off":
        return False
    if plan.training.distribution != "none":
        return False
    return index == 0 or all(p.trainable == "head" for p in plan.training.phases[:index])


def phase_epochs(ph, images: int, batch_size: int) -> int:
    """Epochs a phase runs: its `epochs`, raised so that it takes at least `min_steps` optimizer
    steps (on 10 images per class an epoch is 2-4 steps; a budget in bare epochs collapses)."""
    if not ph.min_steps:
        return ph.epochs
    return max(ph.epochs, math.ceil(ph.min_steps / max(1, math.ceil(images / batch_size))))


def _learning_rate(ph, total_steps: int):
    """The phase's learning rate: constant, or a cosine decay to 0 after a linear warm-up over the
    first tenth of the steps."""
    if ph.schedule != "cosine":
        return ph.learning_rate
    warm = max(1, total_steps // 10)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warm), alpha=0.0,
        warmup_target=ph.learning_rate, warmup_steps=warm)


#: Global gradient-norm clip of the phases that train the backbone: the first steps after the head
#: hand-off must not move pretrained weights by more than a bounded step, whatever the head's logits.
BACKBONE_CLIPNORM = 1.0


def _compile(model, ph, lr_factor_map, jit, total_steps: int = 1):
    from surgery.train import make_optimizer

    clip = None if ph.trainable == "head" else BACKBONE_CLIPNORM
    model.compile(optimizer=make_optimizer(ph.optimizer, _learning_rate(ph, total_steps), lr_factor_map,
                                           global_clipnorm=clip),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit)


#: Seconds between checkpoints within a phase (the last epoch of a phase, and of a
#: `stop_after_epochs` slice, is always checkpointed; GRAFT_CHECKPOINT_SECONDS overrides it, 0 for
#: every epoch). Writing the weights and the optimizer every epoch costs more than the epoch itself
#: on small data sets.
CHECKPOINT_SECONDS = 60.0


def _checkpoint_seconds() -> float:
    return float(os.environ.get("GRAFT_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))


def _linear_dense(model: keras.Model, head: list[str]):
    """The head's one Dense layer when the head is linear (pooling, dropout, Dense with softmax),
    else None: only such a head is a convex problem on frozen features."""
    dense = [model.get_layer(n) for n in head if model.get_layer(n).weights]
    if len(dense) != 1 or not isinstance(dense[0], keras.layers.Dense):
        return None
    act = getattr(dense[0].activation, "__name__", "")
    return dense[0] if act == "softmax" else None


def _fit_convex(plan, i, ph, model, prepared, xtr, ytr, val, cw, state, entry, reporter) -> None:
    """The head phase as a convex fit: logistic regression on the frozen features to convergence,
    L2 chosen by cross-validation, written into the head's Dense layer."""
    from surgery.probe import fit_linear_head

    t0 = time.perf_counter()
    dense = _linear_dense(model, prepared.head)
    reporter.message(f"phase {ph.name}: fitting the linear head to convergence (C by cross-validation)")
    fit = fit_linear_head(xtr, ytr, classes=dense.units, seed=plan.data.seed,
                          class_weight="balanced" if cw else None)
    fit.assign_to(dense)
    logs = {"loss": fit.train_loss, "accuracy": fit.train_accuracy}
    reporter.message(f"phase {ph.name}: head fitted, C {fit.C:g}, logits / {fit.temperature:.3g} (calibrated), "
                     f"training loss {fit.train_loss:.4g}")
    if fit.cv_accuracy is not None:
        logs["cv_accuracy"] = fit.cv_accuracy
    if val is not None:
        xv, yv = val
        logits = xv.reshape(len(xv), -1) @ fit.kernel + fit.bias
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        logs.update(val_loss=float(-logp[np.arange(len(yv)), yv].mean()),
                    val_accuracy=float((logp.argmax(axis=1) == yv).mean()))
    seconds = time.perf_counter() - t0
    state["history"].append({"phase": ph.name, "epoch": len(state["history"]) + 1, "phase_epoch": 1,
                             "seconds": round(seconds, 3), **logs})
    state["probe"] = {"phase": i, "C": fit.C, "cv_accuracy": fit.cv_accuracy, "cv_folds": fit.cv_folds,
                      "images": fit.images, "notes": fit.notes, "temperature": fit.temperature}
    entry["epochs_done"] = 1
    reporter.epoch(ph.name, 1, 1, logs, seconds)


def _train_phase(plan, i, ph, prepared, data, run_dir, state, reporter, jit, notes, stop_after_epochs,
                 total_done):
    from surgery.pipeline import make_dataset
    from surgery.prepare import set_phase_trainable
    from surgery.train import Checkpointer, load_optimizer, lr_factors, save_weights_atomic

    model = prepared.model
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    entry = state.get("phase")
    if not entry or entry.get("index") != i:
        entry = {"index": i, "name": ph.name, "epochs_done": 0, "wait": 0, "seconds": 0.0}
        state["phase"] = entry
    set_phase_trainable(prepared, ph.trainable, plan.surgery.bn)
    trainable_params, frozen_params = _params(model)
    bottleneck = _use_bottleneck(plan, ph, i)
    if plan.training.bottleneck == "on" and ph.trainable == "head" and not bottleneck:
        notes.append(f"phase {ph.name}: bottleneck features not used (distribution, or an earlier phase "
                     "changed the backbone)")
    convex = bottleneck and ph.solver != "gradient" and _linear_dense(model, prepared.head) is not None
    if ph.solver == "convex" and not convex:
        raise PlanError(f"phase {ph.name}: solver convex needs a head-only phase on an unchanged backbone and a "
                        "linear softmax head (no hidden layers); set solver: auto or gradient")
    cw = _class_weights(data.train[1], len(data.classes)) if plan.training.class_weights == "balanced" else None
    monitor = "val_loss" if data.val[0] else None
    t0 = time.perf_counter()
    if bottleneck:
        reporter.message(f"phase {ph.name}: computing backbone features once (bottleneck)")
        fdir = run_dir / "features"
        fdir.mkdir(exist_ok=True)
        feat_model = _feature_model(model, prepared.head)
        xtr, ytr = _features(feat_model, *data.train, data.spec, fdir / "train.npz")
        val = None
        if data.val[0]:
            xv, yv = _features(feat_model, *data.val, data.spec, fdir / "val.npz")
            val = (xv, yv)
        timings = state.setdefault("timings", {})
        timings["features"] = timings.get("features", 0) + time.perf_counter() - t0
        # the convex fit writes the head's Dense layer directly; only gradient training needs the head model
        train_model = model if convex else _head_model(model, prepared.head, xtr.shape[1:])
        fit_args = {}
        n_images = len(ytr)
    else:
        train_ds = make_dataset(*data.train, data.spec, training=True, num_classes=len(data.classes))
        val_ds = (make_dataset(*data.val, data.spec, training=False, num_classes=len(data.classes))
                  if data.val[0] else None)
        train_model = model
        fit_args = {"x": train_ds, "validation_data": val_ds}
        n_images = len(data.train[0])
    epochs = 1 if convex else phase_epochs(ph, n_images, plan.data.batch_size)
    steps_per_epoch = math.ceil(n_images / plan.data.batch_size)
    if convex:
        if not entry["epochs_done"]:
            _fit_convex(plan, i, ph, model, prepared, xtr, ytr, val, cw, state, entry, reporter)
        stop_now = False
    else:
        head_names = {model.get_layer(n).name for n in prepared.head}
        factors = lr_factors(train_model, head_names, ph.learning_rate, ph.backbone_learning_rate)
        _compile(train_model, ph, factors, jit, total_steps=epochs * steps_per_epoch)
        if entry["epochs_done"]:
            train_model.load_weights(ckpt_dir / entry["last_file"])  # the head model when bottlenecked
            load_optimizer(train_model.optimizer, ckpt_dir / entry["optimizer_file"],
                           train_model.trainable_variables, train_model)
            reporter.message(f"phase {ph.name}: resuming after epoch {entry['epochs_done']} of {epochs}")
        if entry.get("stopped_early") or entry["epochs_done"] >= epochs:
            epochs_left = 0
        else:
            epochs_left = epochs - entry["epochs_done"]
        budget = None if stop_after_epochs is None else stop_after_epochs - total_done
        stop_now = budget is not None and budget < epochs_left
        end_epoch = entry["epochs_done"] + (min(epochs_left, budget) if stop_now else epochs_left)

        def on_epoch(epoch, logs, seconds):
            reporter.epoch(ph.name, epoch + 1, epochs, logs, seconds)

        ckpt = Checkpointer(run_dir, state, train_model, monitor, ph.early_stopping_patience, on_epoch,
                            final_epoch=end_epoch, every_seconds=_checkpoint_seconds())
        progress = _BatchProgress(reporter, ph.name, steps_per_epoch)
        keras.utils.set_random_seed(plan.data.seed + 1000 * i + entry["epochs_done"])
        if end_epoch > entry["epochs_done"]:
            args = dict(fit_args)
            if bottleneck:  # batch order drawn per (seed, phase, epoch): the same after a resume
                args = {"x": _feature_batches(xtr, ytr, plan.data.batch_size, plan.data.seed, i,
                                              entry["epochs_done"], end_epoch),
                        "steps_per_epoch": steps_per_epoch, "validation_data": val}
            starting = entry["epochs_done"] == 0
            train_model.fit(**args, epochs=end_epoch, initial_epoch=entry["epochs_done"],
                            callbacks=[ckpt, progress], class_weight=cw, verbose=0)
            if starting and progress.first_loss is not None:
                entry["start_loss"] = round(progress.first_loss, 4)
                reporter.message(f"phase {ph.name}: loss {progress.first_loss:.4g} on its first batch")
    entry["seconds"] = entry.get("seconds", 0.0) + time.perf_counter() - t0
    if stop_now and not entry.get("stopped_early"):
        write_json(run_dir / "state.json", state)
        return None
    # Phase done: keep the best epoch's weights, checkpoint the phase's end, forget its epoch files.
    best_is_last = entry.get("best_epoch") == entry["epochs_done"] and not stop_now
    if entry.get("best_file") and not best_is_last:  # the weights in memory are the last epoch's
        train_model.load_weights(ckpt_dir / entry["best_file"])
    end = ckpt_dir / f"phase-{i:02d}.weights.h5"
    if best_is_last and train_model is model and entry.get("last_file"):
        end.unlink(missing_ok=True)
        os.link(ckpt_dir / entry["last_file"], end)  # same bytes as the last epoch's checkpoint
    else:
        save_weights_atomic(model, end)
    epochs_run = entry["epochs_done"]
    seconds = entry["seconds"]
    report = PhaseReport(
        name=ph.name, trainable=ph.trainable, epochs=epochs, epochs_run=epochs_run,
        learning_rate=ph.learning_rate, backbone_learning_rate=ph.backbone_learning_rate,
        trainable_params=trainable_params, frozen_params=frozen_params, bottleneck=bottleneck,
        stopped_early=bool(entry.get("stopped_early")), best_epoch=entry.get("best_epoch"),
        seconds=round(seconds, 3),
        images_per_second=round(n_images * epochs_run / seconds, 1) if seconds > 0 else 0.0,
        solver="convex" if convex else "gradient", steps=0 if convex else epochs_run * steps_per_epoch,
        start_loss=entry.get("start_loss"))
    old = state.get("weights_file")
    state["phases"].append(report.__dict__.copy())
    state.update(phases_done=i + 1, weights_file=end.name, phase=None)
    state.setdefault("timings", {})[f"phase {ph.name}"] = round(seconds, 3)
    write_json(run_dir / "state.json", state)
    for name in {entry.get("last_file"), entry.get("optimizer_file"), entry.get("best_file"), old} - {end.name, None}:
        (ckpt_dir / name).unlink(missing_ok=True)
    return report


def _scratch_trial(plan, data, reporter: Reporter, jit, safe_mode: bool | None) -> dict:
    """Train pretrained and random initializations briefly with every layer trainable; compare."""
    from surgery.pipeline import make_dataset
    from surgery.prepare import prepare_model, scratch, set_phase_trainable

    fb = plan.training.fallback
    scores = {}
    vds = make_dataset(*(data.val if data.val[0] else data.train), data.spec, training=False,
                       num_classes=len(data.classes))
    for init in ("pretrained", "random"):
        trial = prepare_model(plan, safe_mode=safe_mode)  # a fresh copy: the trial's training is thrown away
        if init == "random":
            trial = scratch(trial, seed=plan.data.seed)
        set_phase_trainable(trial, "all", plan.surgery.bn if init == "pretrained" else "follow")
        keras.utils.set_random_seed(plan.data.seed)
        trial.model.compile(optimizer=keras.optimizers.Adam(plan.training.phases[0].learning_rate),
                            loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)
        reporter.message(f"fallback trial: {init} initialization, {fb.scratch_trial_epochs} epoch(s)")
        ds = make_dataset(*data.train, data.spec, training=True, num_classes=len(data.classes))  # same order
        trial.model.fit(ds, epochs=fb.scratch_trial_epochs, verbose=0)
        scores[init] = float(trial.model.evaluate(vds, verbose=0, return_dict=True)["accuracy"])
    chosen = "random" if scores["random"] > scores["pretrained"] + fb.margin else "pretrained"
    return {"epochs": fb.scratch_trial_epochs, "margin": fb.margin, "val_accuracy": scores, "chosen": chosen,
            "reason": (f"random initialization reached {scores['random']:.3f} validation accuracy against "
                       f"{scores['pretrained']:.3f} for pretrained after {fb.scratch_trial_epochs} epoch(s); "
                       f"{'training from scratch' if chosen == 'random' else 'keeping pretrained weights'} "
                       f"(margin {fb.margin})")}


def _guard(plan, model, data, state: dict, run_dir: Path, distributed: bool) -> dict:
    """surgery/guard.py's verdict on the fine-tuned model: on the validation images when the plan
    holds some out, else on the training images (no augmentation) against the head's CV score."""
    from surgery import guard

    on, (files, labels) = ("val", data.val) if data.val[0] else ("train", data.train)
    prob, y = _predict(model, files, labels, data.spec, distributed)
    verdict = guard.judge(guard.head_only_scores(state, plan.training.phases[0].name),
                          float((prob.argmax(axis=1) == y).mean()), on=on)
    verdict["images"] = len(y)
    return verdict


def _estimate(metrics: dict, split: str, state: dict, plan) -> dict:
    """How well the model is expected to do on new images, how that was measured, on how many
    images, with a Wilson 95 % interval."""
    from surgery.probe import wilson_interval

    n = int(metrics.get("n_samples", 0))
    acc = float(metrics.get("accuracy", 0.0))
    if split in ("test", "val"):
        method = "test split" if split == "test" else "validation split"
        return {"method": method, "accuracy": acc, "images": n,
                "interval95": list(wilson_interval(round(acc * n), n))}
    probe = state.get("probe")
    head_only = (state.get("guard") or {}).get("keep") == "head_only"  # the final model is the head alone
    if probe and probe.get("cv_accuracy") is not None and (probe["phase"] == len(plan.training.phases) - 1
                                                             or head_only):
        m = int(probe["images"])
        cv = float(probe["cv_accuracy"])
        return {"method": f"{probe['cv_folds']}-fold cross-validation of the head", "accuracy": cv, "images": m,
                "interval95": list(wilson_interval(round(cv * m), m))}
    out = {"method": "none", "accuracy": None, "images": 0, "interval95": None,
           "note": "every labelled image was used for training, and the backbone was fine-tuned: accuracy on "
                   "new images is not measured; give val/ or test/ folders, or set data.test_split, to measure it"}
    if probe and probe.get("cv_accuracy") is not None:
        out["head_only_cv_accuracy"] = float(probe["cv_accuracy"])
        out["note"] += (f" (before fine-tuning, the head alone reached {probe['cv_accuracy']:.3f} in "
                        f"{probe['cv_folds']}-fold cross-validation)")
    return out


def _evaluate(model, files, labels, data, distributed: bool = False) -> dict:
    from surgery.metrics import classification_metrics

    prob, y = _predict(model, files, labels, data.spec, distributed)
    return classification_metrics(y, prob.argmax(axis=1), data.classes, y_prob=prob)


def _save_model(model: keras.Model, path: Path) -> Path:
    """Save an uncompiled copy (layers shared) so the file loads in safe mode without graft."""
    plain = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp:
        plain.save(tmp)
    return path


__all__ = ["PhaseReport", "Reporter", "RunResult", "check_backend", "run"]
