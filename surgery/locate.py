"""Turn what a user wrote (a layer name, an index, a depth fraction) into a call of the graph."""

from __future__ import annotations

import keras

from graft.errors import InvalidCutError, LayerNotFoundError
from surgery.graph import CutPoint, LayerGraph, layer_graph


def as_graph(model_or_graph: keras.Model | LayerGraph) -> LayerGraph:
    """Accept a model or an already built `LayerGraph` (saves rebuilding it)."""
    if isinstance(model_or_graph, LayerGraph):
        return model_or_graph
    return layer_graph(model_or_graph)


def locate(graph: LayerGraph, at: str | int | float) -> str:
    """The call id that `at` names.

    Args:
        graph: the model's `LayerGraph`.
        at: a layer name or call id (`str`); an index into `graph.order` (`int`, negative counts from
            the end); or a depth fraction in [0, 1] (`float`), which picks the cut point of nearest
            depth (the shallower one on a tie).

    Raises:
        LayerNotFoundError: no such name, or an index out of range.
    """
    if isinstance(at, bool):
        raise LayerNotFoundError(f"Expected a layer name, an index or a depth fraction. Received: at={at!r}")
    if isinstance(at, str):
        return graph.resolve(at)
    if isinstance(at, int):
        n = len(graph.order)
        if not -n <= at < n:
            raise LayerNotFoundError(
                f"Layer index {at} is out of range: model {graph.model.name!r} has {n} layers "
                f"(indices 0..{n - 1}, or -{n}..-1 from the end).",
                name=str(at),
            )
        return graph.order[at]
    if isinstance(at, float):
        return nearest_cut_by_depth(graph, at).name
    raise LayerNotFoundError(
        f"Expected a layer name, an index or a depth fraction. Received: at={at!r} ({type(at).__name__})"
    )


def nearest_cut_by_depth(graph: LayerGraph, depth: float) -> CutPoint:
    if not 0.0 <= depth <= 1.0:
        raise InvalidCutError(f"A depth fraction must lie in [0, 1]. Received: depth={depth}")
    cuts = graph.cut_points()
    if not cuts:
        raise InvalidCutError(f"Model {graph.model.name!r} has no valid cut points.")
    return min(cuts, key=lambda c: (abs(c.depth - depth), c.depth))


def require_cut_point(graph: LayerGraph, call_id: str) -> CutPoint:
    """The cut point at `call_id`, or an `InvalidCutError` naming the nearest valid ones."""
    for cut in graph.cut_points():
        if cut.name == call_id:
            return cut
    before, after = graph.nearest_cut_points(call_id)
    near = " and ".join(
        f"{label} {c.name!r} (depth {c.depth:.2f})"
        for label, c in (("before it", before), ("after it", after))
        if c is not None
    )
    why = (
        "it has more than one output"
        if len(graph.calls[call_id].outputs) != 1
        else "some path from the inputs to the outputs bypasses it (e.g. a residual branch)"
    )
    raise InvalidCutError(
        f"Layer {call_id!r} is not a valid cut point: {why}. "
        f"The nearest valid cut points are {near or 'none'}.",
        before=before.name if before else None,
        after=after.name if after else None,
    )
