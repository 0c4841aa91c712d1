"""`apply`: the four transfer cases end to end on the bundled example, resume, outputs, CLI.

Real training on real images (the bundled CIFAR-B example, 5 classes x 60 images of 32 px) with the
bundled CIFAR-A CNN; a few epochs each, so the whole module takes about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import cli_in_process

from graft.errors import InputError, PlanError
from graft.plan import (
    DataPlan,
    Fallback,
    HeadPlan,
    ModelSpec,
    OutputPlan,
    Phase,
    Plan,
    SurgeryPlan,
    TrainingPlan,
    load_plan,
    save_plan,
)
from surgery import run
from surgery.train import make_optimizer

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"
CHANCE = 1 / 5


def make_plan(run_dir: Path, phases: list[Phase], *, cut: str | None = None, augmentation: dict | None = None,
              fallback: Fallback | None = None, bn: str = "freeze", bottleneck: str = "auto") -> Plan:
    plan = Plan(
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(cut=cut, bn=bn, head=HeadPlan(classes=5, dropout=0.0)),
        training=TrainingPlan(phases=phases, fallback=fallback, bottleneck=bottleneck),
        data=DataPlan(path=str(DATA), input_size=[32, 32], channels=3, augmentation=augmentation or {},
                      validation_split=0.2, test_split=0.2, batch_size=32, seed=0),
        outputs=OutputPlan(dir=str(run_dir)),
    )
    return Plan.from_dict(plan.to_dict())  # validated like a plan file


def weights_by_layer(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def original():
    return weights_by_layer(keras.models.load_model(CNN, compile=False))


def trained_weights(result) -> dict[str, list[np.ndarray]]:
    model = keras.models.load_model(result.model_path, safe_mode=True)  # safe mode, no graft classes
    return weights_by_layer(model)


def test_case1_small_similar_frozen_base_bitwise_unchanged_head_trained(tmp_path, original):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=8, learning_rate=3e-3)])
    result = run(plan)
    after = trained_weights(result)
    backbone = [n for n in original if n != "predictions"]
    assert backbone and all(same(original[n], after[n]) for n in backbone)  # incl. BN moving statistics
    assert "predictions" not in after and "head_predictions" in after
    assert result.phases[0].bottleneck  # frozen backbone, no augmentation: features computed once
    assert result.metrics["accuracy"] > CHANCE + 0.2
    for name in ("model.keras", "metrics.json", "history.csv", "curves.png", "confusion.png", "report.html",
                 "plan.yaml", "state.json"):
        assert (result.run_dir / name).stat().st_size > 0, name
    assert not (result.run_dir / "checkpoints").exists()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert {"accuracy", "per_class", "confusion_matrix"} <= set(metrics)
    assert {"precision", "recall", "sensitivity", "specificity"} <= set(metrics["per_class"][0])
    assert np.asarray(metrics["confusion_matrix"]).sum() == result.splits["test"]
    assert len((result.run_dir / "history.csv").read_text().strip().splitlines()) == 1 + len(result.history)
    assert load_plan(result.run_dir / "plan.yaml").outputs.dir == str(result.run_dir)


def test_case2_small_different_cut_early_frozen(tmp_path, original):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=8, learning_rate=3e-3)],
                     cut="block2_pool", bottleneck="off")
    result = run(plan)
    model = keras.models.load_model(result.model_path, safe_mode=True)
    names = [layer.name for layer in model.layers]
    assert "block2_pool" in names and "block3_conv1" not in names
    after = weights_by_layer(model)
    kept = [n for n in after if n in original]
    assert kept and all(same(original[n], after[n]) for n in kept)
    assert not result.phases[0].bottleneck
    assert result.metrics["accuracy"] > CHANCE + 0.1


@pytest.mark.backends
def test_case3_large_similar_finetune_all_with_discriminative_rates(tmp_path, original):
    phases = [Phase(name="head", trainable="head", epochs=2, learning_rate=3e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=2, learning_rate=1e-3, backbone_learning_rate=1e-4)]
    result = run(make_plan(tmp_path / "run", phases))
    after = trained_weights(result)
    convs = [n for n in original if "conv" in n]
    bns = [n for n in original if "_bn" in n]
    assert convs and all(not same(original[n], after[n]) for n in convs)  # every conv layer trained
    assert bns and all(same(original[n], after[n]) for n in bns)  # BN frozen: inference mode, stats kept
    assert [p.name for p in result.phases] == ["head", "finetune"] and len(result.history) == 4
    assert result.metrics["accuracy"] > CHANCE + 0.2


def test_top_third_trains_only_the_top(tmp_path, original):
    phases = [Phase(name="finetune", trainable="top_third", epochs=1, learning_rate=1e-3)]
    result = run(make_plan(tmp_path / "run", phases, bn="follow"))
    after = trained_weights(result)
    assert all(same(original[n], after[n]) for n in original if n.startswith(("block1", "block2")))
    assert not same(original["block3_conv2"], after["block3_conv2"])


def test_case4_large_different_fallback_trial_decides_and_is_recorded(tmp_path):
    phases = [Phase(name="head", trainable="head", epochs=1, learning_rate=1e-3),
              Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-3)]
    result = run(make_plan(tmp_path / "run", phases, fallback=Fallback(scratch_trial_epochs=1, margin=0.01)))
    fb = result.fallback
    assert fb["chosen"] in ("pretrained", "random") and set(fb["val_accuracy"]) == {"pretrained", "random"}
    better = fb["val_accuracy"]["random"] > fb["val_accuracy"]["pretrained"] + 0.01
    assert fb["chosen"] == ("random" if better else "pretrained")
    assert result.metrics["accuracy"] > CHANCE


def test_random_weights_phase_trains_from_scratch(tmp_path, original):
    phases = [Phase(name="scratch", trainable="all", epochs=1, learning_rate=1e-3, weights="random")]
    result = run(make_plan(tmp_path / "run", phases))
    after = trained_weights(result)
    assert not same(original["block1_conv1"], after["block1_conv1"])
    assert not same(original["block1_bn1"], after["block1_bn1"])  # reinitialized, not trained (BN frozen)


def test_discriminative_rates_scale_each_variables_step():
    def step(scaled: bool):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="body"),
                                  keras.layers.Dense(2, name="top")])
        factors = {v.path: (0.1 if "body" in v.path else 1.0) for v in model.trainable_variables}
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        opt = make_optimizer("sgd", 0.1, factors if scaled else None)
        grads = [keras.ops.ones_like(v) for v in model.trainable_variables]
        opt.apply(grads, model.trainable_variables)
        return [keras.ops.convert_to_numpy(v) - b for v, b in zip(model.trainable_variables, before)]

    plain, scaled = step(False), step(True)
    assert np.allclose(scaled[0], 0.1 * plain[0]) and np.allclose(scaled[1], 0.1 * plain[1])  # body
    assert np.allclose(scaled[2], plain[2]) and np.allclose(scaled[3], plain[3])  # top
    assert not np.allclose(plain[0], 0)


def test_resume_continues_from_last_completed_epoch(tmp_path):
    phases = [Phase(name="head", trainable="head", epochs=2, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=3, learning_rate=1e-4)]
    plan = make_plan(tmp_path / "run", phases, augmentation={"flip": "horizontal"})
    partial = run(plan, stop_after_epochs=3)
    assert partial.model_path is None and len(partial.history) == 3
    with pytest.raises(InputError, match="--resume"):
        run(plan)  # never silently overwrite a run
    done = run(plan, resume=True)
    assert done.resumed and [r["epoch"] for r in done.history] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in done.history] == ["head"] * 2 + ["finetune"] * 3
    other = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=9)])
    with pytest.raises(PlanError, match="different plan"):
        run(other, resume=True)


def test_dry_run_trains_and_writes_nothing(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=5)], cut="block3_relu2")
    result = run(plan, dry_run=True)
    assert result.dry_run and result.model_path is None and not (tmp_path / "run").exists()
    assert "head_predictions" in result.summary and result.phases[0].trainable_params == 128 * 5 + 5


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=cwd)


def test_cli_apply_sigkill_then_resume_finishes_same_epoch_count(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CHECKPOINT_SECONDS", "0")  # a commit every epoch, so a kill lands mid-phase
    phases = [Phase(name="head", trainable="head", epochs=2, learning_rate=1e-3, solver="gradient"),
              Phase(name="finetune", trainable="all", epochs=4, learning_rate=1e-4)]
    plan = make_plan(tmp_path / "run", phases, augmentation={"flip": "horizontal"})
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "apply", str(plan_file)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "run" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill during the fine-tuning phase
        if state.exists() and len(json.loads(state.read_text()).get("history", [])) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(state.read_text())["history"])
    assert 3 <= done_before < 6
    again = _cli("apply", str(plan_file), cwd=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = _cli("apply", str(plan_file), "--resume", "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["resumed"] and out["epochs"] == 6
    history = json.loads(state.read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]
    keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)


def test_cli_apply_bad_inputs_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "plan.yaml"
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    text = save_plan(plan, bad).read_text().replace("  pooling: avg", "  poolin: avg")
    bad.write_text(text)
    wrong_classes = save_plan(Plan.from_dict({**plan.to_dict(), "surgery": {
        **plan.to_dict()["surgery"], "head": {**plan.to_dict()["surgery"]["head"], "classes": 7}}}),
        tmp_path / "classes.yaml")
    bad_layer = plan.to_dict()
    bad_layer["training"]["phases"][0]["trainable"] = "from:block9_pool"
    bad_layer = save_plan(Plan.from_dict(bad_layer), tmp_path / "layer.yaml")
    good = save_plan(plan, tmp_path / "good.yaml")
    (tmp_path / "a_file").write_text("keep me")
    for args, needle in (([str(tmp_path / "missing.yaml")], "no such plan file"),
                         ([str(bad)], "did you mean 'pooling'"),
                         ([str(wrong_classes)], "has 5 classes"),
                         ([str(bad_layer)], "No layer named 'block9_pool'"),
                         ([str(good), "--out", str(tmp_path / "a_file")], "is a file")):
        proc = (_cli if needle == "no such plan file" else cli_in_process)("apply", *args, cwd=tmp_path)  # one child
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("graft: error:") and needle in lines[0], proc.stderr
    assert bad.read_text() == text and (tmp_path / "a_file").read_text() == "keep me"  # inputs untouched
    assert not (tmp_path / "run").exists()  # nothing half-made: a corrected plan starts without --resume


def test_cli_dry_run_prints_plan_and_model(tmp_path):
    plan_file = save_plan(make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)]),
                          tmp_path / "plan.yaml")
    proc = cli_in_process("apply", str(plan_file), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "plan_version: 1" in proc.stdout and "head_predictions" in proc.stdout and "Dry run" in proc.stdout
    assert not (tmp_path / "run").exists()


MIRRORED = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, sys.argv[2])
from graft.plan import load_plan
from surgery import run
result = run(load_plan(sys.argv[1]))
print("RESULT", result.metrics["accuracy"], len(result.history), result.phases[0].bottleneck)
"""


TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="tf.distribute needs the TensorFlow backend (tests/test_backends.py checks the refusal)")


@TF_ONLY
def test_mirrored_distribution_on_two_logical_cpus(tmp_path):
    phases = [Phase(name="head", trainable="head", epochs=1, learning_rate=3e-3),
              Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-3, backbone_learning_rate=1e-4)]
    plan = make_plan(tmp_path / "run", phases)
    plan.training.distribution = "mirrored"
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    proc = subprocess.run([sys.executable, str(script), str(plan_file), str(ROOT)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][0].split()
    assert float(line[1]) > CHANCE and line[2] == "2" and line[3] == "False"  # no bottleneck when distributed
    keras.models.load_model(tmp_path / "run" / "model.keras", safe_mode=True)


@TF_ONLY
def test_multi_worker_is_refused_with_the_reason(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1)])
    plan.training.distribution = "multi_worker"
    with pytest.raises(PlanError, match="keras-team/keras#20585"):
        run(plan)
    assert not (tmp_path / "run").exists()


def few_images(tmp_path: Path, per_class: int) -> Path:
    """The first `per_class` images of each class of DATA, copied: for tests whose subject is not the
    amount of training (float16 compute on a CPU is emulated and many times slower than float32)."""
    import shutil

    for cls in sorted(p for p in DATA.iterdir() if p.is_dir()):
        (tmp_path / "few" / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, tmp_path / "few" / cls.name / f.name)
    return tmp_path / "few"


