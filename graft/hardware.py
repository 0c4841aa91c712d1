"""What the machine offers the Keras backend: GPUs, for the `gpu` fact and for `apply`."""

from __future__ import annotations

import importlib.util

import keras


def gpu_count() -> int:
    """GPUs visible to the active Keras backend (0 when none or when the backend cannot say)."""
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return len(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return sum(d.platform == "gpu" for d in jax.devices())
        if backend == "torch" and importlib.util.find_spec("torch"):
            import torch

            return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a backend that cannot enumerate devices has none we can use
        return 0
    return 0
