"""Training on several devices and processes: which `training.distribution` each Keras backend can
do, and the `data_parallel` one, Keras's own engine (`keras.distribution.DataParallel`).

    distribution    backend      what trains
    none            any          one device
    mirrored        tensorflow   every GPU of one machine (`tf.distribute.MirroredStrategy`, runner.py)
    data_parallel   jax          every device of every process: one process per machine (or several
                                 on one machine), the model replicated, each global batch split
    multi_worker    (none)       refused: Keras 3's `fit` does not run under it (keras-team/keras#20585)

Several processes find each other through Keras's own environment variables, the same on every
process except the id (docs/backends.md#several-hosts):

    KERAS_DISTRIBUTION_JOB_ADDRESSES=10.0.0.1:1234   # process 0's host:port (the coordinator)
    KERAS_DISTRIBUTION_NUM_PROCESSES=2
    KERAS_DISTRIBUTION_PROCESS_ID=0                  # 0 .. NUM_PROCESSES-1, one per process

Every process runs the same `graft apply plan.yaml` and the same steps in the same order (a step on
the shared model is a collective: a process that skipped one would leave the others waiting); each
feeds its own equal share of the training and validation images (`shard`). Process 0 writes the
run directory; the others keep their checkpoints in a folder of their own beside it
(`worker_dir`), removed when the run ends (`drop_worker_dir`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras

from graft.errors import InputError, PlanError

__all__ = ["SUPPORTED", "Cluster", "check", "cluster", "data_parallel", "drop_worker_dir", "process_id",
           "shard", "worker_dir", "writes_outputs"]

#: The distributions each Keras backend can run (`training.distribution`).
SUPPORTED = {"tensorflow": ("none", "mirrored"), "jax": ("none", "data_parallel"), "torch": ("none",)}

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"

# Measured (Keras 3.15, TensorFlow 2.21, two workers on loopback): fit fails inside Keras' TF trainer
# with "Attempt to convert a value (PerReplica ...)"; upstream: keras-team/keras#20585.
_MULTI_WORKER = ("training.distribution: multi_worker is not supported: Keras 3's fit does not run under "
                 "tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585); to train on several "
                 "machines use data_parallel with KERAS_BACKEND=jax (docs/backends.md#several-hosts), or "
                 "mirrored for every GPU of one machine")
_INSTEAD = {  # (distribution, backend) -> what to use instead
    ("mirrored", "jax"): "Use data_parallel (keras.distribution: every device of one or several machines), "
                         "or none (one device)",
    ("mirrored", "torch"): "Set distribution: none (one device), or run with KERAS_BACKEND=tensorflow "
                           "(mirrored) or KERAS_BACKEND=jax (data_parallel)",
    ("data_parallel", "tensorflow"): "Use mirrored (every GPU of this machine, tf.distribute), or run with "
                                     "KERAS_BACKEND=jax",
    ("data_parallel", "torch"): "Run with KERAS_BACKEND=jax, or set distribution: none (one device)",
}
_ENGINE = {"mirrored": ("TensorFlow", "tf.distribute"), "data_parallel": ("JAX", "keras.distribution.DataParallel")}


def check(distribution: str, backend: str | None = None) -> None:
    """Refuse, before anything runs, a distribution the backend cannot do, saying what to use instead.

    Args:
        distribution: the plan's `training.distribution`.
        backend: a Keras backend name; default the active one.

    Raises:
        PlanError: e.g. `training.distribution: data_parallel needs the JAX backend
            (keras.distribution.DataParallel); KERAS_BACKEND is tensorflow. Use mirrored (...), or run
            with KERAS_BACKEND=jax`. Also when several processes are configured (the environment
            variables above) for any distribution but `data_parallel`.
    """
    backend = backend or keras.backend.backend()
    if distribution == "multi_worker":
        raise PlanError(_MULTI_WORKER)
    if distribution not in SUPPORTED.get(backend, ("none",)):
        needs, engine = _ENGINE[distribution]
        raise PlanError(f"training.distribution: {distribution} needs the {needs} backend (graft distributes "
                        f"with {engine}); KERAS_BACKEND is {backend}. {_INSTEAD[distribution, backend]}")
    if distribution != "data_parallel" and cluster().num_processes > 1:
        raise PlanError(f"{ENV_PROCESSES} asks for {cluster().num_processes} processes, but "
                        f"training.distribution is {distribution}: only data_parallel trains one model "
                        "over several processes (KERAS_BACKEND=jax); set it, or unset the variable")


@dataclass(frozen=True)
class Cluster:
    """The processes of one run, from the environment (one process and no coordinator when unset)."""

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0


def cluster(environ=None) -> Cluster:
    """The processes `KERAS_DISTRIBUTION_*` describe (see the module docstring).

    Raises:
        InputError: a variable that is not a number, an id out of range, or several processes
            without a coordinator address.
    """
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{name} is '{raw}'; expected a whole number (docs/backends.md#several-hosts)") from None

    n, pid = number(ENV_PROCESSES, 1), number(ENV_PROCESS_ID, 0)
    addresses = env.get(ENV_ADDRESSES, "").strip() or None
    if n < 1 or not 0 <= pid < n:
        raise InputError(f"{ENV_PROCESS_ID}={pid} with {ENV_PROCESSES}={n}; expected a process id from 0 to "
                         f"{max(n - 1, 0)}, one per process (docs/backends.md#several-hosts)")
    if n > 1 and addresses is None:
        raise InputError(f"{ENV_PROCESSES}={n} but {ENV_ADDRESSES} is not set; give process 0's host:port, "
                         "the same on every process (docs/backends.md#several-hosts)")
    return Cluster(coordinator=addresses, num_processes=n, process_id=pid)


_started: Cluster | None = None


def data_parallel() -> keras.distribution.DataParallel:
    """The `DataParallel` distribution over every device of every process, after joining the
    processes (`keras.distribution.initialize`, once per process; it waits for all of them).

    Each process feeds its own share of every batch (`auto_shard_dataset=False`; `shard` makes the
    shares), so graft's own `tf.data` pipeline decodes only this process's images.
    """
    global _started
    c = cluster()
    if _started is None:
        if c.num_processes > 1:
            import jax

            # CPU processes exchange gradients through gloo (JAX's default CPU collectives do not span
            # processes); GPUs use NCCL whatever this says.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            try:
                keras.distribution.initialize(job_addresses=c.coordinator, num_processes=c.num_processes,
                                              process_id=c.process_id)
            except RuntimeError as exc:  # JAX computed something before the processes joined
                raise InputError(f"data_parallel: could not join the {c.num_processes} processes at "
                                 f"{c.coordinator}: {exc}") from exc
        _started = c
    return keras.distribution.DataParallel(auto_shard_dataset=False)


def process_id() -> int:
    """This process's id in a `data_parallel` run that has started (0 otherwise)."""
    return _started.process_id if _started is not None else 0


