"""LP-FT end to end on the bundled example: the hand-off from the convex head to fine-tuning is
logged (the head's temperature and loss, the first fine-tuning batch's loss), the guard judges the
fine-tuned model, and the report and summary lead with the estimate for new images.

Real training on real images (the bundled CIFAR-B example) with the bundled CIFAR-A CNN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graft.plan import (
    DataPlan,
    HeadPlan,
    ModelSpec,
    OutputPlan,
    Phase,
    Plan,
    SurgeryPlan,
    TrainingPlan,
)
from surgery import guard, run
from surgery.runner import Reporter

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


class Messages(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def lp_ft_plan(run_dir: Path, validation_split: float) -> Plan:
    phases = [Phase(name="head", trainable="head", epochs=5),
              Phase(name="finetune", trainable="all", epochs=2, learning_rate=1e-4, schedule="cosine")]
    plan = Plan(
        model=ModelSpec(source=str(CNN), weights="file"),
        surgery=SurgeryPlan(head=HeadPlan(classes=5, dropout=0.2)),
        training=TrainingPlan(phases=phases),
        data=DataPlan(path=str(DATA), input_size=[32, 32], augmentation={"flip": "horizontal"},
                      validation_split=validation_split, test_split=0.0, batch_size=32, seed=0),
        outputs=OutputPlan(dir=str(run_dir)),
    )
    return Plan.from_dict(plan.to_dict())


@pytest.fixture(scope="module")
def no_holdout(tmp_path_factory):
    messages = Messages()
    result = run(lp_ft_plan(tmp_path_factory.mktemp("lpft") / "run", 0.0), reporter=messages)
    return result, messages


def test_the_hand_off_is_logged(no_holdout):
    result, messages = no_holdout
    head = next(m for m in messages.lines if "head fitted" in m)
    assert "logits /" in head and "training loss" in head
    ft = result.phases[1]
    assert ft.name == "finetune" and ft.start_loss is not None and ft.start_loss < 10
    assert any(m.startswith("phase finetune: loss") for m in messages.lines)
    state = json.loads((result.run_dir / "state.json").read_text())
    assert state["probe"]["temperature"] >= 1.0 and state["phases"][1]["start_loss"] == ft.start_loss
    # the plan keeps horizontal flips: the flipped images' features are offered to the convex head,
    # which keeps them only if they do not lower its cross-validated accuracy (and says which)
    probe = state["probe"]
    assert probe["views_offered"] == 1 and probe["views"] in (0, 1)
    assert any(n.startswith("views kept" if probe["views"] else "views dropped") for n in probe["notes"])


def test_without_held_out_images_the_guard_checks_for_a_collapse(no_holdout):
    result, _ = no_holdout
    verdict = result.metrics["guard"]
    assert verdict["evidence"] == "train" and verdict["images"] == 300
    assert verdict["keep"] in ("fine_tuned", "head_only") and verdict["threshold"] < verdict["head_only_accuracy"]
    assert any(n.startswith("guard: ") for n in result.notes)
    assert not guard.head_only_file(result.run_dir).exists()  # checkpoints are cleaned up


def test_the_report_leads_with_the_estimate_and_labels_training_accuracy(no_holdout):
    result, _ = no_holdout
    assert result.metrics["split"] == "train"
    html = (result.run_dir / "report.html").read_text()
    head = html.index("expected accuracy on new images")
    assert head < html.index("<h2>Decision</h2>") < html.index("training accuracy<b>")
    assert "not an estimate for new images" in html
    assert "Fine-tuning guard" in html


def test_with_held_out_images_the_guard_compares_on_them_then_the_head_is_refit_on_all(tmp_path):
    plan = lp_ft_plan(tmp_path / "run", 0.2)
    plan.training.refit_head = True
    result = run(plan)
    verdict = result.metrics["guard"]
    assert verdict["evidence"] == "val" and verdict["images"] == result.splits["val"] == 60
    # compared image by image: the disagreements account for the difference in accuracy, and the head
    # alone is kept only when the sign test says fine-tuning is worse beyond noise
    paired = verdict["paired"]
    assert (paired["head_wins"] - paired["tuned_wins"]) / 60 == pytest.approx(
        verdict["head_only_accuracy"] - verdict["fine_tuned_accuracy"], abs=1e-3)
    assert verdict["keep"] == ("head_only" if paired["p"] <= guard.ALPHA else "fine_tuned")
    # the estimate is the held-out images' score of the chosen model, before they joined the head
    est = result.metrics["estimate"]
    assert result.metrics["split"] == "val" and "before the head was refit" in est["method"]
    chosen = verdict["fine_tuned_accuracy"] if verdict["keep"] == "fine_tuned" else verdict["head_only_accuracy"]
    assert est["images"] == 60 and abs(est["accuracy"] - chosen) < 1e-3
    refit = result.metrics["refit"]
    assert refit["images"] == 300 and refit["train_images"] == 240 and refit["val_images"] == 60
    assert refit["on"] == verdict["keep"] and any(n.startswith("refit_head:") for n in result.notes)
    # the saved model carries the refit head: it now fits the held-out images too
    import keras

    from surgery.bottleneck import predict
    from surgery.run_data import run_data

    data = run_data(plan)
    saved = keras.models.load_model(result.model_path)
    prob, y = predict(saved, *data.val, data.spec)
    assert (prob.argmax(axis=1) == y).mean() >= est["accuracy"]
    assert "Head refit" in (result.run_dir / "report.html").read_text()


def test_when_the_guard_keeps_the_head_alone_the_refit_reuses_its_features(tmp_path):
    # fine-tuning at a learning rate of 1.0 wrecks the backbone: the guard keeps the head alone, whose
    # backbone is the frozen one the head phase took its features on; the refit reuses them (the
    # held-out images' flips are new) and ends where a refit on freshly computed features ends
    import keras
    import numpy as np

    from surgery.bottleneck import FLIP_VIEWS, feature_model, features
    from surgery.probe import fit_linear_head
    from surgery.run_data import run_data

    plan = lp_ft_plan(tmp_path / "run", 0.2)
    plan.training.refit_head = True
    plan.training.phases[1].learning_rate = 1.0
    plan.training.phases[1].schedule = "constant"
    result = run(plan)
    assert result.metrics["guard"]["keep"] == "head_only", result.metrics["guard"]
    assert result.metrics["refit"]["reused_features"] is True

    saved = keras.models.load_model(result.model_path)
    head = [layer.name for layer in saved.layers if layer.name.startswith("head_")]
    data = run_data(plan)
    feat = feature_model(saved, head)
    files, labels = data.train[0] + data.val[0], data.train[1] + data.val[1]
    x, y = features(feat, files, labels, data.spec, None)
    flipped = features(feat, files, labels, data.spec, None, transform=FLIP_VIEWS["horizontal"]["hflip"])[0]
    fresh = fit_linear_head(x, y, classes=5, seed=plan.data.seed, views=[flipped])
    dense = saved.get_layer(head[-1])
    np.testing.assert_allclose(np.asarray(dense.kernel), fresh.kernel, atol=1e-3)
    assert result.metrics["refit"]["C"] == fresh.C
