"""Pixel conventions found by measurement (advisor/convention.py, graft/conventions.py), on networks
with real trained weights: tiny CNNs pretrained here for a few seconds on the repo's CIFAR images under
each convention, and (when ../shared is there) the two ImageNet networks, renamed or not."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ROOT, SHARED

from advisor.convention import CHOICES, find_convention
from advisor.embed import load_images, sample_dataset
from advisor.measure import measure
from graft.conventions import CONVENTIONS, apply_convention, convention_layers
from graft.errors import InputError

DATA = ROOT / "examples" / "data" / "cifar_b"
TEST = ROOT / "examples" / "data" / "cifar_b_test"


@pytest.mark.parametrize("name, module", [("tf", "mobilenet"), ("torch", "densenet"), ("caffe", "resnet")])
def test_conventions_equal_keras_preprocess_input(name, module):
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 5, 3)).astype("float32")
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(apply_convention(name, x), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_convention_layers_equal_the_numpy_map(name, channels):
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 4, 4, channels)).astype("float32")
    y = x
    for layer in convention_layers(name, channels):
        assert layer.name.startswith("graft_preprocess") and not layer.trainable
        y = layer(y)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), apply_convention(name, x), rtol=1e-5, atol=1e-4)


def _tiny_cnn(batchnorm: bool, inside: keras.layers.Layer | None = None, channels: int = 3,
              name: str = "tiny") -> keras.Model:
    inputs = keras.Input((32, 32, channels))
    x = inside(inputs) if inside is not None else inputs
    for width in (16, 32):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=not batchnorm)(x)
        if batchnorm:  # a fast momentum: a few seconds of training settle the running statistics
            x = keras.layers.BatchNormalization(momentum=0.8)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x), name=name)


@pytest.fixture(scope="module")
def cifar():
    sample = sample_dataset(DATA, per_class=60)
    x, kept, _ = load_images(sample.paths, (32, 32))
    return x, sample.labels[kept]


def _pretrain(model, x, y, convention: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(apply_convention(convention, x), y, batch_size=32, epochs=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained(cifar):
    x, y = cifar
    return {c: _pretrain(_tiny_cnn(True, name=f"cnn_{c}"), x, y, c) for c in CONVENTIONS}


@pytest.mark.parametrize("convention", list(CONVENTIONS))
def test_auto_finds_the_convention_a_network_was_trained_with(trained, convention):
    sample = sample_dataset(TEST, per_class=20)
    choice = find_convention(trained[convention], sample)
    assert choice.method == "bn_fit" and choice.best == convention == choice.convention, choice.to_dict()
    assert set(choice.scores) == set(CONVENTIONS) and choice.margin > 1


def test_a_name_changes_nothing(trained):
    net = trained["tf"]
    sample = sample_dataset(TEST, per_class=20)
    # named like keras.applications.ResNet50, whose name says caffe
    renamed = keras.Model(net.inputs, net.outputs, name="resnet50")
    a, b = find_convention(net, sample), find_convention(renamed, sample)
    assert a.scores == b.scores and a.convention == b.convention == "tf"
    assert b.name_says == "caffe" and any("name suggests the caffe" in n for n in b.notes)
    fa, fb = measure(sample, net, bootstrap=0), measure(sample, renamed, bootstrap=0)
    assert fa.similarity.value == pytest.approx(fb.similarity.value)
    assert fa.transfer.to_dict()["best_score"] == pytest.approx(fb.transfer.to_dict()["best_score"])
    # the old behaviour, by name, is still there when asked for
    assert measure(sample, renamed, bootstrap=0, preprocessing="model").convention.convention == "model"


def test_a_layer_inside_is_honoured_and_confirmed(cifar):
    x, y = cifar
    net = _pretrain(_tiny_cnn(True, inside=keras.layers.Rescaling(1 / 255, name="scale")), x, y, "raw")
    choice = find_convention(net, sample_dataset(TEST, per_class=20))
    assert choice.inside == "scale" and choice.convention == "raw" == choice.best and not choice.notes


def test_a_layer_inside_that_disagrees_is_reported(trained):
    net = trained["tf"]
    wrapped = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(1.0, name="noop"), net])
    choice = find_convention(wrapped, sample_dataset(TEST, per_class=20))
    assert choice.convention == "raw" and choice.best == "tf"
    assert any("preprocessing inside (layer noop)" in n and "--preprocessing tf" in n for n in choice.notes)


def test_without_batchnorm_a_probe_decides_and_says_how_sure(cifar):
    x, y = cifar
    net = _pretrain(_tiny_cnn(False), x, y, "tf")
    choice = find_convention(net, sample_dataset(TEST, per_class=20))
    assert choice.method == "probe" and set(choice.scores) == set(CONVENTIONS)
    assert all(0 <= v <= 1 for v in choice.scores.values()) and choice.convention == choice.best
    assert choice.confident or any("unsure" in n for n in choice.notes)
    # unlabelled: nothing to measure; the model's own layers and name decide, and a note says so
    blind = find_convention(net, x[:20])
    assert blind.method == "none" and blind.convention == "model" and "could not be measured" in blind.notes[0]
    facts = measure(sample_dataset(TEST, per_class=10), net, bootstrap=0)
    assert facts.similarity is None and any("no BatchNormalization" in n for n in facts.notes)


def test_one_channel_fixed_size_network(cifar):
    x, y = cifar
    gray = (x @ np.array([0.299, 0.587, 0.114], dtype="float32"))[..., None]
    net = _pretrain(_tiny_cnn(True, channels=1), gray, y, "unit")
    sample = sample_dataset(TEST, per_class=20)
    choice = find_convention(net, sample)
    assert choice.convention == "unit", choice.to_dict()
    facts = measure(sample, net, bootstrap=0)
    assert facts.image_size == (32, 32) and facts.similarity is not None and facts.transfer is not None


def test_user_choice_wins_and_bad_choice_is_refused(trained):
    sample = sample_dataset(TEST, per_class=20)
    choice = find_convention(trained["tf"], sample, asked="raw")
    assert choice.convention == "raw" and choice.best == "tf" and "as asked" in choice.notes[0]
    with pytest.raises(InputError, match="auto, model, raw, unit, tf, torch, caffe"):
        find_convention(trained["tf"], sample, asked="imagenet")
    assert CHOICES == ("auto", "model", "raw", "unit", "tf", "torch", "caffe")


@pytest.fixture
def shared_models():
    if not (SHARED / "models" / "mobilenet_v1_imagenet_notop.keras").exists():
        pytest.skip(f"{SHARED}/models is absent (the ImageNet networks beside the project)")
    return SHARED / "models"


def test_renamed_imagenet_networks_keep_their_figures(shared_models):
    sample = sample_dataset(DATA, per_class=8)
    for f, want in (("mobilenet_v1_imagenet_notop", "tf"), ("efficientnet_lite0_imagenet", "raw")):
        net = keras.models.load_model(shared_models / f"{f}.keras")
        renamed = keras.Model(net.inputs, net.outputs, name="my_backbone")
        named = measure(sample, net, bootstrap=0, preprocessing="model", size=96)
        auto = measure(sample, renamed, bootstrap=0, size=96)
        assert auto.convention.convention == want, auto.convention.to_dict()
        assert abs(auto.similarity.value - named.similarity.value) < 0.05
        assert abs(auto.transfer.to_dict()["best_score"] - named.transfer.to_dict()["best_score"]) < 0.01
