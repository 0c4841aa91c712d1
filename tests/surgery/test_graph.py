"""The layer graph and its cut points, over the whole model zoo."""

from __future__ import annotations

import keras
import networkx as nx
import numpy as np
import pytest
from conftest import max_abs_diff, outputs_of, random_inputs
from zoo import ZOO

from graft.errors import LayerNotFoundError
from surgery import cut_points, layer_graph
from surgery.rebuild import replay


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_model(request):
    keras.utils.set_random_seed(1)
    return request.param, ZOO[request.param]()


def test_graph_is_a_dag_with_every_call(zoo_model):
    name, model = zoo_model
    g = layer_graph(model)
    assert nx.is_directed_acyclic_graph(g.graph)
    assert set(g.order) == set(g.calls)
    # every call is reachable from some input and reaches some output
    inputs = [g.producer[k] for k in g.input_keys]
    outputs = [g.producer[k] for k in g.output_keys]
    reach = set().union(*(nx.descendants(g.graph, i) for i in inputs))
    assert set(g.calls) <= reach
    for cid in g.calls:
        assert cid in outputs or any(nx.has_path(g.graph, cid, o) for o in outputs)


def test_cut_points_dominate_the_outputs(zoo_model):
    """Removing a cut point's node disconnects every output from every input."""
    name, model = zoo_model
    g = layer_graph(model)
    cuts = g.cut_points()
    assert cuts, name
    depths = [c.depth for c in cuts]
    assert depths == sorted(depths) and 0.0 <= depths[0] and depths[-1] <= 1.0
    params = [c.params for c in cuts]
    assert params == sorted(params)
    inputs = [g.producer[k] for k in g.input_keys]
    outputs = [g.producer[k] for k in g.output_keys]
    for cut in cuts:
        if cut.name in outputs:
            continue
        h = g.graph.copy()
        h.remove_node(cut.name)
        assert not any(nx.has_path(h, i, o) for i in inputs for o in outputs), cut.name
    # and a call that is not a cut point has a bypass
    names = {c.name for c in cuts}
    for cid in g.order:
        if cid in names or cid in outputs:
            continue
        h = g.graph.copy()
        h.remove_node(cid)
        assert any(nx.has_path(h, i, o) for i in inputs for o in outputs), cid


def test_copy_is_exact_and_independent(zoo_model):
    name, model = zoo_model
    g = layer_graph(model)
    copy = replay(g)
    x = random_inputs(model)
    assert max_abs_diff(outputs_of(model, x), outputs_of(copy, x)) == 0.0
    original_ids = {id(v) for v in model.weights}
    assert not any(id(v) in original_ids for v in copy.weights)
    assert copy.count_params() == model.count_params()


def test_resnet50_cuts_at_block_outputs_only():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    names = [c.name for c in cut_points(model)]
    for block in ("conv2_block1_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"):
        assert block in names
    assert not any("_1_conv" in n or "_2_relu" in n or "_0_conv" in n for n in names)
    assert names[-1] == "predictions"


def test_cut_point_facts_for_the_classic_cnn():
    from zoo import classic_cnn

    model = classic_cnn()
    cuts = {c.name: c for c in cut_points(model)}
    assert list(cuts) == ["conv1", "pool1", "conv2", "pool2", "conv3", "pool3", "flatten", "fc1", "predictions"]
    assert cuts["pool1"].shape == (None, 16, 16, 16)
    assert cuts["conv1"].params == 3 * 3 * 3 * 16 + 16
    assert cuts["predictions"].params == model.count_params()
    assert cuts["predictions"].depth == 1.0
    assert cuts["conv1"].depth == pytest.approx(1 / 9)


def test_nested_model_is_inlined_with_scoped_ids():
    from zoo import nested_backbone

    g = layer_graph(nested_backbone())
    assert "backbone/bb_conv1" in g.calls
    assert g.resolve("bb_conv1") == "backbone/bb_conv1"
    assert g.calls["backbone/bb_bn1"].inherited == {"training": False}
    assert g.summary()["nested_models"] == ["backbone"]
    cut_names = [c.name for c in g.cut_points()]
    assert "backbone/bb_add" in cut_names and "backbone/bb_conv2" not in cut_names


def test_shared_layer_is_two_calls_of_one_layer():
    from zoo import shared_layer

    g = layer_graph(shared_layer())
    assert "shared_conv" in g.calls and "shared_conv#1" in g.calls
    assert g.calls["shared_conv"].op is g.calls["shared_conv#1"].op
    assert g.summary()["shared_layers"] == 1
    assert g.summary()["raw_ops"] == 1  # keras.ops.add
    copy = replay(g)
    convs = [layer for layer in copy.layers if layer.name == "shared_conv"]
    assert len(convs) == 1  # still one layer, called twice


def test_unknown_layer_name_suggests_close_matches():
    from zoo import classic_cnn

    g = layer_graph(classic_cnn())
    with pytest.raises(LayerNotFoundError) as info:
        g.resolve("conv_2")
    assert "conv2" in info.value.suggestions
    assert "Did you mean 'conv2'" in str(info.value)


def test_subclassed_model_is_refused_clearly():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed model"):
        layer_graph(net)
