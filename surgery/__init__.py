"""surgery: edit a Keras 3 model's layer graph, and run transfer plans.

Every edit returns a new model and leaves its input untouched; the part of the network an edit keeps
computes exactly what it computed before.
"""

from surgery.cut import truncate
from surgery.edit import delete_layer, insert_layer, replace_layer
from surgery.freeze import BN_POLICIES, freeze, select, trainable_layers, unfreeze
from surgery.graph import CallNode, CutPoint, LayerGraph, cut_points, layer_graph
from surgery.head import HeadInfo, HeadSpec, attach_head, find_head, replace_head
from surgery.load import application_names, load_model
from surgery.reinit import reinitialize
from surgery.runner import RunResult, run

__all__ = [
    "BN_POLICIES",
    "CallNode",
    "CutPoint",
    "HeadInfo",
    "HeadSpec",
    "LayerGraph",
    "application_names",
    "attach_head",
    "cut_points",
    "delete_layer",
    "find_head",
    "freeze",
    "insert_layer",
    "layer_graph",
    "load_model",
    "reinitialize",
    "RunResult",
    "run",
    "replace_head",
    "replace_layer",
    "select",
    "trainable_layers",
    "truncate",
    "unfreeze",
]
