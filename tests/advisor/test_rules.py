"""The rules engine (advisor/rules.py) on the shipped rules.yaml and on broken copies of it.

Everything here is real computation: the default rules file is loaded and checked, facts are
evaluated through both tables, broken files are written out and loaded, and the CLI runs in a
subprocess. No mocks.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from advisor.facts import FACTS, derived
from advisor.rules import DEFAULT_RULES, evaluate, format_reason, load_rules, parse_overrides
from graft.errors import InputError, RulesError

DEFAULT_TEXT = DEFAULT_RULES.read_text(encoding="utf-8")

# A balanced RGB data set of 2,000 images at the model's input size, close to the pretraining
# domain, with a known 224-px RGB model: the strategy is small_similar and no modifier fires.
BASE = {
    "images": 2000, "classes": 2, "images_per_class_min": 1000, "images_per_class_median": 1000.0,
    "imbalance_ratio": 1.0, "grayscale_fraction": 0.0, "median_width": 224, "median_height": 224,
    "corrupt_files": 0, "similarity": 0.8, "similarity_uncertainty": 0.02, "best_cut_depth": 1.0,
    "top_cut_gain": 0.0, "model_layers": 150, "model_has_batchnorm": True, "model_input_size": 224,
    "model_channels": 3,
}


def facts(**changes) -> dict:
    """BASE with `changes`, completed the way advise completes facts (`derived`)."""
    return derived({**BASE, **changes})


def line_of(text: str, needle: str, start: int = 0) -> int:
    """1-based line of the first occurrence of `needle` at or after character `start`."""
    at = text.index(needle, start)
    return text.count("\n", 0, at) + 1


def replace_once(text: str, old: str, new: str, after: str | None = None) -> str:
    """`text` with the first `old` (after the first `after`, if given) replaced by `new`."""
    start = text.index(after) if after else 0
    at = text.index(old, start)
    return text[:at] + new + text[at + len(old):]


def load_text(text: str, **kw):
    return load_rules("rules.yaml", text=text, **kw)


@pytest.fixture(scope="module")
def table():
    return load_rules()


# --------------------------------------------------------------------------------------------- strategy table

# rule -> (fact changes from BASE, strategy, case, runner_up, rules that also match)
STRATEGY_CASES = {
    "too_few_per_class": ({"images_per_class_min": 3}, "linear_probe", 1, "lp_ft_top", ["small_similar"]),
    "small_probe_enough": ({"probe_lower": 0.93, "best_cut_score": 0.97, "probe_sample": 100}, "truncate_probe", 0,
                           "lp_ft_cut", ["small_similar"]),
    "small_thin_evidence": ({"probe_lower": 0.71, "best_cut_score": 0.8, "probe_sample": 100}, "lp_ft_cut", 0,
                            "truncate_probe", ["small_similar"]),
    "small_similar_low_level_shift": ({"shift_ratio": 1.5}, "lp_ft", 1, "truncate_probe", ["small_similar"]),
    "small_similar": ({}, "truncate_probe", 1, "lp_ft_top", []),
    "small_different_lower_cut": ({"similarity": 0.2, "top_cut_gain": 0.05, "best_cut_depth": 0.8,
                                   "images_per_class_median": 10.0},
                                  "truncate_probe", 2, "lp_ft", ["small_different"]),
    "small_different": ({"similarity": 0.2}, "lp_ft", 2, "lp_ft_top", []),
    "small_similarity_unknown": ({"similarity": None, "top_cut_gain": None, "best_cut_depth": None},
                                 "lp_ft_top", 0, "linear_probe", []),
    "large_similar": ({"images": 20000}, "finetune_all", 3, "lp_ft_top", []),
    "large_different_scratch_trial": ({"images": 200000, "similarity": 0.2}, "finetune_or_scratch", 4,
                                      "finetune_all", ["large_different"]),
    "large_different": ({"images": 20000, "similarity": 0.2}, "finetune_all", 4, "lp_ft", []),
    "large_similarity_unknown": ({"images": 20000, "similarity": None}, "finetune_all", 0, "lp_ft_top", []),
}


def test_every_default_strategy_rule_has_a_case(table):
    assert [r.name for r in table.strategy_rules] == list(STRATEGY_CASES)
    assert table.version == 1 and table.hit_policy == "first"
    assert len(table.sha256) == 64


@pytest.mark.parametrize("rule", list(STRATEGY_CASES))
def test_each_strategy_rule_wins_on_its_facts(table, rule):
    changes, strategy, case, runner_up, also = STRATEGY_CASES[rule]
    d = evaluate(table, facts(**changes))
    assert (d.rule, d.strategy, d.case, d.runner_up) == (rule, strategy, case, runner_up)
    assert d.also_matched == also
    assert d.hit_policy == "first"
    # under `first` every rule above the winner fails at least one condition
    names = [t.name for t in d.trace if t.table == "strategy"]
    for t in d.trace[:names.index(rule)]:
        assert not t.matched and t.failed
    # the winner's reason is filled in from the facts and thresholds
    assert "{" not in d.reason and d.reason


@pytest.mark.parametrize("rule", list(STRATEGY_CASES))
def test_each_case_is_won_by_its_rule_only(table, rule):
    """Each rule wins on its own facts and on no other case's facts."""
    winners = {name: evaluate(table, facts(**spec[0])).rule for name, spec in STRATEGY_CASES.items()}
    assert [name for name, won in winners.items() if won == rule] == [rule]


