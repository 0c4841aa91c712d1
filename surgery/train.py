"""Training pieces `apply` uses: discriminative learning rates, resumable checkpoints, progress.

Keras 3 has no `MultiOptimizer` (it was a TensorFlow Addons / tf.keras 2 class), so discriminative
learning rates are done the way it did them, inside one optimizer: `make_optimizer` returns a subclass
of the chosen Keras optimizer whose `update_step` multiplies the learning rate by a per-variable
factor (backbone variables: `backbone_learning_rate / learning_rate`, head variables: 1). One
optimizer, one set of slots, any backend.

`Checkpointer` is the resume machinery: at the end of an epoch (at most every `every_seconds`, and
always at the last epoch of a fit) it writes the weights and the optimizer's variables to new files, then
`state.json` (the commit point, written atomically), then removes the
previous epoch's files. A run killed at any moment resumes from the last committed epoch.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from graft.atomic import atomic_path, write_bytes, write_json

OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}
_CLASSES: dict[str, type] = {}


def _discriminative(base: type) -> type:
    if base.__name__ in _CLASSES:
        return _CLASSES[base.__name__]

    class Discriminative(base):
        """`base` with a learning-rate factor per variable (by variable path)."""

        def __init__(self, *args, lr_factors: dict[str, float] | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._lr_factors = dict(lr_factors or {})
            self._factor_list: list[float] = []

        def build(self, var_list):
            super().build(var_list)
            self._factor_list = [float(self._lr_factors.get(v.path, 1.0)) for v in var_list]

        def update_step(self, gradient, variable, learning_rate):
            factor = self._factor_list[self._get_variable_index(variable)] if self._factor_list else 1.0
            if factor != 1.0:
                learning_rate = keras.ops.multiply(learning_rate, factor)
            return super().update_step(gradient, variable, learning_rate)

    Discriminative.__name__ = f"Discriminative{base.__name__}"
    _CLASSES[base.__name__] = Discriminative
    return Discriminative


def make_optimizer(name: str, learning_rate: float, lr_factors: dict[str, float] | None = None,
                   global_clipnorm: float | None = None):
    """A Keras optimizer; with `lr_factors` (variable path -> factor), one with discriminative rates;
    with `global_clipnorm`, gradients are scaled so that their global norm is at most that."""
    cls = getattr(keras.optimizers, OPTIMIZERS[name])
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    if global_clipnorm:
        kwargs["global_clipnorm"] = float(global_clipnorm)
    if lr_factors and any(f != 1.0 for f in lr_factors.values()):
        return _discriminative(cls)(learning_rate=learning_rate, lr_factors=lr_factors, **kwargs)
    return cls(learning_rate=learning_rate, **kwargs)


def lr_factors(model: keras.Model, head_layers: set[str], learning_rate: float,
               backbone_learning_rate: float | None) -> dict[str, float]:
    """Factor per trainable variable path: backbone variables get backbone_lr / lr."""
    if backbone_learning_rate is None or backbone_learning_rate == learning_rate:
        return {}
    factor = backbone_learning_rate / learning_rate
    out = {}
    for layer in _leaf_layers(model):
        for v in layer.trainable_weights:
            out[v.path] = 1.0 if layer.name in head_layers else factor
    return out


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _rng_states(model) -> list:
    """The random-generator states of the model's layers (Dropout, random augmentation): saved with
    the optimizer so that a resumed run draws the same dropout masks as an uninterrupted one."""
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]


def optimizer_bytes(optimizer, model=None) -> bytes:
    """The optimizer's variables (slots, step count) and the model's random-generator states."""
    buf = io.BytesIO()
    arrays = {f"opt_{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    if model is not None:
        arrays.update({f"rng_{i}": np.asarray(v.numpy()) for i, v in enumerate(_rng_states(model))})
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_optimizer(optimizer, path: Path, trainable_variables, model=None) -> None:
    """Build `optimizer` for the variables and restore what `optimizer_bytes` saved."""
    optimizer.build(trainable_variables)
    with np.load(path) as data:
        opt = [data[f"opt_{i}"] for i in range(sum(k.startswith("opt_") for k in data.files))]
        rng = [data[f"rng_{i}"] for i in range(sum(k.startswith("rng_") for k in data.files))]
    if len(opt) != len(optimizer.variables):
        raise ValueError(f"optimizer checkpoint {path} has {len(opt)} variables, expected {len(optimizer.variables)}")
    for var, arr in zip(optimizer.variables, opt):
        var.assign(arr)
    states = _rng_states(model) if model is not None else []
    if len(states) == len(rng):
        for var, arr in zip(states, rng):
            var.assign(arr)


def save_weights_atomic(model: keras.Model, path: Path) -> Path:
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
    return path


class Checkpointer(keras.callbacks.Callback):
    """Per-epoch checkpoints, best weights, early stopping and history, all resumable.

    Args:
        run_dir: the run directory (checkpoints go to `run_dir/checkpoints`).
        state: the run state dict (saved as `state.json`); this phase's entry is `state["phase"]`.
        weights_model: the model whose weights are checkpointed: the full model, or the head
            model when a bottleneck phase trains only the head (the backbone is unchanged then).
        monitor: `val_loss`, or None when there is no validation set (then no best epoch and no
            early stopping: every epoch runs and the last weights are kept).
        patience: epochs without improvement before stopping (None: never).
        on_epoch: called with (epoch, logs, seconds) after every epoch.
        final_epoch: the last epoch of this `fit` call (1-based); it is always committed.
        every_seconds: commit (weights, optimizer, `state.json`) only when this many seconds have
            passed since the last commit, at an improvement, an early stop or `final_epoch`; the
            epochs in between are committed with the next one (a resume redoes them).
    """

    def __init__(self, run_dir: Path, state: dict, weights_model: keras.Model, monitor: str | None,
                 patience: int | None, on_epoch: Callable[[int, dict, float], None] | None = None,
                 final_epoch: int | None = None, every_seconds: float = 0.0):
        super().__init__()
        self.final_epoch = final_epoch
        self.every_seconds = every_seconds
        self._last_commit = time.perf_counter()
        self._pending: list[dict] = []  # epochs run since the last commit
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.weights_model = weights_model
        self.monitor = monitor
        self.patience = patience
        self.on_epoch = on_epoch
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        seconds = time.perf_counter() - self._t0
        ph = self.state["phase"]
        value = logs.get(self.monitor, math.inf) if self.monitor else math.inf
        improved = self.monitor is not None and value < ph.get("best", math.inf) - 1e-7
        stop = self.patience is not None and self.monitor is not None and not improved and \
            ph.get("wait", 0) + 1 >= self.patience
        row = {"phase": ph["name"], "epoch": len(self.state["history"]) + 1, "phase_epoch": epoch + 1,
               "seconds": round(seconds, 3), **logs}
        due = (improved or stop or epoch + 1 == self.final_epoch
               or time.perf_counter() - self._last_commit >= self.every_seconds)
        if not due:  # no commit this epoch: a resume repeats it from the last committed one
            self._pending.append(row)
            ph["wait"] = ph.get("wait", 0) + 1 if self.monitor else 0
            if self.on_epoch:
                self.on_epoch(epoch, logs, seconds)
            return
        tag = f"{ph['index']:02d}-{epoch + 1:03d}"
        last = save_weights_atomic(self.weights_model, self.ckpt_dir / f"last-{tag}.weights.h5")
        if improved:  # the best weights are this epoch's: a hard link, not a second write
            best = self.ckpt_dir / f"best-{tag}.weights.h5"
            best.unlink(missing_ok=True)
            try:
                os.link(last, best)
            except OSError:
                save_weights_atomic(self.weights_model, best)
            old_best = ph.get("best_file")
            ph.update(best=value, best_epoch=epoch + 1, best_file=best.name, wait=0)
        else:
            old_best = None
            ph["wait"] = ph.get("wait", 0) + 1 if self.monitor else 0
        opt = write_bytes(self.ckpt_dir / f"optimizer-{tag}.npz", optimizer_bytes(self.model.optimizer, self.model))
        old_last, old_opt = ph.get("last_file"), ph.get("optimizer_file")
        ph.update(epochs_done=epoch + 1, last_file=last.name, optimizer_file=opt.name)
        for pending in self._pending:
            pending["epoch"] = len(self.state["history"]) + 1
            self.state["history"].append(pending)
        self._pending = []
        row["epoch"] = len(self.state["history"]) + 1
        self.state["history"].append(row)
        if stop:
            ph["stopped_early"] = True
            self.model.stop_training = True
        write_json(self.run_dir / "state.json", self.state)  # commit point
        self._last_commit = time.perf_counter()
        for name in (old_last, old_opt, old_best):
            if name and name not in (last.name, opt.name, ph.get("best_file")):
                (self.ckpt_dir / name).unlink(missing_ok=True)
        if self.on_epoch:
            self.on_epoch(epoch, logs, seconds)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "state.json"
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
