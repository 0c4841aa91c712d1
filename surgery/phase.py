"""One training phase: what it trains, its inputs (bottleneck features or the image pipeline), the fit
(convex for a linear head on frozen features, else gradient steps with checkpoints), and its report.

A phase commits its progress to `state.json` through the `Checkpointer` (`surgery.train`), so a
killed run resumes after its last committed epoch; the phase's end is always committed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from graft.atomic import write_json
from graft.errors import PlanError
from surgery.bottleneck import (
    feature_batches,
    feature_model,
    features,
    flip_views,
    head_model,
    linear_dense,
    validation_batches,
)
from surgery.feature_store import feature_plan, stack_rows
from surgery.pipeline import make_dataset
from surgery.prepare import set_phase_trainable
from surgery.probe import fit_linear_head
from surgery.progress import BatchProgress, announce_phase
from surgery.run_data import class_weights
from surgery.train import (
    Checkpointer,
    load_optimizer,
    lr_factors,
    make_optimizer,
    save_weights_atomic,
)

#: Seconds between checkpoints within a phase (the last epoch of a phase, and of a
#: `stop_after_epochs` slice, is always checkpointed; GRAFT_CHECKPOINT_SECONDS overrides it, 0 for
#: every epoch). Writing the weights and the optimizer every epoch costs more than the epoch itself
#: on small data sets.
CHECKPOINT_SECONDS = 60.0


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


def _params(model) -> tuple[int, int]:
    t = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    f = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return t, f


def _use_bottleneck(plan, ph, index: int) -> bool:
    """A head-only phase on a backbone no earlier phase changed. Augmentation does not switch it
    off: a frozen-backbone phase fits on the features of the images and of their kept flips
    (`flip_views`); the random transforms apply to the phases that train the backbone."""
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
    clip = None if ph.trainable == "head" else BACKBONE_CLIPNORM
    model.compile(optimizer=make_optimizer(ph.optimizer, _learning_rate(ph, total_steps), lr_factor_map,
                                           global_clipnorm=clip),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit)


def _checkpoint_seconds() -> float:
    return float(os.environ.get("GRAFT_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))


def _fit_convex(plan, i, ph, model, prepared, xtr, ytr, val, cw, state, entry, reporter, views=()) -> None:
    """The head phase as a convex fit: logistic regression on the frozen features to convergence,
    L2 chosen by cross-validation, written into the head's Dense layer."""
    t0 = time.perf_counter()
    dense = linear_dense(model, prepared.head)
    reporter.message(f"phase {ph.name}: fitting the linear head to convergence (C by cross-validation)")
    fit = fit_linear_head(xtr, ytr, classes=dense.units, seed=plan.data.seed,
                          class_weight="balanced" if cw else None, views=views)
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
        val_correct = logp.argmax(axis=1) == yv
        logs.update(val_loss=float(-logp[np.arange(len(yv)), yv].mean()), val_accuracy=float(val_correct.mean()))
    seconds = time.perf_counter() - t0
    state["history"].append({"phase": ph.name, "epoch": len(state["history"]) + 1, "phase_epoch": 1,
                             "seconds": round(seconds, 3), **logs})
    state["probe"] = {"phase": i, "C": fit.C, "cv_accuracy": fit.cv_accuracy, "cv_folds": fit.cv_folds,
                      "cv_repeats": fit.cv_repeats, "images": fit.images, "notes": fit.notes, "temperature": fit.temperature,
                      "views": fit.views, "views_offered": len(views)}
    if val is not None:  # which held-out images the head alone gets right: the guard's paired comparison
        state["probe"]["val_correct"] = "".join("1" if c else "0" for c in val_correct)
    entry["epochs_done"] = 1
    reporter.epoch(ph.name, 1, 1, logs, seconds)

@dataclass
class _Inputs:
    """What a phase fits on: the model trained (the head model on bottleneck features), and its data."""

    train_model: keras.Model
    fit_args: dict
    n_images: int
    xtr: np.ndarray | None = None
    ytr: np.ndarray | None = None
    val: tuple | None = None
    views: list = field(default_factory=list)