def _classic(f: dict) -> str:
    """The default table written out by hand: the four classic cases plus the special rules."""
    if f["images_per_class_min"] < 5:
        return "too_few_per_class"
    sim, gain = f["similarity"], f["top_cut_gain"]
    if f["images"] < 10000:
        if f.get("probe_lower") is not None:  # a measured probe: the evidence decides, not the case
            return "small_probe_enough" if f["probe_lower"] >= 0.9 else "small_thin_evidence"
        if sim is None:
            return "small_similarity_unknown"
        if sim >= 0.5:
            ratio = f.get("shift_ratio")
            return "small_similar_low_level_shift" if ratio is not None and ratio >= 1.0 else "small_similar"
        few = f["images_per_class_median"] < 30
        return "small_different_lower_cut" if gain is not None and gain >= 0.03 and few else "small_different"
    if sim is None:
        return "large_similarity_unknown"
    if sim >= 0.5:
        return "large_similar"
    return "large_different_scratch_trial" if f["images"] >= 100000 else "large_different"


def test_decision_over_a_grid_matches_the_classic_cases(table):
    seen = set()
    grid = itertools.product([50, 9999, 10000, 99999, 100000, 10**6], [None, 0.0, 0.4999, 0.5, 1.0],
                             [None, 0.0, 0.0299, 0.03, 0.2], [1, 4, 5, 300], [None, 0.3, 0.9999, 1.0, 2.0],
                             [10.0, 29.9, 30.0, 300.0], [None, 0.8999, 0.9])
    for images, sim, gain, per_class_min, ratio, median, lower in grid:
        f = facts(images=images, similarity=sim, top_cut_gain=gain, images_per_class_min=per_class_min,
                  shift_ratio=ratio, images_per_class_median=median, probe_lower=lower,
                  best_cut_score=None if lower is None else lower + 0.05, probe_sample=None if lower is None else 100)
        d = evaluate(table, f)
        assert d.rule == _classic(f), f
        matched = [t.name for t in d.trace if t.table == "strategy" and t.matched]
        assert matched == [d.rule, *d.also_matched]  # exactly one winner: the first match
        seen.add(d.rule)
    assert seen == set(STRATEGY_CASES)


@pytest.mark.parametrize("changes, rule", [
    ({"images": 9999}, "small_similar"),
    ({"images": 10000}, "large_similar"),  # small_dataset is "below": 10,000 is large
    ({"similarity": 0.5}, "small_similar"),  # similar is "at or above"
    ({"similarity": 0.4999}, "small_different"),
    ({"images_per_class_min": 4}, "too_few_per_class"),
    ({"images_per_class_min": 5}, "small_similar"),
    ({"similarity": 0.2, "top_cut_gain": 0.03, "images_per_class_median": 29.9}, "small_different_lower_cut"),
    ({"similarity": 0.2, "top_cut_gain": 0.03, "images_per_class_median": 30.0}, "small_different"),
    ({"similarity": 0.2, "top_cut_gain": 0.0299, "images_per_class_median": 10.0}, "small_different"),
    ({"similarity": 0.2, "top_cut_gain": None}, "small_different"),  # no probe measured
    ({"shift_ratio": 1.0}, "small_similar_low_level_shift"),  # low_level_shift is "at or above"
    ({"shift_ratio": 0.9999}, "small_similar"),
    ({"shift_ratio": None}, "small_similar"),  # no profile measured: the shift is not called low-level
    ({"probe_lower": 0.9, "best_cut_score": 0.96, "probe_sample": 100}, "small_probe_enough"),  # "at or above"
    ({"probe_lower": 0.8999, "best_cut_score": 0.95, "probe_sample": 100}, "small_thin_evidence"),
    ({"probe_lower": 0.95, "best_cut_score": 0.99, "probe_sample": 100, "images": 10000}, "large_similar"),
    ({"images": 99999, "similarity": 0.2}, "large_different"),
    ({"images": 100000, "similarity": 0.2}, "large_different_scratch_trial"),
])
def test_thresholds_are_inclusive_where_the_file_says(table, changes, rule):
    assert evaluate(table, facts(**changes)).rule == rule


def test_similarity_unknown_is_not_treated_as_similar_or_different(table):
    d = evaluate(table, facts(similarity=None))
    assert d.rule == "small_similarity_unknown" and d.case == 0
    by_name = {t.name: t for t in d.trace}
    for name in ("small_similar", "small_different", "small_different_lower_cut"):
        sim = [c for c in by_name[name].conditions if c.fact == "similarity"][0]
        assert sim.actual is None and not sim.passed
    assert "similarity unknown" in d.reason and "--similarity" in d.reason
    # a missing fact is unknown too, not an error
    d = evaluate(table, {k: v for k, v in BASE.items() if k != "similarity"})
    assert d.rule == "small_similarity_unknown"


