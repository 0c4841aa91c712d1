"""bench/advice.py: regret, static defaults, leave-one-domain-out and the trial policy, on result
files written here (the bench's real rows are too slow to make in a test; the scoring is what is
tested, with the shipped rules.yaml and advisor's own fact derivation)."""

from __future__ import annotations

import json

import pytest

from advisor.rules import load_rules
from bench import advice as bench_advice

STRATEGIES = ("linear_probe", "truncate_probe", "lp_ft_top", "lp_ft", "finetune_all")


def _embedding(similarity, shift_ratio, gain):
    depths = [0.1, 0.2, 0.5, 0.8, 0.9]
    shifts = [0.1 * shift_ratio, 0.1 * shift_ratio, 0.1, 0.1, 0.1]
    return {"sample": 100,
            "similarity": {"value": similarity, "method": "bn_stats", "uncertainty": 0.01,
                           "profile": [{"layer": f"b{i}", "depth": d, "shift": s, "uncertainty": 0}
                                       for i, (d, s) in enumerate(zip(depths, shifts))]},
            "transfer": {"best_cut_layer": "mid" if gain else "top", "best_cut_depth": 0.6 if gain else 1.0,
                         "best_score": 0.7 + gain, "chance": 0.1,
                         "cuts": [{"layer": "mid", "depth": 0.6, "score": 0.7 + gain},
                                  {"layer": "top", "depth": 1.0, "score": 0.7}]}}


# task -> (similarity, shift_ratio, top_cut_gain, accuracy per strategy)
TASKS = {
    "photos": (0.95, 0.4, 0.0, dict(linear_probe=0.80, truncate_probe=0.80, lp_ft_top=0.79, lp_ft=0.78, finetune_all=0.78)),
    "cells": (0.10, 0.6, 0.0, dict(linear_probe=0.60, truncate_probe=0.60, lp_ft_top=0.62, lp_ft=0.70, finetune_all=0.70)),
    "digits": (0.10, 1.2, 0.08, dict(linear_probe=0.70, truncate_probe=0.76, lp_ft_top=0.70, lp_ft=0.74, finetune_all=0.74)),
}
SECONDS = dict(linear_probe=10, truncate_probe=8, lp_ft_top=25, lp_ft=40, finetune_all=40)


@pytest.fixture
def files(tmp_path):
    results, meas = tmp_path / "transfer.jsonl", tmp_path / "measurements.jsonl"
    with results.open("w") as r, meas.open("w") as m:
        for task, (sim, ratio, gain, acc) in TASKS.items():
            for seed in (0, 1):
                for s in STRATEGIES:
                    r.write(json.dumps({"task": task, "n": 10, "seed": seed, "strategy": s, "arm": "graft",
                                        "accuracy": acc[s] + 0.01 * seed, "seconds": SECONDS[s]}) + "\n")
                facts = {"images": 100, "classes": 10, "images_per_class_min": 10, "images_per_class_median": 10}
                m.write(json.dumps({"task": task, "n": 10, "seed": seed, "facts": facts,
                                    "embedding": _embedding(sim, ratio, gain)}) + "\n")
    return results, meas


def test_the_rules_are_scored_against_the_oracle_and_every_static_default(files):
    groups, strategies = bench_advice.load_groups(*files)
    assert strategies == STRATEGIES and len(groups) == 3
    rep = bench_advice.report(load_rules(), groups, strategies, tune=[])
    by_task = {r["task"]: r for r in rep["groups"]}
    # photos: similar, content shift -> a probe at the best cut (the oracle ties it)
    assert by_task["photos"]["choice"] == ["truncate_probe", "truncate_probe"] and by_task["photos"]["regret"] == 0
    # cells: different, no lower cut -> LP-FT of every layer, the oracle
    assert by_task["cells"]["choice"] == ["lp_ft", "lp_ft"] and by_task["cells"]["regret"] == 0
    # digits: different, a lower cut wins the probe by 0.08 -> the cut probe
    assert by_task["digits"]["choice"] == ["truncate_probe", "truncate_probe"]
    s = rep["summary"]
    assert s["rules"]["mean_regret"] == 0 and s["rules"]["within_1"] == 3
    assert s["rules"]["time"] == pytest.approx((8 / 40 + 1 + 8 / 40) / 3, abs=1e-3)
    # always lp_ft: 2 points short on photos, 2 on digits
    assert s["always lp_ft"]["mean_regret"] == pytest.approx(4 / 3, abs=0.01)
    assert s["always finetune_all"]["time"] == 1.0
    assert "| rules | 0.00 | 3/3 |" in bench_advice.markdown(rep)


def test_leave_one_domain_out_moves_a_threshold_only_for_a_clear_gain(files):
    groups, strategies = bench_advice.load_groups(*files)
    table = load_rules()
    # on photos + cells alone nothing is gained by moving `similar`: it keeps its documented value
    train = [g for g in groups if g.task != "digits"]
    assert bench_advice.fit_thresholds(table, train, strategies, ["similar"]) == {"similar": 0.5}
    # a table with a bad threshold is pulled back where the training domains say
    bad = bench_advice.with_thresholds(table, {"cut_gain": 0.5})
    assert bench_advice.choices(bad, [g for g in groups if g.task == "digits"][0]) == {0: "lp_ft", 1: "lp_ft"}
    fitted = bench_advice.fit_thresholds(bad, groups, strategies, ["cut_gain"])
    assert fitted["cut_gain"] <= 0.08
    rep = bench_advice.report(table, groups, strategies, tune=["similar", "cut_gain", "low_level_shift"])
    assert all(r["lodo"] is not None for r in rep["groups"])
    assert rep["summary"]["rules, leave-one-domain-out"]["groups"] == 3


def test_the_trial_policy_pays_its_seconds_on_top_of_the_chosen_run(files):
    groups, strategies = bench_advice.load_groups(*files)
    trials = [{"task": t, "n": 10, "seed": sd, "budget": 30, "winner": "lp_ft", "switched": t != "cells",
               "seconds": 20.0} for t in TASKS for sd in (0, 1)]
    rep = bench_advice.report(load_rules(), groups, strategies, tune=[], trials=trials)
    t = rep["summary"]["rules + trial (30 s)"]
    assert t["groups"] == 3 and t["switched"] == 4
    assert t["time"] == pytest.approx((40 + 20) / 40, abs=1e-3)
    assert t["mean_regret"] == pytest.approx(4 / 3, abs=0.01)


def test_calibration_fits_the_accuracy_range_and_time(files):
    cal = bench_advice.calibrate(load_rules(), *files, forward_rate=200.0)
    lo, hi, runs = cal["accuracy_vs_probe"]["lp_ft"]
    assert runs == 6 and lo <= hi
    assert cal["runs"] == 30 and cal["per_pass"] == pytest.approx(cal["seconds_per_pass"] * 200, rel=1e-2)
