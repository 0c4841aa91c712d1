"""Embeddings of a bounded, stratified sample of a data set, at every candidate cut in one pass.

`sample_dataset` picks the images (a default number per class, a cap on the total, seeded);
`embed` loads them (grayscale and RGBA become RGB, everything is resized to the model's input size),
applies the model's own preprocessing and runs **one** forward pass per batch through a multi-output
copy of the network that returns, for each image:

- the spatially pooled (global-average) features at each candidate cut point, and
- the per-channel mean and mean square of the input of every BatchNormalization layer, which is what
  the BN-statistics similarity compares with the layer's running statistics (a model without
  BatchNormalization gets them at the candidate cuts instead, for a reference-sample comparison).

Everything is reduced to per-image vectors inside the network, so memory stays at
`images x channels` whatever the input size.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from PIL import Image, UnidentifiedImageError

from graft.errors import DatasetError, InputError
from graft.preprocessing import Preprocessing, model_preprocessing
from surgery import CutPoint, LayerGraph, layer_graph
from surgery.rebuild import Replay, replay
from surgery.stages import candidate_cuts  # noqa: F401 - re-exported: advisor.embed.candidate_cuts

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_PER_CLASS = 50
DEFAULT_CAP = 600
DEFAULT_FLEXIBLE_SIZE = 160  # input size for models that accept any size (EfficientNet-Lite, ...)


@dataclass
class ImageSample:
    """A stratified sample of a labelled image folder.

    Attributes:
        paths: image files, grouped by class.
        labels: class index of each file.
        class_names: the class folders' names, sorted.
        available: images per class in the folder (before sampling).
        seed: the seed the sample was drawn with.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    available: dict[str, int]
    seed: int = 0

    def __len__(self) -> int:
        return len(self.paths)


