"""Atomic writes, classification metrics, plots and the HTML report of a run."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graft.atomic import atomic_path, write_bytes, write_json, write_text
from surgery.metrics import classification_metrics
from surgery.report import (
    history_csv,
    plot_confusion,
    plot_curves,
    write_report,
    write_run_outputs,
)

# A small 3-class example, hand-checked:
#   true:  0 0 0 1 1 1 1 2 2 2
#   pred:  0 0 1 1 1 2 1 2 0 2
# confusion (rows true, cols pred):
#   [[2, 1, 0],
#    [0, 3, 1],
#    [1, 0, 2]]
Y_TRUE = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 2, 1, 2, 0, 2]
NAMES = ["cat", "dog", "<script>alert(1)</script>"]
CM = [[2, 1, 0], [0, 3, 1], [1, 0, 2]]


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def test_metrics_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["confusion_matrix"] == CM
    assert m["classes"] == NAMES
    assert m["n_samples"] == 10
    assert m["accuracy"] == pytest.approx(7 / 10)
    # recalls 2/3, 3/4, 2/3
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    cat, dog, scr = m["per_class"]
    assert cat["class"] == "cat" and cat["support"] == 3
    assert cat["precision"] == pytest.approx(2 / 3)  # predicted cat: 3, correct 2
    assert cat["recall"] == pytest.approx(2 / 3)
    assert cat["sensitivity"] == cat["recall"]
    assert cat["specificity"] == pytest.approx(6 / 7)  # 7 non-cats, 1 predicted cat
    assert cat["f1"] == pytest.approx(2 / 3)
    assert dog["precision"] == pytest.approx(3 / 4)
    assert dog["recall"] == pytest.approx(3 / 4)
    assert dog["specificity"] == pytest.approx(5 / 6)
    assert scr["precision"] == pytest.approx(2 / 3)
    assert scr["recall"] == pytest.approx(2 / 3)
    assert scr["specificity"] == pytest.approx(6 / 7)
    assert m["macro"]["precision"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert m["macro"]["specificity"] == pytest.approx((6 / 7 + 5 / 6 + 6 / 7) / 3)
    assert "top_k_accuracy" not in m
    # Plain Python types all the way down: JSON round-trips exactly.
    assert json.loads(json.dumps(m)) == m
    assert all(
        type(v) in (int, float) for row in m["per_class"] for k, v in row.items() if k != "class"
    )


def test_metrics_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    m = classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    labels = [0, 1, 2, 3]
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([c["precision"] for c in m["per_class"]], p)
    np.testing.assert_allclose([c["recall"] for c in m["per_class"]], r)
    np.testing.assert_allclose([c["f1"] for c in m["per_class"]], f)
    assert [c["support"] for c in m["per_class"]] == s.tolist()
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro"]["f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    )


def test_metrics_zero_division():
    # Class 2 never occurs and is never predicted; class 1 is never predicted.
    m = classification_metrics([0, 0, 1], [0, 0, 0], ["a", "b", "c"])
    a, b, c = m["per_class"]
    assert b["precision"] == 0.0 and b["recall"] == 0.0 and b["f1"] == 0.0
    assert c == {
        "class": "c",
        "support": 0,
        "precision": 0.0,
        "recall": 0.0,
        "sensitivity": 0.0,
        "specificity": 1.0,
        "f1": 0.0,
    }
    assert a["specificity"] == 0.0  # the only non-a sample was predicted a
    # Balanced accuracy averages over the classes present (a: 1.0, b: 0.0).
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert all(not math.isnan(v) for v in m["macro"].values())
    # Every sample of one class: specificity has no negatives -> 0.0.
    only = classification_metrics([0, 0], [0, 0], ["x", "y"])
    assert only["per_class"][0]["specificity"] == 0.0
    assert only["accuracy"] == 1.0


def test_metrics_top_k_and_validation():
    rng = np.random.default_rng(0)
    prob = rng.random((10, 3))
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES, y_prob=prob)
    assert m["top_k"] == 3 and m["top_k_accuracy"] == 1.0  # k = classes: always a hit
    prob7 = np.zeros((4, 7))
    prob7[np.arange(4), [0, 1, 2, 3]] = 1.0  # true class scores highest for samples 0..3
    prob7[3] = [0.9, 0.8, 0.7, 0.0, 0.6, 0.5, 0.4]  # true class 3 is last: a miss at k=5
    m7 = classification_metrics([0, 1, 2, 3], [0, 1, 2, 0], list("abcdefg"), y_prob=prob7)
    assert m7["top_k"] == 5 and m7["top_k_accuracy"] == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        classification_metrics([0, 3], [0, 1], ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics([0, 1], [0, 1], ["a", "b"], y_prob=np.zeros((2, 3)))


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------


def test_atomic_writes_create_parents(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json(target, {"x": 1, "y": [1.5, "z"]})
    assert json.loads(target.read_text()) == {"x": 1, "y": [1.5, "z"]}
    write_text(tmp_path / "t" / "x.txt", "héllo\n")
    assert (tmp_path / "t" / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent, {"out.json"}) == []
    if os.name == "posix":
        mode = (tmp_path / "b.bin").stat().st_mode & 0o777
        assert mode == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_failure_leaves_target(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert target.read_text() == '{"old": true}'
    assert _leftovers(tmp_path, {"metrics.json"}) == []

    # A failure during the write itself (not serialization) also cleans up.
    with pytest.raises(TypeError):
        write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == '{"old": true}'
    assert _leftovers(tmp_path, {"metrics.json"}) == []


def test_atomic_path(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".keras"
        assert not tmp.exists()
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert _leftovers(target.parent, {"model.keras"}) == []

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"
    assert _leftovers(target.parent, {"model.keras"}) == []

    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass  # nothing written
    assert target.read_bytes() == b"new"
    assert _leftovers(target.parent, {"model.keras"}) == []


# ------------------------------------------------------------------------------------------------
# plots, history, report
# ------------------------------------------------------------------------------------------------

HISTORY = {
    "loss": [1.2, 0.9, 0.7, 0.6, 0.5],
    "val_loss": [1.3, 1.0, 0.8, 0.75, float("nan")],
    "accuracy": [0.4, 0.55, 0.65, 0.7, 0.75],
    "val_accuracy": [0.35, 0.5, 0.6, 0.62, 0.64],
    "phase": ["head", "head", "finetune", "finetune", "finetune"],
}
PHASES = [
    {"name": "head", "epochs": 2, "trainable_params": 1539, "learning_rate": 1e-3},
    {"name": "finetune", "epochs": 3, "trainable_params": 123456, "learning_rate": 1e-5},
]
PLAN = {
    "decision": {
        "strategy": "finetune",
        "case": "small-similar <b>",
        "reasons": ["few images per class", "domain is close to ImageNet & friends"],
    },
    "data": {"path": "data/<pets>", "image_size": [224, 224], "validation_split": 0.2},
}


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_plot_curves(tmp_path):
    out = plot_curves(HISTORY, tmp_path / "plots" / "curves.png", PHASES)
    w, h = _png_size(out)
    assert 400 <= w <= 3000 and 200 <= h <= 2000
    assert _leftovers(out.parent, {"curves.png"}) == []
    # Partial histories (no validation, no accuracy) still plot.
    w2, _ = _png_size(plot_curves({"loss": [1.0]}, tmp_path / "c2.png"))
    assert w2 >= 400


@pytest.mark.parametrize("n", [1, 3, 35])
def test_plot_confusion(tmp_path, n):
    rng = np.random.default_rng(n)
    cm = rng.integers(0, 20, (n, n))
    cm[0] = 0  # a class with no samples: no division by zero
    out = plot_confusion(cm, [f"class {i}" for i in range(n)], tmp_path / "confusion.png")
    w, h = _png_size(out)
    assert 300 <= w <= 4000 and 300 <= h <= 4000
    with pytest.raises(ValueError):
        plot_confusion(cm, ["too", "few"] if n != 2 else ["x"], tmp_path / "bad.png")


def test_history_csv_round_trip():
    text = history_csv(HISTORY)
    rows = list(csv.DictReader(text.splitlines()))
    assert list(rows[0]) == ["epoch", "phase", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["phase"] for r in rows] == HISTORY["phase"]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        got = [float(r[key]) for r in rows]
        np.testing.assert_array_equal(got, HISTORY[key])  # exact, NaN included


def test_write_run_outputs_and_report(tmp_path):
    run = tmp_path / "run"
    metrics = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    paths = write_run_outputs(
        run,
        history=HISTORY,
        phases=PHASES,
        metrics=metrics,
        plan=PLAN,
        model_summary='Model: "pets" <Functional>\nTotal params: 123,456',
        timings={"train_s": 12.34, "evaluate_s": 1.5},
    )
    assert set(paths) == {"metrics", "history", "curves", "confusion", "report"}
    assert sorted(p.name for p in run.iterdir()) == [
        "confusion.png",
        "curves.png",
        "history.csv",
        "metrics.json",
        "report.html",
    ]
    assert json.loads(paths["metrics"].read_text()) == metrics
    with paths["history"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5 and rows[2]["phase"] == "finetune"
    _png_size(paths["curves"])
    _png_size(paths["confusion"])

    page = paths["report"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "70.00%" in page and "0.7000" in page  # accuracy
    assert "cat" in page and "dog" in page
    # User-provided text is escaped, never live markup.
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "small-similar &lt;b&gt;" in page
    assert "ImageNet &amp; friends" in page
    assert "data/&lt;pets&gt;" in page
    assert "&lt;Functional&gt;" in page
    # Images are embedded, not linked.
    assert page.count("src='data:image/png;base64,") == 2
    assert "curves.png'" not in page and "confusion.png'" not in page
    assert "finetune" in page and "1e-05" in page and "123,456" in page
    assert "12.3 s" in page


def test_report_tolerates_missing_parts(tmp_path):
    out = write_report(
        tmp_path,
        plan={},
        metrics={},
        history={},
        phases=[],
        model_summary="",
        timings={},
        extra={"note": "<i>x</i>"},
    )
    page = out.read_text(encoding="utf-8")
    assert "No decision recorded" in page
    assert "data:image" not in page  # no PNGs in the run dir: images omitted
    assert "&lt;i&gt;x&lt;/i&gt;" in page
