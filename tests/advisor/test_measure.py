"""`measure`: data set + model -> EmbeddingFacts, its facts, and the rendered profile."""

from __future__ import annotations

import io
import json
import shutil

import keras
import numpy as np
import pytest
from embedding_fixtures import CIFAR_B, CNN_PATH, cifar_cnn
from rich.console import Console

from advisor.measure import measure
from advisor.profile_chart import ProfileChart, plot_profile, shift_sparkline
from graft.errors import InputError


@pytest.fixture(scope="module")
def facts():
    return measure(CIFAR_B, CNN_PATH, per_class=12, bootstrap=50)


def test_facts_are_in_range_and_named_as_the_design_says(facts):
    f = facts.facts()
    assert 0.0 <= f["similarity"] <= 1.0 and f["similarity_method"] == "bn_stats"
    assert 0.0 <= f["similarity_uncertainty"] < 0.2  # 0 when the logistic saturates
    assert f["similarity_sample"] == 60
    assert 0.0 < f["best_cut_depth"] <= 1.0
    assert f["best_cut_layer"] in {"block1_pool", "block2_pool", "block3_relu2"}
    assert f["cut_gain"] == pytest.approx(f["best_cut_score"] - f["top_cut_score"], abs=1e-3)
    d = json.loads(json.dumps(facts.to_dict()))
    assert d["preprocessing"] == "inside the model (rescaling)" and d["image_size"] == [32, 32]
    assert len(d["similarity"]["profile"]) == 6 and len(d["transfer"]["cuts"]) == 3


def test_terminal_chart_shows_similarity_profile_and_best_cut(facts):
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(ProfileChart(facts))
    out = buf.getvalue()
    assert f"similarity {facts.similarity.value:.2f} ± {facts.similarity.uncertainty:.2f}" in out
    assert "shift by depth 0 " in out
    assert f"{facts.transfer.best.name} ◀ best" in out
    assert out.count("◀ best") == 1


def test_sparkline_bins_by_depth():
    assert shift_sparkline([0.0, 0.5, 1.0], [0.0, 1.0, 2.0], bins=4) == "▁ ▄█"


def test_png_plot(tmp_path, facts):
    path = plot_profile(facts, tmp_path / "profile.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


def test_reference_folder_and_unlabelled_sample(tmp_path):
    flat = tmp_path / "ref"
    flat.mkdir()
    for f in sorted((CIFAR_B / "dog").glob("*.jpg"))[:10]:
        shutil.copyfile(f, flat / f.name)
    one_class = tmp_path / "one"
    shutil.copytree(CIFAR_B / "frog", one_class / "frog")
    f = measure(one_class, cifar_cnn(), per_class=8, reference=flat, bootstrap=20)
    assert f.facts()["similarity_method"] == "reference"
    assert f.transfer is None and f.facts()["best_cut_depth"] is None
    assert any("transferability not measured" in n for n in f.notes)
    with pytest.raises(InputError, match="neither a folder"):
        measure(one_class, cifar_cnn(), reference=tmp_path / "missing.txt")


def test_model_without_batchnorm_reports_why_similarity_is_missing(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    f = measure(CIFAR_B, model, per_class=4)
    assert f.similarity is None and f.facts()["similarity"] is None
    assert any("no BatchNormalization" in n for n in f.notes)  # after the convention's own note
    assert np.isfinite(f.transfer.best.score)
