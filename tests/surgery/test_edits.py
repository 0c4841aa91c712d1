"""Every edit: a new model, the input untouched, the kept part exact, save/load exact."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import max_abs_diff, outputs_of, random_inputs, to_numpy
from zoo import APPLICATIONS, SMALL, classic_cnn, nested_backbone, nested_sequential, two_inputs

from graft.errors import InputError, InvalidCutError, LayerNotFoundError, SurgeryError
from surgery import (
    attach_head,
    cut_points,
    delete_layer,
    find_head,
    freeze,
    insert_layer,
    layer_graph,
    reinitialize,
    replace_head,
    replace_layer,
    trainable_layers,
    truncate,
    unfreeze,
)


def weights_by_name(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in _flat_layers(model)}


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer


def assert_weights_equal(edited, original, only=None):
    ref = weights_by_name(original)
    got = weights_by_name(edited)
    names = only if only is not None else [n for n in got if n in ref]
    assert names
    for n in names:
        assert len(got[n]) == len(ref[n]), n
        for a, b in zip(got[n], ref[n]):
            assert np.array_equal(a, b), n


def assert_roundtrip(model, tmp_path, x):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    assert max_abs_diff(outputs_of(model, x), outputs_of(loaded, x)) == 0.0


def reference(model, call_id):
    """The original model's tensor at a call, computed by Keras itself (flat models only)."""
    return keras.Model(model.inputs, model.get_layer(call_id).output)


FLAT = {k: v for k, v in {**SMALL, **APPLICATIONS}.items() if k not in ("nested_backbone", "nested_sequential")}


#: the part of the zoo the extra-backend subset runs (`-m backends`, .ci/run)
BACKENDS_SUBSET = ("classic_cnn", "shared_layer", "two_inputs", "resnet50", "mobilenetv2")


def _subset(names):
    return [pytest.param(n, marks=pytest.mark.backends) if n in BACKENDS_SUBSET else n for n in names]


