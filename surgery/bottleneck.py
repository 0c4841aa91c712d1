"""Bottleneck features: the frozen backbone run once over the images, and the head trained on its
outputs. Also the streamed `predict` that evaluation uses."""

from __future__ import annotations

import weakref
from pathlib import Path

import keras
import numpy as np

from graft.errors import DatasetError
from surgery.feature_store import cached, in_memory, store_batches
from surgery.pipeline import indexed_image_batches
from surgery.progress import forward

PREDICT_BATCH = 64


#: The deterministic views of a training image that a frozen-backbone head also fits on, per
#: `DataSpec.augment["flip"]` (NHWC batches).
FLIP_VIEWS = {
    "horizontal": {"hflip": lambda b: b[:, :, ::-1]},
    "vertical": {"vflip": lambda b: b[:, ::-1]},
    "horizontal_and_vertical": {"hflip": lambda b: b[:, :, ::-1], "vflip": lambda b: b[:, ::-1]},
}


def flip_views(augment: dict) -> dict:
    """name -> batch transform of the flips `augment` keeps (empty without flips)."""
    return FLIP_VIEWS.get((augment or {}).get("flip") or "", {})


def predict(model: keras.Model, files: list[str], labels: list[int], spec, distributed: bool = False,
            transform=None, reporter=None, task: str = "predict"):
    """Outputs of `model` for the decodable files, and their labels, streamed in batches
    (`transform`: a batch -> batch function applied to the images first, e.g. a flip; `reporter`:
    a `surgery.progress.Reporter` told the images done, as `task`).

    Every batch has the same shape (the last one padded), so the compiled predict function is traced
    once; under a distribution strategy, `predict` splits each batch across the replicas. Only the
    outputs are kept (float32, one row per image), never the images.
    """
    got = store_batches(predict_batches(model, files, labels, spec, distributed, transform, reporter, task),
                        len(files), None, on_disk=False)
    if got is None:
        raise DatasetError("none of the images could be decoded; check the data set with `python cli.py advise`")
    return got


def predict_batches(model: keras.Model, files: list[str], labels: list[int], spec, distributed: bool = False,
                    transform=None, reporter=None, task: str = "predict"):
    """`predict`'s batches as they come: (float32 outputs, int labels) of up to PREDICT_BATCH images."""
    labels_arr = np.asarray(labels)
    done, total = 0, len(files)
    if reporter is not None:
        forward(reporter, task, 0, total)
    for idx, images in indexed_image_batches(files, spec, batch_size=PREDICT_BATCH):
        n = len(images)
        if transform is not None:
            images = np.ascontiguousarray(transform(images))
        if n < PREDICT_BATCH:
            images = np.concatenate([images, np.zeros((PREDICT_BATCH - n, *images.shape[1:]), images.dtype)])
        out = (model.predict(images, batch_size=PREDICT_BATCH, verbose=0) if distributed
               else model.predict_on_batch(images))
        yield np.asarray(out, dtype="float32")[:n], labels_arr[idx]
        done = int(idx[-1]) + 1 if len(idx) else done
        if reporter is not None:
            forward(reporter, task, done, total)


def features(feat_model: keras.Model, files: list[str], labels: list[int], spec,
             cache: Path | None, transform=None, on_disk: bool = False, reporter=None):
    """Backbone features (through the head's weightless pooling layer) of the files, once
    (of their transformed images with `transform`; cache under its own name then).

    In memory and cached as `cache` (`.npz`), or with `on_disk` (the phase's features exceed
    `surgery.feature_store.feature_budget()`) written batch by batch beside it as `.x.npy` and
    returned memory-mapped (`np.memmap`, read-only). The rows are the same either way.
    """
    got = cached(cache)
    if got is not None:
        return got
    task = f"features {cache.name.removesuffix('.npz')}" if cache is not None else "features"
    got = store_batches(predict_batches(feat_model, files, labels, spec, transform=transform, reporter=reporter,
                                        task=task), len(files), cache, on_disk)
    if got is None:
        raise DatasetError("none of the images could be decoded; check the data set with `python cli.py advise`")
    return got


