"""Freeze and unfreeze layers, by name pattern and by depth, with an explicit BatchNorm policy.

In Keras 3 a BatchNormalization layer with `trainable=False` runs in inference mode (it uses and
keeps its moving statistics), so freezing a BN layer is how it is kept in inference mode.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

import keras

from graft.errors import InputError
from surgery.graph import LayerGraph
from surgery.locate import as_graph, locate
from surgery.rebuild import Replay, replay

BN_POLICIES = ("freeze", "follow", "train")


def select(graph: LayerGraph, patterns: Iterable[str] | None = None,
           up_to: str | int | float | None = None) -> set[str]:
    """Call ids chosen by name patterns and/or by depth.

    Args:
        graph: the model's `LayerGraph`.
        patterns: shell-style globs (`conv5_*`) matched against layer names and call ids; a pattern
            starting with `re:` is a regular expression (`re:^block[1-3]`).
        up_to: a layer (name, index or depth fraction): selects it and everything it depends on.

    Returns:
        The selected call ids; every call when neither argument is given.
    """
    patterns = list(patterns or [])
    if not patterns and up_to is None:
        return set(graph.calls)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {cid for cid, call in graph.calls.items() if _matches(pattern, cid, call.name)}
        if not hits:
            raise InputError(
                f"Pattern {pattern!r} matches no layer of model {graph.model.name!r}. "
                "Patterns are shell globs (`conv5_*`) or regular expressions written `re:...`."
            )
        chosen |= hits
    if up_to is not None:
        chosen |= graph.ancestors([locate(graph, up_to)])
    return chosen


def _matches(pattern: str, call_id: str, name: str) -> bool:
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise InputError(f"Bad regular expression {pattern[3:]!r}: {exc}.") from None
        return bool(rx.search(name) or rx.search(call_id))
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(call_id, pattern)


def _set_trainable(model, graph, chosen, trainable: bool, bn: str) -> keras.Model:
    if bn not in BN_POLICIES:
        raise InputError(f"Unknown BatchNormalization policy {bn!r}; expected one of {', '.join(BN_POLICIES)}.")

    def configure(call_id, layer):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        if is_bn and bn == "freeze":
            layer.trainable = False
        elif is_bn and bn == "train":
            layer.trainable = True
        elif call_id in chosen:
            layer.trainable = trainable

    return replay(graph, Replay(configure=configure))


def freeze(model: keras.Model | LayerGraph, patterns: Iterable[str] | None = None,
           up_to: str | int | float | None = None, bn: str = "follow") -> keras.Model:
    """A copy of the model with the chosen layers frozen (`trainable=False`).

    Args:
        model: a model or its `LayerGraph`.
        patterns: name globs or `re:` regular expressions of the layers to freeze.
        up_to: freeze this layer and everything before it ("everything up to X").
            With neither `patterns` nor `up_to`, every layer is frozen.
        bn: BatchNormalization policy: `follow` (default: BN layers are treated like the others),
            `freeze` (every BN layer of the model frozen, so it runs in inference mode, whatever
            else is trainable), `train` (every BN layer of the model trainable).

    Returns:
        A new model; layers not chosen keep the trainable flag they had.

    Example:
        >>> base = freeze(model, up_to="conv4_block6_out")   # conv5 and the head stay trainable
    """
    graph = as_graph(model)
    return _set_trainable(model, graph, select(graph, patterns, up_to), False, bn)


def unfreeze(model: keras.Model | LayerGraph, patterns: Iterable[str] | None = None,
             up_to: str | int | float | None = None, bn: str = "freeze",
             from_layer: str | int | float | None = None) -> keras.Model:
    """A copy of the model with the chosen layers trainable.

    Args:
        model: a model or its `LayerGraph`.
        patterns: name globs or `re:` regular expressions of the layers to unfreeze.
        up_to: unfreeze this layer and everything before it.
        from_layer: unfreeze everything that comes after this layer (not the layer itself):
            "fine-tune the top of the network from X on".
        bn: BatchNormalization policy, as in `freeze`; the default here is `freeze`: BN layers stay
            in inference mode while the rest fine-tunes, as the Keras transfer-learning guide
            advises for small data.

    Returns:
        A new model.
    """
    graph = as_graph(model)
    if from_layer is not None:
        below = graph.ancestors([locate(graph, from_layer)])
        chosen = set(graph.calls) - below
        if patterns or up_to is not None:
            chosen &= select(graph, patterns, up_to)
    else:
        chosen = select(graph, patterns, up_to)
    return _set_trainable(model, graph, chosen, True, bn)


def trainable_layers(model: keras.Model) -> dict[str, bool]:
    """Each layer's trainable flag, by name (nested models are flattened)."""
    graph = as_graph(model)
    return {cid: bool(call.op.trainable) for cid, call in graph.calls.items() if call.is_layer}