@pytest.mark.parametrize("name", _subset(sorted(FLAT)))
def test_truncate_keeps_the_part_exact(name, tmp_path):
    keras.utils.set_random_seed(2)
    model = FLAT[name]()
    before = weights_by_name(model)
    cuts = cut_points(model)
    cut = cuts[len(cuts) // 2]
    cut_model = truncate(model, cut.name)
    x = random_inputs(model)
    assert tuple(cut_model.outputs[0].shape) == cut.shape
    assert max_abs_diff(outputs_of(cut_model, x), outputs_of(reference(model, cut.name), x)) == 0.0
    assert_weights_equal(cut_model, model)
    assert cut_model.count_params() == cut.params
    assert_roundtrip(cut_model, tmp_path, x)
    # the input model is untouched
    after = weights_by_name(model)
    assert before.keys() == after.keys()
    assert all(all(np.array_equal(a, b) for a, b in zip(before[k], after[k])) for k in before)


def test_truncate_by_index_and_depth():
    model = classic_cnn()
    assert truncate(model, -4).outputs[0].shape == (None, 4, 4, 64)  # pool3
    assert truncate(model, 2).outputs[0].shape == (None, 16, 16, 32)  # conv2
    by_depth = truncate(model, 0.5)
    assert by_depth.outputs[0].shape == (None, 8, 8, 32)  # nearest to depth 0.5: pool2 (4/9)


@pytest.mark.backends
def test_truncate_inside_a_nested_backbone(tmp_path):
    keras.utils.set_random_seed(3)
    model = nested_backbone()
    cut = truncate(model, "bb_add")
    x = random_inputs(model)
    backbone = model.get_layer("backbone")
    inner = keras.Model(backbone.inputs, backbone.get_layer("bb_add").output)
    expected = inner(model.get_layer("scale")(x), training=False)
    assert max_abs_diff(outputs_of(cut, x), [to_numpy(expected)]) == 0.0
    assert_roundtrip(cut, tmp_path, x)
    # The nested call's training=False is kept on every inlined call, and behaves as Keras itself
    # makes it behave in the original model, in both modes.
    gap = truncate(model, "gap")
    original = keras.Model(model.inputs, model.get_layer("gap").output)
    for training in (False, True):
        assert max_abs_diff(outputs_of(gap, x, training), outputs_of(original, x, training)) == 0.0
    assert gap.get_layer("bb_bn1")._inbound_nodes[0].arguments.kwargs["training"] is False


def test_truncate_a_functional_backbone_inside_a_sequential():
    model = nested_sequential()
    cut = truncate(model, "pool2")
    x = random_inputs(model)
    base = model.layers[0]
    expected = keras.Model(base.inputs, base.get_layer("pool2").output)(x)
    assert max_abs_diff(outputs_of(cut, x), [to_numpy(expected)]) == 0.0


def test_invalid_cut_names_the_nearest_valid_ones():
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    with pytest.raises(InvalidCutError) as info:
        truncate(model, "conv2_block1_1_conv")
    assert info.value.before == "pool1_pool"
    assert info.value.after == "conv2_block1_add"
    assert "pool1_pool" in str(info.value) and "conv2_block1_add" in str(info.value)
    with pytest.raises(LayerNotFoundError, match="conv2_block1_out"):
        truncate(model, "conv2_block1_outt")
    with pytest.raises(InvalidCutError):
        truncate(model, 1.5)


@pytest.mark.backends
def test_freeze_up_to_and_unfreeze_from(tmp_path):
    model = keras.applications.MobileNetV2(weights=None, input_shape=(64, 64, 3), classes=4)
    frozen = freeze(model, up_to="block_6_project_BN")
    flags = trainable_layers(frozen)
    assert not flags["Conv1"] and not flags["block_6_project_BN"]
    assert flags["block_7_expand"] and flags["predictions"]
    assert all(layer.trainable for layer in model.layers)  # input untouched
    x = random_inputs(model)
    assert max_abs_diff(outputs_of(model, x), outputs_of(frozen, x)) == 0.0
    assert_roundtrip(frozen, tmp_path, x)
    loaded = keras.models.load_model(tmp_path / f"{frozen.name}.keras", safe_mode=True)
    assert not loaded.get_layer("Conv1").trainable

    all_frozen = freeze(model)
    assert not any(trainable_layers(all_frozen).values())
    top = unfreeze(all_frozen, from_layer="block_13_project_BN")
    flags = trainable_layers(top)
    assert flags["block_14_expand"] and flags["Conv_1"] and flags["predictions"]
    assert not flags["block_13_project_BN"] and not flags["block_2_expand"]
    assert not flags["Conv_1_bn"]  # bn="freeze": BatchNorm stays in inference mode
    top_follow = unfreeze(all_frozen, from_layer="block_13_project_BN", bn="follow")
    assert trainable_layers(top_follow)["Conv_1_bn"]


@pytest.mark.backends
def test_frozen_batchnorm_runs_in_inference_mode():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=3)
    frozen = freeze(model, bn="freeze")  # everything frozen
    x = random_inputs(model, batch=4)
    assert max_abs_diff(outputs_of(frozen, x, training=True), outputs_of(frozen, x)) == 0.0
    trainable_bn = freeze(model, bn="train")
    assert trainable_layers(trainable_bn)["bn_Conv1"]
    assert max_abs_diff(outputs_of(trainable_bn, x, training=True), outputs_of(trainable_bn, x)) > 0


def test_freeze_by_pattern_and_errors():
    model = classic_cnn()
    frozen = freeze(model, patterns=["conv*", "re:^fc"])
    flags = trainable_layers(frozen)
    assert flags == {"conv1": False, "pool1": True, "conv2": False, "pool2": True, "conv3": False,
                     "pool3": True, "flatten": True, "fc1": False, "predictions": True}
    with pytest.raises(InputError, match="matches no layer"):
        freeze(model, patterns=["resnet*"])
    with pytest.raises(InputError, match="BatchNormalization policy"):
        freeze(model, bn="sometimes")


