"""Small, fast fixtures shared by the embedding, similarity and transfer tests.

The source network is the CNN the project ships, pretrained on CIFAR-10 classes A
(`examples/models/cifar_a_cnn.keras`, made by `examples/pretrain_cifar.py`); the similar target is the
bundled CIFAR-10 classes-B sample (`examples/data/cifar_b`); different targets are generated here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CNN_PATH = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
CIFAR_B = ROOT / "examples" / "data" / "cifar_b"


@lru_cache(maxsize=1)
def cifar_cnn():
    from surgery import load_model

    return load_model(CNN_PATH)


@lru_cache(maxsize=1)
def cnn_graph():
    from surgery import layer_graph

    return layer_graph(cifar_cnn())


def stripes_and_checks(per_class: int = 30, size: int = 32, seed: int = 0):
    """Two texture classes (stripes, checkerboards) with random colours, periods and phases."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    xs, ys = [], []
    for label in (0, 1):
        for _ in range(per_class):
            period = int(rng.integers(3, 9))
            shift = int(rng.integers(0, period))
            if label == 0:
                t = ((xx + shift) // period) % 2 if rng.random() < 0.5 else ((yy + shift) // period) % 2
            else:
                t = ((xx + shift) // period + (yy // period)) % 2
            c0, c1 = rng.uniform(0, 255, size=(2, 3))
            xs.append(c0 + (c1 - c0) * t[..., None].astype("float64"))
            ys.append(label)
    return np.stack(xs).astype("float32"), np.asarray(ys)


def digits(per_class: int = 10):
    """scikit-learn's 8x8 digits as 0..255 single-channel images, `per_class` of each."""
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = np.concatenate([np.flatnonzero(d.target == k)[:per_class] for k in range(10)])
    return (d.images[idx] * (255.0 / 16.0)).astype("float32")[..., None], d.target[idx]
