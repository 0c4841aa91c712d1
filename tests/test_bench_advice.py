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


# --------------------------------------------------------------------------------- the recipes suite
# bench/recipes.py's rows: per network, graft's four strategies (no finetune_all; lp_ft is the time
# baseline) and plain reference variants; measurements carry the network and the recorded rule choice.

RECIPE_STRATEGIES = ("linear_probe", "truncate_probe", "lp_ft_top", "lp_ft")
GRID = {"networks": ("net_a", "net_b"), "tasks": tuple(TASKS), "strategies": RECIPE_STRATEGIES}
#: on net_b the cut probe loses on digits (same facts): a threshold fitted to net_a misleads there
NET_B_DIGITS = dict(linear_probe=0.70, truncate_probe=0.70, lp_ft_top=0.72, lp_ft=0.76)


def _write_recipes(tmp_path, skip=(), no_measurement=(), recorded="linear_probe"):
    results, meas = tmp_path / "recipes.jsonl", tmp_path / "recipes-measurements.jsonl"
    with results.open("w") as r, meas.open("w") as m:
        for net in GRID["networks"]:
            for task, (sim, ratio, gain, acc) in TASKS.items():
                if net == "net_b" and task == "digits":
                    acc = NET_B_DIGITS
                for seed in (0, 1):
                    base = {"network": net, "task": task, "n": 10, "seed": seed}
                    for s in RECIPE_STRATEGIES:
                        if (net, task, seed, s) in skip:
                            continue
                        r.write(json.dumps({**base, "arm": "graft", "strategy": s, "accuracy": acc[s] + 0.01 * seed,
                                            "seconds": SECONDS[s], "rule_choice": recorded}) + "\n")
                    for variant, a in (("plain,ep20", 0.70), ("flips,ep100", 0.75)):
                        r.write(json.dumps({**base, "arm": "reference", "strategy": "probe", "variant": variant,
                                            "accuracy": a, "seconds": 5}) + "\n")
                    if (net, task, seed) in no_measurement:
                        continue
                    facts = {"images": 100, "classes": 10, "images_per_class_min": 10, "images_per_class_median": 10}
                    m.write(json.dumps({**base, "facts": facts, "rule_choice": recorded,
                                        "embedding": _embedding(sim, ratio, gain)}) + "\n")
    return results, meas


def test_recipes_replays_the_rules_on_the_measured_facts_per_network(tmp_path):
    groups, strategies, cov = bench_advice.load_recipe_groups(*_write_recipes(tmp_path), grid=GRID)
    assert strategies == RECIPE_STRATEGIES and len(groups) == 6 and cov["groups"] == 6
    rep = bench_advice.recipes_report(load_rules(), groups, strategies, tune=[], coverage=cov)
    assert set(rep["networks"]) == {"net_a", "net_b"} and rep["baseline"] == "lp_ft"
    rows = {r["task"]: r for r in rep["networks"]["net_a"]["groups"]}
    # replayed from the facts, not the recorded (wrong) choice
    assert rows["photos"]["choice"] == ["truncate_probe"] * 2 and rows["photos"]["recorded_choice"] == ["linear_probe"] * 2
    assert rows["cells"]["choice"] == ["lp_ft"] * 2 and rows["digits"]["choice"] == ["truncate_probe"] * 2
    assert rows["cells"]["plain"] == {"strategy": "probe", "variant": "flips,ep100", "accuracy": 0.75, "seconds": 5.0}
    assert rows["cells"]["below_plain"] == pytest.approx((0.75 - 0.705) * 100, abs=0.01)
    s = rep["networks"]["net_a"]["summary"]
    assert s["rules (in-sample)"]["mean_regret"] == 0 and s["rules (in-sample)"]["within_1"] == 3
    assert s["rules (in-sample)"]["time"] == pytest.approx((8 / 40 + 1 + 8 / 40) / 3, abs=1e-3)
    assert s["rules (in-sample)"]["time_total"] == pytest.approx((8 + 40 + 8) / 120, abs=1e-3)
    assert s["always lp_ft"]["time"] == 1.0 and s["always lp_ft"]["mean_regret"] == pytest.approx(4 / 3, abs=0.01)
    assert s["always lp_ft"]["worst_domain"] in ("photos", "digits")
    # net_b's digits: the rules still cut, and lose 6 points there
    assert rep["networks"]["net_b"]["summary"]["rules (in-sample)"]["worst_domain"] == "digits"
    assert rep["networks"]["net_b"]["summary"]["rules (in-sample)"]["worst_domain_regret"] == pytest.approx(6, abs=0.01)
    # an edited table is scored as edited
    edited = bench_advice.with_thresholds(load_rules(), {"cut_gain": 0.5})
    rows = {r["task"]: r for r in bench_advice.recipes_report(edited, groups, strategies, [])["networks"]["net_a"]["groups"]}
    assert rows["digits"]["choice"] == ["lp_ft"] * 2 and rows["digits"]["regret"] == pytest.approx(2, abs=0.01)
    # a choice the bench never ran is an error that says so, not a KeyError
    g = groups[0]
    with pytest.raises(ValueError, match="finetune_or_scratch, which the bench did not run"):
        bench_advice._score_full(g, {sd: "finetune_or_scratch" for sd in g.seeds}, strategies)
    md = bench_advice.recipes_markdown(rep)
    assert "#### net_a" in md and "| rules (in-sample) | 0.00 |" in md and "(recorded: linear_probe" in md


