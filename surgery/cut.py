"""Truncate a model at a valid cut point."""

from __future__ import annotations

import keras

from surgery.graph import LayerGraph
from surgery.locate import as_graph, locate, require_cut_point
from surgery.rebuild import Replay, replay


def truncate(model: keras.Model | LayerGraph, at: str | int | float) -> keras.Model:
    """A new model that ends at a cut point: everything after `at` is cut off.

    Args:
        model: a Functional or Sequential model (or its `LayerGraph`); nested models are inlined.
        at: the cut point, by layer name (a layer inside a nested model may be named plainly or as
            `outer/inner`), by index into the graph's layers, or by depth fraction (0..1, the
            nearest cut point).

    Returns:
        A new model whose output is the cut point's tensor. Its layers are copies: the input model
        is untouched, and the kept part computes exactly what it computed before.

    Raises:
        LayerNotFoundError: `at` names no layer (the message lists close names).
        InvalidCutError: `at` is not a valid cut point (the message names the nearest ones).

    Example:
        >>> base = truncate(keras.applications.ResNet50(weights=None), "conv4_block6_out")
        >>> base.output.shape
        (None, 14, 14, 1024)
    """
    graph = as_graph(model)
    cut = require_cut_point(graph, locate(graph, at))
    key = graph.calls[cut.name].outputs[0]
    return replay(graph, Replay(outputs=[key]))
