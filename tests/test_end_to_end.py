"""advise -> plan -> apply, for each of the four classic cases, on the bundled example.

The decision is steered with a stated similarity and threshold overrides (as a user would with
`--similarity` and `--set`), the plan's epochs are cut to one per phase to keep this fast, and the
plan is applied for real: every strategy the default rules can choose must run end to end.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from advisor import advise, load_plan, save_plan
from surgery import run

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar_b"
CNN = ROOT / "examples" / "models" / "cifar_a_cnn.keras"


@pytest.mark.parametrize("similarity, overrides, strategy, case", [
    (0.9, {}, "truncate_probe", 1),
    (0.1, {}, "lp_ft", 2),
    (0.9, {"small_dataset": 100}, "finetune_all", 3),
    (0.1, {"small_dataset": 100, "scratch_min_images": 200}, "finetune_or_scratch", 4),
])
def test_advised_plan_applies_end_to_end(tmp_path, similarity, overrides, strategy, case):
    advice = advise(DATA, model=CNN, similarity=similarity, overrides=overrides, measure=False,
                    out_dir=str(tmp_path / "run"))
    assert (advice.decision.strategy, advice.decision.case) == (strategy, case)
    plan = advice.plan
    for phase in plan.training.phases:
        phase.epochs, phase.min_steps = 1, None
    if plan.training.fallback:
        plan.training.fallback.scratch_trial_epochs = 1
    plan_file = save_plan(plan, tmp_path / "plan.yaml")
    result = run(load_plan(plan_file))  # through the file, as `apply` does
    assert len(result.history) == len(plan.training.phases)
    assert (result.fallback is not None) == (case == 4)
    model = keras.models.load_model(result.model_path, safe_mode=True)
    probs = model.predict(np.zeros((2, 32, 32, 3)), verbose=0)
    assert probs.shape == (2, 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    estimate = result.metrics["estimate"]
    guard = result.metrics.get("guard")
    assert (guard is not None) == (strategy != "truncate_probe")  # every head-then-fine-tune plan is judged
    if strategy == "truncate_probe":
        # a probe (cut at the best depth; unmeasured here: the top): nothing held out, every image
        # trained it, and its cross-validation is the estimate
        assert result.splits == {"train": 300, "val": 0, "test": 0} and result.metrics["split"] == "train"
        assert estimate["method"] == "5-fold cross-validation of the head" and estimate["images"] == 300
        lo, hi = estimate["interval95"]
        assert 0 <= lo < estimate["accuracy"] < hi <= 1
    else:
        # fine-tuning: a stated fifth held out for the guard, scored before the head was refit on
        # every image; the estimate is the chosen model's score there
        assert plan.data.validation_split == 0.2 and plan.training.refit_head
        assert result.splits == {"train": 240, "val": 60, "test": 0} and result.metrics["split"] == "val"
        assert guard["evidence"] == "val" and estimate["images"] == 60
        assert estimate["method"].startswith("held-out images") and 0 <= estimate["accuracy"] <= 1
        assert result.metrics["refit"]["images"] == 300