@pytest.mark.backends
def test_reinitialize_uses_the_layers_own_initializers():
    keras.utils.set_random_seed(4)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=3)
    fresh = reinitialize(model, layers=["conv5_block3_3_conv", "conv5_block3_3_bn"], seed=7)
    old, new = model.get_layer("conv5_block3_3_conv"), fresh.get_layer("conv5_block3_3_conv")
    assert not np.array_equal(old.get_weights()[0], new.get_weights()[0])
    bn = fresh.get_layer("conv5_block3_3_bn")
    gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
    assert np.all(gamma == 1) and np.all(beta == 0) and np.all(mean == 0) and np.all(var == 1)
    others = [n.name for n in fresh.layers if n.name not in ("conv5_block3_3_conv", "conv5_block3_3_bn")]
    assert_weights_equal(fresh, model, only=[n for n in others if fresh.get_layer(n).weights])
    again = reinitialize(model, layers=["conv5_block3_3_conv"], seed=7)
    assert np.array_equal(again.get_layer("conv5_block3_3_conv").get_weights()[0], new.get_weights()[0])


def test_reinitialize_an_edited_copy_draws_from_the_original_initializers():
    # An edit builds its copies with zeros initializers (their weights are overwritten at once); the
    # copies must carry the originals' initializers, or training the edited model from scratch
    # starts from all-zero weights and learns nothing (issue 22's size curve: loss stayed ln 10).
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))
    edited = truncate(model, "pool")
    assert edited.get_layer("conv").get_config()["kernel_initializer"]["class_name"] == "GlorotUniform"
    fresh = reinitialize(edited, seed=3)
    assert np.std(fresh.get_layer("conv").get_weights()[0]) > 0.01
    gamma, beta, mean, var = (np.asarray(w) for w in fresh.get_layer("bn").get_weights())
    assert np.all(gamma == 1) and np.all(beta == 0) and np.all(mean == 0) and np.all(var == 1)


def test_reinitialize_from_a_layer_on():
    model = classic_cnn()
    fresh = reinitialize(model, from_layer="pool2", seed=1)
    assert_weights_equal(fresh, model, only=["conv1", "conv2"])
    for name in ("conv3", "fc1", "predictions"):
        assert not np.array_equal(fresh.get_layer(name).get_weights()[0], model.get_layer(name).get_weights()[0])


@pytest.mark.parametrize("name", _subset(["classic_cnn", "resnet50", "efficientnetb0", "vgg16", "nested_backbone"]))
def test_replace_head(name, tmp_path):
    keras.utils.set_random_seed(5)
    model = {**SMALL, **APPLICATIONS}[name]()
    head = find_head(model)
    new = replace_head(model, classes=7, hidden=[32], dropout=0.25)
    assert tuple(new.outputs[0].shape) == (None, 7)
    head_layers = [layer.name for layer in new.layers if layer.name.startswith("head_")]
    assert head_layers == ["head_pool", "head_dropout_1", "head_dense_1", "head_dropout", "head_predictions"]
    for old in head.layers:
        assert old not in [layer.name for layer in new.layers]
    # the kept part is exact
    x = random_inputs(model)
    kept = truncate(new, head.features.name.split("/")[-1])
    assert max_abs_diff(outputs_of(kept, x), outputs_of(truncate(model, head.features.name), x)) == 0.0
    assert_roundtrip(new, tmp_path, x)


def test_classic_head_is_flatten_and_dense():
    head = find_head(classic_cnn())
    assert head.features.name == "pool3"
    assert head.layers == ["flatten", "fc1", "predictions"]
    new = replace_head(classic_cnn(), classes=2, pooling="flatten", activation="sigmoid")
    assert [type(layer).__name__ for layer in new.layers[-2:]] == ["Flatten", "Dense"]
    assert new.layers[-1].get_config()["activation"] == "sigmoid"


