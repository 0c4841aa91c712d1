"""Find a model's classification head, remove it, attach a new one."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import keras

from graft.errors import InputError, InvalidCutError
from surgery.graph import CutPoint, LayerGraph
from surgery.locate import as_graph, locate, require_cut_point
from surgery.rebuild import Replay, replay

POOLINGS = ("avg", "max", "flatten")


@dataclass
class HeadSpec:
    """A classification head.

    Attributes:
        classes: number of output units.
        pooling: how a spatial feature map becomes a vector: `avg`, `max` or `flatten`
            (ignored when the features are already a vector).
        hidden: units of hidden Dense layers (ReLU), in order.
        dropout: dropout rate before each Dense layer (0 for none).
        activation: activation of the output layer (`softmax`, `sigmoid`, `linear`, ...).
    """

    classes: int
    pooling: str = "avg"
    hidden: Sequence[int] = ()
    dropout: float = 0.0
    activation: str = "softmax"

    def validate(self) -> None:
        if not isinstance(self.classes, int) or self.classes < 1:
            raise InputError(f"A head needs a positive integer number of classes. Received: classes={self.classes!r}")
        if self.pooling not in POOLINGS:
            raise InputError(f"Unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise InputError(f"Dropout must lie in [0, 1). Received: dropout={self.dropout}")
        for units in self.hidden:
            if not isinstance(units, int) or units < 1:
                raise InputError(f"Hidden units must be positive integers. Received: hidden={list(self.hidden)}")


@dataclass
class HeadInfo:
    """Where a model's features end and its head begins.

    Attributes:
        features: the cut point whose tensor feeds the head (the last spatial feature map).
        layers: call ids of the head, in order (empty for a headless model).
    """

    features: CutPoint
    layers: list[str]


def find_head(model: keras.Model | LayerGraph) -> HeadInfo:
    """The head of a single-output CNN: everything after its last spatial feature map.

    The feature tensor is the last cut point whose output keeps spatial axes (rank 3 or more,
    batch included); the calls after it (pooling, flatten, dropout, dense) are the head.
    """
    graph = as_graph(model)
    cuts = graph.cut_points()
    spatial = [c for c in cuts if len(c.shape) >= 4]
    if not spatial:
        spatial = [c for c in cuts if len(c.shape) >= 3]
    if not spatial:
        raise InvalidCutError(
            f"Model {graph.model.name!r} has no spatial feature map to put a head on; "
            "pass `at=` with the layer whose output should feed the head."
        )
    features = spatial[-1]
    kept = graph.ancestors([features.name])
    head = [cid for cid in graph.order if cid not in kept]
    return HeadInfo(features=features, layers=head)


def _fresh_name(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _dropout_seed() -> int:
    """The seed Keras would draw for an unseeded Dropout (so TensorFlow and JAX runs are unchanged).

    Passed explicitly because under PyTorch an unseeded Dropout draws from torch's global generator,
    whose state a checkpoint does not hold; a seeded one keeps its state in a `seed_generator_state`
    variable, which `apply` checkpoints, so a resumed run draws the same masks.
    """
    return random.randint(1, int(1e9))


def build_head(x, spec: HeadSpec, taken: set[str]):
    """Apply a new head to tensor `x`; returns (output tensor, the head's layers)."""
    created = []

    def add(layer):
        created.append(layer)
        return layer

    if len(x.shape) >= 3:
        if spec.pooling == "avg":
            pool = keras.layers.GlobalAveragePooling2D if len(x.shape) == 4 else keras.layers.GlobalAveragePooling1D
        elif spec.pooling == "max":
            pool = keras.layers.GlobalMaxPooling2D if len(x.shape) == 4 else keras.layers.GlobalMaxPooling1D
        else:
            pool = keras.layers.Flatten
        x = add(pool(name=_fresh_name("head_pool", taken)))(x)
    for i, units in enumerate(spec.hidden, start=1):
        if spec.dropout:
            x = add(keras.layers.Dropout(spec.dropout, seed=_dropout_seed(),
                                           name=_fresh_name(f"head_dropout_{i}", taken)))(x)
        x = add(keras.layers.Dense(units, activation="relu", name=_fresh_name(f"head_dense_{i}", taken)))(x)
    if spec.dropout:
        x = add(keras.layers.Dropout(spec.dropout, seed=_dropout_seed(), name=_fresh_name("head_dropout", taken)))(x)
    # float32 outputs even under a mixed-precision policy (a float16 softmax loses small probabilities)
    x = add(keras.layers.Dense(spec.classes, activation=spec.activation, dtype="float32",
                               name=_fresh_name("head_predictions", taken)))(x)
    return x, created


def replace_head(model: keras.Model | LayerGraph, classes: int, pooling: str = "avg",
                 hidden: Sequence[int] = (), dropout: float = 0.0, activation: str = "softmax",
                 at: str | int | float | None = None) -> keras.Model:
    """Remove the model's classification head (if any) and attach a new one.

    Args:
        model: a single-output model or its `LayerGraph`.
        classes: units of the new output layer.
        pooling: `avg`, `max` or `flatten`, applied when the features are spatial.
        hidden: units of hidden Dense layers (ReLU) before the output layer.
        dropout: dropout rate before each Dense layer.
        activation: the output activation.
        at: the cut point to attach the head to; default: the one `find_head` finds (the last
            spatial feature map). Passing a cut point also truncates the model there.

    Returns:
        A new model: the kept part unchanged (same weights, same outputs), then the new head, whose
        layers are named `head_*`.

    Example:
        >>> model = replace_head(keras.applications.MobileNetV2(weights=None), classes=5, dropout=0.2)
        >>> model.output.shape
        (None, 5)
    """
    spec = HeadSpec(classes=classes, pooling=pooling, hidden=tuple(hidden), dropout=dropout,
                    activation=activation)
    spec.validate()
    graph = as_graph(model)
    if at is None:
        features = find_head(graph).features
    else:
        features = require_cut_point(graph, locate(graph, at))
    key = graph.calls[features.name].outputs[0]
    taken = {graph.calls[cid].name for cid in graph.ancestors([features.name])}

    def attach(outputs):
        out, created = build_head(outputs[0], spec, taken)
        return [out], created

    return replay(graph, Replay(outputs=[key], attach=attach))


def attach_head(model: keras.Model | LayerGraph, classes: int, **kwargs) -> keras.Model:
    """Attach a head to a model's output as it is (a headless backbone); see `replace_head`."""
    graph = as_graph(model)
    if len(graph.output_keys) != 1:
        raise InputError(f"attach_head needs a single-output model; {graph.model.name!r} has {len(graph.output_keys)}.")
    last = graph.producer[graph.output_keys[0]]
    return replace_head(graph, classes, at=last, **kwargs)
