"""Labelled target domains for the similarity and transferability benchmarks, as uint8 arrays.

- `cifar(root, classes, split)`: real CIFAR-10 photos from the extracted shared archive.
- `digits()`: scikit-learn's bundled 8x8 handwritten digits (1,797 images), scaled to 0..255 gray.
- `textures(per_class)`: procedurally generated textures, 5 classes (stripes, checkerboard, dots,
  value noise, concentric rings) with random colours, frequencies, angles and phases.
- `grayscale(x)`, `inverted(x)`: input-level shifts of another domain.

Every function returns `(images uint8 (n, h, w, 3 or 1), labels int, class names)`.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-images.tar.gz"
CLASSES_A = ["airplane", "automobile", "bird", "cat", "deer"]
CLASSES_B = ["dog", "frog", "horse", "ship", "truck"]
TEXTURES = ["stripes", "checkerboard", "dots", "noise", "rings"]


def cifar_root(data: str | None = None) -> Path:
    """The extracted CIFAR-10 folder: `data`, or the shared archive extracted to a temp folder."""
    if data:
        return Path(data)
    if not ARCHIVE.exists():
        raise SystemExit(f"{ARCHIVE} is absent; pass --data with the extracted CIFAR-10 images.")
    tmp = Path(tempfile.mkdtemp(prefix="graft_cifar_"))
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def cifar(root: Path, classes: list[str], split: str, per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, name in enumerate(classes):
        files = sorted((root / split / name).glob("*.jpg"))
        for i in sorted(rng.choice(len(files), size=per_class, replace=False)):
            with Image.open(files[i]) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(k)
    return np.stack(xs), np.asarray(ys), list(classes)


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype("uint8")[..., None]
    return x, d.target.astype("int64"), [str(i) for i in range(10)]


def textures(per_class: int, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype("float64") / size
    xs, ys = [], []
    for k, kind in enumerate(TEXTURES):
        for _ in range(per_class):
            freq = rng.uniform(2, 8)
            angle = rng.uniform(0, np.pi)
            u = xx * np.cos(angle) + yy * np.sin(angle)
            v = -xx * np.sin(angle) + yy * np.cos(angle)
            phase = rng.uniform(0, 2 * np.pi)
            if kind == "stripes":
                t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * u + phase)
            elif kind == "checkerboard":
                t = ((np.floor(freq * u + phase) + np.floor(freq * v)) % 2).astype("float64")
            elif kind == "dots":
                t = (np.hypot((freq * u + phase) % 1 - 0.5, (freq * v) % 1 - 0.5) < rng.uniform(0.15, 0.35)).astype("float64")
            elif kind == "noise":
                cells = int(rng.integers(3, 9))
                coarse = rng.random((cells, cells))
                t = np.asarray(Image.fromarray((coarse * 255).astype("uint8")).resize((size, size), Image.BICUBIC)) / 255.0
            else:  # rings
                cx, cy = rng.uniform(0.2, 0.8, size=2)
                t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy) + phase)
            c0, c1 = rng.uniform(0, 255, size=(2, 3))
            img = c0 + (c1 - c0) * t[..., None] + rng.normal(0, 6, size=(size, size, 3))
            xs.append(np.clip(img, 0, 255).astype("uint8"))
            ys.append(k)
    return np.stack(xs), np.asarray(ys), list(TEXTURES)


def grayscale(x: np.ndarray) -> np.ndarray:
    g = np.round(x[..., :3].astype("float64") @ [0.299, 0.587, 0.114]).astype("uint8")
    return g[..., None]


def inverted(x: np.ndarray) -> np.ndarray:
    return (255 - x).astype("uint8")


def split(x, y, per_class: int, seed: int = 0):
    """Split into a stratified sample of `per_class` per class and the rest."""
    rng = np.random.default_rng(seed)
    first = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:per_class] for k in np.unique(y)])
    rest = np.setdiff1d(np.arange(len(y)), first)
    return (x[first], y[first]), (x[rest], y[rest])