def test_recipes_lodo_fits_without_the_held_out_domain(tmp_path, monkeypatch):
    groups, strategies, _ = bench_advice.load_recipe_groups(*_write_recipes(tmp_path), grid=GRID)
    net_a = [g for g in groups if g.network == "net_a"]
    bad = bench_advice.with_thresholds(load_rules(), {"cut_gain": 0.5})
    seen = []
    fit = bench_advice.fit_thresholds
    monkeypatch.setattr(bench_advice, "fit_thresholds",
                        lambda table, train, *a, **k: seen.append({(g.network, g.task) for g in train}) or fit(table, train, *a, **k))
    rep = bench_advice.recipes_report(bad, net_a, strategies, tune=["cut_gain"])
    assert seen and all(len({t for _, t in s}) == 2 for s in seen)  # every fit saw two of the three domains
    rows = {r["task"]: r for r in rep["networks"]["net_a"]["groups"]}
    # only digits asks for a lower cut_gain: without it the fit keeps 0.5 and digits keeps its 2 points of regret
    assert rows["digits"]["lodo"]["thresholds"] == {"cut_gain": 0.5} and rows["digits"]["lodo"]["regret"] == pytest.approx(2, abs=0.01)
    assert rows["photos"]["lodo"]["regret"] == 0
    # fitted on all three domains, cut_gain drops below digits' gain (in-sample, the figure LODO guards against)
    assert bench_advice.fit_thresholds(bad, net_a, strategies, ["cut_gain"])["cut_gain"] <= 0.08
    s = rep["networks"]["net_a"]["summary"]
    assert s["rules, LODO (fit on this network)"]["groups"] == 3
    assert s["rules, LODO (fit on this network)"]["per_domain"]["digits"] == pytest.approx(2, abs=0.01)


def test_recipes_leave_one_network_out_fits_on_the_other_network(tmp_path):
    groups, strategies, _ = bench_advice.load_recipe_groups(*_write_recipes(tmp_path), grid=GRID)
    bad = bench_advice.with_thresholds(load_rules(), {"cut_gain": 0.5})
    rep = bench_advice.recipes_report(bad, groups, strategies, tune=["cut_gain"])
    lono = {(x["fit_on"], x["scored_on"]): x for x in rep["lono"]}
    assert set(lono) == {("net_a", "net_b"), ("net_b", "net_a")}
    # net_a's digits pull cut_gain down; on net_b the cut then loses digits 6 points, which net_b's own fit avoids
    a_to_b = lono[("net_a", "net_b")]
    assert a_to_b["thresholds"]["cut_gain"] <= 0.08 and a_to_b["own_thresholds"] == {"cut_gain": 0.5}
    assert a_to_b["mean_regret"] == pytest.approx(2, abs=0.01) and a_to_b["own_fit_mean_regret"] == 0
    assert a_to_b["gap"] == pytest.approx(2, abs=0.01) and a_to_b["worst_domain"] == "digits"
    b_to_a = lono[("net_b", "net_a")]
    assert b_to_a["thresholds"] == {"cut_gain": 0.5} and b_to_a["mean_regret"] == pytest.approx(2 / 3, abs=0.01)
    assert "Leave-one-network-out" in bench_advice.recipes_markdown(rep)


