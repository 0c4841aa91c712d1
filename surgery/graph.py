"""The layer graph: a Keras 3 model's operation calls as a networkx DiGraph, nested models inlined.

Keras keeps a Functional model's structure on `Node` objects (one per call of an operation) linked by
`KerasTensor`s. This module reads that structure once, inlines nested Functional and Sequential
models, and gives every later step plain data: graph nodes are *calls* (a shared layer called twice is
two nodes), edges carry tensors. It is the only module of graft that reads Keras internals
(`_nodes_by_depth`, `_keras_history`, `Node.arguments`); everything else goes through `LayerGraph`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

import keras
import networkx as nx

from graft.errors import LayerNotFoundError

SOURCE = "<inputs>"
SINK = "<outputs>"


@dataclass
class CallNode:
    """One call of one operation in the (inlined) graph.

    Attributes:
        id: unique id: the layer name, `name#k` for the k-th further call of a shared layer, and
            prefixed by `outer_model/` when the layer sits inside a nested model.
        op: the Keras operation (a `keras.layers.Layer` or a raw `keras.ops` Operation).
        arguments: the call's `SymbolicArguments` (args and kwargs with the original KerasTensors).
        inputs: keys of the input tensors (after inlining), in argument order.
        outputs: keys of the output tensors.
        inherited: keyword arguments a nested model was called with (e.g. `training=False`) that
            apply to every call inside it.
        scope: names of the nested models this call sits in, outermost first.
    """

    id: str
    op: Any
    arguments: Any
    inputs: list[int]
    outputs: list[int]
    inherited: dict[str, Any] = field(default_factory=dict)
    scope: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def is_layer(self) -> bool:
        return isinstance(self.op, keras.layers.Layer)


@dataclass
class CutPoint:
    """A tensor that every path from the inputs to the outputs passes through.

    Attributes:
        name: id of the call that produces the tensor (a layer name for flat models).
        depth: longest path from the inputs to this call over the longest path to the outputs (0..1).
        shape: output shape, batch dimension as None.
        params: parameters of every layer the tensor depends on (shared layers counted once).
        index: position of the call in `LayerGraph.order`.
    """

    name: str
    depth: float
    shape: tuple
    params: int
    index: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "depth": round(self.depth, 4),
            "shape": list(self.shape),
            "params": self.params,
            "index": self.index,
        }


class LayerGraph:
    """A Keras model's calls as a DiGraph, with nested models inlined.

    Build one with `layer_graph(model)`. `graph` is a `networkx.DiGraph` whose nodes are call ids
    plus the model inputs' names; an edge `u -> v` means `v` reads a tensor `u` produced. `calls`
    maps each call id to its `CallNode`; `order` lists the call ids in a topological order.
    """

    def __init__(self, model: keras.Model):
        self.model = model
        self.graph = nx.DiGraph()
        self.calls: dict[str, CallNode] = {}
        self.order: list[str] = []
        self.tensors: dict[int, Any] = {}  # key -> original KerasTensor
        self.producer: dict[int, str] = {}  # tensor key -> call id or input name
        self.input_keys: list[int] = []
        self.output_keys: list[int] = []
        self._alias: dict[int, int] = {}
        self._used_ids: dict[str, int] = {}
        self._build()
        self._cut_points: list[CutPoint] | None = None

    # ----------------------------------------------------------------------------- construction
    def _key(self, tensor) -> int:
        key = id(tensor)
        while key in self._alias:
            key = self._alias[key]
        self.tensors.setdefault(key, tensor)
        return key

    def _unique_id(self, name: str) -> str:
        count = self._used_ids.get(name, 0)
        self._used_ids[name] = count + 1
        return name if count == 0 else f"{name}#{count}"

    def _build(self) -> None:
        model = _functional_view(self.model)
        if model is None:
            raise TypeError(
                "graft can edit Functional and Sequential models (and models nested in them); "
                f"received a subclassed model of type {type(self.model).__name__}. "
                "Rebuild it with the Functional API or wrap it as a layer of a Functional model."
            )
        for t in model.inputs:
            key = self._key(t)
            name = t._keras_history.operation.name if t._keras_history.operation else t.name
            self.input_keys.append(key)
            self.producer[key] = name
            self.graph.add_node(name, kind="input")
        self._inline(model, (), {})
        self.output_keys = [self._key(t) for t in model.outputs]
        for call_id in self.order:
            call = self.calls[call_id]
            for key in call.inputs:
                src = self.producer[key]
                if self.graph.has_edge(src, call_id):
                    self.graph.edges[src, call_id]["tensors"].append(key)
                else:
                    self.graph.add_edge(src, call_id, tensors=[key])

    def _inline(self, model, scope: tuple[str, ...], inherited: dict[str, Any]) -> None:
        depth_keys = sorted(model._nodes_by_depth.keys(), reverse=True)
        for depth in depth_keys:
            for node in model._nodes_by_depth[depth]:
                if node.is_input or node.operation is None:
                    continue
                op = node.operation
                inner = _functional_view(op) if isinstance(op, keras.Model) else None
                if inner is not None:
                    self._inline_nested(node, op, inner, scope, inherited)
                    continue
                name = op.name if not scope else "/".join(scope + (op.name,))
                call = CallNode(
                    id=self._unique_id(name),
                    op=op,
                    arguments=node.arguments,
                    inputs=[self._key(t) for t in node.input_tensors],
                    outputs=[self._key(t) for t in node.outputs],
                    inherited=dict(inherited),
                    scope=scope,
                )
                self.calls[call.id] = call
                self.order.append(call.id)
                for key in call.outputs:
                    self.producer[key] = call.id
                self.graph.add_node(call.id, kind="call")

    def _inline_nested(self, node, outer_op, inner, scope, inherited) -> None:
        args, kwargs = node.arguments.args, node.arguments.kwargs
        given = args[0] if args else kwargs.get("inputs")
        flat_given = keras.tree.flatten(given)
        if len(flat_given) != len(inner.inputs):
            raise TypeError(
                f"Cannot inline nested model {outer_op.name!r}: it was called with "
                f"{len(flat_given)} tensors for {len(inner.inputs)} inputs."
            )
        for inner_t, outer_t in zip(inner.inputs, flat_given):
            self._alias[id(inner_t)] = self._key(outer_t)
        # Call arguments of the nested model (training=False, as in the Keras transfer-learning
        # guide) hold for every call inside it, unless a call says otherwise.
        passed = {k: v for k, v in kwargs.items() if k in ("training",)}
        self._inline(inner, scope + (outer_op.name,), {**inherited, **passed})
        for outer_t, inner_t in zip(node.outputs, inner.outputs):
            self._alias[id(outer_t)] = self._key(inner_t)

    # ----------------------------------------------------------------------------- queries
    @property
    def layer_ids(self) -> list[str]:
        """Call ids in topological order (like `model.layers` for a flat model, inputs left out)."""
        return list(self.order)

    def resolve(self, name: str) -> str:
        """The call id for a layer name, a call id, or a nested path written `outer/inner`.

        Raises:
            LayerNotFoundError: no such layer, with the closest names in the message.
        """
        if name in self.calls:
            return name
        if name in self.graph and self.graph.nodes[name].get("kind") == "input":
            return name
        matches = [cid for cid, c in self.calls.items() if c.name == name and not cid.count("#")]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise LayerNotFoundError(
                f"Layer name {name!r} is ambiguous in model {self.model.name!r}: it names "
                f"{', '.join(matches)}. Pass one of these ids.",
                name=name,
                suggestions=matches,
            )
        # ids and layer names coincide for top-level layers: each candidate once
        candidates = list(dict.fromkeys([*self.calls, *sorted({c.name for c in self.calls.values()})]))
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise LayerNotFoundError(
            f"No layer named {name!r} in model {self.model.name!r} ({len(self.calls)} layers).{hint} "
            "`python cli.py inspect MODEL` lists the layers and cut points.",
            name=name,
            suggestions=close,
        )

    def call(self, name: str) -> CallNode:
        return self.calls[self.resolve(name)]

    def output_shape(self, call_id: str) -> tuple:
        call = self.calls[call_id]
        return tuple(self.tensors[call.outputs[0]].shape)

    def ancestors(self, call_ids) -> set[str]:
        """Every call the given calls depend on, the given calls included (inputs left out)."""
        out: set[str] = set()
        for cid in call_ids:
            out.add(cid)
            out |= nx.ancestors(self.graph, cid)
        return {c for c in out if c in self.calls}

    def params_of(self, call_ids) -> int:
        """Parameters of the layers the given calls make, shared layers counted once."""
        ops = {id(self.calls[c].op): self.calls[c].op for c in call_ids if self.calls[c].is_layer}
        return sum(_layer_params(op) for op in ops.values())

    def depths(self) -> dict[str, float]:
        """Longest-path depth of each call from the inputs, as a fraction of the longest path."""
        longest: dict[str, int] = {}
        for node in nx.topological_sort(self.graph):
            preds = list(self.graph.predecessors(node))
            longest[node] = 0 if not preds else 1 + max(longest[p] for p in preds)
        sink_depth = max(
            (longest[self.producer[k]] for k in self.output_keys), default=1
        ) or 1
        return {cid: min(1.0, longest[cid] / sink_depth) for cid in self.order}

    def cut_points(self) -> list[CutPoint]:
        """The valid cut points, from the inputs to the outputs.

        A call's output is a cut point when the call dominates the outputs: every path from the
        inputs to the outputs passes through it. Only calls with a single output tensor qualify.
        """
        if self._cut_points is not None:
            return list(self._cut_points)
        g = nx.DiGraph(self.graph)
        for key in self.input_keys:
            g.add_edge(SOURCE, self.producer[key])
        for key in self.output_keys:
            g.add_edge(self.producer[key], SINK)
        idom = nx.immediate_dominators(g, SOURCE)
        chain = []
        node = idom.get(SINK)
        while node is not None and node != SOURCE:
            chain.append(node)
            nxt = idom.get(node)
            node = None if nxt == node else nxt
        chain.reverse()
        depths = self.depths()
        position = {cid: i for i, cid in enumerate(self.order)}
        params_before = self._cumulative_params(chain)
        cuts = []
        for cid in chain:
            if cid not in self.calls or len(self.calls[cid].outputs) != 1:
                continue
            cuts.append(
                CutPoint(
                    name=cid,
                    depth=depths[cid],
                    shape=self.output_shape(cid),
                    params=params_before[cid],
                    index=position[cid],
                )
            )
        self._cut_points = cuts
        return list(cuts)

    def _cumulative_params(self, chain: list[str]) -> dict[str, int]:
        # Ancestor sets along a dominator chain are nested: walk each one only as far back as the
        # previous cut point's, so the whole chain costs one pass over the graph.
        result: dict[str, int] = {}
        seen: set[str] = set()
        counted: set[int] = set()
        total = 0
        for cid in chain:
            if cid not in self.calls:
                continue
            stack = [cid]
            while stack:
                node = stack.pop()
                if node in seen:
                    continue
                seen.add(node)
                call = self.calls.get(node)
                if call is not None and call.is_layer and id(call.op) not in counted:
                    counted.add(id(call.op))
                    total += _layer_params(call.op)
                stack.extend(p for p in self.graph.predecessors(node) if p not in seen)
            result[cid] = total
        return result

    def is_cut_point(self, call_id: str) -> bool:
        return any(c.name == call_id for c in self.cut_points())

    def nearest_cut_points(self, call_id: str) -> tuple[CutPoint | None, CutPoint | None]:
        """The closest valid cut points before and after a call (by topological position)."""
        pos = self.order.index(call_id)
        before = after = None
        for cut in self.cut_points():
            if cut.index <= pos:
                before = cut
            elif after is None:
                after = cut
        return before, after

    def summary(self) -> dict:
        """Counts that describe the graph, for reports."""
        layers = {id(c.op): c.op for c in self.calls.values() if c.is_layer}
        kinds: dict[str, int] = {}
        for op in layers.values():
            kinds[type(op).__name__] = kinds.get(type(op).__name__, 0) + 1
        nested = sorted({c.scope[0] for c in self.calls.values() if c.scope})
        return {
            "model": self.model.name,
            "calls": len(self.calls),
            "layers": len(layers),
            "raw_ops": sum(1 for c in self.calls.values() if not c.is_layer),
            "shared_layers": sum(
                1 for op in layers.values() if sum(1 for c in self.calls.values() if c.op is op) > 1
            ),
            "nested_models": nested,
            "inputs": [
                {"name": self.producer[k], "shape": list(self.tensors[k].shape)}
                for k in self.input_keys
            ],
            "outputs": [
                {"name": self.producer[k], "shape": list(self.tensors[k].shape)}
                for k in self.output_keys
            ],
            "params": int(self.model.count_params()),
            "batchnorm_layers": kinds.get("BatchNormalization", 0),
            "layer_types": dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _layer_params(layer) -> int:
    return int(sum(math.prod(w.shape) for w in layer.weights))


def _functional_view(model):
    """The Functional graph behind a Functional or Sequential model, or None if it has none."""
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
        if functional is None:
            return None
        return functional
    if hasattr(model, "_nodes_by_depth") and hasattr(model, "inputs"):
        try:
            model.inputs  # noqa: B018 - subclassed models raise here
        except (AttributeError, ValueError):
            return None
        return model
    return None


def layer_graph(model: keras.Model) -> LayerGraph:
    """Build the layer graph of a Functional or Sequential model.

    Args:
        model: a built Keras 3 Functional or Sequential model; nested models are inlined.

    Returns:
        A `LayerGraph`.

    Example:
        >>> g = layer_graph(keras.applications.ResNet50(weights=None))
        >>> [c.name for c in g.cut_points()][:2]
        ['conv1_pad', 'conv1_conv']
    """
    return LayerGraph(model)


def cut_points(model: keras.Model) -> list[CutPoint]:
    """The valid cut points of a model: see `LayerGraph.cut_points`."""
    return layer_graph(model).cut_points()
