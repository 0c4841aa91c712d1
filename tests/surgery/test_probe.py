"""The convex head fit (surgery/probe.py) on real data: scikit-learn's bundled handwritten digits
(1,797 real 8x8 images, 64 pixel features) and a real Keras Dense layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import to_numpy
from sklearn.datasets import load_digits

from surgery.probe import C_GRID, describe_estimate, fit_linear_head, wilson_interval


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order].astype("float32"), y[order]
    return x[:500], y[:500], x[500:], y[500:]


def _predict(fit, x):
    return (x @ fit.kernel + fit.bias).argmax(axis=1)


def test_fit_reaches_a_good_held_out_accuracy_with_c_from_the_grid(digits):
    xtr, ytr, xte, yte = digits
    fit = fit_linear_head(xtr, ytr, classes=10, seed=0)
    assert fit.C in C_GRID and fit.cv_folds == 5 and fit.images == 500
    assert set(fit.scores) == set(C_GRID) and fit.cv_accuracy == max(fit.scores.values())
    assert 0.9 < fit.cv_accuracy <= 1 and fit.train_accuracy >= fit.cv_accuracy - 0.05
    assert (_predict(fit, xte) == yte).mean() > 0.9


def test_standardization_is_folded_so_the_scale_of_features_does_not_matter(digits):
    # Shallow-cut features are tiny; a head fitted on them must predict as on well-scaled ones.
    xtr, ytr, xte, _ = digits
    big, tiny = fit_linear_head(xtr, ytr, 10), fit_linear_head(xtr * 1e-4, ytr, 10)
    assert big.C == tiny.C
    assert (_predict(big, xte) == _predict(tiny, xte * 1e-4)).mean() > 0.99


def test_a_keras_dense_layer_computes_the_fitted_head(digits):
    xtr, ytr, xte, _ = digits
    fit = fit_linear_head(xtr, ytr, classes=10)
    dense = keras.layers.Dense(10, activation="softmax")
    dense.build((None, 64))
    fit.assign_to(dense)
    probs = to_numpy(dense(xte[:50]))
    logits = xte[:50] @ fit.kernel + fit.bias
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(probs, expected, atol=1e-5)
    wrong = keras.layers.Dense(9)
    wrong.build((None, 64))
    with pytest.raises(ValueError, match="kernel of shape"):
        fit.assign_to(wrong)


def test_two_classes_and_classes_without_images(digits):
    xtr, ytr, _, _ = digits
    keep = np.isin(ytr, (3, 8))
    fit = fit_linear_head(xtr[keep], ytr[keep], classes=10)
    assert fit.kernel.shape == (64, 10)
    pred = _predict(fit, xtr[keep])
    assert set(np.unique(pred)) <= {3, 8} and (pred == ytr[keep]).mean() > 0.9


def test_too_few_images_per_class_fits_without_cross_validation(digits):
    xtr, ytr, _, _ = digits
    idx = np.concatenate([np.where(ytr == c)[0][:1] for c in range(10)])  # one image per class
    fit = fit_linear_head(xtr[idx], ytr[idx], classes=10)
    assert fit.cv_folds == 0 and fit.cv_accuracy is None and fit.C == 1.0
    assert any("no cross-validation" in n for n in fit.notes)
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_head(xtr[ytr == 1], ytr[ytr == 1], classes=10)


def test_wilson_interval_known_values():
    assert wilson_interval(8, 10) == (0.4902, 0.9433)  # the textbook example
    lo, hi = wilson_interval(0, 40)
    assert lo == 0.0 and 0.08 < hi < 0.09
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_describe_estimate_says_how_accuracy_was_measured():
    text = describe_estimate({"method": "test split", "accuracy": 0.8, "images": 10, "interval95": [0.49, 0.94]})
    assert text == ("expected accuracy on new images 0.800 (95 % interval 0.490-0.940), from the test split "
                    "on 10 images")
    assert describe_estimate({"method": "none", "accuracy": None, "note": "give a test/ folder"}).endswith(
        "not measured. give a test/ folder")


def _shift(x):
    """8x8 digits moved one pixel right: the same digit (a label-preserving view)."""
    img = x.reshape(-1, 8, 8)
    return np.concatenate([np.zeros_like(img[:, :, :1]), img[:, :, :-1]], axis=2).reshape(len(x), 64)


def test_views_are_training_rows_and_never_leak_into_the_held_out_fold():
    # Noise features and random labels: nothing to learn. A view that is a near-copy of its image
    # would make CV look perfect if a fold trained on the view of an image it is scored on.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 200)).astype("float32")
    y = np.repeat(np.arange(4), 30)
    fit = fit_linear_head(x, y, classes=4, views=[x + rng.normal(scale=1e-3, size=x.shape)])
    assert fit.cv_accuracy < 0.45 and fit.images == 120
    assert any("view" in n for n in fit.notes)
    with pytest.raises(ValueError, match="view"):
        fit_linear_head(x, y, classes=4, views=[x[:10]])


def test_views_are_kept_when_they_help_the_cross_validation_and_dropped_when_they_hurt(digits):
    xtr, ytr, xte, yte = digits
    keep = np.concatenate([np.flatnonzero(ytr == c)[:5] for c in range(10)])  # 5 images per class
    # Digits seen both in place and moved one pixel (at random): the other version of each training
    # image is a label-preserving view that the held-out images need. CV sees that and keeps it.
    moved = np.random.default_rng(1).random(len(xtr) + len(xte)) < 0.5
    both = np.concatenate([xtr, xte])
    seen = np.where(moved[:, None], _shift(both), both)
    other = np.where(moved[:, None], both, _shift(both))
    strain, otrain, stest = seen[:len(xtr)][keep], other[:len(xtr)][keep], seen[len(xtr):]
    plain = fit_linear_head(strain, ytr[keep], classes=10)
    viewed = fit_linear_head(strain, ytr[keep], classes=10, views=[otrain])
    assert viewed.views == 1 and plain.views == 0 and any(n.startswith("views kept") for n in viewed.notes)
    assert viewed.cv_accuracy > plain.cv_accuracy
    acc = {name: (_predict(f, stest) == yte).mean() for name, f in (("plain", plain), ("viewed", viewed))}
    assert acc["viewed"] > acc["plain"] + 0.05, acc
    # Digits always in place: moved copies only blur the boundaries the held-out images need; dropped.
    dropped = fit_linear_head(xtr[keep], ytr[keep], classes=10, views=[_shift(xtr[keep])])
    assert dropped.views == 0 and any(n.startswith("views dropped") for n in dropped.notes)
    same = fit_linear_head(xtr[keep], ytr[keep], classes=10)
    np.testing.assert_allclose(dropped.kernel, same.kernel, atol=1e-4)


def test_small_data_averages_the_cv_over_three_fold_assignments(digits, monkeypatch):
    import surgery.probe as probe

    xtr, ytr, _, _ = digits
    keep = np.concatenate([np.flatnonzero(ytr == c)[:10] for c in range(10)])  # 10 images per class
    x, y = xtr[keep], ytr[keep]
    fit = fit_linear_head(x, y, classes=10, seed=3)
    assert fit.cv_repeats == probe.CV_REPEATS == 3 and fit.cv_folds == 5
    # the accuracy per C is the mean of the single-assignment accuracies at seeds 3, 4, 5
    monkeypatch.setattr(probe, "REPEAT_MAX_IMAGES", 0)
    singles = [fit_linear_head(x, y, classes=10, seed=s) for s in (3, 4, 5)]
    assert all(s.cv_repeats == 1 for s in singles)
    for c in C_GRID:
        assert fit.scores[c] == pytest.approx(np.mean([s.scores[c] for s in singles]), abs=1e-9)
    # above REPEAT_MAX_IMAGES one assignment: the single CV of seed 3, as before
    monkeypatch.setattr(probe, "REPEAT_MAX_IMAGES", 99)
    assert fit_linear_head(x, y, classes=10, seed=3).scores == singles[0].scores


def test_large_data_cross_validates_on_a_stratified_sample_and_fits_on_every_image(digits, monkeypatch):
    import surgery.probe as probe

    xtr, ytr, xte, yte = digits
    monkeypatch.setattr(probe, "CV_MAX_IMAGES", 200)
    sub = fit_linear_head(xtr, ytr, classes=10, seed=0)
    assert sub.images == 500 and sub.cv_folds == 5 and sub.cv_repeats == 3  # 200 images: repeated
    assert any("stratified sample of 200 of the 500 images" in n for n in sub.notes), sub.notes
    c_sample = max(sub.scores, key=lambda c: (sub.scores[c], -c))  # ties: the strongest L2
    assert sub.C == pytest.approx(c_sample * 200 / 500)  # the same L2 strength per image on all 500
    assert (_predict(sub, xte) == yte).mean() > 0.9
    # the final fit is the fit of every image at that C (up to each fit's own temperature)
    monkeypatch.setattr(probe, "CV_MAX_IMAGES", 5000)
    full = fit_linear_head(xtr, ytr, classes=10, seed=0, grid=(sub.C,))
    np.testing.assert_allclose(sub.kernel * sub.temperature, full.kernel * full.temperature, atol=2e-3)
    # a class with a single image cannot be stratified: the sample is then drawn plainly
    monkeypatch.setattr(probe, "CV_MAX_IMAGES", 200)
    one = np.concatenate([np.flatnonzero(ytr != 9), np.flatnonzero(ytr == 9)[:1]])
    assert fit_linear_head(xtr[one], ytr[one], classes=10).images == len(one)