def class_folders(root: str | Path) -> dict[str, list[Path]]:
    """Image files by class for a folder laid out `root/<class>/<image>` (or `root/train/<class>/`).

    Raises:
        DatasetError: the folder is missing, has no class folders, or no images at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Data set folder {root} does not exist or is not a folder.")
    base = root / "train" if (root / "train").is_dir() else root
    classes = {}
    for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        classes[d.name] = sorted(
            f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
    if not classes:
        raise DatasetError(f"{base} has no class folders; expected {base}/<class>/<image files>.")
    if not any(classes.values()):
        raise DatasetError(f"The class folders under {base} hold no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return classes


def sample_dataset(root: str | Path, per_class: int = DEFAULT_PER_CLASS, cap: int = DEFAULT_CAP,
                   seed: int = 0) -> ImageSample:
    """Draw a stratified, bounded sample: up to `per_class` images per class, `cap` in all.

    When `classes x per_class` exceeds `cap`, every class gets `cap // classes` images (at least 2, so
    that label-aware scores still see pairs); classes with fewer images give all they have.

    Example:
        >>> s = sample_dataset("examples/data/cifar_b", per_class=20)
        >>> len(s), s.class_names[:2]
        (100, ['dog', 'frog'])
    """
    if per_class < 1 or cap < 1:
        raise InputError(f"Expected positive sample sizes. Received: per_class={per_class}, cap={cap}")
    classes = class_folders(root)
    quota = min(per_class, max(2, cap // max(1, len(classes))))
    rng = random.Random(seed)
    paths, labels = [], []
    for k, files in enumerate(classes.values()):
        chosen = sorted(rng.sample(files, min(quota, len(files))))
        paths.extend(chosen)
        labels.extend([k] * len(chosen))
    return ImageSample(paths, np.asarray(labels, dtype="int64"), list(classes),
                       {n: len(f) for n, f in classes.items()}, seed)


@dataclass
class Embeddings:
    """What one pass of a sample through the network gives.

    Attributes:
        cuts: the candidate cut points, shallow to deep.
        features: cut name -> pooled features, `(images, channels)` float32.
        stat_layers: where channel statistics were taken, shallow to deep: the BatchNormalization
            calls (statistics of their *input*, comparable with their running statistics), or, for a
            model without BatchNormalization, the candidate cuts (statistics of their output).
        stat_kind: `bn_input` or `cut_output`.
        stat_depths: depth (0..1) of each of `stat_layers`.
        stat_mean: layer -> per-image channel means, `(images, channels)`.
        stat_sqmean: layer -> per-image channel means of the squared values.
        labels: class index per image (None for unlabelled inputs).
        class_names: names of the classes.
        image_size: `(height, width)` the images were resized to.
        preprocessing: name of the preprocessing applied.
        skipped: files that could not be read, with the reason.
        seconds: wall time of loading and the forward passes.
        forward_rate: images per second of the forward passes alone (batches after the first, which
            also traces the function), None when nothing was timed.
    """

    cuts: list[CutPoint]
    features: dict[str, np.ndarray]
    stat_layers: list[str]
    stat_kind: str
    stat_depths: list[float]
    stat_mean: dict[str, np.ndarray]
    stat_sqmean: dict[str, np.ndarray]
    labels: np.ndarray | None
    class_names: list[str]
    image_size: tuple[int, int]
    preprocessing: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    forward_rate: float | None = None

    @property
    def images(self) -> int:
        first = next(iter(self.features.values()), None)
        if first is None:
            first = next(iter(self.stat_mean.values()))
        return int(first.shape[0])


def batchnorm_layers(graph: LayerGraph) -> list[str]:
    """Call ids of the BatchNormalization layers that normalize the channel (last) axis of a 4D map."""
    out = []
    for cid in graph.order:
        op = graph.calls[cid].op
        if isinstance(op, keras.layers.BatchNormalization) and len(graph.tensors[graph.calls[cid].inputs[0]].shape) == 4:
            if op.axis in (-1, 3) or list(getattr(op, "axis", [])) in ([-1], [3]):
                out.append(cid)
    return out


class _ChannelMoments(keras.layers.Layer):
    """Per-image channel mean (and mean square) over the spatial axes."""

    def __init__(self, squares: bool, **kwargs):
        super().__init__(**kwargs)
        self.squares = squares

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        if len(x.shape) == 2:
            return x
        mean = keras.ops.mean(x, axis=(1, 2))
        if not self.squares:
            return mean
        return keras.ops.concatenate([mean, keras.ops.mean(keras.ops.square(x), axis=(1, 2))], axis=-1)


def embedding_model(graph: LayerGraph, cuts: list[CutPoint], stat_keys: list[int]) -> keras.Model:
    """A copy of the network whose outputs are the pooled cut features, then the channel moments
    (mean, mean square) of the tensors `stat_keys`."""
    keys = [graph.calls[c.name].outputs[0] for c in cuts] + list(stat_keys)
    n_stats = len(stat_keys)

    def attach(outputs):
        layers = [_ChannelMoments(False, name=f"pool_{i}") for i in range(len(cuts))]
        layers += [_ChannelMoments(True, name=f"moments_{i}") for i in range(n_stats)]
        return [layer(t) for layer, t in zip(layers, outputs)], layers

    return replay(graph, Replay(outputs=keys, attach=attach, name=f"{graph.model.name}_embed"))


def input_size(model: keras.Model, size: int | None = None) -> tuple[int, int]:
    """The `(height, width)` to resize images to: the model's fixed size, else `size` or 160."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[-1] not in (None, 1, 3):
        raise InputError(f"Expected a model taking (height, width, 1 or 3) images. Received input shape {tuple(shape)}.")
    h, w = shape[1], shape[2]
    if h is not None and w is not None:
        return int(h), int(w)
    s = int(size or DEFAULT_FLEXIBLE_SIZE)
    return s, s


def input_channels(model: keras.Model) -> int:
    """The channels the model takes: 1 for a gray-image network, else 3."""
    return 1 if model.inputs[0].shape[-1] == 1 else 3