def feature_batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int, phase: int, start: int, end: int):
    """Batches of features for epochs start..end-1, each epoch in its own seeded order (a tf.data
    stream that `fit` reads across epochs with `steps_per_epoch`). Features on disk (memory-mapped,
    or a `RowStack` of them) are read batch by batch, in the same order, never all at once."""
    import tensorflow as tf

    orders = np.stack([np.random.default_rng([seed, phase, e]).permutation(len(y)) for e in range(start, end)])
    if not in_memory(x):
        y = np.asarray(y)

        def rows():
            for order in orders:
                for k in range(0, len(order), batch):
                    idx = order[k: k + batch]
                    yield np.asarray(x[idx], dtype="float32"), y[idx]

        spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
        return tf.data.Dataset.from_generator(rows, output_signature=spec).prefetch(2)
    features, labels = tf.constant(x), tf.constant(y)
    plain = tf.autograph.experimental.do_not_convert  # graph ops as written (surgery.pipeline._plain says why)
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(
        plain(lambda o: tf.data.Dataset.from_tensor_slices(o).batch(batch)))
    return ds.map(plain(lambda idx: (tf.gather(features, idx), tf.gather(labels, idx)))).prefetch(tf.data.AUTOTUNE)


def validation_batches(val: tuple | None, batch: int):
    """`fit`'s validation data from features: the (x, y) pair itself when in memory, else batches
    read from disk in order (Keras would otherwise copy the whole array into one tensor)."""
    if val is None or in_memory(val[0]):
        return val
    import tensorflow as tf

    x, y = val[0], np.asarray(val[1])

    def rows():
        for k in range(0, len(y), batch):
            yield np.asarray(x[k: k + batch], dtype="float32"), y[k: k + batch]

    spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
    return tf.data.Dataset.from_generator(rows, output_signature=spec).prefetch(2)


def _frozen_head_start(model: keras.Model, head: list[str]) -> int:
    """How many leading head layers have no weights (pooling, flatten): they join the features."""
    k = 0
    for name in head:
        layer = model.get_layer(name)
        if layer.weights or isinstance(layer, keras.layers.Dropout):
            break
        k += 1
    return k


#: model -> {head: its feature model}; weak, so a model that is gone takes its entry with it
_FEATURE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def feature_model(model: keras.Model, head: list[str]) -> keras.Model:
    """The model up to the head's first weighted layer (its weightless pooling included). The same
    object for the same model and head, so its traced predict function is reused: the head phase
    and the refit both take features, and each new model costs a trace (seconds on CPU). Its layers
    are the model's, so it always computes with the current weights."""
    per_model = _FEATURE_MODELS.setdefault(model, {})
    key = tuple(head)
    if key not in per_model:
        k = _frozen_head_start(model, head)
        out = model.get_layer(head[k - 1]).output if k else model.get_layer(head[0]).input
        per_model[key] = keras.Model(model.inputs, out, name="bottleneck_features")
    return per_model[key]


def head_model(model: keras.Model, head: list[str], feature_shape: tuple) -> keras.Model:
    """A model of the head's trainable layers on precomputed features; the layers are shared."""
    k = _frozen_head_start(model, head)
    inp = keras.Input(shape=feature_shape, name="features")
    x = inp
    for name in head[k:]:
        x = model.get_layer(name)(x)
    return keras.Model(inp, x, name="head")


def linear_dense(model: keras.Model, head: list[str]):
    """The head's one Dense layer when the head is linear (pooling, dropout, Dense with softmax),
    else None: only such a head is a convex problem on frozen features."""
    dense = [model.get_layer(n) for n in head if model.get_layer(n).weights]
    if len(dense) != 1 or not isinstance(dense[0], keras.layers.Dense):
        return None
    act = getattr(dense[0].activation, "__name__", "")
    return dense[0] if act == "softmax" else None


__all__ = ["FLIP_VIEWS", "PREDICT_BATCH", "feature_batches", "feature_model", "features", "flip_views", "head_model",
           "linear_dense", "predict", "predict_batches", "validation_batches"]