def writes_outputs() -> bool:
    """Whether this process writes the run directory: process 0 only."""
    return process_id() == 0


def worker_dir(run_dir: Path) -> Path:
    """Where a process other than 0 keeps its checkpoints (it must restore the same best epoch as
    process 0): a hidden folder beside the run directory, found again by `--resume`."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.process-{process_id()}"


def drop_worker_dir(folder: Path) -> Path:
    """Remove a finished worker's folder; the run directory process 0 wrote."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return folder.parent / folder.name.removeprefix(".").removesuffix(f".process-{process_id()}")


def shard(plan, data):
    """This process's share of the training and validation images, and the plan with its share of
    each batch: the same number of images for every device (a batch split over D devices needs
    equal parts, and every process must run as many steps), so up to D-1 images of each split are
    left out. Identity when nothing is distributed by `data_parallel`.

    Returns:
        (plan, data, notes): `data.batch_size` in the plan and the pipeline's spec are per process
        (the steps per epoch, and the budgets in steps, stay those of the whole batch).

    With `data.skip_corrupt`, the files that cannot be decoded are found first (one pass over the
    images), since a process that skipped one while streaming would run a step fewer than the others.

    Raises:
        PlanError: `data.batch_size` not a multiple of the number of devices.
    """
    if plan.training.distribution != "data_parallel":
        return plan, data, []
    devices = len(keras.distribution.list_devices())
    n = _started.num_processes if _started is not None else 1
    if plan.data.batch_size % devices:
        raise PlanError(f"data.batch_size is {plan.data.batch_size}; data_parallel splits each batch over "
                        f"{devices} devices, so it must be a multiple of {devices}")
    per_device = devices // n
    batch = plan.data.batch_size // n
    pid, notes = process_id(), []

    def share(split, name):
        files, labels = split
        if plan.data.skip_corrupt and files:  # a file one process skips would leave it a step short
            from surgery.pipeline import find_unreadable

            bad = set(find_unreadable(files, data.spec))
            files, labels = zip(*[(f, y) for f, y in zip(files, labels) if f not in bad]) if len(bad) < len(files) \
                else ((), ())
        keep = len(files) // devices * per_device  # per process, a multiple of its devices
        if len(files) - keep * n:
            notes.append(f"data_parallel: {len(files) - keep * n} of {len(files)} {name} image(s) left out so "
                         f"that each of the {devices} devices gets as many")
        return list(files[pid::n][:keep]), list(labels[pid::n][:keep])

    data = dataclasses.replace(data, train=share(data.train, "training"), val=share(data.val, "validation"),
                               spec=dataclasses.replace(data.spec, batch_size=batch))
    plan = dataclasses.replace(plan, data=dataclasses.replace(plan.data, batch_size=batch))
    return plan, data, notes