def test_large_and_different_tries_scratch_only_from_scratch_min_images(table):
    d = evaluate(table, facts(images=500000, similarity=0.1))
    assert d.strategy == "finetune_or_scratch" and d.case == 4
    assert table.strategies["finetune_or_scratch"]["fallback"] == {"scratch_trial_epochs": 2, "margin": 0.01}
    assert "500000 images (>= 100000)" in d.reason
    assert evaluate(table, facts(images=50000, similarity=0.1)).strategy == "finetune_all"


def test_reason_with_an_unknown_fact_under_a_format_spec_reads_unknown(table):
    # best_cut_depth is printed with {best_cut_depth:.2f}; unknown must not crash the formatting
    d = evaluate(table, facts(similarity=0.2, top_cut_gain=0.05, best_cut_depth=None, images_per_class_median=10.0))
    assert d.rule == "small_different_lower_cut"
    assert "depth unknown" in d.reason and "by 0.050" in d.reason
    assert format_reason("{similarity:.2f} vs {similar}", {"similarity": None}, table) == "unknown vs 0.5"
    assert format_reason("{similarity:.2f} vs {similar}", {"similarity": 0.25}, table) == "0.25 vs 0.5"


# --------------------------------------------------------------------------------------------- modifiers

AUGMENT = {"flip": "horizontal", "rotation": 0.05, "zoom": 0.1}

# modifier -> (facts where it fires, facts where it does not, its effect, words of its reason)
MODIFIER_CASES = {
    "class_weights": ({"imbalance_ratio": 3.0}, {"imbalance_ratio": 2.9},
                      {"class_weights": "balanced"}, "largest / smallest = 3.0 >= 3.0"),
    "augment_small_classes": ({"images_per_class_median": 999.0}, {"images_per_class_median": 1000.0},
                              {"augmentation": AUGMENT}, "999 images per class (median, < 1000)"),
    "grayscale_data": ({"grayscale_fraction": 0.9}, {"grayscale_fraction": 0.49},
                       {"channels": "gray_to_rgb"}, "90% of the images are grayscale and the network"),
    "grayscale_data_model_unknown": (
        {"grayscale_fraction": 1.0, "model_channels": None, "model_input_size": None},
        {"grayscale_fraction": 0.1, "model_channels": None, "model_input_size": None},
        {"channels": "gray_to_rgb"}, "100% of the images are grayscale; pretrained"),
    "images_much_smaller": ({"median_width": 32, "median_height": 32}, {"median_width": 112, "median_height": 112},
                            {"resolution": "upsample"}, "Images (32x32 median)"),
    "images_much_larger": ({"median_width": 1024, "median_height": 1000},
                           {"median_width": 896, "median_height": 896},
                           {"resolution": "downsample"}, "ratio 4.46 > 4.0"),
    "corrupt_files": ({"corrupt_files": 2}, {"corrupt_files": 0}, {"skip_corrupt": True}, "2 files could not"),
}


def test_every_default_modifier_has_a_case(table):
    assert [r.name for r in table.modifier_rules] == list(MODIFIER_CASES)


def test_base_facts_fire_no_modifier(table):
    d = evaluate(table, facts())
    assert d.modifiers == {} and d.modifier_rules == []


@pytest.mark.parametrize("name", list(MODIFIER_CASES))
def test_each_modifier_fires_and_does_not(table, name):
    on, off, effect, words = MODIFIER_CASES[name]
    d = evaluate(table, facts(**on))
    assert [r for r, _ in d.modifier_rules] == [name]
    assert d.modifiers == effect
    assert words in dict(d.modifier_rules)[name]
    d = evaluate(table, facts(**off))
    assert name not in [r for r, _ in d.modifier_rules]
    for key in effect:
        assert d.modifiers.get(key) != effect[key]
    # modifiers never change the strategy
    assert evaluate(table, facts(**on)).rule == evaluate(table, facts(**off)).rule == "small_similar"


def test_input_ratio_is_derived_from_image_and_model_sizes():
    assert facts(median_width=32, median_height=48)["input_ratio"] == round(32 / 224, 4)
    assert facts(model_input_size=None)["input_ratio"] is None
    assert derived({"similarity": 0.3})["similarity_method"] == "user"
    assert derived({})["similarity_method"] == "unknown" and derived({})["gpu"] is False


def test_single_channel_model_gets_no_channel_modifier(table):
    d = evaluate(table, facts(grayscale_fraction=1.0, model_channels=1))
    assert "channels" not in d.modifiers


def test_resolution_modifiers_need_a_model(table):
    d = evaluate(table, facts(median_width=16, median_height=16, model_input_size=None, model_channels=None))
    assert "resolution" not in d.modifiers
    assert all(not t.matched for t in d.trace if t.name.startswith("images_much"))


def test_modifiers_are_collected_together(table):
    d = evaluate(table, facts(imbalance_ratio=8.0, images_per_class_median=50.0, grayscale_fraction=1.0,
                              median_width=28, median_height=28, corrupt_files=1))
    assert [r for r, _ in d.modifier_rules] == ["class_weights", "augment_small_classes", "grayscale_data",
                                                "images_much_smaller", "corrupt_files"]
    assert d.modifiers == {"class_weights": "balanced", "augmentation": AUGMENT, "channels": "gray_to_rgb",
                           "resolution": "upsample", "skip_corrupt": True}


