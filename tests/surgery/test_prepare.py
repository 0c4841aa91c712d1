"""From plan to model: outside preprocessing as built-in layers, trainable regions, keras.applications."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_apply import make_plan

from graft.errors import PlanError
from graft.plan import Phase, Plan
from surgery import layer_graph, run
from surgery.prepare import (
    _preprocessing_layers,
    prepare_model,
    set_phase_trainable,
    trainable_region,
)


@pytest.mark.parametrize("mode, module", [("caffe", "resnet"), ("tf", "mobilenet_v2"), ("torch", "densenet")])
def test_preprocessing_layers_equal_keras_preprocess_input(mode, module):
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    y = x
    for layer in _preprocessing_layers(mode):
        y = layer(y)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), expected, rtol=1e-5, atol=1e-4)


def test_applications_name_gets_its_preprocessing_and_trains(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    d = plan.to_dict()
    d["model"] = {"source": "mobilenetv2", "weights": "none", "input_size": [32, 32], "safe_mode": True}
    plan = Plan.from_dict(d)
    prepared = prepare_model(plan)
    assert prepared.model.layers[1].name == "graft_preprocess" and "tf mode" in prepared.preprocessing
    result = run(plan)
    model = keras.models.load_model(result.model_path, safe_mode=True)
    assert model.get_layer("graft_preprocess") is not None
    assert model.predict(np.full((1, 32, 32, 3), 255.0), verbose=0).shape == (1, 5)


def test_trainable_regions_nest_and_bn_policy(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    prepared = prepare_model(plan)
    graph = layer_graph(prepared.model)
    regions = {t: trainable_region(graph, prepared.head, t)
               for t in ("head", "top_third", "top_half", "all", "from:block2_pool")}
    assert regions["head"] == set() < regions["top_third"] <= regions["top_half"] < regions["all"]
    assert "block3_conv1" in regions["from:block2_pool"] and "block2_conv2" not in regions["from:block2_pool"]
    set_phase_trainable(prepared, "all", "freeze")
    assert not prepared.model.get_layer("block1_bn1").trainable and prepared.model.get_layer("block1_conv1").trainable
    set_phase_trainable(prepared, "all", "follow")
    assert prepared.model.get_layer("block1_bn1").trainable
    set_phase_trainable(prepared, "head", "train")
    assert not prepared.model.get_layer("block1_bn1").trainable  # head phases never touch the backbone
    with pytest.raises(Exception, match="block9"):
        trainable_region(graph, prepared.head, "from:block9_pool")


def test_plan_that_does_not_fit_the_model_is_a_plan_error(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    plan.data.channels = 1
    with pytest.raises(PlanError, match="takes 3 channels"):
        prepare_model(plan)
