"""The runner-up as a plan: the chosen plan with the runner-up strategy's phases, cut and fallback.

    alt = runner_up_plan(plan, table)     # -> Plan | None
    draw_plan(plan, "plan.png", runner_up=alt)

The runner-up's recipe lives in the rule table, so building its plan is the advisor's job; surgery
draws whatever plan it is given (`surgery.plan_drawing`). Importing this module registers
`runner_up_plan` with `graft.runner_up`, so `surgery.run(plan)` and `draw_plan(plan, path)` draw the runner-up from
the plan's rules file when the caller passes none (surgery never imports the advisor).
"""

from __future__ import annotations

import copy
from pathlib import Path

from advisor.rules import load_rules
from graft.errors import GraftError
from graft.plan import Fallback, Phase, Plan
from graft.runner_up import register_finder


def runner_up_plan(plan: Plan, table=None) -> Plan | None:
    """The plan as it would be with the runner-up strategy (its phases and cut), or None.

    Args:
        plan: the chosen plan (`plan.decision.runner_up` names the runner-up).
        table: the `RuleTable` the plan was made with; default: the rules file the plan's provenance
            names (None comes back when that file is gone).
    """
    runner = plan.decision.runner_up
    if not runner:
        return None
    if table is None:
        source = plan.provenance.rules
        if not source or not Path(source).is_file():
            return None
        try:
            table = load_rules(source, plan.provenance.overrides or None)
        except GraftError:
            return None
    strategy = table.strategies.get(runner)
    if strategy is None:
        return None
    alt = copy.deepcopy(plan)
    alt.decision.strategy = runner
    alt.decision.case = 0
    alt.decision.runner_up = None
    alt.surgery.cut = plan.facts.get("best_cut_layer") if strategy.get("cut") == "best" else None
    alt.training.phases = [Phase(name=p["name"], trainable=p["trainable"], epochs=int(p["epochs"]),
                                 learning_rate=float(p["learning_rate"]), weights=p.get("weights", "pretrained"))
                           for p in strategy["phases"]]
    fb = strategy.get("fallback")
    alt.training.fallback = Fallback(fb["scratch_trial_epochs"], float(fb["margin"])) if fb else None
    return alt


register_finder(runner_up_plan)