# --------------------------------------------------------------------------------------------- overrides


def test_set_override_changes_the_decision():
    overrides = parse_overrides(["small_dataset=500"])
    assert overrides == {"small_dataset": 500}
    t = load_rules(overrides=overrides)
    assert t.threshold("small_dataset") == 500 and t.overrides == {"small_dataset": 500}
    assert evaluate(load_rules(), facts()).rule == "small_similar"
    d = evaluate(t, facts())
    assert d.rule == "large_similar" and d.strategy == "finetune_all"
    assert "2000 images (>= 500)" in d.reason
    cond = [c for c in [t for t in d.trace if t.name == "large_similar"][0].conditions if c.fact == "images"][0]
    assert cond.text == "images >= small_dataset (500)"


def test_set_float_and_several_overrides():
    t = load_rules(overrides=parse_overrides(["similar=0.9", "imbalance=1.5"]))
    d = evaluate(t, facts(imbalance_ratio=2.0))
    assert d.rule == "small_different"  # 0.8 is no longer similar
    assert d.modifiers["class_weights"] == "balanced"


def test_set_unknown_threshold_suggests_the_right_name():
    with pytest.raises(RulesError, match=r"no threshold named 'smal_dataset'.*did you mean 'small_dataset'"):
        load_rules(overrides=parse_overrides(["smal_dataset=500"]))


@pytest.mark.parametrize("item, message", [
    ("small_dataset=abc", r"--set small_dataset=abc: a threshold must be a number"),
    ("small_dataset=true", r"a threshold must be a number"),
    ("small_dataset=[1", r"the value is not a number"),
    ("small_dataset", r"expected name=value, e\.g\. --set small_dataset=5000"),
    ("=5", r"expected name=value"),
])
def test_set_bad_values_are_clear_errors(item, message):
    with pytest.raises(RulesError, match=message):
        load_rules(overrides=parse_overrides([item]))


def test_set_that_makes_a_rule_unreachable_is_refused():
    # with scratch_min_images below small_dataset, large_different can never win
    line = line_of(DEFAULT_TEXT, "- name: large_different\n")
    with pytest.raises(RulesError, match=rf"rules\.yaml:{line}: rule 'large_different' can never win"):
        load_rules(overrides=parse_overrides(["scratch_min_images=5000"]))


# --------------------------------------------------------------------------------------------- load-time checks

MIN = """\
rules_version: 1
thresholds:
  small_dataset: {value: 1000, doc: images below which a data set is small}
strategies:
  probe:
    cut: top
    phases:
      - {name: head, trainable: head, epochs: 5, learning_rate: 1.0e-3}
  tune:
    cut: top
    phases:
      - {name: all, trainable: all, epochs: 5, learning_rate: 1.0e-4}
strategy_table:
  hit_policy: first
  rules:
    - name: small
      when:
        images: {lt: small_dataset}
      then: {strategy: probe, case: 1}
      reason: small ({images} < {small_dataset})
    - name: large
      when:
        images: {ge: small_dataset}
      then: {strategy: tune, case: 3}
      reason: large ({images} >= {small_dataset})
"""


def test_minimal_file_loads():
    t = load_text(MIN)
    assert [r.name for r in t.strategy_rules] == ["small", "large"] and t.modifier_rules == []
    assert evaluate(t, {"images": 10}).strategy == "probe"
    assert evaluate(t, {"images": 1000}).strategy == "tune"


def _in_default_misspelled_fact():
    text = replace_once(DEFAULT_TEXT, "images_per_class_min: {lt", "images_per_clas_min: {lt")
    return text, line_of(text, "images_per_clas_min: {lt"), \
        "unknown fact 'images_per_clas_min'; did you mean 'images_per_class_min'?"


def _in_default_misspelled_modifier_fact():
    text = replace_once(DEFAULT_TEXT, "grayscale_fraction: {ge", "greyscale_fraction: {ge", after="modifiers:")
    return text, line_of(text, "greyscale_fraction: {ge"), \
        "unknown fact 'greyscale_fraction'; did you mean 'grayscale_fraction'?"


def _in_default_unknown_threshold():
    text = replace_once(DEFAULT_TEXT, "similarity: {ge: similar}", "similarity: {ge: simlar}")
    return text, line_of(text, "{ge: simlar}"), "'simlar' is not a threshold; did you mean 'similar'?"


def _in_default_unknown_operator():
    text = replace_once(DEFAULT_TEXT, "top_cut_gain: {ge: cut_gain}", "top_cut_gain: {gte: cut_gain}")
    return text, line_of(text, "{gte: cut_gain}"), "unknown operator 'gte'; did you mean 'gt'? (operators: lt, le, gt, ge, eq, ne, in, not_in, between, known)"