def test_recipes_scores_only_complete_seeds_and_lists_the_rest(tmp_path, capsys, monkeypatch):
    files = _write_recipes(tmp_path, skip={("net_a", "cells", 1, "lp_ft"), ("net_b", "photos", 0, "lp_ft"),
                                           ("net_b", "photos", 1, "lp_ft")},
                           no_measurement={("net_a", "digits", 0)})
    groups, _, cov = bench_advice.load_recipe_groups(*files, grid=GRID)
    by = {(g.network, g.task): g.seeds for g in groups}
    assert by[("net_a", "cells")] == [0] and by[("net_a", "digits")] == [1] and ("net_b", "photos") not in by
    assert len(groups) == 5 and cov["scored_seeds"] == 8
    lacks = {(p["network"], p["task"], p["seed"]): p["lacks"] for p in cov["partial"]}
    assert lacks == {("net_a", "cells", 1): ["lp_ft"], ("net_a", "digits", 0): ["measurement"],
                     ("net_b", "photos", 0): ["lp_ft"], ("net_b", "photos", 1): ["lp_ft"]}
    # the grid: 2 networks x 3 tasks x n in (10, 60) x seeds 0-2; n=60 and seed 2 were never run
    assert cov["expected"] == 36 and cov["not_started"] == 36 - 12
    monkeypatch.setattr(bench_advice, "recipes_grid", lambda: GRID)
    assert bench_advice.main(["--suite", "recipes", "--results", str(files[0]), "--measurements", str(files[1]),
                              "--tune", "cut_gain", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["suite"] == "recipes" and rep["coverage"]["groups"] == 5 and len(rep["lono"]) == 2
    assert set(rep["networks"]["net_a"]["summary"]) >= {"rules (in-sample)", "rules, LODO (fit on this network)",
                                                         "rules, LODO (fit on both networks)", "always lp_ft"}
    empty = tmp_path / "none.jsonl"
    assert bench_advice.main(["--suite", "recipes", "--results", str(empty), "--measurements", str(empty)]) == 1
    assert "0 (network, task, n) groups scored" in capsys.readouterr().out


def test_the_recipes_grid_is_read_from_bench_recipes_without_importing_it():
    grid = bench_advice.recipes_grid()
    assert grid["networks"] == ("efficientnet_lite0", "mobilenet_v1") and len(grid["tasks"]) == 11
    assert grid["strategies"] == (*RECIPE_STRATEGIES, "lp_ft_cut")


def test_conformal_ranges_and_their_coverage_per_network(tmp_path):
    # residual = accuracy - probe; one strategy, ten runs with offsets -0.09, -0.07, ..., +0.09
    rows = [{"network": "net_a" if i % 2 else "net_b", "task": f"t{i}", "n": 10, "seed": 0, "strategy": "lp_ft",
             "probe": 0.5, "accuracy": 0.5 + (2 * i - 9) / 100} for i in range(10)]
    # n = 10 at 80 %: the floor(1.1)=1st to the ceil(9.9)=10th smallest, the extremes (a new run lands
    # between them with probability 9/11); the plain 10th-90th percentiles are narrower
    assert bench_advice.accuracy_ranges(rows) == {"lp_ft": (-0.09, 0.09, 10)}
    lo, hi, _ = bench_advice.accuracy_ranges(rows, conformal=False)["lp_ft"]
    assert -0.09 < lo < hi < 0.09
    wide = rows + [dict(rows[0], task=f"u{i}", accuracy=0.5) for i in range(10)]  # 20 runs: 2nd to 19th
    assert bench_advice.accuracy_ranges(wide)["lp_ft"] == (-0.07, 0.07, 20)
    rep = bench_advice.expectation_coverage(rows, current={"lp_ft": (-0.05, 0.05, 1)})
    a = rep["per_network"]["net_a"]  # net_a: offsets -0.07, -0.03, +0.01, +0.05, +0.09
    assert a["current"] == {"runs": 5, "inside": 3, "below": 1, "above": 1, "rate": 0.6}
    assert a["pooled_in_sample"]["rate"] == 1.0
    # fitted on net_b alone (-0.09..+0.07): net_a's +0.09 is above
    assert a["leave_one_network_out"] == {"runs": 5, "inside": 4, "below": 0, "above": 1, "rate": 0.8}
    # each task left out in turn: the extremes are then outside
    assert rep["per_network"]["net_b"]["leave_one_domain_out"]["below"] == 1
    assert "| net_a | the other network only | 5 | 4 | 0 | 1 | 80% |" in bench_advice.coverage_markdown(rep)


def test_coverage_reads_graft_runs_with_a_measurement(tmp_path):
    results, meas = _write_recipes(tmp_path, no_measurement={("net_a", "photos", 0)})
    rows = bench_advice.expectation_rows(results, meas)
    assert len(rows) == 2 * 3 * 2 * 4 - 4 and {r["strategy"] for r in rows} == set(RECIPE_STRATEGIES)
    photo = next(r for r in rows if r["network"] == "net_a" and r["task"] == "photos" and r["strategy"] == "lp_ft")
    assert photo["seed"] == 1 and photo["probe"] == pytest.approx(0.7) and photo["accuracy"] == pytest.approx(0.79)
