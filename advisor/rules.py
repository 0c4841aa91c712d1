"""The rules engine: load and check a rules file (evaluation is `advisor.decide`, the table `advisor.rule_table`).

A rules file (the default is `rules.yaml` at the project root; format in docs/rules.md) holds:

- `rules_version`: the format version (this engine reads version 1);
- `thresholds`: named numbers, overridable with `--set name=value`;
- `strategies`: what each strategy does (cut, phases) - the plan builder reads these;
- `strategy_table`: rules with `when` conditions and a `then` naming one strategy; a `hit_policy`
  picks exactly one winner: `first` (the first matching rule in file order) or `unique` (at most one
  rule may match any fact set; overlaps are load errors);
- `modifiers`: rules whose `then` actions are all collected (augmentation, class weights, channels,
  resolution, ...).

Conditions are data: `fact: {op: value}` with `op` one of lt, le, gt, ge, eq, ne, in, not_in, between,
known. A numeric value may name a threshold. Nothing is evaluated as Python.

Loading checks every fact name, operator, threshold reference, strategy name, action and reason
placeholder, and checks the strategy table for gaps (a fact set no rule matches) and overlaps (under
`unique`) or rules that can never win (under `first`), by sampling every region the thresholds cut the
fact space into. Errors read `rules.yaml:LINE: what is wrong; did you mean ...`.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import os
import string
from pathlib import Path

from advisor.decide import ConditionTrace, Decision, RuleTrace, evaluate, format_reason
from advisor.facts import FACTS, FactSpec
from advisor.rule_table import (
    _GAP_POINT_LIMIT,
    AUGMENTATION_KEYS,
    CUTS,
    DEFAULT_RULES,
    HIT_POLICIES,
    MODIFIER_ACTIONS,
    OPS,
    PHASE_KEYS,
    RULES_VERSION,
    SCHEDULES,
    SOLVERS,
    STRATEGY_THEN,
    TRAINABLE,
    Condition,
    Rule,
    RuleTable,
    Threshold,
    _fmt,
)
from graft.errors import InputError, RulesError
from graft.yamlio import YamlDoc, load_yaml

# --------------------------------------------------------------------------------------------- loading


def _is_number(value) -> bool:
    """A finite int or float (not a bool); NaN, infinities and integers beyond float range are not:
    the gap check and the comparisons need numbers that order and convert."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _suggest(word: str, choices) -> str:
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; the names are: {', '.join(sorted(names))}" if 0 < len(names) <= 30 else ""