def _in_default_unknown_strategy():
    text = replace_once(DEFAULT_TEXT, "strategy: lp_ft,", "strategy: lp_fft,")
    return text, line_of(text, "strategy: lp_fft,"), "unknown strategy 'lp_fft'; did you mean 'lp_ft'?"


def _in_default_unknown_runner_up():
    text = replace_once(DEFAULT_TEXT, "runner_up: truncate_probe}", "runner_up: truncate}")
    return text, line_of(text, "runner_up: truncate}"), \
        "unknown strategy 'truncate'; did you mean 'truncate_probe'?"


def _in_default_bad_hit_policy():
    text = replace_once(DEFAULT_TEXT, "hit_policy: first", "hit_policy: firts")
    return text, line_of(text, "hit_policy: firts"), \
        "hit_policy 'firts' is not one of first, unique; did you mean 'first'?"


def _in_default_missing_hit_policy():
    text = replace_once(DEFAULT_TEXT, "  hit_policy: first\n", "")
    return text, line_of(text, "strategy_table:"), "'strategy_table' needs 'hit_policy'"


def _in_default_gap():
    # drop the rule for large data sets of unknown similarity: that region is left uncovered
    start = DEFAULT_TEXT.index("    - name: large_similarity_unknown")
    text = DEFAULT_TEXT[:start] + DEFAULT_TEXT[DEFAULT_TEXT.index("modifiers:"):]
    return text, line_of(text, "- name: large_different\n"), \
        "gap in the strategy table: no rule matches images=10000, images_per_class_median=15, " \
        "images_per_class_min=5, probe_lower=0.4, shift_ratio=0.5, similarity=unknown"


def _in_default_never_wins():
    # the generic small-and-different rule moved above the lower-cut rule hides it
    block = DEFAULT_TEXT[DEFAULT_TEXT.index("    - name: small_different_lower_cut"):
                         DEFAULT_TEXT.index("    - name: small_different\n")]
    text = DEFAULT_TEXT.replace(block, "")
    at = text.index("    - name: small_similarity_unknown")
    text = text[:at] + block + text[at:]
    return text, line_of(text, "- name: small_different_lower_cut"), \
        "rule 'small_different_lower_cut' can never win: every fact set it matches is taken by a rule above"


def _in_default_overlap_under_unique():
    text = replace_once(DEFAULT_TEXT, "hit_policy: first", "hit_policy: unique")
    return text, line_of(text, "- name: small_thin_evidence\n"), \
        "overlap in the strategy table (hit_policy unique): rules 'too_few_per_class' (line " \
        f"{line_of(text, '- name: too_few_per_class')}) and 'small_thin_evidence' both match images=9999, " \
        "images_per_class_median=15, images_per_class_min=4"


def _in_default_unknown_reason_placeholder():
    text = replace_once(DEFAULT_TEXT, "{images_per_class_median:.0f}", "{images_per_class_medain:.0f}",
                        after="name: augment_small_classes")
    return text, line_of(text, "reason: >-", text.index("name: augment_small_classes")), \
        "reason placeholder '{images_per_class_medain}' is not a fact or threshold; did you mean " \
        "'images_per_class_median'?"


def _in_default_bad_modifier_action():
    text = replace_once(DEFAULT_TEXT, "{class_weights: balanced}", "{class_weights: balance}")
    return text, line_of(text, "{class_weights: balance}"), \
        "class_weights is one of balanced, not 'balance'; did you mean 'balanced'?"


def _in_default_missing_version():
    text = DEFAULT_TEXT.replace("rules_version: 1\n", "")
    return text, line_of(text, "thresholds:"), "'the file' needs 'rules_version'"  # where the mapping starts


def _in_default_unsupported_version():
    text = DEFAULT_TEXT.replace("rules_version: 1\n", "rules_version: 2\n")
    return text, line_of(text, "rules_version: 2"), \
        "rules_version 2 is not supported; this graft reads rules_version 1"


def _in_default_yaml_syntax():
    text = replace_once(DEFAULT_TEXT, "then: {strategy: lp_ft, case: 2, runner_up: lp_ft_top}",
                        "then: {strategy: lp_ft, case: 2, runner_up: lp_ft_top")
    # the parser notices the missing brace on the next line, where `reason:` starts
    return text, line_of(text, "case: 2, runner_up: lp_ft_top\n") + 1, "not valid YAML: expected ',' or '}'"


def _in_default_duplicate_rule_name():
    text = replace_once(DEFAULT_TEXT, "- name: large_different\n", "- name: large_similar\n")
    return text, line_of(text, "- name: large_similar\n", DEFAULT_TEXT.index("large_different_scratch")), \
        "rule name 'large_similar' is used twice"


def _in_default_duplicate_yaml_key():
    text = replace_once(DEFAULT_TEXT, "        similarity: {ge: similar}\n",
                        "        similarity: {ge: similar}\n        similarity: {lt: similar}\n")
    return text, line_of(text, "similarity: {lt: similar}"), "duplicate key 'similarity'"


def _in_default_case_out_of_range():
    text = replace_once(DEFAULT_TEXT, "case: 3,", "case: 5,")
    return text, line_of(text, "case: 5,"), "case must be 1-4 (the classic cases) or 0, not 5"


