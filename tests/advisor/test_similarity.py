"""BN-statistics and reference similarity: the formula, the bootstrap, profiles, and the ordering on
real data (similar CIFAR-10 classes B above generated textures and digits for the CIFAR-A CNN)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from embedding_fixtures import CIFAR_B, cnn_graph, digits, stripes_and_checks

from advisor.embed import embed, sample_dataset
from advisor.similarity import (
    CALIBRATION,
    bn_reference,
    calibrated,
    load_profile,
    sample_reference,
    save_profile,
    similarity,
)
from graft.errors import InputError
from surgery import layer_graph


@pytest.fixture(scope="module")
def measured():
    g = cnn_graph()
    out = {}
    out["cifar_b"] = embed(g, sample_dataset(CIFAR_B, per_class=20))
    x, y = stripes_and_checks(50)
    out["textures"] = embed(g, x, labels=y)
    x, y = digits(10)
    out["digits"] = embed(g, x, labels=y)
    return {k: similarity(e, bn_reference(g, e.stat_layers), bootstrap=100) for k, e in out.items()}, out


def test_similar_target_scores_above_different_ones(measured):
    sims, _ = measured
    b = sims["cifar_b"]
    for other in ("textures", "digits"):
        o = sims[other]
        assert b.value > o.value
        # separated by more than the bootstrap intervals, not by luck of the sample
        assert b.interval[0] > o.interval[1], (b.interval, o.interval)
    assert b.value > 0.5 > max(sims["textures"].value, sims["digits"].value)


def test_measurement_records_method_sample_uncertainty_and_profile(measured):
    s = measured[0]["cifar_b"]
    assert s.method == "bn_stats" and s.source == "batchnorm running statistics"
    assert s.sample == 100
    assert 0.0 < s.uncertainty < 0.2
    assert s.interval[0] <= s.value <= s.interval[1]
    assert s.layers[0] == "block1_bn1" and len(s.layers) == len(s.shift) == len(s.depths) == 6
    assert s.depths == sorted(s.depths)
    assert np.isclose(s.distance, np.mean(s.shift))
    d = s.to_dict()
    assert 0.0 <= d["value"] <= 1.0 and len(d["profile"]) == 6


def test_bootstrap_is_seeded(measured):
    _, emb = measured
    ref = bn_reference(cnn_graph(), emb["digits"].stat_layers)
    a = similarity(emb["digits"], ref, bootstrap=50, seed=1)
    b = similarity(emb["digits"], ref, bootstrap=50, seed=1)
    c = similarity(emb["digits"], ref, bootstrap=50, seed=2)
    assert a.uncertainty == b.uncertainty and a.uncertainty != c.uncertainty
    assert similarity(emb["digits"], ref, bootstrap=0).uncertainty == 0.0


def test_distance_is_zero_against_own_statistics_and_grows_with_a_shift(measured):
    _, emb = measured
    own = sample_reference(emb["cifar_b"])
    same = similarity(emb["cifar_b"], own, bootstrap=0)
    assert same.distance < 1e-9 and same.value > 0.999 and same.method == "reference"
    assert similarity(emb["textures"], own, bootstrap=0).distance > 0.1


def test_gaussian_shift_distance_by_hand():
    """One layer, two channels: data N(1, 1) and N(0, 4) against a N(0, 1) reference."""
    from advisor.embed import Embeddings

    rng = np.random.default_rng(0)
    n = 4000
    # per-image channel means and mean squares of spatially constant images
    v = np.stack([rng.normal(1, 1, n), rng.normal(0, 2, n)], axis=1)
    emb = Embeddings(cuts=[], features={}, stat_layers=["bn"], stat_kind="bn_input", stat_depths=[0.5],
                     stat_mean={"bn": v}, stat_sqmean={"bn": v**2}, labels=None, class_names=[],
                     image_size=(1, 1), preprocessing="test")
    ref = sample_reference(emb)
    ref.mean["bn"], ref.var["bn"] = np.zeros(2), np.ones(2)
    s = similarity(emb, ref, bootstrap=0)
    # d = (1 - 0)^2 + (1 - 1)^2 = 1 and (0)^2 + (2 - 1)^2 = 1, so the shift is log(2)
    assert s.distance == pytest.approx(np.log(2), rel=0.05)


def test_calibration_is_a_decreasing_map_onto_0_1():
    c = CALIBRATION["bn_stats"]
    assert calibrated(c["d50"]) == pytest.approx(0.5)
    d = np.array([0.0, 0.01, 0.1, c["d50"], 1.0, 10.0])
    v = calibrated(d)
    assert np.all(np.diff(v) < 0) and v[0] <= 1.0 and v[-1] >= 0.0


def test_profile_round_trip_and_mismatch(tmp_path, measured):
    _, emb = measured
    ref = sample_reference(emb["cifar_b"], "cifar b")
    path = save_profile(ref, tmp_path / "profile.npz", model_name="cifar_a_cnn")
    loaded = load_profile(path)
    assert loaded.layers == ref.layers and loaded.images == 100
    np.testing.assert_allclose(loaded.var["block3_bn2"], ref.var["block3_bn2"])
    assert similarity(emb["digits"], loaded, bootstrap=0).distance == pytest.approx(
        similarity(emb["digits"], ref, bootstrap=0).distance)
    with pytest.raises(InputError, match="does not exist"):
        load_profile(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a graft reference profile"):
        load_profile(tmp_path / "bad.npz")
    other = sample_reference(emb["digits"])
    other.mean = {f"x{k}": v for k, v in other.mean.items()}
    with pytest.raises(InputError, match="same model"):
        similarity(emb["digits"], other)


def test_model_without_batchnorm_needs_a_reference():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, name="c")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(InputError, match="no BatchNormalization"):
        bn_reference(layer_graph(model), [])
