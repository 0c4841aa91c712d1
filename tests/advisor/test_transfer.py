"""Per-cut transferability: the closed-form leave-one-out probe, the cut rule, and real features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from embedding_fixtures import CIFAR_B, cnn_graph

from advisor.embed import Embeddings, embed, sample_dataset
from advisor.transfer import ridge_loo_predictions, standardize, transferability
from graft.errors import InputError
from surgery import CutPoint


def _emb(features: dict[str, np.ndarray], labels) -> Embeddings:
    cuts = [CutPoint(name, depth=(i + 1) / len(features), shape=(None, 1, 1, f.shape[1]), params=0, index=i)
            for i, (name, f) in enumerate(features.items())]
    return Embeddings(cuts=cuts, features=features, stat_layers=[], stat_kind="bn_input", stat_depths=[],
                      stat_mean={}, stat_sqmean={}, labels=np.asarray(labels), class_names=[],
                      image_size=(1, 1), preprocessing="test")


def _blobs(n_per_class, classes, dims, spread, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, size=(classes, dims))
    y = np.repeat(np.arange(classes), n_per_class)
    return centers[y] + spread * rng.normal(size=(len(y), dims)), y


def test_closed_form_leave_one_out_equals_refitting():
    rng = np.random.default_rng(0)
    x = standardize(rng.normal(size=(25, 8)))
    onehot = np.eye(3)[rng.integers(0, 3, 25)]
    alpha = 2.5
    fast = ridge_loo_predictions(x, onehot, [alpha])[0]
    for i in range(25):
        keep = np.arange(25) != i
        xm, ym = x[keep].mean(0), onehot[keep].mean(0)
        a = x[keep] - xm
        w = np.linalg.solve(a.T @ a + alpha * np.eye(8), a.T @ (onehot[keep] - ym))
        np.testing.assert_allclose(fast[i], (x[i] - xm) @ w + ym, rtol=1e-8, atol=1e-10)


def test_scores_separate_signal_from_noise():
    x, y = _blobs(20, 4, 16, 0.3, 0)
    noise = np.random.default_rng(1).normal(size=x.shape)
    t = transferability(_emb({"noise": noise, "signal": x}, y))
    assert t.scores[1].score > 0.95
    assert t.scores[0].score < 0.5
    assert t.chance == 0.25 and t.sample == 80
    assert t.best.name == "signal" and t.best.depth == 1.0
    k = transferability(_emb({"noise": noise, "signal": x}, y), method="knn_loo")
    assert k.scores[1].score > 0.95 > 0.5 > k.scores[0].score


def test_standardizing_rescues_badly_scaled_features():
    x, y = _blobs(20, 3, 10, 0.4, 2)
    scaled = x * np.logspace(-6, 3, 10)  # a few huge features would drown the rest unscaled
    t = transferability(_emb({"scaled": scaled}, y))
    assert t.scores[0].score > 0.9


def test_deepest_cut_wins_ties_and_a_clearly_better_shallow_cut_wins():
    x, y = _blobs(25, 3, 12, 0.3, 3)
    tie = transferability(_emb({"a": x, "b": x.copy(), "c": x.copy()}, y))
    assert tie.best.name == "c"
    bad = np.random.default_rng(4).normal(size=x.shape)
    shallow = transferability(_emb({"a": x, "b": bad, "c": bad}, y))
    assert shallow.best.name == "a" and shallow.top.name == "a"


def test_errors_name_the_problem():
    x = np.zeros((6, 3))
    with pytest.raises(InputError, match="labelled"):
        transferability(dataclasses.replace(_emb({"a": x}, [0, 1] * 3), labels=None))
    with pytest.raises(InputError, match="at least 2 classes"):
        transferability(_emb({"a": x}, [0] * 6))
    with pytest.raises(InputError, match="Unknown transferability method"):
        transferability(_emb({"a": x}, [0, 1] * 3), method="logme")


def test_real_features_of_the_cifar_cnn_beat_chance_and_deepen():
    emb = embed(cnn_graph(), sample_dataset(CIFAR_B, per_class=30))
    t = transferability(emb)
    assert [s.name for s in t.scores] == ["block1_pool", "block2_pool", "block3_relu2"]
    assert t.scores[-1].score > t.chance + 0.2
    assert t.scores[-1].score > t.scores[0].score
    assert 0.0 < t.best.depth <= 1.0
    d = t.to_dict()
    assert d["best_cut_layer"] == t.best.name and len(d["cuts"]) == 3