@pytest.mark.backends
def test_mixed_precision_on_computes_in_float16_and_saves_float32_outputs(tmp_path):
    keras.backend.clear_session()  # float16 graphs build on a clean slate (22 s here, 68 s after 400 tests)
    plan = make_plan(tmp_path / "run", [Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-3)])
    plan.data.path = str(few_images(tmp_path, 10))
    plan.training.mixed_precision = "on"
    result = run(plan)
    model = keras.models.load_model(result.model_path, safe_mode=True)
    policies = {layer.name: layer.dtype_policy.name for layer in model.layers}
    assert policies["block1_conv1"] == "mixed_float16" and policies["head_predictions"] == "float32"
    assert model.predict(np.zeros((1, 32, 32, 3)), verbose=0).dtype == np.float32
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing global left behind
    # Under TensorFlow, a float16 model loaded and called in this process leaves graph state behind
    # that makes the next model's first training step take ~80 s to build (seen in this suite);
    # clearing the session drops it.
    del model
    keras.backend.clear_session()


def test_same_plan_and_seed_repeat_exactly(tmp_path):
    phases = [Phase(name="finetune", trainable="top_third", epochs=2, learning_rate=1e-3)]  # augmented batches
    results = [run(make_plan(tmp_path / f"run{i}", phases, augmentation={"flip": "horizontal", "zoom": 0.1}))
               for i in range(2)]
    a, b = (trained_weights(r)["head_predictions"] for r in results)
    measured = ("memory", "time")  # this machine's peak memory and seconds, not the run's outcome
    outcome = [{k: v for k, v in r.metrics.items() if k not in measured} for r in results]
    assert same(a, b) and outcome[0] == outcome[1]


