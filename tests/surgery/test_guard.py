"""The fine-tuning guard (surgery/guard.py) and the head's calibrated temperature (surgery/probe.py).

The verdicts are checked on the numbers they are given; the temperature on real data: a head
fitted to convergence on scikit-learn's real handwritten digits (few images per class, separable)
is overconfident out of fold, and its calibrated temperature shrinks its logits without changing a
single prediction.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from graft.plan import Phase, Plan
from surgery import guard
from surgery.probe import calibrated_temperature, fit_linear_head


def test_held_out_images_decide_when_there_are_some():
    head = {"val_accuracy": 0.80, "cv_accuracy": 0.9, "images": 100}
    worse = guard.judge(head, 0.75, on="val")
    assert worse["keep"] == "head_only" and worse["evidence"] == "val" and "head-only model is kept" in worse["reason"]
    assert guard.judge(head, 0.80, on="val")["keep"] == "fine_tuned"  # a tie keeps fine-tuning


def test_held_out_images_are_compared_image_by_image_and_noise_keeps_fine_tuning():
    # 20 held-out images: the head alone right on 13, fine-tuning on 12 (one more image wrong)
    head = {"val_accuracy": 0.65, "cv_accuracy": 0.6, "images": 80, "val_correct": "1" * 13 + "0" * 7}
    tuned = np.array([True] * 12 + [False] * 8)
    within = guard.judge(head, 0.60, on="val", tuned_correct=tuned)
    assert within["keep"] == "fine_tuned" and within["paired"] == {"head_wins": 1, "tuned_wins": 0, "p": 0.5}
    assert "within the noise" in within["reason"] and within["threshold"] is None
    # a collapse: fine-tuning gets 2 of the head's 13 right -> 11 losses, p = 0.5 ** 11
    collapsed = guard.judge(head, 0.10, on="val", tuned_correct=np.array([True] * 2 + [False] * 18))
    assert collapsed["keep"] == "head_only" and collapsed["paired"]["p"] == pytest.approx(0.5**11, abs=1e-4)
    # fine-tuning better: never a fall-back, p = 1
    better = guard.judge(head, 0.9, on="val", tuned_correct=np.array([True] * 18 + [False] * 2))
    assert better["keep"] == "fine_tuned" and better["paired"]["p"] == 1.0


def test_the_sign_test_counts_only_disagreements():
    head = [True, True, True, True, False, False, True, True]
    tuned = [False, False, False, False, False, True, True, True]
    # 4 images only the head gets right, 1 only fine-tuning: P(X >= 4 | n=5) = 6/32
    assert guard.paired_test(head, tuned) == {"head_wins": 4, "tuned_wins": 1, "p": 0.1875}
    # 4 to 0 is p = 1/16 < ALPHA: the smallest clean loss that falls back
    assert guard.paired_test([True] * 4, [False] * 4)["p"] == 0.0625 <= guard.ALPHA


def test_without_held_out_images_only_a_collapse_falls_back():
    head = {"val_accuracy": None, "cv_accuracy": 0.80, "images": 100}
    # two standard errors of 0.80 on 100 images: 0.08
    assert guard.judge(head, 0.95, on="train")["keep"] == "fine_tuned"
    assert guard.judge(head, 0.73, on="train")["keep"] == "fine_tuned"
    collapsed = guard.judge(head, 0.15, on="train")
    assert collapsed["keep"] == "head_only" and collapsed["threshold"] == pytest.approx(0.72)


def test_no_evidence_keeps_fine_tuning_and_says_so():
    verdict = guard.judge({"val_accuracy": None, "cv_accuracy": None, "images": None}, 0.2, on="train")
    assert verdict["keep"] == "fine_tuned" and verdict["evidence"] == "none"


def test_the_guard_applies_to_head_then_backbone_plans_only():
    plan = Plan()
    plan.training.phases = [Phase(name="head", trainable="head"), Phase(name="finetune", trainable="all")]
    assert guard.applies(plan)
    plan.training.phases = [Phase(name="head", trainable="head")]
    assert not guard.applies(plan)
    plan.training.phases = [Phase(name="finetune", trainable="all")]
    assert not guard.applies(plan)


def test_head_scores_come_from_the_head_phase():
    state = {"history": [{"phase": "head", "phase_epoch": 1, "accuracy": 1.0, "val_accuracy": 0.7},
                         {"phase": "finetune", "phase_epoch": 1, "accuracy": 0.9, "val_accuracy": 0.8}],
             "probe": {"cv_accuracy": 0.75, "images": 50}}
    assert guard.head_only_scores(state, "head") == {"val_accuracy": 0.7, "cv_accuracy": 0.75, "images": 50,
                                                     "train_accuracy": 1.0}


@pytest.fixture(scope="module")
def few_digits():
    x, y = load_digits(return_X_y=True)
    idx = np.concatenate([np.where(y == c)[0][:10] for c in range(10)])  # 10 per class
    return x[idx].astype("float32"), y[idx], x, y


def test_the_head_is_calibrated_without_changing_a_prediction(few_digits):
    x, y, xall, yall = few_digits
    fit = fit_linear_head(x, y, classes=10, seed=0)
    assert fit.temperature >= 1.0
    logits = xall @ fit.kernel + fit.bias
    raw = logits * fit.temperature  # the logits before calibration
    assert np.array_equal(logits.argmax(1), raw.argmax(1))
    assert np.abs(logits).max() <= np.abs(raw).max()


def test_temperature_shrinks_overconfident_logits_and_leaves_calibrated_ones():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    honest = np.eye(3)[y] * 2.0 + rng.normal(0, 1, (300, 3))
    t_honest = calibrated_temperature(honest, y)
    t_over = calibrated_temperature(honest * 50, y)
    assert t_over > 20 * t_honest and 1.0 <= t_honest < 5


def test_dead_channels_do_not_get_huge_weights(few_digits):
    # pixel features of 8x8 digits: the border pixels are almost always 0 (like dead ReLU6 units)
    x, y, _, _ = few_digits
    x = x.copy()
    x[:, 0] = 0.0
    x[0, 0] = 1e-3  # a channel that barely varies
    fit = fit_linear_head(x, y, classes=10, seed=0)
    typical = np.median(np.abs(fit.kernel[1:]))
    assert np.abs(fit.kernel[0]).max() < 1000 * max(typical, 1e-6)
