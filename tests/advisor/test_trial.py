"""advise --trial: a real race of strategies on held-out training images, and its verdict."""

from __future__ import annotations

import shutil

import pytest

from advisor.advise import advise, plan_for, with_trial
from advisor.trial import Entry, Trial, race, verdict
from graft.errors import InputError

DATA = "examples/data/cifar_b"
MODEL = "examples/models/cifar_a_cnn.keras"
PROBE_CHOSEN = {"probe_enough": 0.3}


@pytest.fixture(scope="module")
def advice():
    # a lowered probe_enough makes the rules choose the probe (fast to race); the race itself is real
    return advise(DATA, model=MODEL, overrides=PROBE_CHOSEN)


def test_verdict_switches_only_on_a_clear_win():
    base = Entry("linear_probe", correct=60, total=100)
    close = Entry("lp_ft", correct=65, total=100)      # +0.05 < one standard error (~0.067)
    clear = Entry("lp_ft", correct=80, total=100)      # +0.20
    assert verdict([base, close], "linear_probe")[:2] == ("linear_probe", False)
    winner, switched, reason = verdict([base, clear], "linear_probe")
    assert (winner, switched) == ("lp_ft", True)
    assert "0.800" in reason and "0.600" in reason and "replaces" in reason
    # a tie keeps the rules' choice, and so does a rules' choice that scored best
    assert verdict([base, Entry("lp_ft", 60, 100)], "linear_probe")[:2] == ("linear_probe", False)
    assert verdict([Entry("lp_ft", 90, 100), base], "lp_ft")[:2] == ("lp_ft", False)


def test_plan_for_builds_the_other_strategy_from_the_same_measurement(advice):
    assert advice.decision.strategy != "lp_ft_top"
    other = plan_for(advice, "lp_ft_top")
    assert other.decision.strategy == "lp_ft_top"
    assert [p.trainable for p in other.training.phases] == ["head", "top_third"]
    assert other.facts == advice.plan.facts
    assert "forced" in other.decision.rule or "the rules chose" in other.decision.reasons[0].lower()
    # a fine-tuning plan holds out a fifth of the images for its guard, then refits the head on all
    assert other.data.validation_split == 0.2 and other.training.refit_head is True
    assert any("held out to judge fine-tuning" in r and "(60)" in r for r in other.decision.reasons)
    # the fine-tuning budget on this data is stated: 10 epochs x 8 steps on the 240 training images
    assert any(r.startswith("Budget of phase finetune (top_third): 10 epochs x 8 steps of 32 images = 80 steps on "
                            "240 training images") for r in other.decision.reasons)
    probe = plan_for(advice, "linear_probe")
    assert probe.data.validation_split == 0.0 and probe.training.refit_head is False
    assert not any(r.startswith("Budget") for r in probe.decision.reasons)


def test_a_real_race_scores_every_candidate_on_the_same_held_out_images(advice, tmp_path):
    trial = race(advice, budget_s=20, candidates=["linear_probe", "lp_ft_top"], max_rounds=1)
    assert [e.strategy for e in trial.entries][0] == advice.decision.strategy
    totals = {e.total for e in trial.entries}
    assert len(totals) == 1 and 0 < totals.pop() < advice.dataset.images
    assert all(e.rounds == 1 and 0 <= e.correct <= e.total and e.seconds > 0 for e in trial.entries)
    assert trial.winner in {e.strategy for e in trial.entries}
    d = trial.to_dict()
    assert d["entries"][0]["interval"][0] <= d["entries"][0]["accuracy"] <= d["entries"][0]["interval"][1]
    after = with_trial(advice, trial)
    assert after.plan.decision.strategy == trial.winner
    assert trial.reason in " ".join(after.plan.decision.reasons)
    assert after.to_dict()["trial"]["winner"] == trial.winner


def test_with_trial_switches_the_plan_and_says_why(advice):
    assert advice.decision.strategy != "linear_probe"
    entries = [Entry(advice.decision.strategy, 10, 75, 1.0, 1), Entry("linear_probe", 70, 75, 1.0, 1)]
    winner, switched, reason = verdict(entries, advice.decision.strategy)
    after = with_trial(advice, Trial(entries, advice.decision.strategy, winner, switched, reason, 10, 2))
    assert after.decision.strategy == "linear_probe" and after.decision.rule == "trial"
    assert after.decision.runner_up == advice.decision.strategy
    assert after.plan.decision.reasons[0].startswith("Trial: linear_probe reached")
    assert [p.trainable for p in after.plan.training.phases] == ["head"]
    assert advice.plan.decision.strategy != "linear_probe"  # the input advice is unchanged


def test_trial_uses_only_the_training_split(tmp_path):
    root = tmp_path / "split"
    for part in ("train", "test"):
        shutil.copytree(DATA, root / part)
    adv = advise(root, model=MODEL, overrides=PROBE_CHOSEN)
    trial = race(adv, budget_s=5, candidates=["linear_probe"], max_rounds=1)
    # held out from train/ only (a quarter of its images), never the test folder (half of all)
    assert 0 < trial.entries[0].total < adv.dataset.images / 2


def test_bad_trial_requests_are_refused(advice):
    with pytest.raises(InputError, match="positive"):
        race(advice, budget_s=0)
    with pytest.raises(InputError, match="not strategies"):
        race(advice, budget_s=10, candidates=["nope"])
    no_model = advise(DATA)
    with pytest.raises(InputError, match="--model"):
        race(no_model, budget_s=10)
