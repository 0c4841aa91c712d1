"""Evaluate a rule table over facts: exactly one strategy by the hit policy, the collected modifiers,
and a trace of every rule and condition with its actual value (`Decision`)."""

from __future__ import annotations

import copy
import string
from dataclasses import asdict, dataclass

from advisor.facts import FACTS
from advisor.rule_table import Rule, RuleTable, _fmt
from graft.errors import RulesError


@dataclass
class ConditionTrace:
    """One condition of one rule, evaluated."""

    fact: str
    op: str
    expected: object
    threshold: str | list | None
    actual: object
    passed: bool
    text: str


@dataclass
class RuleTrace:
    """One rule, evaluated: every condition, whether it matched, its reason when it did."""

    table: str
    name: str
    line: int
    matched: bool
    conditions: list[ConditionTrace]
    then: dict
    reason: str = ""

    @property
    def failed(self) -> list[ConditionTrace]:
        return [c for c in self.conditions if not c.passed]


@dataclass
class Decision:
    """What the rules decided, and why.

    Attributes:
        strategy: the winning strategy name; `case` its classic case (1-4, 0 = none of them).
        rule: the winning rule; `reason` its reason with the facts filled in.
        runner_up: the strategy the rule names as the next best choice (or None).
        also_matched: other strategy rules that matched (lower priority under `first`).
        near_misses: strategy rules that failed exactly one condition: `{rule, condition, actual}`.
        modifiers: the collected actions of every matching modifier rule (later rules override
            earlier ones key by key; `augmentation` dicts are merged).
        modifier_rules: `(rule, reason)` of each modifier rule that matched.
        trace: every rule of both tables, evaluated.
        hit_policy: the strategy table's hit policy.
    """

    strategy: str
    case: int
    rule: str
    reason: str
    runner_up: str | None
    also_matched: list[str]
    near_misses: list[dict]
    modifiers: dict
    modifier_rules: list[tuple[str, str]]
    trace: list[RuleTrace]
    hit_policy: str

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy, "case": self.case, "rule": self.rule, "reason": self.reason,
            "runner_up": self.runner_up, "also_matched": list(self.also_matched),
            "near_misses": [dict(m) for m in self.near_misses], "modifiers": copy.deepcopy(self.modifiers),
            "modifier_rules": [{"rule": r, "reason": why} for r, why in self.modifier_rules],
            "hit_policy": self.hit_policy, "trace": [_rule_trace_dict(t) for t in self.trace],
        }


def _rule_trace_dict(t: RuleTrace) -> dict:
    d = asdict(t)
    for c in d["conditions"]:
        c["actual"] = _plain(c["actual"])
    return d


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v


class _Facts(dict):
    def __missing__(self, key):
        return None


class _ReasonFormatter(string.Formatter):
    """`str.format` where an unknown value (or one its format spec does not fit) reads plainly."""

    def format_field(self, value, format_spec):
        if value is None:
            return "unknown"
        try:
            return format(value, format_spec)
        except (ValueError, TypeError):
            return _fmt(value)


def format_reason(reason: str, facts: dict, table: RuleTable) -> str:
    """Fill `{fact}` and `{threshold}` placeholders; unknown facts read 'unknown', the others keep
    their format spec (`{similarity:.2f}`)."""
    values = _Facts(facts)
    values.update({k: t.value for k, t in table.thresholds.items()})
    return _ReasonFormatter().vformat(reason, (), values)


def _trace(rule: Rule, facts: dict, table: RuleTable) -> RuleTrace:
    conds = [ConditionTrace(c.fact, c.op, c.value, c.threshold, _plain(facts.get(c.fact)),
                            c.test(facts.get(c.fact)), c.text()) for c in rule.conditions]
    matched = all(c.passed for c in conds)
    return RuleTrace(rule.table, rule.name, rule.line, matched, conds, copy.deepcopy(rule.then),
                     format_reason(rule.reason, facts, table) if matched else "")


def evaluate(table: RuleTable, facts: dict) -> Decision:
    """Run both tables over `facts`.

    Args:
        table: a loaded `RuleTable`.
        facts: fact name -> value (missing facts are unknown).

    Returns:
        The `Decision` with its full trace.
    """
    facts = {name: facts.get(name) for name in FACTS} | {k: v for k, v in facts.items() if k not in FACTS}
    strace = [_trace(r, facts, table) for r in table.strategy_rules]
    matched = [t for t in strace if t.matched]
    if not matched:  # the load-time gap check makes this unreachable for facts inside the checked space
        raise RulesError(f"{table.source}: no strategy rule matches these facts; add a catch-all rule")
    if table.hit_policy == "unique" and len(matched) > 1:
        raise RulesError(f"{table.source}:{matched[1].line}: rules '{matched[0].name}' and '{matched[1].name}' "
                         "both match (hit_policy unique)")
    win = matched[0]
    near = [{"rule": t.name, "line": t.line, "condition": t.failed[0].text,
             "actual": t.failed[0].actual} for t in strace if len(t.failed) == 1]
    mtrace = [_trace(r, facts, table) for r in table.modifier_rules]
    modifiers: dict = {}
    fired = []
    for t in mtrace:
        if not t.matched:
            continue
        fired.append((t.name, t.reason))
        for key, value in t.then.items():
            if key == "augmentation":
                modifiers.setdefault("augmentation", {}).update(value)
            else:
                modifiers[key] = value
    return Decision(win.then["strategy"], win.then["case"], win.name, win.reason, win.then.get("runner_up"),
                    [t.name for t in matched[1:]], near, modifiers, fired, strace + mtrace, table.hit_policy)


__all__ = ["ConditionTrace", "Decision", "RuleTrace", "evaluate", "format_reason"]