BROKEN = {f.__name__.removeprefix("_in_default_"): f for f in [
    _in_default_misspelled_fact, _in_default_misspelled_modifier_fact, _in_default_unknown_threshold,
    _in_default_unknown_operator, _in_default_unknown_strategy, _in_default_unknown_runner_up,
    _in_default_bad_hit_policy, _in_default_missing_hit_policy, _in_default_gap, _in_default_never_wins,
    _in_default_overlap_under_unique, _in_default_unknown_reason_placeholder,
    _in_default_bad_modifier_action, _in_default_missing_version, _in_default_unsupported_version,
    _in_default_yaml_syntax, _in_default_duplicate_rule_name, _in_default_duplicate_yaml_key,
    _in_default_case_out_of_range,
]}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_load_time_check_catches_its_broken_file(broken):
    text, line, message = BROKEN[broken]()
    assert text != DEFAULT_TEXT
    with pytest.raises(RulesError) as err:
        load_text(text)
    assert str(err.value) == f"rules.yaml:{line}: {message}" or \
        str(err.value).startswith(f"rules.yaml:{line}: {message}"), str(err.value)
    assert "\n" not in str(err.value)


def test_check_reports_the_file_path_and_line_when_loading_from_disk(tmp_path):
    path = tmp_path / "my_rules.yaml"
    text, line, message = _in_default_misspelled_fact()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError, match=re.escape(f"{path}:{line}: {message}")):
        load_rules(path)
    assert isinstance(RulesError("x"), InputError)  # the CLI maps it to exit code 2


