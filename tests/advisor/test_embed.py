"""Stratified sampling, image loading and the one-pass multi-cut embedding."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import to_numpy
from embedding_fixtures import CIFAR_B, cifar_cnn, cnn_graph
from PIL import Image

from advisor.embed import (
    candidate_cuts,
    class_folders,
    embed,
    load_images,
    sample_dataset,
)
from graft.errors import DatasetError, InputError
from graft.preprocessing import model_preprocessing
from surgery import layer_graph, truncate


def _write_folder(root, counts, size=(20, 16), mode="RGB"):
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
            Image.fromarray(arr.squeeze()).convert(mode).save(root / cls / f"{i:03d}.png")


def test_sample_is_stratified_bounded_and_seeded(tmp_path):
    _write_folder(tmp_path, {"a": 30, "b": 5, "c": 12})
    s = sample_dataset(tmp_path, per_class=10, cap=100, seed=3)
    assert s.class_names == ["a", "b", "c"]
    assert np.bincount(s.labels).tolist() == [10, 5, 10]
    assert s.available == {"a": 30, "b": 5, "c": 12}
    capped = sample_dataset(tmp_path, per_class=10, cap=12)
    assert np.bincount(capped.labels).tolist() == [4, 4, 4]
    assert sample_dataset(tmp_path, per_class=10, seed=3).paths == s.paths
    assert sample_dataset(tmp_path, per_class=10, seed=4).paths != s.paths


def test_sample_reads_train_subfolder_and_rejects_bad_folders(tmp_path):
    _write_folder(tmp_path / "train", {"x": 2, "y": 2})
    assert list(class_folders(tmp_path)) == ["x", "y"]
    with pytest.raises(DatasetError, match="does not exist"):
        sample_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="hold no images"):
        sample_dataset(tmp_path / "empty")
    with pytest.raises(InputError, match="positive"):
        sample_dataset(tmp_path, per_class=0)


def test_grayscale_rgba_and_odd_sizes_become_rgb_and_corrupt_files_are_skipped(tmp_path):
    Image.fromarray(np.full((10, 7), 200, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((9, 9, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    x, kept, skipped = load_images([tmp_path / "gray.png", tmp_path / "bad.jpg", tmp_path / "rgba.png"], (32, 24))
    assert x.shape == (2, 32, 24, 3) and x.dtype == np.float32
    assert kept == [0, 2]
    np.testing.assert_allclose(x[0], 200.0)
    assert len(skipped) == 1 and skipped[0][0].endswith("bad.jpg")


def test_candidate_cuts_are_stage_ends_before_the_head():
    names = [c.name for c in candidate_cuts(cnn_graph())]
    assert names == ["block1_pool", "block2_pool", "block3_relu2"]
    deep = candidate_cuts(layer_graph(keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))),
                          max_cuts=6)
    assert len(deep) == 6 and deep[-1].name == "out_relu"
    assert [c.depth for c in deep] == sorted(c.depth for c in deep)


@pytest.mark.backends
def test_one_pass_matches_truncated_models():
    """The pooled features and BN-input moments equal those of separately truncated models."""
    model = cifar_cnn()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(6, 32, 32, 3)).astype("float32")
    emb = embed(model, x, labels=np.arange(6) % 2)
    assert emb.images == 6 and emb.stat_kind == "bn_input"
    assert emb.preprocessing == "inside the model (rescaling)"
    for cut in emb.cuts:
        ref = to_numpy(truncate(model, cut.name)(x)).mean(axis=(1, 2))
        np.testing.assert_allclose(emb.features[cut.name], ref, rtol=1e-4, atol=1e-4)
    bn = "block2_bn1"  # its input is block2_conv1's output
    conv = to_numpy(truncate(model, "block2_conv1")(x))
    np.testing.assert_allclose(emb.stat_mean[bn], conv.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb.stat_sqmean[bn], (conv**2).mean(axis=(1, 2)), rtol=1e-4, atol=1e-3)
    assert emb.stat_layers[0] == "block1_bn1" and emb.stat_depths == sorted(emb.stat_depths)


def test_single_channel_arrays_are_repeated_and_resized():
    model = cifar_cnn()
    gray = np.random.default_rng(1).uniform(0, 255, size=(3, 8, 8, 1)).astype("float32")
    rgb = to_numpy(keras.ops.image.resize(np.repeat(gray, 3, axis=-1), (32, 32)))
    a = embed(model, gray)
    b = embed(model, rgb)
    for name in a.features:
        np.testing.assert_allclose(a.features[name], b.features[name], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="Expected images shaped"):
        embed(model, np.zeros((2, 8, 8, 2)))


@pytest.mark.backends
def test_embed_a_folder_sample():
    sample = sample_dataset(CIFAR_B, per_class=4)
    emb = embed(cnn_graph(), sample, batch_size=7)
    assert emb.images == 20 and emb.class_names == ["dog", "frog", "horse", "ship", "truck"]
    assert emb.labels.tolist() == sorted(emb.labels.tolist())
    assert all(np.isfinite(f).all() for f in emb.features.values())


def test_models_without_batchnorm_take_statistics_at_the_cuts():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    emb = embed(model, np.ones((2, 16, 16, 3), "float32"))
    assert emb.stat_kind == "cut_output" and emb.stat_layers == ["c1", "c2"]
    assert emb.preprocessing == "none (raw 0..255 pixels)"


def test_preprocessing_of_application_models():
    m = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
    p = model_preprocessing(m)
    assert p.name == "keras.applications.mobilenet_v2.preprocess_input"
    np.testing.assert_allclose(p(np.array([[0.0, 255.0]])), [[-1.0, 1.0]])
