"""Where a plan's runner-up comes from when a caller does not pass one: a finder registered from above.

The runner-up is a rule-table answer (the advisor's), and `surgery.plan_drawing` draws it beside the
plan; imports run one way, so the advisor registers its finder here and surgery asks here:

    register_finder(runner_up_plan)          # advisor.runner_up does this when it is imported
    alt = find(plan)                         # surgery.plan_drawing: a Plan, or None
"""

from __future__ import annotations

from collections.abc import Callable

from graft.plan import Plan

Finder = Callable[[Plan], "Plan | None"]

_FINDERS: list[Finder] = []


def register_finder(finder: Finder) -> None:
    """Register `finder(plan) -> Plan | None`, asked for the runner-up when a caller passes none."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def find(plan: Plan) -> Plan | None:
    """The runner-up plan the first registered finder gives, or None (none registered, or none found)."""
    for finder in _FINDERS:
        alt = finder(plan)
        if alt is not None:
            return alt
    return None


__all__ = ["find", "register_finder"]