def test_missing_and_empty_rules_files(tmp_path):
    with pytest.raises(RulesError, match=r"no such rules file"):
        load_rules(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(RulesError, match=r"empty\.yaml:1: the rules file is empty"):
        load_rules(tmp_path / "empty.yaml")


def test_gap_in_a_small_file_names_the_uncovered_facts():
    text = MIN.replace("images: {ge: small_dataset}", "images: {ge: 2000}")
    with pytest.raises(RulesError, match=r"rules\.yaml:21: gap in the strategy table: no rule matches "
                                         r"images=1000; add a rule for it or a catch-all rule"):
        load_text(text)


def test_catch_all_rule_closes_a_gap_and_is_never_a_gap_itself():
    text = MIN.replace("images: {ge: small_dataset}", "images: {ge: 2000}") + (
        "    - name: otherwise\n      then: {strategy: tune, case: 0}\n      reason: everything else\n")
    t = load_text(text)
    assert evaluate(t, {"images": 1500}).rule == "otherwise"
    assert evaluate(t, {"images": 5000}).also_matched == ["otherwise"]


def test_rule_after_a_catch_all_never_wins():
    text = MIN.replace("""      when:
        images: {lt: small_dataset}
""", "")
    with pytest.raises(RulesError, match=r"rules\.yaml:19: rule 'large' can never win"):
        load_text(text)


def test_unique_policy_accepts_disjoint_rules_and_rejects_overlaps():
    t = load_text(MIN.replace("hit_policy: first", "hit_policy: unique"))
    assert t.hit_policy == "unique" and evaluate(t, {"images": 999}).rule == "small"
    text = MIN.replace("hit_policy: first", "hit_policy: unique").replace("{lt: small_dataset}", "{lt: 2000}")
    with pytest.raises(RulesError, match=r"rules\.yaml:21: overlap .*'small' \(line 16\) and 'large' both match "
                                         r"images=1000"):
        load_text(text)


SENTINEL = "graft_rules_code_ran"


@pytest.mark.parametrize("where", ["value", "fact", "operator", "condition", "reason", "tag_scalar",
                                   "tag_sequence"])
def test_python_in_a_condition_is_data_never_run(tmp_path, where):
    marker = tmp_path / SENTINEL
    code = f"__import__('os').system('touch {marker}')"
    when = "        images: {lt: small_dataset}\n"
    new = {
        "value": f'        images: {{lt: "{code}"}}\n',
        "fact": f'        "{code}": {{lt: 1}}\n',
        "operator": f'        images: {{"{code}": 1}}\n',
        "condition": f'        images: "{code} or images < 1000"\n',
        "reason": when,
        "tag_scalar": "        images: {lt: !!python/name:os.system }\n",
        "tag_sequence": f"        images: {{lt: !!python/object/apply:os.system ['touch {marker}']}}\n",
    }[where]
    text = MIN.replace(when, new, 1)
    if where == "reason":
        text = text.replace("reason: small ({images} < {small_dataset})", f'reason: "{{{code}}}"')
    with pytest.raises(RulesError) as err:
        load_text(text)
    assert str(err.value).startswith("rules.yaml:")
    assert not marker.exists()
    expected = {"value": "is not a threshold", "fact": "unknown fact", "operator": "unknown operator",
                "condition": "must be a mapping like {lt: 1000}", "reason": "reason",
                "tag_scalar": "not valid YAML", "tag_sequence": "is not allowed"}[where]
    assert expected in str(err.value)


@pytest.mark.parametrize("test, message", [
    ("{known: maybe}", "known takes true or false, not 'maybe'"),
    ("{between: [1]}", "between takes a list of two bounds"),
    ("{in: 5}", "in takes a list"),
    ("{}", "the test of 'images' must be a mapping like {lt: 1000} or {known: true}"),
    ("{lt: true}", "'images' is a number; True cannot be compared with it"),
])
def test_bad_condition_values(test, message):
    with pytest.raises(RulesError, match=re.escape(f"rules.yaml:18: {message}")):
        load_text(MIN.replace("images: {lt: small_dataset}", f"images: {test}", 1))


def test_every_operator_evaluates_as_documented():
    text = MIN.replace("""      when:
        images: {lt: small_dataset}
      then: {strategy: probe, case: 1}
      reason: small ({images} < {small_dataset})
""", """      when:
        images: {between: [100, small_dataset]}
        similarity_method: {in: [user, reference]}
        classes: {ne: 1}
        model_has_batchnorm: {eq: true}
        imbalance_ratio: {le: 2.0}
        similarity: {known: true}
      then: {strategy: probe, case: 1}
      reason: probe
    - name: not_in_gt
      when:
        similarity_method: {not_in: [user, reference]}
        corrupt_files: {gt: 0}
      then: {strategy: probe, case: 0}
      reason: probe too
""").replace("""      when:
        images: {ge: small_dataset}
""", "")
    t = load_text(text)
    ok = {"images": 1000, "similarity_method": "user", "classes": 2, "model_has_batchnorm": True,
          "imbalance_ratio": 2.0, "similarity": 0.3}
    assert evaluate(t, ok).rule == "small"
    for change in [{"images": 99}, {"images": 1001}, {"similarity_method": "bn_stats"}, {"classes": 1},
                   {"model_has_batchnorm": False}, {"model_has_batchnorm": None}, {"imbalance_ratio": 2.01},
                   {"similarity": None}]:
        d = evaluate(t, {**ok, **change})
        assert d.rule == "large", change
        assert d.near_misses[0]["rule"] == "small", change
    assert evaluate(t, {**ok, "similarity": None, "similarity_method": "unknown", "corrupt_files": 1}).rule == \
        "not_in_gt"
    assert evaluate(t, {**ok, "similarity_method": "unknown", "corrupt_files": 0}).rule == "large"


# --------------------------------------------------------------------------------------------- trace


def test_trace_lists_every_rule_and_condition_with_actual_values(table):
    f = facts(similarity=0.2, top_cut_gain=0.05, best_cut_depth=0.8, imbalance_ratio=4.0, images_per_class_median=10.0)
    d = evaluate(table, f)
    assert d.rule == "small_different_lower_cut" and d.also_matched == ["small_different"]
    assert [(t.table, t.name) for t in d.trace] == \
        [("strategy", r.name) for r in table.strategy_rules] + [("modifier", r.name) for r in table.modifier_rules]
    for t in d.trace:
        assert t.line == line_of(DEFAULT_TEXT, f"- name: {t.name}\n")
        rule = next(r for r in table.strategy_rules + table.modifier_rules if r.name == t.name)
        assert len(t.conditions) == len(rule.conditions) >= 1
        for c, cond in zip(t.conditions, rule.conditions):
            assert c.fact == cond.fact and c.actual == f[c.fact]
            assert c.passed == cond.test(f[c.fact])
        assert t.matched == all(c.passed for c in t.conditions)
        assert bool(t.reason) == t.matched  # only matched rules carry a filled-in reason
    by_name = {t.name: t for t in d.trace}
    win = by_name["small_different_lower_cut"]
    assert [(c.text, c.actual, c.passed) for c in win.conditions] == [
        ("images < small_dataset (10000)", 2000, True),
        ("similarity < similar (0.5)", 0.2, True),
        ("top_cut_gain >= cut_gain (0.03)", 0.05, True),
        ("images_per_class_median < cut_below_per_class (30)", 10.0, True)]
    assert [c.threshold for c in win.conditions] == ["small_dataset", "similar", "cut_gain", "cut_below_per_class"]
    assert [(c.text, c.passed) for c in by_name["large_similar"].conditions] == [
        ("images >= small_dataset (10000)", False), ("similarity >= similar (0.5)", False)]
    assert by_name["class_weights"].matched and by_name["class_weights"].then == {"class_weights": "balanced"}


def test_near_misses_are_the_rules_failing_exactly_one_condition(table):
    d = evaluate(table, facts(similarity=0.2, top_cut_gain=0.01, images_per_class_median=10.0))
    assert d.rule == "small_different"
    near = {m["rule"]: m for m in d.near_misses}
    assert near["small_different_lower_cut"] == {
        "rule": "small_different_lower_cut", "line": line_of(DEFAULT_TEXT, "- name: small_different_lower_cut"),
        "condition": "top_cut_gain >= cut_gain (0.03)", "actual": 0.01}
    assert near["small_similar"]["condition"] == "similarity >= similar (0.5)"
    assert near["small_similar"]["actual"] == 0.2
    failed_once = {t.name for t in d.trace if t.table == "strategy" and len(t.failed) == 1}
    assert set(near) == failed_once
    assert "large_similar" not in near  # fails two conditions
    assert d.rule not in near


def test_decision_to_dict_is_json(table):
    d = evaluate(table, facts(similarity=None, imbalance_ratio=5.0))
    out = json.loads(json.dumps(d.to_dict()))
    assert out["rule"] == "small_similarity_unknown" and out["strategy"] == "lp_ft_top"
    assert out["modifier_rules"][0]["rule"] == "class_weights"
    assert len(out["trace"]) == len(table.strategy_rules) + len(table.modifier_rules)
    rule = next(t for t in out["trace"] if t["name"] == "small_similar_low_level_shift")
    sim = [c for c in rule["conditions"] if c["fact"] == "similarity"][0]
    assert sim == {"fact": "similarity", "op": "ge", "expected": 0.5, "threshold": "similar", "actual": None,
                   "passed": False, "text": "similarity >= similar (0.5)"}


def test_every_fact_the_default_rules_use_is_registered(table):
    used = {c.fact for r in table.strategy_rules + table.modifier_rules for c in r.conditions}
    assert used <= set(FACTS)
    assert {"images", "similarity", "top_cut_gain", "images_per_class_min", "imbalance_ratio",
            "grayscale_fraction", "input_ratio", "corrupt_files"} <= used


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run the rules commands of cli.py at once (each start imports the Keras stack)."""
    tmp = tmp_path_factory.mktemp("rules_cli")
    bad = tmp / "bad_rules.yaml"
    text, line, _ = _in_default_misspelled_fact()
    bad.write_text(text, encoding="utf-8")
    commands = {
        "check": ["rules", "check", "rules.yaml"],
        "check_set": ["rules", "check", "rules.yaml", "--set", "small_dataset=5000"],
        "check_bad": ["rules", "check", str(bad)],
        "check_bad_set": ["rules", "check", "rules.yaml", "--set", "smal_dataset=5000"],
        "show": ["rules", "show"],
        "show_json": ["rules", "show", "--json"],
    }
    env = {**os.environ, "COLUMNS": "200"}
    procs = {k: subprocess.Popen([sys.executable, "cli.py", *args], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k, args in commands.items()}
    out = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=120)
        out[k] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    out["bad_path"], out["bad_line"] = bad, line
    return out


def test_cli_rules_check_default_exits_0(cli):
    r = cli["check"]
    assert r.returncode == 0, r.stderr
    assert "ok rules.yaml: rules_version 1, 13 thresholds, 12 strategy rules" in " ".join(r.stdout.split())
    assert "every rule can win" in r.stdout
    assert cli["check_set"].returncode == 0, cli["check_set"].stderr


def test_cli_rules_check_misspelled_fact_exits_2_with_one_line(cli):
    r = cli["check_bad"]
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0] == (f"graft: error: {cli['bad_path']}:{cli['bad_line']}: unknown fact 'images_per_clas_min'; "
                        "did you mean 'images_per_class_min'?")
    assert r.stdout == ""


def test_cli_rules_check_bad_set_exits_2(cli):
    r = cli["check_bad_set"]
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error: --set smal_dataset=...")
    assert "did you mean 'small_dataset'?" in lines[0]


def test_cli_rules_show_prints_the_table(cli, table):
    r = cli["show"]
    assert r.returncode == 0, r.stderr
    for name in [*table.thresholds, *(x.name for x in table.strategy_rules), *(x.name for x in table.modifier_rules)]:
        assert name in r.stdout, name
    assert "hit policy: first" in r.stdout


def test_cli_rules_show_json_parses(cli, table):
    r = cli["show_json"]
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["version"] == 1 and data["hit_policy"] == "first"
    assert data["thresholds"] == {k: t.value for k, t in table.thresholds.items()}
    assert [x["name"] for x in data["strategy_rules"]] == list(STRATEGY_CASES)
    assert [x["name"] for x in data["modifiers"]] == list(MODIFIER_CASES)
    assert data["strategy_rules"][0]["when"] == ["images_per_class_min < very_few_per_class (5)"]
    assert data["strategy_rules"][0]["line"] == line_of(DEFAULT_TEXT, "- name: too_few_per_class")
    assert set(data["strategies"]) == set(table.strategies)


def test_worked_example_in_docs_passes_the_checks():
    """The own-rules-file example of docs/rules.md loads and decides as the page shows."""
    doc = (ROOT / "docs" / "rules.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S) if "name: otherwise" in b]
    assert len(blocks) == 1
    t = load_text(blocks[0])
    assert [r.name for r in t.strategy_rules] == ["small_similar", "otherwise"]
    d = evaluate(t, facts(images=300, similarity=0.7, images_per_class_min=60, images_per_class_median=60.0))
    assert (d.strategy, d.rule, d.also_matched) == ("probe", "small_similar", ["otherwise"])
    assert d.reason.startswith("300 images (< 5000) close to the pretraining data (similarity 0.70 >= 0.6)")
    d = evaluate(t, facts(images=300, similarity=None, imbalance_ratio=2.5))
    assert (d.strategy, d.rule) == ("lp_ft", "otherwise") and "similarity unknown" in d.reason
    assert d.modifiers == {"class_weights": "balanced"}