def load_images(paths: list[Path], size: tuple[int, int],
                channels: int = 3) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Read images as float32 0..255 resized to `size`, RGB (or gray for `channels=1`); returns
    (batch `(n, h, w, channels)`, kept indices, skipped)."""
    out, kept, skipped = [], [], []
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                out.append(np.asarray(im, dtype="float32").reshape(size[0], size[1], channels))
                kept.append(i)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            skipped.append((str(p), f"{type(exc).__name__}: {exc}"[:200]))
    arr = np.stack(out) if out else np.zeros((0, size[0], size[1], channels), "float32")
    return arr, kept, skipped


def embed(model: keras.Model | LayerGraph, images: ImageSample | np.ndarray,
          labels: np.ndarray | None = None, class_names: list[str] | None = None,
          size: int | None = None, batch_size: int = 32, max_cuts: int = 24,
          preprocessing: Preprocessing | None = None, cuts: list[CutPoint] | None = None) -> Embeddings:
    """Embed a sample at every candidate cut and collect BN-input statistics, one pass per batch.

    Args:
        model: the pretrained network (or its `LayerGraph`).
        images: an `ImageSample` (files), or an array `(n, h, w, c)` of raw pixels 0..255 with
            c = 1 or 3 (1 channel is repeated to RGB; resized to the model's size when it differs).
        labels, class_names: for an array input (taken from the sample otherwise).
        size: input size for models that accept any size (default 160); fixed-size models use theirs.
        batch_size: images per forward pass.
        max_cuts: at most this many candidate cuts (see `candidate_cuts`).
        preprocessing: override the preprocessing `model_preprocessing` finds.
        cuts: score exactly these cut points instead of the candidates.

    Returns:
        `Embeddings`.

    Raises:
        DatasetError: no image of the sample could be read.
    """
    start = time.perf_counter()
    graph = model if isinstance(model, LayerGraph) else layer_graph(model)
    net = graph.model
    prep = preprocessing or model_preprocessing(net)
    hw = input_size(net, size)
    channels = input_channels(net)
    cuts = list(cuts) if cuts is not None else candidate_cuts(graph, max_cuts)
    bns = batchnorm_layers(graph)
    if bns:
        stat_kind, stat_layers = "bn_input", bns
        stat_keys = [graph.calls[b].inputs[0] for b in bns]
    else:
        stat_kind, stat_layers = "cut_output", [c.name for c in cuts]
        stat_keys = [graph.calls[c].outputs[0] for c in stat_layers]
    emb_model = embedding_model(graph, cuts, stat_keys)
    depths = graph.depths()

    if isinstance(images, ImageSample):
        labels, class_names, paths = images.labels, images.class_names, images.paths
        n = len(paths)
    else:
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
            raise InputError(f"Expected images shaped (n, h, w, 1 or 3). Received {arr.shape}.")
        paths, n = None, len(arr)

    outs: list[list[np.ndarray]] = [[] for _ in range(len(cuts) + len(stat_keys))]
    kept_all, skipped = [], []
    timed: list[tuple[int, float]] = []
    for s in range(0, n, batch_size):
        if paths is not None:
            x, kept, bad = load_images(paths[s:s + batch_size], hw, channels)
            skipped.extend(bad)
        else:
            x = _to_rgb(arr[s:s + batch_size].astype("float32"), hw, channels)
            kept = list(range(len(x)))
        if not len(x):
            continue
        kept_all.extend(s + k for k in kept)
        t0 = time.perf_counter()
        y = emb_model.predict_on_batch(prep(x))
        if s > 0 or n <= batch_size:  # the first batch also traces the function; count it only if alone
            timed.append((len(x), time.perf_counter() - t0))
        y = y if isinstance(y, (list, tuple)) else [y]
        for store, value in zip(outs, y):
            store.append(np.asarray(value, dtype="float32"))
    if not kept_all:
        raise DatasetError(f"None of the {n} sampled images could be read; first error: {skipped[0][1] if skipped else '?'}")
    stacked = [np.concatenate(v) for v in outs]
    features = {c.name: stacked[i] for i, c in enumerate(cuts)}
    stat_mean, stat_sqmean = {}, {}
    for j, name in enumerate(stat_layers):
        m = stacked[len(cuts) + j]
        half = m.shape[1] // 2
        stat_mean[name], stat_sqmean[name] = m[:, :half], m[:, half:]
    lab = None if labels is None else np.asarray(labels)[kept_all]
    return Embeddings(
        cuts=cuts, features=features, stat_layers=stat_layers, stat_kind=stat_kind,
        stat_depths=[depths[name] for name in stat_layers], stat_mean=stat_mean,
        stat_sqmean=stat_sqmean, labels=lab,
        class_names=list(class_names or []), image_size=hw, preprocessing=prep.name,
        skipped=skipped, seconds=time.perf_counter() - start,
        forward_rate=(sum(k for k, _ in timed) / max(sum(t for _, t in timed), 1e-9)) if timed else None,
    )


def _to_rgb(x: np.ndarray, hw: tuple[int, int], channels: int = 3) -> np.ndarray:
    if x.shape[-1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
        x = (x @ np.array([0.299, 0.587, 0.114], dtype="float32"))[..., None]
    if x.shape[1:3] != hw:
        x = np.asarray(keras.ops.image.resize(x, hw, interpolation="bilinear"), dtype="float32")
    return x
