"""Replay a `LayerGraph` into a new Functional model, with edits applied on the way.

Every edit in graft is a replay: new `Input`s, then each needed call in topological order on cloned
layers (fresh objects from `get_config`, weights copied), with the call's own arguments (keyword
arguments such as `training=False`, masks, constants) carried over. The input model is never touched;
shared layers stay shared in the copy. Nested models come out inlined (flat).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import keras

from surgery.graph import CallNode, LayerGraph


@dataclass
class Replay:
    """What to change while replaying a graph.

    Attributes:
        outputs: tensor keys that become the outputs (default: the model's outputs).
        replace: call id -> layer to call instead, on the same inputs.
        delete: call ids whose output is replaced by their (single) input.
        insert_after: call id -> layers to apply, in order, to the call's (single) output.
        attach: callable(output tensors) -> (new output tensors, the layers it created), applied
            at the end (heads).
        reinit: call ids whose layers keep the fresh weights their own initializers drew, instead
            of the source model's weights.
        configure: callable(call id or None, new layer) run on every layer of the new model
            (None for layers that `replace`, `insert_after` or `attach` brought in).
        name: name of the new model (default: the input model's name).
    """

    outputs: list[int] | None = None
    replace: dict[str, keras.layers.Layer] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    insert_after: dict[str, list[keras.layers.Layer]] = field(default_factory=dict)
    attach: Callable[[list[Any]], tuple[list[Any], list[keras.layers.Layer]]] | None = None
    reinit: set[str] = field(default_factory=set)
    configure: Callable[[str | None, keras.layers.Layer], None] | None = None
    name: str | None = None


class _TensorMap(dict):
    """Maps original tensor ids to new tensors, following the graph's nested-model aliases."""

    def __init__(self, graph: LayerGraph):
        super().__init__()
        self._alias = graph._alias

    def _resolve(self, key):
        while key in self._alias:
            key = self._alias[key]
        return key

    def __getitem__(self, key):
        return dict.__getitem__(self, self._resolve(key))

    def get(self, key, default=None):
        return dict.get(self, self._resolve(key), default)


def clone_operation(op):
    """A fresh copy of a layer or operation from its config (weights not copied)."""
    try:
        return op.__class__.from_config(op.get_config())
    except (NotImplementedError, TypeError, ValueError):
        if isinstance(op, keras.layers.Layer):
            raise
        return op  # stateless keras.ops operation without a config: reusing it is harmless


def _layer_names(graph: LayerGraph, needed: Iterable[str]) -> dict[int, str]:
    """New names for cloned layers: the original name, or `outer_inner` where names collide."""
    names: dict[int, str] = {}
    taken: dict[str, int] = {}
    for cid in needed:
        op = graph.calls[cid].op
        if id(op) in names:
            continue
        taken[op.name] = taken.get(op.name, 0) + 1
        names[id(op)] = op.name
    for cid in needed:
        call = graph.calls[cid]
        op = call.op
        if taken.get(op.name, 0) > 1 and call.scope and names[id(op)] == op.name:
            names[id(op)] = "_".join(call.scope + (op.name,))
    return names


def replay(graph: LayerGraph, edits: Replay | None = None) -> keras.Model:
    """Build a new model from a graph, applying `edits`.

    Args:
        graph: the `LayerGraph` of the source model.
        edits: a `Replay` saying what to change; None copies the model.

    Returns:
        A new `keras.Model`; the source model and its layers are unchanged.
    """
    edits = edits or Replay()
    out_keys = edits.outputs if edits.outputs is not None else graph.output_keys
    producers = [graph.producer[k] for k in out_keys if graph.producer[k] in graph.calls]
    needed_set = graph.ancestors(producers)
    needed = [cid for cid in graph.order if cid in needed_set]

    tensors = _TensorMap(graph)
    new_inputs = []
    for key in graph.input_keys:
        t = graph.tensors[key]
        x = keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=graph.producer[key])
        new_inputs.append(x)
        dict.__setitem__(tensors, key, x)

    names = _layer_names(graph, needed)
    fresh_ops = {id(graph.calls[cid].op) for cid in edits.reinit}
    clones: dict[int, Any] = {}
    originals: dict[int, Any] = {}
    fresh: list[keras.layers.Layer] = []
    for cid in needed:
        call = graph.calls[cid]
        args, kwargs = call.arguments.fill_in(tensors)
        if cid in edits.delete:
            outputs = [tensors[call.inputs[0]]]
        else:
            if cid in edits.replace:
                layer = edits.replace[cid]
                fresh.append(layer)
            else:
                layer = clones.get(id(call.op))
                if layer is None:
                    layer = _clone_named(call.op, names[id(call.op)], id(call.op) in fresh_ops)
                    clones[id(call.op)] = layer
                    originals[id(call.op)] = call.op
            kwargs = _with_inherited(layer, call, kwargs)
            outputs = keras.tree.flatten(layer(*args, **kwargs))
        for layer in edits.insert_after.get(cid, []):
            fresh.append(layer)
            outputs = [layer(outputs[0])]
        for key, value in zip(call.outputs, outputs):
            dict.__setitem__(tensors, key, value)

    new_outputs = [tensors[k] for k in out_keys]
    if edits.attach is not None:
        new_outputs, created = edits.attach(new_outputs)
        new_outputs = list(new_outputs)
        fresh.extend(created)
    model = keras.Model(
        inputs=new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs=new_outputs if len(new_outputs) > 1 else new_outputs[0],
        name=edits.name or graph.model.name,
    )
    reshaped = []
    for op_id, clone in clones.items():
        if op_id in fresh_ops or not isinstance(clone, keras.layers.Layer):
            continue
        source = originals[op_id]
        if not source.weights:
            continue
        _restore_initializers(source, clone)
        if [tuple(w.shape) for w in source.weights] != [tuple(w.shape) for w in clone.weights]:
            reshaped.append(clone.name)  # its input shape changed: the old weights cannot fit
            _initialize_like(source, clone)
            continue
        for target, value in zip(clone.weights, source.weights):
            # a copy, not the source's buffer: under JAX, a compiled predict or fit of the new model
            # donates its variables' buffers, which would delete the input model's weights
            target.assign(keras.ops.copy(value.value))
    if reshaped:
        warnings.warn(
            f"{len(reshaped)} layer(s) were reinitialized because the edit changed their input "
            f"shape: {', '.join(reshaped)}.",
            UserWarning,
            stacklevel=3,
        )
    if edits.configure is not None:
        configured = set()
        for cid in needed:
            clone = clones.get(id(graph.calls[cid].op))
            if isinstance(clone, keras.layers.Layer) and id(clone) not in configured:
                configured.add(id(clone))
                edits.configure(cid, clone)
        for layer in fresh:
            if id(layer) not in configured:
                configured.add(id(layer))
                edits.configure(None, layer)
    return model


def _clone_named(op, name: str, keep_initializers: bool):
    if not isinstance(op, keras.layers.Layer):
        return clone_operation(op)
    config = op.get_config()
    config["name"] = name
    if not keep_initializers:
        # The weights are overwritten right after the build: skip drawing random numbers for them.
        for key, value in config.items():
            if key.endswith("_initializer") and value is not None:
                config[key] = "zeros"
    try:
        return op.__class__.from_config(config)
    except (TypeError, ValueError):
        config = op.get_config()
        config["name"] = name
        return op.__class__.from_config(config)


def _restore_initializers(source, clone) -> None:
    """Give `clone` back `source`'s initializers: `_clone_named` built it with zeros ones (its weights
    are overwritten), and a later reinitialization (`surgery.reinit`, training from scratch) draws
    from the layer's config, which would otherwise say zeros for every weight."""
    for key, value in source.get_config().items():
        if key.endswith("_initializer") and value is not None and hasattr(clone, key):
            setattr(clone, key, keras.initializers.get(value))


def _initialize_like(source, clone) -> None:
    """Give `clone` weights drawn by `source`'s own initializers, at the clone's shapes."""
    fresh = source.__class__.from_config(source.get_config())
    fresh.build_from_config(clone.get_build_config())
    for target, value in zip(clone.weights, fresh.weights):
        target.assign(value)


def _with_inherited(layer, call: CallNode, kwargs: dict) -> dict:
    if not call.inherited:
        return kwargs
    kwargs = dict(kwargs)
    for key, value in call.inherited.items():
        if key == "training" and not getattr(layer, "_call_has_training_arg", False):
            continue
        kwargs.setdefault(key, value)
    return kwargs
