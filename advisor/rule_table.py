"""The rules format and a loaded rule table: thresholds, conditions, rules, strategies.

What a rules file may say (operators, hit policies, strategy and phase keys, modifier actions) is
defined here; `advisor.rules` loads and checks a file into a `RuleTable`, and `advisor.decide`
evaluates one over facts. Format: docs/rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graft.yamlio import YamlDoc

RULES_VERSION = 1
DEFAULT_RULES = Path(__file__).resolve().parents[1] / "rules.yaml"
OPS = ("lt", "le", "gt", "ge", "eq", "ne", "in", "not_in", "between", "known")
HIT_POLICIES = ("first", "unique")
STRATEGY_THEN = ("strategy", "case", "runner_up")
CUTS = ("top", "best")
SCHEDULES = ("constant", "cosine")
SOLVERS = ("auto", "convex", "gradient")
TRAINABLE = ("head", "all", "top_third", "top_half", "from_cut")
PHASE_KEYS = ("name", "trainable", "epochs", "learning_rate", "backbone_learning_rate", "optimizer",
              "early_stopping_patience", "weights", "min_steps", "schedule", "solver")
MODIFIER_ACTIONS = {
    "class_weights": ("balanced",),
    "augmentation": dict,
    "channels": ("gray_to_rgb", "rgb_to_gray"),
    "resolution": ("upsample", "downsample"),
    "epochs_scale": float,
    "batch_size": int,
    "validation_split": float,
    "skip_corrupt": bool,
}
AUGMENTATION_KEYS = ("flip", "rotation", "zoom", "contrast", "translation")
_GAP_POINT_LIMIT = 500_000


@dataclass
class Threshold:
    """A named number rules compare facts with."""

    name: str
    value: float
    doc: str = ""
    line: int = 0


@dataclass
class Condition:
    """`fact op value`; `threshold` names the threshold the value came from, if any."""

    fact: str
    op: str
    value: object
    threshold: str | list | None = None
    line: int = 0

    def test(self, actual) -> bool:
        """Whether `actual` satisfies the condition; an unknown fact satisfies only `known: false`."""
        if self.op == "known":
            return (actual is not None) == bool(self.value)
        if actual is None:
            return False
        v = self.value
        if self.op == "lt":
            return actual < v
        if self.op == "le":
            return actual <= v
        if self.op == "gt":
            return actual > v
        if self.op == "ge":
            return actual >= v
        if self.op == "eq":
            return actual == v
        if self.op == "ne":
            return actual != v
        if self.op == "in":
            return actual in v
        if self.op == "not_in":
            return actual not in v
        if self.op == "between":
            return v[0] <= actual <= v[1]
        raise AssertionError(self.op)

    def text(self) -> str:
        """`images < small_dataset (10000)` - how the report prints it."""
        sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!=", "in": "in",
               "not_in": "not in", "between": "between", "known": "known"}[self.op]
        if self.op == "known":
            return f"{self.fact} is {'known' if self.value else 'unknown'}"
        if self.threshold:
            ref = self.threshold if isinstance(self.threshold, str) else "..".join(map(str, self.threshold))
            return f"{self.fact} {sym} {ref} ({_fmt(self.value)})"
        return f"{self.fact} {sym} {_fmt(self.value)}"


@dataclass
class Rule:
    """One row of a decision table."""

    name: str
    table: str
    conditions: list[Condition]
    then: dict
    reason: str
    line: int = 0

    def matches(self, facts: dict) -> bool:
        return all(c.test(facts.get(c.fact)) for c in self.conditions)


@dataclass
class RuleTable:
    """A loaded, checked rules file."""

    version: int
    thresholds: dict[str, Threshold]
    strategies: dict[str, dict]
    strategy_rules: list[Rule]
    modifier_rules: list[Rule]
    hit_policy: str
    source: str
    sha256: str
    doc: YamlDoc | None = field(default=None, repr=False)
    overrides: dict[str, float] = field(default_factory=dict)

    def threshold(self, name: str) -> float:
        return self.thresholds[name].value


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "unknown"
    return str(v)
