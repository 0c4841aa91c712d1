"""advisor: data set facts, how the pretrained network sees the data, the rule table, and the plan.

    from advisor import advise
    advice = advise("dataset/", model="model.keras")      # -> Advice: facts, decision + trace, plan

`advisor.advise` is the function (its module is `advisor.advise` in `sys.modules`; import helpers
from it with `from advisor.advise import ...`).
"""

from advisor.advise import Advice, advise
from advisor.dataset import DatasetFacts, list_images, scan
from advisor.rules import Decision, RuleTable, evaluate, load_rules
from advisor.runner_up import runner_up_plan  # also registers it as surgery's runner-up finder
from graft.plan import Plan, dump_plan, load_plan, save_plan

__all__ = [
    "Advice",
    "DatasetFacts",
    "Decision",
    "Plan",
    "RuleTable",
    "advise",
    "dump_plan",
    "evaluate",
    "list_images",
    "load_plan",
    "load_rules",
    "runner_up_plan",
    "save_plan",
    "scan",
]