@pytest.mark.backends
def test_resume_inside_a_bottleneck_phase_matches_an_uninterrupted_run(tmp_path):
    phases = [Phase(name="head", trainable="head", epochs=4, learning_rate=3e-3, solver="gradient")]
    whole_plan, plan = make_plan(tmp_path / "whole", phases), make_plan(tmp_path / "split", phases)
    whole_plan.surgery.head.dropout = plan.surgery.head.dropout = 0.3  # dropout RNG state is resumed too
    whole = run(whole_plan)
    partial = run(plan, stop_after_epochs=2)
    assert len(partial.history) == 2 and (tmp_path / "split" / "features" / "train.npz").exists()
    done = run(plan, resume=True)
    assert done.phases[0].bottleneck and [r["epoch"] for r in done.history] == [1, 2, 3, 4]
    for a, b in zip(whole.history, done.history):  # same losses: weights and optimizer state resumed
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert same(trained_weights(whole)["head_predictions"], trained_weights(done)["head_predictions"])


def test_data_over_the_cache_budget_streams_from_disk(tmp_path, monkeypatch):
    import surgery.run_data

    monkeypatch.setattr(surgery.run_data, "CACHE_BUDGET", 0)
    phases = [Phase(name="finetune", trainable="all", epochs=1, learning_rate=1e-3)]
    result = run(make_plan(tmp_path / "run", phases))
    assert not any("kept in memory" in note for note in result.notes)
    assert len(result.history) == 1 and result.metrics["n_samples"] == result.splits["test"]


# ------------------------------------------------------------------------------------------ recipes


