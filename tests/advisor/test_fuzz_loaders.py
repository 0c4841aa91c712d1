"""Hostile input to the loaders a user feeds: rules files, `--set` overrides and plan files.

Property-based (hypothesis): real files - the shipped rules.yaml and a plan `advise` writes for the
bundled cifar_b data set - are mutated (keys deleted, renamed, duplicated and retyped; values made
huge, NaN, infinite, unicode, deeply nested, shared through YAML anchors and aliases; lines deleted,
duplicated and cut; bytes inserted) and loaded. The property: loading either succeeds or raises a
graft error (a `GraftError` subclass) whose message names the file and the line, within a time
bound, never another exception. A rules file that loads must also evaluate; a plan that loads must
load again from its own dump.

Budgets are fixed and small (`max_examples`, `derandomize=True`), so the run is the same every time
and stays within seconds; docs/robustness.md lists what is tried and what graft answers.
"""

from __future__ import annotations

import copy
import re
import signal
import time
from contextlib import contextmanager

import pytest
import yaml
from conftest import ROOT
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from advisor.rules import DEFAULT_RULES, evaluate, load_rules, parse_overrides
from graft.errors import GraftError, PlanError, RulesError
from graft.yamlio import MAX_DEPTH, MAX_VALUES, load_yaml

RULES_TEXT = DEFAULT_RULES.read_text(encoding="utf-8")
RULES_DATA = yaml.safe_load(RULES_TEXT)
SECONDS = 5.0  # per input; a loader that takes longer counts as hanging

# Example budgets, stated once (docs/robustness.md quotes them).
BUDGET = {"rules_tree": 150, "rules_text": 120, "rules_bytes": 40, "overrides": 150,
          "plan_tree": 150, "plan_text": 120}
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.function_scoped_fixture])

# Like timm's registry-wide tests: evaluate every loaded rules file on one ordinary fact set.
FACTS = {"images": 2000, "classes": 2, "images_per_class_min": 1000, "images_per_class_median": 1000.0,
         "imbalance_ratio": 1.0, "grayscale_fraction": 0.0, "median_width": 224, "median_height": 224,
         "corrupt_files": 0, "similarity": 0.8, "model_input_size": 224, "model_channels": 3}


# ------------------------------------------------------------------------------------------- helpers


@contextmanager
def time_bound(seconds: float = SECONDS):
    """Fail (instead of hanging the suite) when the block runs longer than `seconds`."""
    def alarm(signum, frame):
        raise AssertionError(f"a loader ran longer than {seconds} s on one input (a hang)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(load, source: str, error_type: type[GraftError]):
    """Run `load()`; return its result, or the graft error after checking its message names
    `source` and a line (`SOURCE:LINE: ...`). Any other exception fails the test as it is."""
    with time_bound():
        try:
            result = load()
            event("loaded")
            return result
        except GraftError as exc:
            event(re.sub(r"^\S+:\d+: ", "", str(exc))[:30])  # what kinds of refusal (--hypothesis-show-statistics)
            assert isinstance(exc, error_type), f"{type(exc).__name__} instead of {error_type.__name__}: {exc}"
            text = str(exc)
            assert re.match(rf"{re.escape(source)}:\d+: \S", text), f"no FILE:LINE: in {text!r}"
            assert len(text) < 2000, f"a message of {len(text)} characters"
            return exc


def all_paths(data, prefix: tuple = ()) -> list[tuple]:
    """Every path into plain data (keys and list indexes), the root excluded."""
    out = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        out.append(prefix + (key,))
        out.extend(all_paths(value, prefix + (key,)))
    return out


def parent_of(data, path: tuple):
    for key in path[:-1]:
        data = data[key]
    return data


HUGE = st.sampled_from([10**30, -(10**30), 10**400, 1e308, -1e308, 5e-324, 2**63, 2**64 + 1])
ODD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**6), max_value=10**6), HUGE, ODD_FLOATS,
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "🦀", "é" * 3, "\u202e", "null", "yes", "1e3", "0x1F", "~", "{", "*a", "&b",
                     "2020-13-45", "12:30:00", "lt", "small_dataset", "head", "linear_probe"]),
)
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner,
                                                 max_size=3)), max_leaves=8)
