"""Augmentation chosen for the data (advisor/augmentation.py), on real images.

- scikit-learn's bundled handwritten digits (1,797 real 8x8 images): a probe on their pixels
  classifies horizontally flipped digits far worse (a flipped "2" is not a "2"), so the flip is
  dropped; a transform that keeps every pixel where it is passes.
- the bundled CIFAR photos under the bundled CNN: the whole check, as `advise` runs it, keeps the
  horizontal flip of photos and writes its evidence into the plan.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import ROOT
from sklearn.datasets import load_digits

from advisor.advise import advise
from advisor.augmentation import TOLERANCE, candidates, check_augmentation, paired_drop, transform

DATA = ROOT / "examples" / "data" / "cifar_b"
MODEL = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x.reshape(-1, 8, 8, 1).astype("float32") * (255 / 16), y


def test_a_flip_that_changes_digits_is_measured_as_a_large_drop(digits):
    x, y = digits
    x, y = x[:400], y[:400]
    flipped = transform(x, "flip", "horizontal")
    assert np.array_equal(flipped[:, :, ::-1], x)
    plain, trans, drop, se = paired_drop(x.reshape(len(x), -1), flipped.reshape(len(x), -1), y)
    assert plain > 0.9 and trans < plain - 0.3
    assert drop - 1.645 * se > TOLERANCE  # dropped


def test_a_transform_that_keeps_the_pixels_keeps_the_accuracy(digits):
    x, y = digits
    x, y = x[:400], y[:400]
    plain, trans, drop, se = paired_drop(x.reshape(len(x), -1), x.reshape(len(x), -1) * 1.0, y)
    assert plain == trans and drop == 0.0


def test_candidates_split_a_double_flip_and_add_the_extras():
    names = [c[0] for c in candidates({"flip": "horizontal_and_vertical", "rotation": 0.05})]
    assert names == ["horizontal_flip", "vertical_flip", "rotation"]
    with_extra = [c[0] for c in candidates({"flip": "horizontal", "zoom": 0.1}, {"flip": "vertical", "contrast": 0.1})]
    assert with_extra == ["horizontal_flip", "vertical_flip", "zoom", "contrast"]


def test_random_transforms_stay_in_pixel_range():
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    for key, value in (("rotation", 0.05), ("zoom", 0.1), ("contrast", 0.2), ("translation", 0.1)):
        out = transform(x, key, value, seed=1)
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
        assert not np.allclose(out, x)


def test_check_on_photos_keeps_the_horizontal_flip():
    net = keras.models.load_model(MODEL, safe_mode=True)
    check = check_augmentation(net, DATA, {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1}, per_class=20)
    assert check.images == 100
    by_name = {c.name: c for c in check.checks}
    assert set(by_name) == {"horizontal_flip", "vertical_flip", "rotation", "zoom", "contrast"}
    assert by_name["horizontal_flip"].kept and check.kept.get("flip") in ("horizontal", "horizontal_and_vertical")
    for c in check.checks:  # each verdict follows from its own numbers
        assert c.kept == (c.drop - 1.645 * c.se <= TOLERANCE)
        assert abs((c.plain - c.transformed) - c.drop) < 1e-3
    reasons = check.reasons()
    assert reasons[0].startswith("augmentation measured on 100 images: keeps")
    assert any("horizontal flip kept" in r for r in reasons)


def test_nothing_proposed_measures_nothing():
    net = keras.models.load_model(MODEL, safe_mode=True)
    check = check_augmentation(net, DATA, {})
    assert check.kept == {} and check.checks == []


def test_advise_writes_the_measured_augmentation_into_the_plan():
    advice = advise(DATA, model=MODEL)
    check = advice.augmentation
    assert check is not None and advice.plan.data.augmentation == check.kept
    assert any(r.startswith("augmentation measured on") for r in advice.plan.decision.reasons)
    assert advice.to_dict()["augmentation"]["kept"] == check.kept