def train_phase(plan, i, ph, prepared, data, run_dir, state, reporter, jit, notes, stop_after_epochs,
                total_done):
    """Train phase `i` from its last committed epoch; its `PhaseReport`, or None when
    `stop_after_epochs` stopped it (its progress is committed)."""
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
    convex = bottleneck and ph.solver != "gradient" and linear_dense(model, prepared.head) is not None
    if ph.solver == "convex" and not convex:
        raise PlanError(f"phase {ph.name}: solver convex needs a head-only phase on an unchanged backbone and a "
                        "linear softmax head (no hidden layers); set solver: auto or gradient")
    cw = class_weights(data.train[1], len(data.classes)) if plan.training.class_weights == "balanced" else None
    monitor = "val_loss" if data.val[0] else None
    t0 = time.perf_counter()
    inputs = _phase_inputs(plan, ph, prepared, data, run_dir, state, reporter, bottleneck, convex, t0)
    train_model, n_images = inputs.train_model, inputs.n_images
    epochs = 1 if convex else phase_epochs(ph, n_images, plan.data.batch_size)
    steps_per_epoch = math.ceil(n_images / plan.data.batch_size)
    if convex:
        if not entry["epochs_done"]:
            _fit_convex(plan, i, ph, model, prepared, inputs.xtr, inputs.ytr, inputs.val, cw, state, entry, reporter,
                        inputs.views)
        stop_now = False
    else:
        stop_now = _fit_gradient(plan, i, ph, prepared, inputs, run_dir, state, entry, reporter, jit, monitor, cw,
                                 epochs, steps_per_epoch, bottleneck, stop_after_epochs, total_done)
    entry["seconds"] = entry.get("seconds", 0.0) + time.perf_counter() - t0
    if stop_now and not entry.get("stopped_early"):
        write_json(run_dir / "state.json", state)
        return None
    report = PhaseReport(
        name=ph.name, trainable=ph.trainable, epochs=epochs, epochs_run=entry["epochs_done"],
        learning_rate=ph.learning_rate, backbone_learning_rate=ph.backbone_learning_rate,
        trainable_params=trainable_params, frozen_params=frozen_params, bottleneck=bottleneck,
        stopped_early=bool(entry.get("stopped_early")), best_epoch=entry.get("best_epoch"),
        seconds=round(entry["seconds"], 3),
        images_per_second=(round(n_images * entry["epochs_done"] / entry["seconds"], 1)
                           if entry["seconds"] > 0 else 0.0),
        solver="convex" if convex else "gradient", steps=0 if convex else entry["epochs_done"] * steps_per_epoch,
        start_loss=entry.get("start_loss"))
    return _end_phase(i, ph, model, train_model, run_dir, state, entry, stop_now, report)


def _phase_inputs(plan, ph, prepared, data, run_dir, state, reporter, bottleneck, convex, t0) -> _Inputs:
    """The bottleneck features (computed once, cached in `run_dir/features`) or the image pipeline."""
    model = prepared.model
    if bottleneck:
        reporter.message(f"phase {ph.name}: computing backbone features once (bottleneck)")
        fdir = run_dir / "features"
        fdir.mkdir(exist_ok=True)
        feat_model = feature_model(model, prepared.head)
        rows = len(data.train[0]) * (1 + len(flip_views(data.spec.augment))) + len(data.val[0])
        disk = state.setdefault("features", feature_plan(feat_model.output.shape[1:], rows))["on_disk"]
        xtr, ytr = features(feat_model, *data.train, data.spec, fdir / "train.npz", on_disk=disk, reporter=reporter)
        # the kept flips: deterministic views of every training image, extra rows for the head
        views = [features(feat_model, *data.train, data.spec, fdir / f"train_{name}.npz", transform=t, on_disk=disk,
                          reporter=reporter)[0]
                 for name, t in flip_views(data.spec.augment).items()]
        views = [v for v in views if v.shape == xtr.shape]  # (a file that decodes once decodes always)
        val = None
        if data.val[0]:
            xv, yv = features(feat_model, *data.val, data.spec, fdir / "val.npz", on_disk=disk, reporter=reporter)
            val = (xv, yv)
        timings = state.setdefault("timings", {})
        timings["features"] = timings.get("features", 0) + time.perf_counter() - t0
        # the convex fit writes the head's Dense layer directly; only gradient training needs the head model
        train_model = model if convex else head_model(model, prepared.head, xtr.shape[1:])
        fit_args = {}
        if not convex and views:  # a gradient-trained head sees the views as more images
            xtr, ytr = stack_rows([xtr, *views]), np.tile(ytr, 1 + len(views))
            views = []
        n_images = len(ytr)
        return _Inputs(train_model, fit_args, n_images, xtr, ytr, val, views)
    else:
        train_ds = make_dataset(*data.train, data.spec, training=True, num_classes=len(data.classes))
        val_ds = (make_dataset(*data.val, data.spec, training=False, num_classes=len(data.classes))
                  if data.val[0] else None)
        train_model = model
        fit_args = {"x": train_ds, "validation_data": val_ds}
        n_images = len(data.train[0])
        return _Inputs(train_model, fit_args, n_images)


