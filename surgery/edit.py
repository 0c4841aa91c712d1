"""Insert, replace and delete a layer at a single-tensor point of the graph."""

from __future__ import annotations

import keras

from graft.errors import SurgeryError
from surgery.graph import LayerGraph
from surgery.locate import as_graph
from surgery.rebuild import Replay, replay


def _single_output(graph: LayerGraph, call_id: str, what: str) -> None:
    if len(graph.calls[call_id].outputs) != 1:
        raise SurgeryError(
            f"Cannot {what} at {call_id!r}: it has {len(graph.calls[call_id].outputs)} output tensors; "
            "graft edits single-tensor points only."
        )


def _single_input(graph: LayerGraph, call_id: str, what: str) -> None:
    _single_output(graph, call_id, what)
    if len(graph.calls[call_id].inputs) != 1:
        raise SurgeryError(
            f"Cannot {what} {call_id!r}: it reads {len(graph.calls[call_id].inputs)} tensors; "
            "graft edits single-tensor points only (one tensor in, one out)."
        )


def _replay(graph: LayerGraph, edits: Replay, what: str) -> keras.Model:
    try:
        return replay(graph, edits)
    except (ValueError, TypeError) as exc:
        raise SurgeryError(f"Cannot {what}: the layers around it do not accept the new shapes ({exc}).") from None


def _fresh(layer: keras.layers.Layer, graph: LayerGraph) -> None:
    if not isinstance(layer, keras.layers.Layer):
        raise SurgeryError(f"Expected a keras.layers.Layer. Received: {layer!r}")
    if any(call.op is layer for call in graph.calls.values()):
        raise SurgeryError(f"Layer {layer.name!r} already belongs to this model; pass a new layer.")


def insert_layer(model: keras.Model | LayerGraph, after: str, layer: keras.layers.Layer) -> keras.Model:
    """A copy of the model with `layer` applied to the output of `after`; its consumers read the
    new layer's output instead.

    Example:
        >>> m = insert_layer(model, after="pool2", layer=keras.layers.Dropout(0.3))
    """
    graph = as_graph(model)
    cid = graph.resolve(after)
    _single_output(graph, cid, "insert a layer after")
    _fresh(layer, graph)
    return _replay(graph, Replay(insert_after={cid: [layer]}), f"insert {layer.name!r} after {cid!r}")


def replace_layer(model: keras.Model | LayerGraph, name: str, layer: keras.layers.Layer) -> keras.Model:
    """A copy of the model in which `layer` (new, unbuilt) takes the place of layer `name`, called
    with the same arguments.

    Example:
        >>> m = replace_layer(model, "fc1", keras.layers.Dense(128, activation="relu"))
    """
    graph = as_graph(model)
    cid = graph.resolve(name)
    _single_input(graph, cid, "replace")
    _fresh(layer, graph)
    return _replay(graph, Replay(replace={cid: layer}), f"replace {cid!r} with {layer.name!r}")


def delete_layer(model: keras.Model | LayerGraph, name: str) -> keras.Model:
    """A copy of the model without layer `name`: its consumers read its input instead.

    Raises:
        SurgeryError: the layer is not one tensor in, one out, or its removal breaks the shapes.
    """
    graph = as_graph(model)
    cid = graph.resolve(name)
    _single_input(graph, cid, "delete")
    return _replay(graph, Replay(delete={cid}), f"delete {cid!r}")
