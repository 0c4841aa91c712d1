"""advisor.expect and the facts read off a measurement: real numbers, real measurement."""

from __future__ import annotations

import pytest

from advisor.expect import ACCURACY_VS_PROBE, FIXED_S, OVERHEAD, PER_PASS, expect
from advisor.measure import facts_from_measurement, measure

DATA = "examples/data/cifar_b"
MODEL = "examples/models/cifar_a_cnn.keras"


def test_expected_accuracy_is_the_probe_score_plus_the_bench_range_clipped_to_0_1():
    lo, hi, runs = ACCURACY_VS_PROBE["lp_ft"]
    e = expect("lp_ft", 1000, 0.7, 100.0)
    assert e.accuracy == pytest.approx((0.7 + lo, 0.7 + hi))
    assert e.seconds == pytest.approx(FIXED_S + (OVERHEAD + PER_PASS * 1000) / 100.0)
    assert f"{runs} bench runs on two networks (a split-conformal 80 % range)" in e.basis and "100 images/s" in e.basis
    top = expect("lp_ft", 1000, 0.99, 100.0).accuracy
    assert top[1] == 1.0 and top[0] < 1.0
    assert expect("lp_ft", 1000, 0.0, 100.0).accuracy[0] == 0.0
    # a faster machine: the same compute takes less time
    assert expect("lp_ft", 1000, 0.7, 400.0).seconds < e.seconds


def test_without_a_measurement_there_is_no_number():
    e = expect("my_own_strategy", 1000, 0.7, None)
    assert e.accuracy is None and e.seconds is None
    assert e.text() == "no estimate" and e.basis == "nothing measured to estimate from"
    assert expect("lp_ft", None, None, 50.0).to_dict() == {
        "strategy": "lp_ft", "accuracy": None, "seconds": None, "basis": "nothing measured to estimate from"}
    assert expect("lp_ft", 3000, 0.5, 10.0).text().startswith("accuracy ")


def _measurement(shifts, depths, cuts, chance=0.2):
    return {"sample": 50,
            "similarity": {"value": 0.6, "method": "bn_stats", "uncertainty": 0.01,
                           "profile": [{"layer": f"bn{i}", "depth": d, "shift": s, "uncertainty": 0.0}
                                       for i, (d, s) in enumerate(zip(depths, shifts))]},
            "transfer": {"best_cut_layer": cuts[0][0], "best_cut_depth": cuts[0][1], "best_score": cuts[0][2],
                         "chance": chance, "cuts": [{"layer": n, "depth": d, "score": sc} for n, d, sc in cuts[1:]]}}


def test_facts_from_a_measurement_split_the_shift_by_depth_and_scale_the_probe():
    m = _measurement(shifts=[0.4, 0.2, 0.1, 0.1, 0.05, 0.15], depths=[0.1, 0.3, 0.5, 0.6, 0.8, 1.0],
                     cuts=[("mid", 0.5, 0.8), ("mid", 0.5, 0.8), ("top", 1.0, 0.7)])
    f = facts_from_measurement(m)
    assert f["shift_early"] == pytest.approx(0.3) and f["shift_late"] == pytest.approx(0.1)
    assert f["shift_ratio"] == pytest.approx(3.0)
    assert f["cut_gain"] == pytest.approx(0.1) and f["top_cut_score"] == 0.7 and f["best_cut_score"] == 0.8
    assert f["probe_lift"] == pytest.approx((0.8 - 0.2) / 0.8)
    none = facts_from_measurement({"sample": 0, "similarity": None, "transfer": None})
    assert none["shift_ratio"] is None and none["probe_lift"] is None and none["similarity"] is None


def test_a_real_measurement_gives_the_same_facts_from_its_json_and_a_forward_rate():
    emb = measure(DATA, MODEL, per_class=20)
    f = emb.facts()
    assert f == facts_from_measurement(emb.to_dict())
    assert f["shift_early"] > 0 and f["shift_late"] > 0 and f["shift_ratio"] > 0
    assert 0 < f["probe_lift"] <= 1
    assert emb.forward_rate and emb.forward_rate > 0
    assert emb.to_dict()["forward_rate"] == pytest.approx(emb.forward_rate, rel=1e-3)