def _fit_gradient(plan, i, ph, prepared, inputs, run_dir, state, entry, reporter, jit, monitor, cw, epochs,
                  steps_per_epoch, bottleneck, stop_after_epochs, total_done) -> bool:
    """Gradient steps from the last committed epoch, checkpointed; True when `stop_after_epochs`
    stopped the phase before its end."""
    model, train_model, fit_args = prepared.model, inputs.train_model, inputs.fit_args
    xtr, ytr, val = inputs.xtr, inputs.ytr, inputs.val
    ckpt_dir = run_dir / "checkpoints"
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
    progress = BatchProgress(reporter, ph.name, steps_per_epoch)
    keras.utils.set_random_seed(plan.data.seed + 1000 * i + entry["epochs_done"])
    if end_epoch > entry["epochs_done"]:
        args = dict(fit_args)
        if bottleneck:  # batch order drawn per (seed, phase, epoch): the same after a resume
            args = {"x": feature_batches(xtr, ytr, plan.data.batch_size, plan.data.seed, i,
                                         entry["epochs_done"], end_epoch),
                    "steps_per_epoch": steps_per_epoch, "validation_data": validation_batches(val, plan.data.batch_size)}
        starting = entry["epochs_done"] == 0
        announce_phase(reporter, ph.name, entry["epochs_done"], end_epoch, epochs, inputs.n_images, steps_per_epoch)
        train_model.fit(**args, epochs=end_epoch, initial_epoch=entry["epochs_done"],
                        callbacks=[ckpt, progress], class_weight=cw, verbose=0)
        if starting and progress.first_loss is not None:
            entry["start_loss"] = round(progress.first_loss, 4)
            reporter.message(f"phase {ph.name}: loss {progress.first_loss:.4g} on its first batch")
    return stop_now


def _end_phase(i, ph, model, train_model, run_dir, state, entry, stop_now, report) -> PhaseReport:
    """Phase done: keep the best epoch's weights, checkpoint the phase's end, forget its epoch files."""
    ckpt_dir = run_dir / "checkpoints"
    best_is_last = entry.get("best_epoch") == entry["epochs_done"] and not stop_now
    if entry.get("best_file") and not best_is_last:  # the weights in memory are the last epoch's
        train_model.load_weights(ckpt_dir / entry["best_file"])
    end = ckpt_dir / f"phase-{i:02d}.weights.h5"
    if best_is_last and train_model is model and entry.get("last_file"):
        end.unlink(missing_ok=True)
        os.link(ckpt_dir / entry["last_file"], end)  # same bytes as the last epoch's checkpoint
    else:
        save_weights_atomic(model, end)
    seconds = entry["seconds"]
    old = state.get("weights_file")
    state["phases"].append(report.__dict__.copy())
    state.update(phases_done=i + 1, weights_file=end.name, phase=None)
    state.setdefault("timings", {})[f"phase {ph.name}"] = round(seconds, 3)
    write_json(run_dir / "state.json", state)
    for name in {entry.get("last_file"), entry.get("optimizer_file"), entry.get("best_file"), old} - {end.name, None}:
        (ckpt_dir / name).unlink(missing_ok=True)
    return report


def dry_run_phases(plan, prepared) -> list[PhaseReport]:
    """What each phase would train, without training (`apply --dry-run`)."""
    reports = []
    for index, ph in enumerate(plan.training.phases):
        set_phase_trainable(prepared, ph.trainable, plan.surgery.bn)
        t, f = _params(prepared.model)
        reports.append(PhaseReport(
            name=ph.name, trainable=ph.trainable, epochs=ph.epochs, learning_rate=ph.learning_rate,
            backbone_learning_rate=ph.backbone_learning_rate, trainable_params=t, frozen_params=f,
            bottleneck=_use_bottleneck(plan, ph, index)))
    return reports


__all__ = ["CHECKPOINT_SECONDS", "PhaseReport", "dry_run_phases", "phase_epochs", "train_phase"]
