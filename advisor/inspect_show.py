"""What each depth of a network sees on a data set: the numbers and arrays behind `inspect --show`.

    view = look(model, "examples/data/cifar_b")       # -> DataView (arrays, no files)
    report = write_show(view, "show/")                 # advisor.show_page: PNGs + index.html

`look` draws the bounded, stratified sample `advise` draws (`advisor.embed.sample_dataset`), embeds it
at every candidate cut in the same single pass (`advisor.embed.embed`), scores each cut with the same
leave-one-out probe (`advisor.transfer`) and takes the same BatchNorm shift profile
(`advisor.similarity`), so the page shows exactly what `advise` measured. On top of that it keeps:

- the first convolution's filters;
- a 2-D PCA map of the pooled features at a handful of depths (standardized, as the probe sees them);
- for a few depths (early, middle, late), the spatial feature maps of a few sample images, and, for
  a sample of channels, the images whose pooled activation is highest, with the location of the
  strongest response (for a crop around it). Only those few images go through a second, small pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from advisor.convention import find_convention
from advisor.embed import ImageSample, _to_rgb, embed, input_channels, load_images, sample_dataset
from advisor.similarity import Similarity, bn_reference, similarity
from advisor.transfer import Transferability, standardize, transferability
from graft.errors import InputError
from surgery import CutPoint, LayerGraph, layer_graph, load_model
from surgery.layer_table import LayerRow, layer_rows
from surgery.rebuild import Replay, replay

DEFAULT_PER_CLASS = 100
DEFAULT_CAP = 1000
MAP_DEPTHS = 8  # 2-D maps drawn (evenly spread over the candidate cuts, the deepest always kept)


@dataclass
class DepthNumbers:
    """What one candidate cut shows.

    Attributes:
        cut: the cut point.
        probe: leave-one-out accuracy of the linear probe at this cut (None: not measured).
        probe_stderr: its binomial standard error.
        shift: BatchNorm shift (advise's profile) of the deepest BN layer at or before the cut (None:
            the model has no BatchNormalization before it).
        shift_layer: that BN layer.
        coords: 2-D PCA coordinates of the sample's pooled features `(images, 2)`, or None when no
            map is drawn at this depth.
        explained: variance explained by the two PCA axes (fractions).
    """

    cut: CutPoint
    probe: float | None
    probe_stderr: float | None
    shift: float | None
    shift_layer: str | None
    coords: np.ndarray | None = None
    explained: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        return {"layer": self.cut.name, "depth": round(self.cut.depth, 4), "shape": list(self.cut.shape),
                "probe_accuracy": None if self.probe is None else round(self.probe, 4),
                "probe_stderr": None if self.probe_stderr is None else round(self.probe_stderr, 4),
                "shift": None if self.shift is None else round(self.shift, 4), "shift_layer": self.shift_layer,
                "map": self.coords is not None,
                "pca_explained": None if self.explained is None else [round(v, 4) for v in self.explained]}


@dataclass
class ChannelTop:
    """The sample images one channel responds to most.

    Attributes:
        channel: the channel index.
        images: indices into `DataView.paths`, strongest first.
        values: their pooled (mean) activation.
        where: `(row, col)` of the strongest response in each image's map, as fractions 0..1.
    """

    channel: int
    images: list[int]
    values: list[float]
    where: list[tuple[float, float]]


@dataclass
class SpatialDepth:
    """Spatial views at one depth.

    Attributes:
        cut: the cut point.
        maps: sample image index -> feature maps `(h, w, shown channels)`.
        channels: channel indices shown in `maps` (the most variable ones over the sample).
        tops: per sampled channel, the images that activate it most.
    """

    cut: CutPoint
    maps: dict[int, np.ndarray]
    channels: list[int]
    tops: list[ChannelTop]


@dataclass
class DataView:
    """Everything `inspect --show` draws, as data.

    Attributes:
        model: the model's name; `source` what it was loaded from.
        dataset: the data set folder.
        paths, labels, class_names: the sample (images that could be read).
        image_size: `(height, width)` images were resized to; `preprocessing` what was applied.
        pixels: the sample images as uint8 RGB at `image_size` `(images, h, w, 3)` (for thumbnails).
        filters: the first convolution's kernel `(kh, kw, cin, filters)` or None; `filters_layer` its
            name, `filters_note` why none is shown.
        depths: one `DepthNumbers` per candidate cut, shallow to deep.
        spatial: feature maps and top images at a few depths.
        feature_images: indices of the images whose feature maps are shown.
        layers: every layer's output shape and parameter formula.
        transfer, similarity: what `advise` measures (None where not measurable).
        seconds: wall time of each step.
        notes: what was not measured or drawn, and why.
    """

    model: str
    source: str
    dataset: str
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    preprocessing: str
    pixels: np.ndarray
    filters: np.ndarray | None
    filters_layer: str | None
    depths: list[DepthNumbers]
    spatial: list[SpatialDepth]
    feature_images: list[int]
    layers: list[LayerRow]
    transfer: Transferability | None
    similarity: Similarity | None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    filters_note: str = ""
    convention: dict = field(default_factory=dict)


def first_convolution(graph: LayerGraph) -> tuple[str | None, np.ndarray | None, str]:
    """The first weighted layer's kernel when it is a convolution: `(name, kernel, note)`."""
    for cid in graph.order:
        op = graph.calls[cid].op
        if not isinstance(op, keras.layers.Layer) or not op.weights:
            continue
        if isinstance(op, keras.layers.Normalization):
            continue  # input normalization (mean/variance), not a learned feature
        if isinstance(op, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and len(op.kernel.shape) == 4:
            return cid, np.asarray(op.kernel, dtype="float32"), ""
        return None, None, f"the first layer with weights, {cid}, is a {type(op).__name__}, not a convolution"
    return None, None, "the model has no layer with weights"


def _spread(n: int, k: int) -> list[int]:
    """`k` indices spread evenly over `range(n)`, the last one always included."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _pca2(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """2-D PCA of standardized features (what the probe sees)."""
    from sklearn.decomposition import PCA

    z = standardize(x)
    if not np.any(z):  # constant features (e.g. dead units of an untrained network): nothing to project
        return np.zeros((len(z), 2), "float32"), (0.0, 0.0)
    k = min(2, z.shape[0], z.shape[1])
    pca = PCA(n_components=k, svd_solver="randomized" if min(z.shape) > 50 else "full", random_state=0)
    coords = pca.fit_transform(z)
    if k < 2:
        coords = np.concatenate([coords, np.zeros((len(coords), 2 - k))], axis=1)
    ev = list(pca.explained_variance_ratio_) + [0.0] * (2 - k)
    return coords.astype("float32"), (float(ev[0]), float(ev[1]))


def _shift_at(sim: Similarity | None, depth: float) -> tuple[float | None, str | None]:
    """The shift of the deepest BN layer at or before `depth` (the first one when none is)."""
    if sim is None or not sim.depths:
        return None, None
    before = [i for i, d in enumerate(sim.depths) if d <= depth + 1e-9]
    if not before:
        return None, None
    i = before[-1]
    return float(sim.shift[i]), sim.layers[i]


def _spatial_cuts(cuts: list[CutPoint], k: int = 3) -> list[CutPoint]:
    """Early, middle and late cuts with a real spatial map (at least 2x2 where possible)."""
    spatial = [c for c in cuts if c.shape[1] is None or (c.shape[1] or 0) >= 2] or list(cuts)
    return [spatial[i] for i in _spread(len(spatial), k)]


def _feature_images(labels: np.ndarray, k: int) -> list[int]:
    """One image from each of the first `k` classes (the first image of each)."""
    out = []
    for c in np.unique(labels)[:k]:
        out.append(int(np.flatnonzero(labels == c)[0]))
    return out


def look(model: str | os.PathLike | keras.Model, dataset: str | os.PathLike | ImageSample, *,
         weights: str = "none", input_size: int | None = None, per_class: int = DEFAULT_PER_CLASS,
         cap: int = DEFAULT_CAP,
         size: int | None = None, seed: int = 0, safe_mode: bool = True, images: int = 3,
         channels: int = 6, top: int = 5, maps: int = MAP_DEPTHS, shown_maps: int = 8,
         batch_size: int = 32, preprocessing: str = "auto") -> DataView:
    """Look at a data set through a network, depth by depth.

    Args:
        model: a `keras.Model`, a model file or a `keras.applications` name.
        dataset: a folder `root/<class>/<images>` (or an `ImageSample`).
        weights: for a `keras.applications` name: `none`, `imagenet` or a weights file.
        input_size: for a `keras.applications` name: build it for `N x N x 3` inputs.
        per_class, cap: the sample: up to `per_class` images per class, `cap` in all.
        size: input size for models that accept any size (default 160, as `advise`).
        seed: seed of the sample.
        safe_mode: load model files with Keras safe mode.
        images: sample images whose feature maps are shown.
        channels: channels sampled per depth for the top-activating images.
        top: images shown per channel.
        maps: depths that get a 2-D map.
        shown_maps: feature-map channels shown per depth.
        batch_size: images per forward pass.
        preprocessing: the pixel convention: `auto` (measured, `advisor.convention`), `model` or a
            `graft.conventions` name.

    Returns:
        `DataView`.

    Raises:
        DatasetError, ModelLoadError, InputError: bad data set or model, with a clear message.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    shape = (input_size, input_size, 3) if input_size else None
    net = model if isinstance(model, keras.Model) else load_model(model, weights=weights, input_shape=shape,
                                                                  safe_mode=safe_mode)
    source = str(model) if not isinstance(model, keras.Model) else net.name
    graph = layer_graph(net)
    seconds["load"] = time.perf_counter() - t

    t = time.perf_counter()
    sample = dataset if isinstance(dataset, ImageSample) else sample_dataset(dataset, per_class, cap, seed)
    choice = find_convention(graph, sample, asked=preprocessing, size=size)
    prep = choice.preprocessing(net)
    emb = embed(graph, sample, size=size, batch_size=batch_size, preprocessing=prep)
    seconds["embed"] = time.perf_counter() - t
    notes: list[str] = list(choice.notes)
    kept = [i for i in range(len(sample.paths)) if str(sample.paths[i]) not in {s for s, _ in emb.skipped}]
    paths = [sample.paths[i] for i in kept]
    labels = np.asarray(emb.labels)
    if emb.skipped:
        notes.append(f"{len(emb.skipped)} sampled images could not be read and were left out")

    t = time.perf_counter()
    trans = None
    n_classes = len(set(labels.tolist()))
    if n_classes >= 2 and len(labels) >= 2 * n_classes:
        trans = transferability(emb)
    else:
        notes.append("probe accuracy not measured: it needs at least 2 classes with 2 images each")
    seconds["probe"] = time.perf_counter() - t
    t = time.perf_counter()
    sim = None
    if emb.stat_kind == "bn_input":
        sim = similarity(emb, bn_reference(graph, emb.stat_layers), bootstrap=50, seed=seed)
    else:
        notes.append(f"shift profile not measured: {net.name} has no BatchNormalization layers")
    seconds["shift"] = time.perf_counter() - t

    t = time.perf_counter()
    map_idx = set(_spread(len(emb.cuts), maps))
    depths = []
    for i, cut in enumerate(emb.cuts):
        score = trans.scores[i] if trans is not None else None
        shift, shift_layer = _shift_at(sim, cut.depth)
        coords, explained = _pca2(emb.features[cut.name]) if i in map_idx else (None, None)
        depths.append(DepthNumbers(cut, None if score is None else score.score,
                                   None if score is None else score.stderr, shift, shift_layer, coords, explained))
    seconds["maps"] = time.perf_counter() - t

    t = time.perf_counter()
    hw = emb.image_size
    pixels, _, _ = load_images(paths, hw)
    feature_images = _feature_images(labels, images)
    spatial_cuts = _spatial_cuts(emb.cuts)
    chosen: dict[str, tuple[list[int], list[ChannelTop]]] = {}
    needed = set(feature_images)
    for cut in spatial_cuts:
        pooled = emb.features[cut.name]
        var = pooled.var(axis=0)
        order = [int(c) for c in np.argsort(-var)]
        sampled = order[:channels]
        tops = []
        for c in sampled:
            best = [int(i) for i in np.argsort(-pooled[:, c])[:top]]
            tops.append(ChannelTop(c, best, [float(pooled[i, c]) for i in best], []))
            needed.update(best)
        chosen[cut.name] = (sorted(order[:shown_maps]), tops)
    needed_list = sorted(needed)
    # one batch for these few images: every distinct batch shape costs a graph trace (~1 s here)
    spatial = _spatial_pass(graph, spatial_cuts, _to_rgb(pixels[needed_list], hw, input_channels(net)), prep,
                            max(batch_size, min(len(needed_list), 128)))
    rows = {img: r for r, img in enumerate(needed_list)}
    views = []
    for cut, fmap in zip(spatial_cuts, spatial):
        shown, tops = chosen[cut.name]
        for ct in tops:
            for img in ct.images:
                m = fmap[rows[img], :, :, ct.channel]
                r, c = np.unravel_index(int(np.argmax(m)), m.shape)
                ct.where.append(((r + 0.5) / m.shape[0], (c + 0.5) / m.shape[1]))
        views.append(SpatialDepth(cut, {img: fmap[rows[img]][:, :, shown] for img in feature_images}, shown, tops))
    seconds["feature_maps"] = time.perf_counter() - t

    name, kernel, fnote = first_convolution(graph)
    return DataView(
        model=net.name, source=source,
        dataset="an image sample" if isinstance(dataset, ImageSample) else str(dataset),
        paths=paths, labels=labels, class_names=list(sample.class_names), image_size=hw,
        preprocessing=emb.preprocessing, pixels=np.clip(pixels, 0, 255).astype("uint8"), filters=kernel,
        filters_layer=name, depths=depths, spatial=views, feature_images=feature_images,
        layers=layer_rows(graph), transfer=trans, similarity=sim, seconds=seconds, notes=notes,
        filters_note=fnote, convention=choice.to_dict(),
    )


def _spatial_pass(graph: LayerGraph, cuts: list[CutPoint], x: np.ndarray, prep, batch_size: int) -> list[np.ndarray]:
    """The raw feature maps at `cuts` for a few images (already at the model's size, 0..255)."""
    if not len(x):
        raise InputError("No image of the sample could be read for the feature maps.")
    model = replay(graph, Replay(outputs=[graph.calls[c.name].outputs[0] for c in cuts],
                                 name=f"{graph.model.name}_maps"))
    outs: list[list[np.ndarray]] = [[] for _ in cuts]
    for s in range(0, len(x), batch_size):
        y = model.predict_on_batch(prep(x[s:s + batch_size].astype("float32")))
        y = y if isinstance(y, (list, tuple)) else [y]
        for store, v in zip(outs, y):
            v = np.asarray(v, dtype="float32")
            store.append(v if v.ndim == 4 else v.reshape(len(v), 1, 1, -1))
    return [np.concatenate(v) for v in outs]

