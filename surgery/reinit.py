"""Reinitialize chosen layers with each layer's own initializers."""

from __future__ import annotations

from collections.abc import Iterable

import keras

from surgery.freeze import select
from surgery.graph import LayerGraph
from surgery.locate import as_graph
from surgery.rebuild import Replay, replay


def reinitialize(model: keras.Model | LayerGraph, layers: Iterable[str] | None = None,
                 patterns: Iterable[str] | None = None, from_layer: str | int | float | None = None,
                 seed: int | None = None) -> keras.Model:
    """A copy of the model in which the chosen layers get fresh weights.

    Each chosen layer is rebuilt from its config, so its own initializers (`kernel_initializer`,
    `gamma_initializer`, `moving_variance_initializer`, ...) draw the new weights; every other layer
    keeps its weights exactly.

    Args:
        model: a model or its `LayerGraph`.
        layers: layer names (or call ids) to reinitialize.
        patterns: name globs or `re:` regular expressions, as in `freeze`.
        from_layer: reinitialize every layer after this one (not the layer itself): "keep the
            bottom, start the top from scratch".
        seed: seeds Keras' random generator first, for repeatable weights.

    Returns:
        A new model. With no selection at all, every layer is reinitialized (training from scratch).
    """
    graph = as_graph(model)
    chosen: set[str] = set()
    for name in layers or []:
        chosen.add(graph.resolve(name))
    if patterns:
        chosen |= select(graph, patterns)
    if from_layer is not None:
        chosen |= set(graph.calls) - select(graph, up_to=from_layer)
    if not layers and not patterns and from_layer is None:
        chosen = set(graph.calls)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return replay(graph, Replay(reinit=chosen))
