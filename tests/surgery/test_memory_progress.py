"""Bounded memory and trustworthy progress in `apply`: bottleneck features on disk (memory-mapped)
when they exceed the budget, the same head either way; peak memory and the time against the plan's
expectation in `metrics.json`; `run.log` with images/s per epoch.

Real training on the bundled CIFAR-B example with the bundled CNN (a few seconds per run).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_apply import CHANCE, make_plan, trained_weights

from graft.plan import DecisionRecord, Phase
from surgery import run
from surgery.feature_store import RowStack, cached, feature_plan, stack_rows, store_batches
from surgery.run_log import clock


def test_row_stack_gathers_the_rows_of_its_parts_in_any_order(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(7, 3)).astype("float32") for _ in range(3)]
    mapped = []
    for i, p in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", p)
        mapped.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
    stack = stack_rows(mapped)
    assert isinstance(stack, RowStack) and stack.shape == (21, 3) and len(stack) == 21
    idx = rng.permutation(21)
    assert np.array_equal(stack[idx], np.concatenate(parts)[idx])
    assert isinstance(stack_rows(parts), np.ndarray)  # in memory: a plain concatenation


def test_features_written_to_disk_batch_by_batch_read_back_the_same(tmp_path):
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(k, 5)).astype("float32"), np.arange(k)) for k in (4, 4, 2)]
    cache = tmp_path / "train.npz"
    x, y = store_batches(iter(batches), 12, cache, on_disk=True)  # 12 rows reserved, 10 written (2 skipped files)
    assert isinstance(x, np.memmap) and x.shape == (10, 5) and not cache.exists()
    assert np.array_equal(x, np.concatenate([b[0] for b in batches])) and y.dtype == np.int32
    again, y2 = cached(cache)
    assert isinstance(again, np.memmap) and np.array_equal(again, x) and np.array_equal(y2, y)
    assert {p.name for p in tmp_path.iterdir()} == {"train.x.npy", "train.y.npy"}  # no temporary left


@pytest.mark.parametrize("solver", ["auto", "gradient"])
def test_features_on_disk_give_the_same_head_as_in_memory(tmp_path, monkeypatch, solver):
    """A budget of 1 byte forces every feature set to disk: the head (convex, or trained by gradient
    on the features and their flips with validation) is the same as with the features in memory."""
    phases = [Phase(name="head", trainable="head", epochs=3, learning_rate=3e-3, solver=solver)]
    aug = {"flip": "horizontal"}
    memory = run(make_plan(tmp_path / "memory", phases, augmentation=aug))
    monkeypatch.setenv("GRAFT_FEATURE_BYTES", "1")
    disk = run(make_plan(tmp_path / "disk", phases, augmentation=aug))
    assert memory.metrics["memory"]["features"]["on_disk"] is False
    f = disk.metrics["memory"]["features"]
    rows = disk.splits["train"] * 2 + disk.splits["val"]  # the images, their flips, the validation images
    assert f["on_disk"] is True and f["rows"] == rows and f["budget_mib"] == 0.0
    assert disk.phases[0].bottleneck and disk.phases[0].solver == ("convex" if solver == "auto" else "gradient")
    a, b = trained_weights(memory)["head_predictions"], trained_weights(disk)["head_predictions"]
    assert all(np.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))
    assert disk.metrics["accuracy"] == memory.metrics["accuracy"] > CHANCE
    for m, d in zip(memory.history, disk.history):
        assert m["loss"] == pytest.approx(d["loss"], rel=1e-5)
    assert "bottleneck features" in (disk.run_dir / "report.html").read_text()


def test_feature_plan_compares_the_phase_features_with_the_budget(monkeypatch):
    monkeypatch.setenv("GRAFT_FEATURE_BYTES", str(1000 * 64 * 4))
    assert feature_plan((64,), 1000)["on_disk"] is False and feature_plan((64,), 1001)["on_disk"] is True
    monkeypatch.delenv("GRAFT_FEATURE_BYTES")
    assert feature_plan((1280,), 50_000) == {"on_disk": False, "rows": 50_000, "mib": 244.1, "budget_mib": 512.0}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """One fine-tuning run of 3 epochs whose plan expects 10 s (shared by the tests below)."""
    plan = make_plan(tmp_path_factory.mktemp("progress") / "run",
                     [Phase(name="finetune", trainable="all", epochs=3, learning_rate=1e-3)])
    plan.decision = DecisionRecord(strategy="finetune_all", expected={"seconds": 10.0})
    return run(plan)


def test_metrics_record_peak_memory_and_time_against_the_expectation(finetuned):
    result = finetuned
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    mem = metrics["memory"]
    assert mem["peak_rss_mib"] > 100  # a Python process with Keras loaded
    assert mem["image_cache"]["in_memory"] is True and 0 < mem["image_cache"]["mib"] < mem["image_cache"]["budget_mib"]
    assert mem["features"] is None  # no frozen-backbone phase
    t = metrics["time"]
    assert t["expected_seconds"] == 10.0 and t["seconds"] > 0 and t["ratio"] == pytest.approx(t["seconds"] / 10, abs=0.01)
    report = (result.run_dir / "report.html").read_text()
    assert "peak memory" in report and "decoded-image cache" in report and "expected" in report
    log = (result.run_dir / "run.log").read_text()
    assert "expected time: ~10.0 s" in log
    assert re.search(r"finished: time: .* measured, ~10.0 s expected \(\d+\.\d\dx\)", log)


def test_a_plan_without_an_estimate_logs_none(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3)])
    result = run(plan)  # a hand-written plan: no expected time
    assert any("expected time: none" in line for line in (result.run_dir / "run.log").read_text().splitlines())


def test_run_log_has_a_line_per_epoch_with_images_per_second_and_eta(finetuned):
    result = finetuned
    lines = (result.run_dir / "run.log").read_text().splitlines()
    images = result.splits["train"]
    assert any(f"phase finetune: epochs 1-3 of 3, {images} images per epoch" in line for line in lines)
    epochs = [line for line in lines if re.search(r"finetune epoch \d/3 ", line)]
    assert len(epochs) == 3
    for line in epochs:
        assert re.search(r"loss \d+\.\d{4}.*\([\w .]+, [\d,]+\.\d images/s\); phase [\d,]+\.\d images/s, "
                         r"[\w .]+ elapsed, ETA [\w .]+$", line), line
    assert epochs[-1].endswith("ETA 0.0 s")
    assert any(re.search(rf"evaluate \(test images\): {result.splits['test']} images in .* images/s", line)
               for line in lines)
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line) for line in lines)  # timestamped


def test_clock_reads_like_a_person_would_say_it():
    assert [clock(s) for s in (4.25, 65, 3725)] == ["4.2 s", "1 min 05 s", "1 h 02 min"]