def test_attach_head_to_a_headless_backbone():
    base = keras.applications.MobileNetV3Small(weights=None, include_top=False, input_shape=(64, 64, 3))
    model = attach_head(base, classes=3, pooling="max")
    assert tuple(model.outputs[0].shape) == (None, 3)
    assert isinstance(model.get_layer("head_pool"), keras.layers.GlobalMaxPooling2D)
    with pytest.raises(InputError, match="classes"):
        attach_head(base, classes=0)


@pytest.mark.backends
def test_insert_replace_delete(tmp_path):
    keras.utils.set_random_seed(6)
    model = classic_cnn()
    x = random_inputs(model)
    ref_pool2 = outputs_of(reference(model, "pool2"), x)

    inserted = insert_layer(model, after="pool2", layer=keras.layers.Dropout(0.5, name="extra_dropout"))
    assert [layer.name for layer in inserted.layers].index("extra_dropout") == 5  # after the input and pool2
    assert max_abs_diff(outputs_of(inserted, x), outputs_of(model, x)) == 0.0  # dropout is identity at inference
    assert max_abs_diff(outputs_of(reference(inserted, "pool2"), x), ref_pool2) == 0.0
    assert_roundtrip(inserted, tmp_path, x)

    with pytest.warns(UserWarning, match="reinitialized because the edit changed their input shape: predictions"):
        replaced = replace_layer(model, "fc1", keras.layers.Dense(64, activation="relu", name="fc_small"))
    assert replaced.get_layer("fc_small").units == 64
    assert max_abs_diff(outputs_of(reference(replaced, "flatten"), x), outputs_of(reference(model, "flatten"), x)) == 0.0
    assert_weights_equal(replaced, model, only=["conv1", "conv2", "conv3"])

    with pytest.warns(UserWarning, match="fc1"):
        deleted = delete_layer(model, "pool3")
    assert "pool3" not in [layer.name for layer in deleted.layers]
    kernel = deleted.get_layer("fc1").get_weights()[0]
    assert kernel.shape == (8 * 8 * 64, 500)  # Dense rebuilt on the new shape, by its own initializer
    assert 0.01 < kernel.std() < 0.1 and abs(kernel.mean()) < 0.01
    with pytest.raises(SurgeryError):
        insert_layer(model, after="pool2", layer=model.get_layer("fc1"))


def test_edits_at_multi_tensor_points_are_refused():
    model = two_inputs()
    with pytest.raises(SurgeryError, match="single-tensor"):
        delete_layer(model, "concat")
    with pytest.raises(InvalidCutError):
        truncate(model, "left_conv")
    resnet = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    with pytest.raises(SurgeryError, match="single-tensor"):
        replace_layer(resnet, "conv2_block1_add", keras.layers.Add())


def test_edit_of_a_graph_reuses_it():
    model = classic_cnn()
    g = layer_graph(model)
    a, b = truncate(g, "pool1"), truncate(g, "pool2")
    assert a.outputs[0].shape == (None, 16, 16, 16) and b.outputs[0].shape == (None, 8, 8, 32)


def test_masks_and_call_arguments_survive_an_edit(tmp_path):
    """A Masking layer's mask reaches the pooling after a copy; explicit call kwargs are kept."""
    inputs = keras.Input((6, 4), name="seq")
    x = keras.layers.Masking(mask_value=0.0, name="mask")(inputs)
    x = keras.layers.Dense(8, name="proj")(x)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dropout(0.5, name="drop")(pooled, training=False)
    out = keras.layers.Dense(2, name="out")(x)
    model = keras.Model(inputs, out)
    data = np.random.default_rng(0).normal(size=(3, 6, 4)).astype("float32")
    data[:, 3:] = 0.0  # masked time steps
    copy = truncate(model, "out")
    assert max_abs_diff(outputs_of(copy, data), outputs_of(model, data)) == 0.0
    # the mask matters: without it the padded steps would pull the average down
    unmasked = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(model.get_layer("proj")(inputs)))
    assert max_abs_diff(outputs_of(truncate(model, "pool"), data), outputs_of(unmasked, data)) > 1e-3
    assert copy.get_layer("drop")._inbound_nodes[0].arguments.kwargs["training"] is False
