"""Per-layer output shape and parameter count, with the formula the count comes from.

The dimension lessons of a CNN course: a convolution with a `kh x kw` kernel over `cin` channels and
`filters` outputs has `(kh*kw*cin + 1)*filters` parameters, a dense layer `(in + 1)*out`, and so on.
`layer_rows` lists every call of a model's (inlined) graph with its output shape, its parameter count
(`layer.count_params()`) and, for the layer kinds a course teaches, the formula written with the
layer's own numbers; any other layer gets the sum of its weight shapes. `param_formula` is the
formula for one layer.

    rows = layer_rows(layer_graph(model))
    rows[1].formula   # '(3*3*16 + 1)*32 = 4,640'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras

from surgery.graph import LayerGraph


@dataclass
class LayerRow:
    """One call of the graph.

    Attributes:
        name: the call id (a layer name for flat models).
        kind: the layer's class name (`Conv2D`, ...) or the raw op's.
        output_shape: the call's first output shape, batch dimension as None.
        params: parameters of the layer (0 for a further call of a shared layer).
        formula: how `params` comes from the layer's sizes, e.g. `(3*3*3 + 1)*16 = 448`.
        depth: the call's depth, 0..1.
    """

    name: str
    kind: str
    output_shape: tuple
    params: int
    formula: str
    depth: float

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "output_shape": list(self.output_shape),
                "params": self.params, "formula": self.formula, "depth": round(self.depth, 4)}


def _n(value: int) -> str:
    return f"{int(value):,}"


def _weights_sum(layer) -> tuple[str, int]:
    shapes = [tuple(int(d) for d in w.shape) for w in layer.weights]
    total = sum(math.prod(s) for s in shapes)
    if not shapes:
        return "no weights", 0
    terms = [("*".join(map(str, s)) if s else "1") for s in shapes]
    return f"{' + '.join(terms)} = {_n(total)}", total


def param_formula(layer) -> tuple[str, int]:
    """The parameter count of `layer` as a formula of its sizes, and the count it gives.

    Conv1D/2D/3D (and transposed): `(k*cin/groups + 1)*filters`; DepthwiseConv2D:
    `(kh*kw + 1)*cin*multiplier`; SeparableConv2D: `kh*kw*cin*multiplier + (cin*multiplier + 1)*filters`;
    Dense: `(in + 1)*out`; BatchNormalization: `4*c` (gamma, beta, moving mean and variance: 2*c of
    them not trained); LayerNormalization: `2*c`. The `+ 1` disappears for a layer without bias.
    Other layers: the sum of their weight shapes.

    Args:
        layer: a built Keras layer (or a raw op, which has no weights).

    Returns:
        `(formula, count)`; `count` equals `layer.count_params()` for a built layer.

    Example:
        >>> conv = keras.layers.Conv2D(16, 3); conv.build((None, 32, 32, 3))
        >>> param_formula(conv)
        ('(3*3*3 + 1)*16 = 448', 448)
    """
    if not isinstance(layer, keras.layers.Layer) or not layer.weights:
        return "no weights", 0
    kernel = getattr(layer, "kernel", None)
    bias = 1 if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None else 0
    plus = " + 1" if bias else ""
    if isinstance(layer, keras.layers.SeparableConv2D) or isinstance(layer, keras.layers.SeparableConv1D):
        dk = tuple(int(d) for d in layer.depthwise_kernel.shape)
        ks, cin, mult = dk[:-2], dk[-2], dk[-1]
        filters = int(layer.pointwise_kernel.shape[-1])
        count = math.prod(ks) * cin * mult + (cin * mult + bias) * filters
        k = "*".join(map(str, ks))
        return f"{k}*{cin}*{mult} + ({cin}*{mult}{plus})*{filters} = {_n(count)}", count
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)):
        dk = tuple(int(d) for d in layer.kernel.shape)
        ks, cin, mult = dk[:-2], dk[-2], dk[-1]
        count = (math.prod(ks) + bias) * cin * mult
        k = "*".join(map(str, ks))
        return f"({k}{plus})*{cin}*{mult} = {_n(count)}", count
    is_conv = any(isinstance(layer, c) for c in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                                                    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
                                                    keras.layers.Conv3DTranspose))
    if is_conv and kernel is not None:
        ks = tuple(int(d) for d in kernel.shape)
        transposed = "Transpose" in type(layer).__name__
        spatial = ks[:-2]
        cin, filters = (ks[-1], ks[-2]) if transposed else (ks[-2], ks[-1])
        count = (math.prod(spatial) * cin + bias) * filters
        groups = int(getattr(layer, "groups", 1) or 1)
        cin_text = f"{cin}" if groups == 1 else f"{cin * groups}/{groups}"
        return f"({'*'.join(map(str, spatial))}*{cin_text}{plus})*{filters} = {_n(count)}", count
    if isinstance(layer, keras.layers.Dense) and kernel is not None and len(kernel.shape) == 2:
        fin, fout = (int(d) for d in kernel.shape)
        count = (fin + bias) * fout
        return f"({fin}{plus})*{fout} = {_n(count)}", count
    if isinstance(layer, keras.layers.BatchNormalization):
        c = int(layer.moving_mean.shape[-1])
        trained = int(bool(layer.scale)) + int(bool(layer.center))
        count = (trained + 2) * c
        return f"{trained + 2}*{c} = {_n(count)} ({2 * c:,} not trained: moving mean and variance)", count
    if isinstance(layer, keras.layers.LayerNormalization):
        c = sum(int(w.shape[-1]) for w in layer.weights) // max(1, len(layer.weights))
        return f"{len(layer.weights)}*{c} = {_n(len(layer.weights) * c)}", len(layer.weights) * c
    return _weights_sum(layer)


def layer_rows(graph: LayerGraph) -> list[LayerRow]:
    """Every call of the graph, in topological order, with its output shape and parameter formula.

    A layer called more than once (shared weights) counts its parameters at its first call only, so
    the rows add up to the model's parameter count.

    Example:
        >>> sum(r.params for r in layer_rows(layer_graph(model))) == model.count_params()
        True
    """
    depths = graph.depths()
    seen: set[int] = set()
    rows = []
    for cid in graph.order:
        call = graph.calls[cid]
        op = call.op
        formula, count = param_formula(op)
        if id(op) in seen and count:
            formula, count = "shared with its first call", 0
        seen.add(id(op))
        rows.append(LayerRow(cid, type(op).__name__, graph.output_shape(cid), count, formula, depths[cid]))
    return rows
