"""Bottleneck features: the frozen backbone run once over the images, and the head trained on its
outputs. Also the streamed `predict` that evaluation uses."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np

from graft.atomic import write_bytes
from graft.errors import DatasetError
from surgery.pipeline import indexed_image_batches

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
            transform=None):
    """Outputs of `model` for the decodable files, and their labels, streamed in batches
    (`transform`: a batch -> batch function applied to the images first, e.g. a flip).

    Every batch has the same shape (the last one padded), so the compiled predict function is traced
    once; under a distribution strategy, `predict` splits each batch across the replicas.
    """
    outs, ys = [], []
    labels_arr = np.asarray(labels)
    for idx, images in indexed_image_batches(files, spec, batch_size=PREDICT_BATCH):
        n = len(images)
        if transform is not None:
            images = np.ascontiguousarray(transform(images))
        if n < PREDICT_BATCH:
            images = np.concatenate([images, np.zeros((PREDICT_BATCH - n, *images.shape[1:]), images.dtype)])
        out = (model.predict(images, batch_size=PREDICT_BATCH, verbose=0) if distributed
               else model.predict_on_batch(images))
        outs.append(np.asarray(out, dtype="float32")[:n])
        ys.append(labels_arr[idx])
    if not outs:
        raise DatasetError("none of the images could be decoded; check the data set with `python cli.py advise`")
    return np.concatenate(outs), np.concatenate(ys).astype("int32")


def features(feat_model: keras.Model, files: list[str], labels: list[int], spec,
              cache: Path | None, transform=None) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features (through the head's weightless pooling layer) of the files, once
    (of their transformed images with `transform`; cache under its own name then)."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return z["x"], z["y"]
    x, y = predict(feat_model, files, labels, spec, transform=transform)
    if cache is not None:
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        write_bytes(cache, buf.getvalue())
    return x, y


def feature_batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int, phase: int, start: int, end: int):
    """Batches of features for epochs start..end-1, each epoch in its own seeded order (a tf.data
    stream that `fit` reads across epochs with `steps_per_epoch`)."""
    import tensorflow as tf

    features, labels = tf.constant(x), tf.constant(y)
    orders = np.stack([np.random.default_rng([seed, phase, e]).permutation(len(y)) for e in range(start, end)])
    ds = tf.data.Dataset.from_tensor_slices(orders).flat_map(lambda o: tf.data.Dataset.from_tensor_slices(o).batch(batch))
    return ds.map(lambda idx: (tf.gather(features, idx), tf.gather(labels, idx))).prefetch(tf.data.AUTOTUNE)


def _frozen_head_start(model: keras.Model, head: list[str]) -> int:
    """How many leading head layers have no weights (pooling, flatten): they join the features."""
    k = 0
    for name in head:
        layer = model.get_layer(name)
        if layer.weights or isinstance(layer, keras.layers.Dropout):
            break
        k += 1
    return k


def feature_model(model: keras.Model, head: list[str]) -> keras.Model:
    k = _frozen_head_start(model, head)
    out = model.get_layer(head[k - 1]).output if k else model.get_layer(head[0]).input
    return keras.Model(model.inputs, out, name="bottleneck_features")


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
           "linear_dense", "predict"]