@pytest.mark.backends
def test_head_phase_is_a_convex_fit_on_features_even_with_augmentation(tmp_path, original):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=8)],
                     augmentation={"flip": "horizontal"})
    result = run(plan)
    ph = result.phases[0]
    assert ph.bottleneck and ph.solver == "convex" and ph.epochs_run == 1 and ph.steps == 0
    row = result.history[0]
    assert 0 <= row["cv_accuracy"] <= 1 and "val_accuracy" in row  # the plan holds out validation images
    after = trained_weights(result)
    assert all(same(original[n], after[n]) for n in original if n != "predictions")
    assert result.metrics["accuracy"] > CHANCE + 0.2
    est = result.metrics["estimate"]
    assert est["method"] == "test split" and est["images"] == result.splits["test"]
    assert est["interval95"][0] <= est["accuracy"] <= est["interval95"][1]
    assert result.metrics["model_input"]["size"] == [32, 32]
    report = (result.run_dir / "report.html").read_text()
    assert f"expected accuracy on new images {est['accuracy']:.3f}" in report and "from the test split" in report


def test_convex_solver_refuses_a_head_with_hidden_layers(tmp_path):
    plan = make_plan(tmp_path / "run", [Phase(name="head", trainable="head", epochs=1, solver="convex")])
    plan.surgery.head.hidden = [16]
    with pytest.raises(PlanError, match="solver convex needs"):
        run(plan)


def test_min_steps_raise_the_epochs_and_cosine_schedule_trains(tmp_path):
    # 300 images - 20 % validation - 20 % test = 180 training images: 6 steps an epoch at batch 32
    phases = [Phase(name="finetune", trainable="top_third", epochs=1, learning_rate=1e-3, min_steps=15,
                    schedule="cosine")]
    result = run(make_plan(tmp_path / "run", phases))
    ph = result.phases[0]
    assert (ph.epochs, ph.epochs_run, ph.steps) == (3, 3, 18) and len(result.history) == 3
    assert result.metrics["accuracy"] > CHANCE


def test_learning_rate_schedule_warms_up_and_decays_to_zero():
    from surgery.phase import _learning_rate, phase_epochs

    schedule = _learning_rate(Phase(learning_rate=1e-3, schedule="cosine"), total_steps=100)
    values = [float(schedule(step)) for step in (0, 10, 55, 100)]
    assert values[0] == 0.0 and values[1] == pytest.approx(1e-3) and 0 < values[2] < 1e-3
    assert values[3] == pytest.approx(0.0, abs=1e-9)
    assert _learning_rate(Phase(learning_rate=1e-3), 100) == 1e-3
    assert phase_epochs(Phase(epochs=10, min_steps=60), images=60, batch_size=32) == 30
    assert phase_epochs(Phase(epochs=10, min_steps=60), images=6400, batch_size=32) == 10


def test_checkpoints_are_throttled_but_the_last_epoch_is_committed(tmp_path):
    from surgery.train import Checkpointer, read_state

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    state = {"history": [], "phase": {"index": 0, "name": "ft", "epochs_done": 0, "wait": 0}}
    writes = []

    class Counting(Checkpointer):
        def on_epoch_end(self, epoch, logs=None):
            before = (tmp_path / "state.json").stat().st_mtime_ns if (tmp_path / "state.json").exists() else None
            super().on_epoch_end(epoch, logs)
            after = (tmp_path / "state.json").stat().st_mtime_ns if (tmp_path / "state.json").exists() else None
            writes.append(after != before)

    ckpt = Counting(tmp_path, state, model, monitor=None, patience=2, final_epoch=4, every_seconds=1e9)
    x, y = np.random.rand(16, 4).astype("float32"), np.arange(16) % 2
    model.fit(x, y, epochs=4, callbacks=[ckpt], verbose=0)
    assert writes == [False, False, False, True]  # only the last epoch commits; no early stop without a monitor
    saved = read_state(tmp_path)
    assert [r["epoch"] for r in saved["history"]] == [1, 2, 3, 4] and saved["phase"]["epochs_done"] == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last-00-004.weights.h5", "optimizer-00-004.npz"]