class _Loader:
    def __init__(self, doc: YamlDoc, overrides: dict[str, object]):
        self.doc = doc
        self.overrides = dict(overrides)

    def fail(self, path: tuple, message: str):
        raise RulesError(f"{self.doc.where(path)}: {message}")

    def keys(self, mapping: dict, path: tuple, allowed, required=()):
        if not isinstance(mapping, dict):
            self.fail(path, f"'{'.'.join(map(str, path)) or 'file'}' must be a mapping, not "
                            f"{type(mapping).__name__}")
        for key in mapping:
            if key not in allowed:
                self.fail(path + (key,), f"unknown key '{key}' in {'.'.join(map(str, path)) or 'the file'}"
                          f"{_suggest(key, allowed)} (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in mapping:
                self.fail(path, f"'{'.'.join(map(str, path)) or 'the file'}' needs '{key}'")

    def load(self) -> RuleTable:
        data = self.doc.data
        if data is None:
            self.fail((), "the rules file is empty")
        self.keys(data, (), ("rules_version", "thresholds", "strategies", "strategy_table", "modifiers"),
                  required=("rules_version", "strategies", "strategy_table"))
        version = data["rules_version"]
        if version != RULES_VERSION:
            self.fail(("rules_version",), f"rules_version {_short(version)} is not supported; this graft reads "
                                          f"rules_version {RULES_VERSION}")
        self.thresholds = self.load_thresholds(data.get("thresholds") or {})
        strategies = self.load_strategies(data["strategies"])
        table = data["strategy_table"]
        self.keys(table, ("strategy_table",), ("hit_policy", "rules"), required=("hit_policy", "rules"))
        policy = table["hit_policy"]
        if policy not in HIT_POLICIES:
            self.fail(("strategy_table", "hit_policy"), f"hit_policy '{policy}' is not one of "
                      f"{', '.join(HIT_POLICIES)}{_suggest(policy, HIT_POLICIES)}")
        srules = self.load_rules(table["rules"], ("strategy_table", "rules"), "strategy", strategies)
        mods = data.get("modifiers") or {"rules": []}
        self.keys(mods, ("modifiers",), ("rules",), required=("rules",))
        mrules = self.load_rules(mods["rules"], ("modifiers", "rules"), "modifier", strategies)
        return RuleTable(version, self.thresholds, strategies, srules, mrules, policy, self.doc.source,
                         hashlib.sha256(_canonical(data).encode()).hexdigest(), self.doc,
                         {k: self.thresholds[k].value for k in self.overrides})

    def load_thresholds(self, raw) -> dict[str, Threshold]:
        path = ("thresholds",)
        if not isinstance(raw, dict):
            self.fail(path, "thresholds must be a mapping of name -> {value, doc}")
        out = {}
        for name, spec in raw.items():
            p = path + (name,)
            if not isinstance(name, str):
                self.fail(p, f"threshold name {name!r} must be a string")
            if not isinstance(spec, dict):
                spec = {"value": spec}
            else:
                self.keys(spec, p, ("value", "doc"), required=("value",))
            value = spec["value"]
            if not _is_number(value):
                self.fail(p, f"threshold '{name}' must be a finite number, not {_short(value)}")
            out[name] = Threshold(name, value, str(spec.get("doc", "")), self.doc.line(p))
        for name, value in self.overrides.items():
            if name not in out:
                raise RulesError(f"--set {name}=...: no threshold named '{name}' in {self.doc.source}"
                                 f"{_suggest(name, out)}")
            if not _is_number(value):
                shown = str(value) if len(str(value)) <= 60 else f"{str(value)[:57]}..."
                raise RulesError(f"--set {name}={shown}: a threshold must be a number (finite, not NaN)")
            out[name].value = value
        return out

    def load_strategies(self, raw) -> dict[str, dict]:
        path = ("strategies",)
        if not isinstance(raw, dict) or not raw:
            self.fail(path, "strategies must be a non-empty mapping of name -> definition")
        for name, spec in raw.items():
            p = path + (name,)
            if not isinstance(name, str):
                self.fail(p, f"strategy name {name!r} must be a string")
            self.keys(spec, p, ("doc", "cut", "freeze_bn", "head", "phases", "fallback"),
                      required=("cut", "phases"))
            if spec["cut"] not in CUTS:
                self.fail(p + ("cut",), f"cut '{spec['cut']}' is not one of {', '.join(CUTS)}"
                          f"{_suggest(spec['cut'], CUTS)}")
            if not isinstance(spec["phases"], list) or not spec["phases"]:
                self.fail(p + ("phases",), "phases must be a non-empty list")
            for i, phase in enumerate(spec["phases"]):
                pp = p + ("phases", i)
                self.keys(phase, pp, PHASE_KEYS, required=("name", "trainable", "epochs", "learning_rate"))
                if phase["trainable"] not in TRAINABLE:
                    self.fail(pp + ("trainable",), f"trainable '{phase['trainable']}' is not one of "
                              f"{', '.join(TRAINABLE)}{_suggest(phase['trainable'], TRAINABLE)}")
                for key in ("epochs", "learning_rate"):
                    if not _is_number(phase[key]) or phase[key] <= 0:
                        self.fail(pp + (key,), f"{key} must be a positive number, not {_short(phase[key])}")
                steps = phase.get("min_steps")
                if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                    self.fail(pp + ("min_steps",), f"min_steps must be a positive integer, not {steps!r}")
                for key, choices in (("schedule", SCHEDULES), ("solver", SOLVERS)):
                    if key in phase and phase[key] not in choices:
                        self.fail(pp + (key,), f"{key} '{phase[key]}' is not one of {', '.join(choices)}"
                                  f"{_suggest(str(phase[key]), choices)}")
            if "head" in spec:
                self.keys(spec["head"], p + ("head",), ("pooling", "hidden", "dropout"))
            if "fallback" in spec:
                self.keys(spec["fallback"], p + ("fallback",), ("scratch_trial_epochs", "margin", "min_images"),
                          required=("scratch_trial_epochs", "margin"))
        return raw

    def load_rules(self, raw, path: tuple, table: str, strategies: dict) -> list[Rule]:
        if not isinstance(raw, list):
            self.fail(path, f"{'.'.join(path)} must be a list of rules")
        rules, names = [], set()
        for i, spec in enumerate(raw):
            p = path + (i,)
            self.keys(spec, p, ("name", "when", "then", "reason"), required=("name", "then", "reason"))
            name = spec["name"]
            if not isinstance(name, str) or not name.strip():
                self.fail(p + ("name",), f"a rule name must be a non-empty string, not {_short(name)}")
            if name in names:
                self.fail(p + ("name",), f"rule name '{name}' is used twice; names must be unique")
            names.add(name)
            when = spec.get("when") or {}
            if not isinstance(when, dict):
                self.fail(p + ("when",), "when must be a mapping of fact -> {op: value}")
            conditions = []
            for fact, test in when.items():
                conditions.extend(self.load_conditions(fact, test, p + ("when", fact)))
            then = spec["then"]
            if table == "strategy":
                self.check_strategy_then(then, p + ("then",), strategies)
            else:
                self.check_modifier_then(then, p + ("then",))
            self.check_reason(spec["reason"], p + ("reason",))
            rules.append(Rule(name, table, conditions, then, str(spec["reason"]).strip(), self.doc.line(p)))
        return rules

    def load_conditions(self, fact: str, test, path: tuple) -> list[Condition]:
        if fact not in FACTS:
            self.fail(path, f"unknown fact '{fact}'{_suggest(fact, FACTS)}")
        spec = FACTS[fact]
        if not isinstance(test, dict) or not test:
            self.fail(path, f"the test of '{fact}' must be a mapping like {{lt: 1000}} or {{known: true}}")
        out = []
        for op, raw in test.items():
            p = path + (op,)
            if op not in OPS:
                self.fail(p, f"unknown operator '{op}'{_suggest(op, OPS)} (operators: {', '.join(OPS)})")
            value, ref = self.resolve_value(spec, op, raw, p)
            out.append(Condition(fact, op, value, ref, self.doc.line(p)))
        return out

    def resolve_value(self, spec: FactSpec, op: str, raw, path: tuple):
        if op == "known":
            if not isinstance(raw, bool):
                self.fail(path, f"known takes true or false, not {raw!r}")
            return raw, None
        if op in ("in", "not_in", "between"):
            if not isinstance(raw, list) or (op == "between" and len(raw) != 2):
                self.fail(path, f"{op} takes a list{' of two bounds' if op == 'between' else ''}, not {raw!r}")
            pairs = [self.scalar(spec, x, path) for x in raw]
            refs = [r for _, r in pairs]
            return [v for v, _ in pairs], (refs if any(refs) else None)
        return self.scalar(spec, raw, path)

    def scalar(self, spec: FactSpec, raw, path: tuple):
        if spec.kind in ("int", "float"):
            if isinstance(raw, str):
                if raw not in self.thresholds:
                    self.fail(path, f"'{raw}' is not a threshold{_suggest(raw, self.thresholds)} "
                              f"(a number or one of: {', '.join(self.thresholds)})")
                return self.thresholds[raw].value, raw
            if not _is_number(raw):
                self.fail(path, f"'{spec.name}' is a number; {_short(raw)} cannot be compared with it "
                          "(a finite number or a threshold name is needed)")
            return raw, None
        if spec.kind == "bool":
            if not isinstance(raw, bool):
                self.fail(path, f"'{spec.name}' is true or false, not {raw!r}")
            return raw, None
        if spec.values and raw not in spec.values:
            self.fail(path, f"'{spec.name}' is one of {', '.join(spec.values)}, not {raw!r}"
                      f"{_suggest(raw, spec.values)}")
        return raw, None

    def check_strategy_then(self, then, path: tuple, strategies: dict):
        self.keys(then, path, STRATEGY_THEN, required=("strategy", "case"))
        for key in ("strategy", "runner_up"):
            if key in then and then[key] is not None and (not isinstance(then[key], str)
                                                          or then[key] not in strategies):
                self.fail(path + (key,), f"unknown strategy '{then[key]}'{_suggest(then[key], strategies)}")
        if then["case"] not in (0, 1, 2, 3, 4):
            self.fail(path + ("case",), f"case must be 1-4 (the classic cases) or 0, not {then['case']!r}")

    def check_modifier_then(self, then, path: tuple):
        self.keys(then, path, tuple(MODIFIER_ACTIONS))
        for key, value in then.items():
            kind = MODIFIER_ACTIONS[key]
            p = path + (key,)
            if isinstance(kind, tuple):
                if value not in kind:
                    self.fail(p, f"{key} is one of {', '.join(kind)}, not {value!r}{_suggest(value, kind)}")
            elif kind is dict:
                self.keys(value, p, AUGMENTATION_KEYS)
            elif kind is float and not _is_number(value):
                self.fail(p, f"{key} must be a finite number, not {_short(value)}")
            elif kind in (int, bool) and type(value) is not kind:
                self.fail(p, f"{key} must be {kind.__name__}, not {value!r}")

    def check_reason(self, reason, path: tuple):
        if not isinstance(reason, str) or not reason.strip():
            self.fail(path, "reason must be a sentence saying why the rule decides what it does")
        try:
            parsed = [(f, conv) for _, f, _, conv in string.Formatter().parse(reason) if f is not None]
        except ValueError as exc:
            self.fail(path, f"reason has a broken {{placeholder}}: {exc}")
        fields = [f for f, _ in parsed]
        for f, conv in parsed:
            if conv not in (None, "r", "s", "a"):  # format_reason would fail on it at advise time
                self.fail(path, f"reason placeholder '{{{f}!{conv}}}' has an unknown conversion '!{conv}'; "
                          "use !r, !s or !a, or none")
        names = list(FACTS) + list(self.thresholds)
        for f in fields:
            if f not in names:
                self.fail(path, f"reason placeholder '{{{f}}}' is not a fact or threshold{_suggest(f, names)}")


def load_rules(path: str | os.PathLike | None = None, overrides: dict[str, object] | None = None,
               text: str | None = None) -> RuleTable:
    """Load and check a rules file.

    Args:
        path: the rules file; None for the default `rules.yaml`.
        overrides: threshold name -> new value (what `--set name=value` gives).
        text: the file's content, when it does not come from disk (`path` is then only its name).

    Returns:
        The checked `RuleTable`.

    Raises:
        RulesError: `FILE:LINE: what is wrong; did you mean ...` for any error, including gaps and
            overlaps in the strategy table.
    """
    path = Path(path) if path is not None else DEFAULT_RULES
    if text is None:
        if not path.exists():
            raise RulesError(f"{path}: no such rules file; pass --rules with an existing file or leave it out "
                             "for the default rules")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RulesError(f"{path}: cannot read the rules file: {exc}") from None
    try:
        doc = load_yaml(text, str(path))
    except RulesError:
        raise
    except Exception as exc:  # noqa: BLE001 - the YAML layer raises InputError; keep the rules type
        raise RulesError(str(exc)) from None
    table = _Loader(doc, overrides or {}).load()
    check_table(table)
    return table


def parse_overrides(items: list[str] | None) -> dict[str, object]:
    """`["small_dataset=5000", ...]` -> `{"small_dataset": 5000}`; values parsed as YAML scalars."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise RulesError(f"--set {_short(item)}: expected name=value, e.g. --set small_dataset=5000")
        try:  # the bounded loader: a junk value is an error, never a crash or a billion laughs
            out[name.strip()] = load_yaml(value, "--set").data
        except InputError as exc:
            detail = str(exc).split(": ", 1)[-1]
            raise RulesError(f"--set {_short(item)}: the value is not a number ({detail})") from None
    return out


# --------------------------------------------------------------------------------------------- checks


def _axis(fact: str, rules: list[Rule]) -> list:
    """Representative values of one fact: each constant used, the values between and beyond them, and
    None when the fact can be unknown. Every region the conditions cut the axis into gets a point."""
    spec = FACTS[fact]
    if spec.kind == "bool":
        points: list = [False, True]
    elif spec.kind == "str":
        points = list(spec.values) or sorted({c.value for r in rules for c in r.conditions if c.fact == fact
                                              and isinstance(c.value, str)})
        points.append("__other__")
    else:
        consts = set()
        for r in rules:
            for c in r.conditions:
                if c.fact == fact and c.op != "known":
                    consts.update(c.value if isinstance(c.value, list) else [c.value])
        consts = sorted(consts)
        points = []
        if not consts:
            points = [0]
        step = 1 if spec.kind == "int" and all(float(c).is_integer() for c in consts) else None
        for i, c in enumerate(consts):
            if step:
                points += [c - 1, c, c + 1]
            else:
                lo = consts[i - 1] if i else c - max(abs(c), 1.0)
                points += [(lo + c) / 2, c]
        if consts and not step:
            points.append(consts[-1] + max(abs(consts[-1]), 1.0))
        points = sorted(set(points))
    if spec.nullable:
        points.append(None)
    return points


def check_table(table: RuleTable) -> None:
    """Gap and overlap checks of the strategy table (see the module docstring); raises RulesError."""
    rules = table.strategy_rules
    src = table.source
    if not rules:
        raise RulesError(f"{src}:{table.doc.line(('strategy_table', 'rules')) if table.doc else 1}: "
                         "the strategy table has no rules")
    facts = sorted({c.fact for r in rules for c in r.conditions})
    axes = [_axis(f, rules) for f in facts]
    total = 1
    for a in axes:
        total *= len(a)
    if total > _GAP_POINT_LIMIT:
        raise RulesError(f"{src}:{rules[0].line}: the strategy table uses too many distinct values "
                         f"({total} regions) to check for gaps; merge thresholds or split the table")
    wins = {r.name: 0 for r in rules}
    for values in itertools.product(*axes):
        point = dict(zip(facts, values))
        matched = [r for r in rules if r.matches(point)]
        if not matched:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            raise RulesError(f"{src}:{rules[-1].line}: gap in the strategy table: no rule matches {shown}; "
                             "add a rule for it or a catch-all rule with no 'when' at the end")
        if table.hit_policy == "unique" and len(matched) > 1:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
            raise RulesError(f"{src}:{matched[1].line}: overlap in the strategy table (hit_policy unique): "
                             f"rules '{matched[0].name}' (line {matched[0].line}) and '{matched[1].name}' both "
                             f"match {shown}; narrow one of them or use hit_policy: first")
        wins[matched[0].name] += 1
    for r in rules:
        if not wins[r.name]:
            raise RulesError(f"{src}:{r.line}: rule '{r.name}' can never win: every fact set it matches is "
                             "taken by a rule above it (hit_policy first); move it up or remove it")


def _string_keys(data):
    """`data` with every non-string key written as JSON writes it (`1` -> `"1"`), so that keys of
    mixed types still sort; data with string keys only is returned as it is."""
    import json

    if isinstance(data, dict):
        return {(k if isinstance(k, str) else json.dumps(k, default=str)): _string_keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_string_keys(v) for v in data]
    return data


def _canonical(data) -> str:
    import json

    return json.dumps(_string_keys(data), sort_keys=True, default=str)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (what the plan's provenance records)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = ["DEFAULT_RULES", "RULES_VERSION", "Condition", "ConditionTrace", "Decision", "Rule", "RuleTable",
           "RuleTrace", "Threshold", "check_table", "evaluate", "file_sha256", "format_reason", "load_rules",
           "parse_overrides"]