KEYS = st.one_of(st.text(max_size=10), st.integers(min_value=-5, max_value=5), st.booleans(),
                 st.sampled_from(["value", "name", "when", "then", "lt", "cut", "phases", "épochs"]))


def nested(value, depth: int):
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def tree_mutation(draw, base: dict) -> str:
    """`base` with one to three structural mutations, dumped as YAML text."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = all_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = parent_of(data, path), path[-1]
        op = draw(st.sampled_from(["delete", "retype", "rename", "nest", "alias", "empty"]))
        if op == "delete":
            del parent[key]
        elif op == "retype":
            parent[key] = draw(JUNK)
        elif op == "rename" and isinstance(parent, dict):
            new = draw(KEYS)
            parent[new] = parent.pop(key)
        elif op == "nest":
            parent[key] = nested(parent[key], draw(st.sampled_from([1, 2, 5, MAX_DEPTH + 5])))
        elif op == "alias":  # the same object twice: the dumper writes &id001 ... *id001
            other = draw(st.sampled_from(paths))
            target = parent_of(data, other)[other[-1]]
            ancestors, node = [data], data
            for k in path[:-1]:
                node = node[k]
                ancestors.append(node)
            if not any(a is target for a in ancestors):  # no cycles here; a test below has one
                parent[key] = target
        else:
            parent[key] = draw(st.sampled_from([None, {}, [], ""]))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))


@st.composite
def text_mutation(draw, base: str) -> str:
    """`base` with lines duplicated (duplicate keys), deleted, cut, or text spliced in."""
    lines = base.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["dup", "delete", "truncate", "splice", "indent", "anchor"]))
        if op == "dup":
            lines.insert(i, lines[i])
        elif op == "delete":
            del lines[i]
        elif op == "truncate":
            lines = lines[:i] + [lines[i][: draw(st.integers(0, len(lines[i])))]]
        elif op == "splice":
            at = draw(st.integers(0, len(lines[i])))
            junk = draw(st.one_of(st.text(max_size=8), st.sampled_from(
                [": ", "- ", "&x ", "*x", "!!int ", "!!python/object ", "<<: ", "{", "]", "\t", "\x00",
                 "\ufeff", "'", '"', "#", "? ", "%YAML 1.1\n---\n", "9" * 5000])))
            lines[i] = lines[i][:at] + junk + lines[i][at:]
        elif op == "indent":
            lines[i] = " " * draw(st.sampled_from([1, 2, 3, 8])) + lines[i]
        else:  # anchor a value, then refer to it elsewhere
            j = draw(st.integers(0, len(lines) - 1))
            lines[i] = re.sub(r": (\S)", r": &fz \1", lines[i], count=1)
            lines[j] = re.sub(r": \S.*$", ": *fz", lines[j], count=1)
    return "".join(lines)


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """Each level lists the previous one `width` times: `width ** levels` values once expanded."""
    rows = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    rows += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------------------- rules


def load_rules_text(text: str):
    return load_rules("rules.yaml", text=text)


def check_rules(text: str) -> None:
    result = outcome(lambda: load_rules_text(text), "rules.yaml", RulesError)
    if not isinstance(result, GraftError):  # it loaded: it must also evaluate
        with time_bound():
            try:
                evaluate(result, FACTS)
            except GraftError:
                pass


@settings(max_examples=BUDGET["rules_tree"], **FUZZ)
@given(tree_mutation(RULES_DATA))
def test_mutated_rules_tree_gives_a_rules_error_or_loads(text):
    check_rules(text)


@settings(max_examples=BUDGET["rules_text"], **FUZZ)
@given(text_mutation(RULES_TEXT))
def test_mutated_rules_text_gives_a_rules_error_or_loads(text):
    check_rules(text)


@settings(max_examples=BUDGET["rules_bytes"], **FUZZ)
@given(st.integers(0, len(RULES_TEXT.encode())), st.binary(min_size=1, max_size=6))
def test_rules_file_with_bytes_spliced_in(tmp_path_factory, at, junk):
    raw = RULES_TEXT.encode()
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_bytes(raw[:at] + junk + raw[at:])
    with time_bound():
        try:
            load_rules(path)
        except RulesError as exc:
            assert str(path) in str(exc)


OVERRIDE_VALUES = st.one_of(
    st.text(max_size=20), st.sampled_from(
        ["", "1e999", ".nan", "-.inf", "9" * 5000, "[" * 200, "{a: 1}", "!!int x", "!!timestamp 2020-99-99",
         "&a [*a]", "*undefined", "0x10", "1_000", "1:30", "true", "~", "'5'", "\x00", "5 # comment",
         "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]]"]))
OVERRIDE_NAMES = st.one_of(st.text(max_size=12), st.sampled_from(["small_dataset", "similar", "cut_gain", " ", ""]))


@settings(max_examples=BUDGET["overrides"], **FUZZ)
@given(st.lists(st.one_of(st.text(max_size=20), st.builds(lambda n, v: f"{n}={v}", OVERRIDE_NAMES,
                                                          OVERRIDE_VALUES)), max_size=3))
def test_junk_set_overrides_give_a_rules_error(items):
    with time_bound():
        try:
            table = load_rules(overrides=parse_overrides(items))
        except RulesError as exc:
            assert str(exc).startswith("--set ") or "rules.yaml:" in str(exc), str(exc)
            assert len(str(exc)) < 2000
        else:  # what loaded holds finite numbers only
            assert all(t.value == t.value and abs(t.value) < float("inf") for t in table.thresholds.values())


def test_billion_laughs_rules_file_is_refused_fast(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(), encoding="utf-8")
    start = time.perf_counter()
    with time_bound(), pytest.raises(RulesError, match=rf"laughs\.yaml:\d+: the document expands to more "
                                                      rf"than {MAX_VALUES:,} values through YAML anchors"):
        load_rules(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text, message", [
    ("a: " + "[" * 1000 + "]" * 1000, rf"f\.yaml:1: not valid YAML: mappings and lists nest more than {MAX_DEPTH}"),
    ("a: &a [1, *a]", r"f\.yaml:1: an alias refers to the mapping or list that contains it"),
    ("a: 1\nb: !!int abc", r"f\.yaml:2: cannot read 'abc' as int"),
    ("a: !!float x", r"f\.yaml:1: cannot read 'x' as float"),
    ("a: !!bool maybe", r"f\.yaml:1: cannot read 'maybe' as bool"),
    ("a: !!timestamp 2020-13-45", r"f\.yaml:1: cannot read '2020-13-45' as timestamp"),
    ("a: " + "9" * 5000, r"f\.yaml:1: cannot read '9{30}\.\.\. \(5,000 characters\)' as int"),
    ("a: 1\nb: x\x00", r"f\.yaml:2: not valid YAML: the character U\+0000 is not allowed"),
    ("a: &x {c: 1}\nb: {<<: *x}", r"f\.yaml:2: merge keys \(<<\) are not supported"),
    ("a: !!python/object:os.system x", r"f\.yaml:1: not valid YAML: could not determine a constructor"),
])
def test_yaml_bounds_and_bad_scalars(text, message):
    with time_bound(), pytest.raises(GraftError, match=message):
        load_yaml(text, "f.yaml")


def test_aliases_within_the_bound_still_load():
    doc = load_yaml(billion_laughs(levels=4), "f.yaml")  # 10**4 values
    assert len(doc.data["lol3"]) == 10 and doc.data["lol3"][0][0][0] == ["lol"] * 10


@pytest.mark.parametrize("old, new, message", [
    ("value: 10000", "value: .nan", r"rules\.yaml:\d+: threshold 'small_dataset' must be a finite number, not nan"),
    ("value: 10000", "value: 1" + "0" * 400, r"rules\.yaml:\d+: threshold 'small_dataset' must be a finite number"),
    ("  small_dataset:\n", "  7:\n", r"rules\.yaml:\d+: threshold name 7 must be a string"),
    ("  linear_probe:\n", "  1.5:\n", r"rules\.yaml:\d+: strategy name 1\.5 must be a string"),
    ("epochs: 30", "epochs: .inf", r"rules\.yaml:\d+: epochs must be a positive number, not inf"),
])
def test_rules_refuse_non_finite_numbers_and_non_string_names(old, new, message):
    with pytest.raises(RulesError, match=message):
        load_rules_text(RULES_TEXT.replace(old, new, 1))


def test_rules_refuse_a_rule_name_that_is_a_list_and_a_strategy_that_is_a_mapping():
    text = re.sub(r"(- name: )(\w+)", r"\1[\2]", RULES_TEXT, count=1)
    with pytest.raises(RulesError, match=r"rules\.yaml:\d+: a rule name must be a non-empty string"):
        load_rules_text(text)
    text = re.sub(r"(strategy: )(\w+)", r"\1{a: 1}", RULES_TEXT, count=1)
    with pytest.raises(RulesError, match=r"rules\.yaml:\d+: unknown strategy"):
        load_rules_text(text)


def test_rules_refuse_a_reason_with_an_unknown_conversion():
    text = RULES_TEXT.replace("{images_per_class_min} images", "{images_per_class_min!z} images", 1)
    assert text != RULES_TEXT
    with pytest.raises(RulesError, match=r"rules\.yaml:\d+: reason placeholder '\{images_per_class_min!z\}'"):
        load_rules_text(text)


# ------------------------------------------------------------------------------------------- plans


@pytest.fixture(scope="module")
def plan_text() -> str:
    from advisor.advise import advise
    from graft.plan import dump_plan

    return dump_plan(advise(ROOT / "examples" / "data" / "cifar_b", similarity=0.8).plan)


def check_plan(text: str) -> None:
    from graft.plan import dump_plan, load_plan

    result = outcome(lambda: load_plan("plan.yaml", text=text), "plan.yaml", PlanError)
    if not isinstance(result, GraftError):  # it loaded: its own dump loads too
        with time_bound():
            load_plan("plan.yaml", text=dump_plan(result))


@settings(max_examples=BUDGET["plan_tree"], **FUZZ)
@given(st.data())
def test_mutated_plan_tree_gives_a_plan_error_or_loads(plan_text, data):
    check_plan(data.draw(tree_mutation(yaml.safe_load(plan_text))))


@settings(max_examples=BUDGET["plan_text"], **FUZZ)
@given(st.data())
def test_mutated_plan_text_gives_a_plan_error_or_loads(plan_text, data):
    check_plan(data.draw(text_mutation(plan_text)))


@pytest.mark.parametrize("old, new, message", [
    ("learning_rate: 0.001", "learning_rate: .nan", r"plan\.yaml:\d+: 'training\.phases\.0\.learning_rate' "
                                                   r"must be a finite number, not nan"),
    ("dropout: 0.2", "dropout: -.inf", r"plan\.yaml:\d+: 'surgery\.head\.dropout' must be a finite number"),
    ("plan_version: 1\n", "plan_version: 0\n", None),
])
def test_plan_refuses_non_finite_numbers(plan_text, old, new, message):
    from graft.plan import load_plan

    text = plan_text.replace(old, new, 1)
    if message is None:  # version 0 with a list where its flat training settings were
        text = re.sub(r"training:\n(  .*\n)+", "training: [1, 2]\n", text)
        message = r"plan\.yaml:\d+: 'training' must be a mapping, not list"
    with pytest.raises(PlanError, match=message):
        load_plan("plan.yaml", text=text)


def test_billion_laughs_plan_file_is_refused_fast(tmp_path):
    from graft.plan import load_plan

    path = tmp_path / "plan.yaml"
    path.write_text("plan_version: 1\n" + billion_laughs(), encoding="utf-8")
    with time_bound(1.0), pytest.raises(PlanError, match=r"plan\.yaml:\d+: the document expands"):
        load_plan(path)
