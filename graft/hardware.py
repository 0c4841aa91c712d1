"""What the machine offers the Keras backend: which device training will use, and why.

    from graft.hardware import device
    d = device()
    print(d.line())   # device: CPU (2 cores), tensorflow backend; no GPU: the CPU-only TensorFlow ...

`device()` answers for the active Keras backend (KERAS_BACKEND): the GPUs it sees, their name and
CUDA compute capability, and when it sees none, the reason (a CPU-only wheel installed, no NVIDIA
driver, a CUDA build that finds no GPU) with the install that fixes it (docs/backends.md). It also
decides what `training.mixed_precision: auto` and `training.jit_compile: auto` mean on that device
(`auto_mixed_precision`, `auto_jit_compile`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass

import keras

__all__ = ["Device", "device", "gpu_count"]

#: Compute capability from which float16 math runs on tensor cores (Volta, 7.0): mixed precision pays
#: off there; on older GPUs and on CPUs it is slower than float32.
TENSOR_CORES = (7, 0)


@dataclass(frozen=True)
class Device:
    """The device the active Keras backend trains on.

    Attributes:
        backend: `tensorflow`, `jax` or `torch`.
        kind: `GPU` or `CPU`.
        gpus: GPUs the backend sees (0 on CPU).
        name: the GPU's name (`NVIDIA H200`), or `CPU (N cores)`.
        capability: the first GPU's CUDA compute capability, e.g. (9, 0); None when unknown or on CPU.
        reason: why this device: for a CPU, why no GPU is used and what to install.
    """

    backend: str
    kind: str
    gpus: int
    name: str
    capability: tuple[int, int] | None = None
    reason: str = ""

    @property
    def gpu(self) -> bool:
        return self.kind == "GPU"

    def auto_mixed_precision(self) -> bool:
        """`mixed_precision: auto`: on for a GPU with tensor cores (or of unknown capability)."""
        return self.gpu and (self.capability is None or self.capability >= TENSOR_CORES)

    def auto_jit_compile(self) -> bool:
        """`jit_compile: auto`: what trains fastest on this backend and device.

        JAX: always (un-jitted JAX runs op by op, many times slower, on CPU too). TensorFlow: XLA on a
        GPU only (on the CPU it compiled for longer than it saved on graft's runs). PyTorch: never
        (`torch.compile` compiles for minutes and fails on some layers; eager is Keras' default).
        """
        if self.backend == "jax":
            return True
        if self.backend == "tensorflow":
            return self.gpu
        return False

    def line(self) -> str:
        """One line for people: `device: GPU (NVIDIA H200 x1, compute 9.0), jax backend`."""
        if self.gpu:
            cap = f", compute {self.capability[0]}.{self.capability[1]}" if self.capability else ""
            return f"device: GPU ({self.name} x{self.gpus}{cap}), {self.backend} backend"
        return f"device: {self.name}, {self.backend} backend; {self.reason}"


def _installed(*dists: str) -> str | None:
    for dist in dists:
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _driver() -> bool:
    """Whether an NVIDIA kernel driver is loaded on this machine."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def _hidden() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return " (CUDA_VISIBLE_DEVICES hides them)" if visible is not None and visible.strip() in ("", "-1") else ""


def _no_gpu_with_cuda_build(what: str) -> str:
    if not _driver():
        return f"no GPU: {what} has CUDA, but this machine has no NVIDIA driver (no GPU, or the driver is not loaded)"
    return f"no GPU: {what} has CUDA and an NVIDIA driver is loaded, but it sees no GPU{_hidden()}"


def _tensorflow() -> tuple[int, str, tuple[int, int] | None, str]:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        cap = details.get("compute_capability")
        return len(gpus), details.get("device_name", "GPU"), tuple(cap) if cap else None, ""
    if tf.test.is_built_with_cuda():
        return 0, "", None, _no_gpu_with_cuda_build("TensorFlow")
    if _installed("tensorflow-cpu") and _installed("tensorflow"):
        return 0, "", None, ("no GPU: tensorflow and tensorflow-cpu are both installed and the CPU-only files "
                             "won; pip uninstall -y tensorflow-cpu, then pip install --force-reinstall --no-deps "
                             f"tensorflow=={tf.__version__} (docs/backends.md)")
    wheel = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow, built without CUDA"
    return 0, "", None, (f"no GPU: the CPU-only TensorFlow wheel ({wheel}) is installed; for a GPU use "
                         "KERAS_BACKEND=jax or torch with their CUDA builds (pip install -e '.[gpu-jax]' or "
                         "'.[gpu-torch]'), or TensorFlow's CUDA build (pip install -e '.[gpu]'); see docs/backends.md")


def _jax() -> tuple[int, str, tuple[int, int] | None, str]:
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if gpus:
        cap = getattr(gpus[0], "compute_capability", None)
        try:
            cap = tuple(int(p) for p in str(cap).split(".")[:2]) if cap else None
        except ValueError:
            cap = None
        return len(gpus), gpus[0].device_kind, cap, ""
    if not _installed("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda11-plugin"):
        return 0, "", None, ("no GPU: JAX's CPU-only build is installed (no jax-cuda plugin); for CUDA, "
                             "pip install -e '.[gpu-jax]' (jax[cuda12]) (docs/backends.md)")
    return 0, "", None, _no_gpu_with_cuda_build("JAX (the jax-cuda plugin)")


def _torch() -> tuple[int, str, tuple[int, int] | None, str]:
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count():
        return (torch.cuda.device_count(), torch.cuda.get_device_name(0),
                tuple(torch.cuda.get_device_capability(0)), "")
    if torch.version.cuda is None:
        return 0, "", None, (f"no GPU: the CPU-only PyTorch wheel ({torch.__version__}) is installed; for CUDA, "
                             "install PyTorch's CUDA build (pip install torch, without +cpu) (docs/backends.md)")
    return 0, "", None, _no_gpu_with_cuda_build(f"PyTorch (CUDA {torch.version.cuda})")


_PROBES = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}
_CACHE: dict[str, Device] = {}


def device() -> Device:
    """The device the active Keras backend trains on, and why (cached per backend)."""
    backend = keras.backend.backend()
    if backend in _CACHE:
        return _CACHE[backend]
    cores = os.cpu_count() or 1
    cpu = f"CPU ({cores} core{'s' if cores != 1 else ''})"
    probe = _PROBES.get(backend)
    if probe is None or importlib.util.find_spec(backend) is None:
        result = Device(backend, "CPU", 0, cpu, reason=f"graft does not look for GPUs under the {backend} backend")
    else:
        try:
            gpus, name, cap, reason = probe()
        except Exception as exc:  # noqa: BLE001 - a backend that cannot enumerate devices has none we can use
            gpus, name, cap, reason = 0, "", None, f"no GPU: {backend} could not list its devices ({type(exc).__name__})"
        result = (Device(backend, "GPU", gpus, name, cap) if gpus
                  else Device(backend, "CPU", 0, cpu, reason=reason))
    _CACHE[backend] = result
    return result


def gpu_count() -> int:
    """GPUs visible to the active Keras backend (0 when none or when the backend cannot say)."""
    return device().gpus
