"""How good is the advice? Score a rules file on the real-data bench, offline.

bench/transfer.py trains every strategy of rules.yaml on six real domains (10 and 60 training images
per class, several seeds) and records, per (task, n, seed), what `advise` measured on the training
images (bench/results/measurements.jsonl). This script replays a rules file on those measurements
and scores its choices against what each strategy really reached:

- **oracle**: per (task, n), the strategy with the best test accuracy, mean over the seeds;
- **regret**: points below the oracle of the strategy the rules choose (the choice may differ per
  seed: each seed's choice is scored on that seed's run);
- **time**: wall time of the chosen strategy's run relative to "always finetune_all" on the same runs;
- **static defaults**: "always X" for every strategy, scored the same way;
- **leave-one-domain-out (LODO)**: for each domain, the rules' tunable thresholds are re-chosen on
  the other domains (coordinate search over the midpoints between the facts' observed values,
  minimising mean regret, then time; a threshold leaves its documented value only for a gain of more
  than 0.5 point), and the table is scored on the held-out domain with them. The
  gap between the in-sample and LODO regret is what tuning to these six domains buys.

    python bench/advice.py                                 # rules.yaml
    python bench/advice.py --rules my_rules.yaml --n 10    # another table, one size
    python bench/advice.py --tune similar,cut_gain         # thresholds LODO may re-choose
    python bench/advice.py --json                          # machine-readable

The recipes suite (`--suite recipes`) scores the same way bench/recipes.py's rows: eleven domains x
two networks (efficientnet_lite0, mobilenet_v1), n in {10, 60}, seeds 0-2, graft's five strategies
(linear_probe, truncate_probe, lp_ft_top, lp_ft, lp_ft_cut) and the plain reference variants. Per network:

- per (task, n): the oracle (the best graft strategy, mean over the seeds that have every strategy and
  a measurement), the best plain reference variant of any strategy, the rules' choice per seed
  (replayed: the rules file evaluated on the stored measurement's facts, not the choice recorded when
  the bench ran), its accuracy, regret and points below the best plain variant;
- policies: the rules as given (in-sample: their thresholds were set seeing these domains), the rules
  LODO (every tunable threshold re-fitted without the scored domain, on this network's other domains
  and, a second row, on both networks' other domains), the oracle and every "always X": mean regret,
  worst domain (mean over its sizes), groups within 1 point, time / always lp_ft (mean of per-group
  ratios, and total seconds / total lp_ft seconds), points below the best plain variant;
- regret per domain, so one domain's collapse is visible;
- leave-one-network-out: thresholds fitted on every task of one network, scored on the other, beside
  the same fit made on the scored network itself.

Only (network, task, n, seed) runs with every strategy's graft row and a measurement are scored; the
coverage line says how many of the grid's 132 that is, and which runs are partial.

    python bench/advice.py --suite recipes                 # bench/results/recipes*.jsonl
    python bench/advice.py --suite recipes --network mobilenet_v1 --n 10 --json
    python bench/advice.py --suite recipes --coverage      # the expected accuracy ranges, checked

It trains nothing: everything comes from the result files.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from advisor.facts import derived  # noqa: E402
from advisor.measure import facts_from_measurement  # noqa: E402
from advisor.rules import RuleTable, evaluate, load_rules  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "transfer.jsonl"
MEASUREMENTS = ROOT / "bench" / "results" / "measurements.jsonl"
TRIALS = ROOT / "bench" / "results" / "trial.jsonl"
#: The time baseline: "always fine-tune everything".
BASELINE = "finetune_all"
#: finetune_all and lp_ft are the same recipe in rules.yaml (convex head, then every layer at 1e-4);
#: where a size was run without finetune_all, lp_ft's runs stand in for its time and accuracy.
SAME_RECIPE = {"finetune_all": "lp_ft"}
#: LODO moves a threshold only when the training domains' mean regret drops by more than this many
#: points: single test sets of 40 images per class are noisy by +-3 points.
MIN_GAIN = 0.5


@dataclass
class Group:
    """One (task, n): per seed, each strategy's accuracy and seconds, and the facts advise saw."""

    task: str
    n: int
    seeds: list[int]
    acc: dict[int, dict[str, float]]
    sec: dict[int, dict[str, float]]
    facts: dict[int, dict]
    network: str = ""
    baseline: str = BASELINE
    #: the recipes suite: the best plain reference variant, {"strategy", "variant", "accuracy", "seconds"}
    plain: dict | None = None
    #: the rule choice recorded when the bench ran, per seed (the replayed one may differ)
    recorded: dict | None = None
    _oracle: dict = field(default_factory=dict, repr=False, compare=False)

    def mean_acc(self, strategy: str) -> float:
        return float(np.mean([self.acc[s][strategy] for s in self.seeds]))

    def oracle(self, strategies) -> str:
        key = tuple(strategies)
        if key not in self._oracle:  # the accuracies never change: the threshold search asks thousands of times
            self._oracle[key] = max(strategies, key=self.mean_acc)
        return self._oracle[key]


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_groups(results: Path = RESULTS, measurements: Path = MEASUREMENTS,
                strategies: tuple[str, ...] | None = None) -> tuple[list[Group], tuple[str, ...]]:
    """Groups with, for every seed kept, a measurement and a run of every strategy considered.

    The strategies considered are those run in every group (`strategies` narrows them)."""
    last = {}
    for r in _rows(results):
        if r.get("arm") == "graft":
            last[(r["task"], r["n"], r["seed"], r["strategy"])] = r
    meas = {(m["task"], m["n"], m["seed"]): m for m in _rows(measurements)}
    for (task, n, seed, s), r in list(last.items()):
        for alias, same in SAME_RECIPE.items():
            if s == same and (task, n, seed, alias) not in last:
                last[(task, n, seed, alias)] = r
    keys = sorted({(k[0], k[1]) for k in last})
    per_group = {}
    for task, n in keys:
        seeds = sorted({k[2] for k in last if k[:2] == (task, n) and (task, n, k[2]) in meas})
        have = {sd: {k[3] for k in last if k[:3] == (task, n, sd)} for sd in seeds}
        per_group[(task, n)] = (seeds, have)
    # Strategies run everywhere a baseline run exists (a group without one cannot be timed).
    full = [h for _, hv in per_group.values() for h in hv.values() if BASELINE in h]
    common = set.intersection(*full) if full else set()
    if strategies:
        common &= set(strategies)
    order = ("linear_probe", "truncate_probe", "lp_ft_top", "lp_ft", "finetune_all", "finetune_or_scratch")
    chosen = tuple(s for s in order if s in common) + tuple(sorted(common - set(order)))
    groups = []
    for (task, n), (seeds, have) in per_group.items():
        seeds = [sd for sd in seeds if set(chosen) | {BASELINE} <= have[sd]]
        if not seeds:
            continue
        acc = {sd: {s: last[(task, n, sd, s)]["accuracy"] for s in chosen} for sd in seeds}
        sec = {sd: {s: last[(task, n, sd, s)]["seconds"] for s in set(chosen) | {BASELINE}} for sd in seeds}
        for sd in seeds:  # one recipe run twice: its time is the mean of both runs (less noise)
            for alias, same in SAME_RECIPE.items():
                if alias in sec[sd] and same in sec[sd]:
                    sec[sd][alias] = sec[sd][same] = (last[(task, n, sd, alias)]["seconds"]
                                                      + last[(task, n, sd, same)]["seconds"]) / 2
        facts = {sd: facts_of(meas[(task, n, sd)]) for sd in seeds}
        groups.append(Group(task, n, seeds, acc, sec, facts))
    return groups, chosen


def facts_of(m: dict) -> dict:
    """The facts the rules read for one stored measurement: the data facts advise recorded, with every
    measured fact re-derived from the embedding measurement by `facts_from_measurement` (so a change to
    that derivation, or an edited rules file, is scored without re-running the bench)."""
    f = dict(m["facts"])
    if m.get("embedding"):
        emb = facts_from_measurement(m["embedding"])
        f.update({k: v for k, v in emb.items() if k != "best_cut_score" or v is not None})
        f["top_cut_gain"] = emb["cut_gain"]
    return derived(f)


def with_thresholds(table: RuleTable, values: dict[str, float]) -> RuleTable:
    """A copy of the table with some thresholds set (as `--set` would, without reloading the file)."""
    # Only what is changed is copied (thresholds, rules, conditions): the YAML document, strategies and
    # each rule's `then` are shared and never changed here. The threshold search makes thousands of copies.
    out = copy.copy(table)
    out.thresholds = {k: copy.copy(t) for k, t in table.thresholds.items()}

    def rules(rs):
        return [dataclasses.replace(r, conditions=[copy.copy(c) for c in r.conditions]) for r in rs]

    out.strategy_rules, out.modifier_rules = rules(table.strategy_rules), rules(table.modifier_rules)
    for name, value in values.items():
        out.thresholds[name].value = value
        for rule in out.strategy_rules + out.modifier_rules:
            for cond in rule.conditions:
                if cond.threshold == name:
                    cond.value = value
    return out


def choices(table: RuleTable, group: Group) -> dict[int, str]:
    return {sd: evaluate(table, group.facts[sd]).strategy for sd in group.seeds}


def score(group: Group, policy: dict[int, str], strategies) -> tuple[float, float]:
    """(regret in points, time relative to always-BASELINE) of per-seed choices on one group."""
    oracle = group.mean_acc(group.oracle(strategies))
    k = len(group.seeds)
    acc = sum(group.acc[sd][policy[sd]] for sd in group.seeds) / k
    base = sum(group.sec[sd][group.baseline] for sd in group.seeds) / k
    sec = sum(group.sec[sd][policy[sd]] for sd in group.seeds) / k
    return (oracle - acc) * 100, sec / base


def strategy_of(table: RuleTable, facts: dict) -> str:
    """The strategy `evaluate(table, facts).strategy` names, without building the trace: the first
    strategy rule whose conditions hold (the loader rejects overlaps under hit_policy unique, so the
    first match is the only one there). Used where thousands of threshold settings are tried."""
    for rule in table.strategy_rules:
        if rule.matches(facts):
            return rule.then["strategy"]
    raise AssertionError(f"{table.source}: no strategy rule matches")  # the load-time gap check forbids it


def fast_choices(table: RuleTable, group: Group) -> dict[int, str]:
    return {sd: strategy_of(table, group.facts[sd]) for sd in group.seeds}


def _evaluate_table(table: RuleTable, groups: list[Group], strategies) -> tuple[float, float]:
    scores = [score(g, fast_choices(table, g), strategies) for g in groups]
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)


def tunable(table: RuleTable) -> dict[str, list[str]]:
    """Thresholds the strategy rules compare measured facts with: name -> facts."""
    out: dict[str, list[str]] = {}
    for rule in table.strategy_rules:
        for cond in rule.conditions:
            if isinstance(cond.threshold, str) and cond.op in ("lt", "le", "gt", "ge"):
                out.setdefault(cond.threshold, [])
                if cond.fact not in out[cond.threshold]:
                    out[cond.threshold].append(cond.fact)
    return out


def fit_thresholds(table: RuleTable, groups: list[Group], strategies, names: list[str],
                   passes: int = 2, min_gain: float = MIN_GAIN) -> dict[str, float]:
    """Coordinate search: each threshold over the midpoints of its facts' observed values (and its
    current value), keeping the value with the lowest mean regret, then time, then the smallest move;
    a threshold moves only when that lowers the mean regret by more than `min_gain` points."""
    facts_of = tunable(table)
    values = {name: table.threshold(name) for name in names}
    for _ in range(passes):
        for name in names:
            seen = sorted({g.facts[sd][f] for g in groups for sd in g.seeds for f in facts_of.get(name, [])
                           if g.facts[sd].get(f) is not None})
            cands = {values[name], *((a + b) / 2 for a, b in zip(seen, seen[1:]))}
            if seen:
                cands |= {seen[0] - 1e-6, seen[-1] + 1e-6}
            best = None
            current = _evaluate_table(with_thresholds(table, values), groups, strategies)
            for v in sorted(cands):
                trial = with_thresholds(table, {**values, name: v})
                regret, t = _evaluate_table(trial, groups, strategies)
                key = (round(regret, 6), round(t, 6), abs(v - table.threshold(name)))
                if best is None or key < best[0]:
                    best = (key, v)
            # Move only for a clear gain: a smaller one is within the noise of a few groups.
            if current[0] - best[0][0] > min_gain:
                values[name] = best[1]
    return values


def trial_policies(groups: list[Group], trials: list[dict], strategies,
                   table: RuleTable | None = None) -> dict[str, list]:
    """"rules + trial (B s)" per budget B: each seed's trial winner, scored on that seed's run, with the
    trial's seconds added to the chosen run's. Scored on the seeds that have a trial row (the oracle
    and the rules' own regret, for comparison, on the same seeds)."""
    out: dict[str, list] = {}
    by_budget: dict[float, dict] = {}
    for t in trials:
        by_budget.setdefault(t["budget"], {})[(t["task"], t["n"], t["seed"])] = t
    for budget, rows in sorted(by_budget.items()):
        scored = []
        for g in groups:
            seeds = [sd for sd in g.seeds if (g.task, g.n, sd) in rows]
            picks = {sd: rows[(g.task, g.n, sd)]["winner"] for sd in seeds}
            if not seeds or not all(p in strategies for p in picks.values()):
                continue
            sub = Group(g.task, g.n, seeds, g.acc, g.sec, g.facts, g.network, g.baseline)
            regret, _ = score(sub, picks, strategies)
            base = float(np.mean([g.sec[sd][g.baseline] for sd in seeds]))
            sec = float(np.mean([g.sec[sd][picks[sd]] + rows[(g.task, g.n, sd)]["seconds"] for sd in seeds]))
            rules_regret = score(sub, choices(table, sub), strategies)[0] if table is not None else float("nan")
            scored.append((regret, sec / base, g.task, g.n, sum(rows[(g.task, g.n, sd)]["switched"] for sd in seeds),
                           rules_regret, len(seeds)))
        if scored:
            out[f"rules + trial ({budget:g} s)"] = scored
    return out


def report(table: RuleTable, groups: list[Group], strategies, tune: list[str],
           trials: list[dict] | None = None) -> dict:
    """Everything the markdown table shows, as data."""
    rows = []
    for g in groups:
        policy = choices(table, g)
        regret, t = score(g, policy, strategies)
        oracle = g.oracle(strategies)
        rows.append({"task": g.task, "n": g.n, "seeds": g.seeds, "oracle": oracle,
                     "oracle_acc": round(g.mean_acc(oracle), 4),
                     "accuracy": {s: round(g.mean_acc(s), 4) for s in strategies},
                     "choice": [policy[sd] for sd in g.seeds], "regret": round(regret, 2), "time": round(t, 3),
                     "facts": {k: g.facts[g.seeds[0]].get(k) for k in
                               ("similarity", "shift_ratio", "probe_lift", "top_cut_gain", "images_per_class_median")}})
    lodo = {}
    domains = sorted({g.task for g in groups})
    if tune and len(domains) > 1:
        for d in domains:
            train = [g for g in groups if g.task != d]
            fitted = fit_thresholds(table, train, strategies, tune)
            held = with_thresholds(table, fitted)
            for g in groups:
                if g.task == d:
                    regret, t = score(g, choices(held, g), strategies)
                    lodo[(g.task, g.n)] = {"regret": round(regret, 2), "time": round(t, 3),
                                           "thresholds": {k: round(v, 4) for k, v in fitted.items()}}
        for r in rows:
            r["lodo"] = lodo.get((r["task"], r["n"]))
    policies = {"rules": [(r["regret"], r["time"]) for r in rows]}
    for s in strategies:
        policies[f"always {s}"] = [score(g, {sd: s for sd in g.seeds}, strategies) for g in groups]
    summary = {name: {"mean_regret": round(float(np.mean([x[0] for x in v])), 2),
                      "within_1": int(sum(x[0] <= 1 for x in v)), "groups": len(v),
                      "time": round(float(np.mean([x[1] for x in v])), 3)} for name, v in policies.items()}
    for name, v in trial_policies(groups, trials or [], strategies, table).items():
        summary[name] = {"mean_regret": round(float(np.mean([x[0] for x in v])), 2),
                         "within_1": int(sum(x[0] <= 1 for x in v)), "groups": len(v),
                         "time": round(float(np.mean([x[1] for x in v])), 3),
                         "switched": int(sum(x[4] for x in v)), "runs": int(sum(x[6] for x in v)),
                         "rules_on_same_groups": round(float(np.mean([x[5] for x in v])), 2)}
    if lodo:
        summary["rules, leave-one-domain-out"] = {
            "mean_regret": round(float(np.mean([v["regret"] for v in lodo.values()])), 2),
            "within_1": int(sum(v["regret"] <= 1 for v in lodo.values())), "groups": len(lodo),
            "time": round(float(np.mean([v["time"] for v in lodo.values()])), 3)}
    return {"rules": str(table.source), "strategies": list(strategies), "tuned": tune, "groups": rows,
            "summary": summary}


def markdown(rep: dict) -> str:
    out = [f"Rules: `{Path(rep['rules']).name}`; strategies scored: {', '.join(rep['strategies'])}; "
           f"LODO re-chooses: {', '.join(rep['tuned']) or 'nothing'}.", "",
           "| task | n/class | seeds | oracle (acc) | rules' choice per seed | regret | time / finetune_all | LODO regret |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rep["groups"]:
        lodo = r.get("lodo")
        out.append(f"| {r['task']} | {r['n']} | {','.join(map(str, r['seeds']))} | {r['oracle']} ({r['oracle_acc']:.3f}) | "
                   f"{', '.join(r['choice'])} | {r['regret']:.1f} | {r['time']:.2f} | "
                   f"{'-' if lodo is None else format(lodo['regret'], '.1f')} |")
    out += ["", "| policy | mean regret (points) | within 1 point | wall time / always finetune_all |",
            "|---|---|---|---|"]
    for name, s in rep["summary"].items():
        extra = (f" ({s['runs']} runs, switched {s['switched']}; the rules alone on the same runs: "
                 f"{s['rules_on_same_groups']:.2f})" if "switched" in s else "")
        out.append(f"| {name}{extra} | {s['mean_regret']:.2f} | {s['within_1']}/{s['groups']} | {s['time']:.2f} |")
    out += ["", "Accuracy per strategy (mean over seeds) and the facts the rules read (first seed):", "",
            "| task | n | " + " | ".join(rep["strategies"]) + " | similarity | shift_ratio | probe_lift | top_cut_gain |",
            "|---|---|" + "---|" * (len(rep["strategies"]) + 4)]
    for r in rep["groups"]:
        f = r["facts"]
        cells = " | ".join(f"{r['accuracy'][s]:.3f}" for s in rep["strategies"])
        out.append(f"| {r['task']} | {r['n']} | {cells} | " + " | ".join(
            "-" if f.get(k) is None else f"{f[k]:.3f}" for k in ("similarity", "shift_ratio", "probe_lift", "top_cut_gain")) + " |")
    return "\n".join(out)


def calibrate(table: RuleTable, results: Path, measurements: Path, forward_rate: float | None) -> dict:
    """The numbers `advisor.expect` reads: per strategy, the 10th/90th percentile of (test accuracy -
    the measured best-cut probe score) over every graft run with a measurement; and the wall-time fit
    seconds = (overhead + per_pass x passes) / forward_rate (least squares over the same runs, in
    seconds, then scaled by the forward rate advise measured on the bench machine)."""
    from advisor.advise import estimate_cost

    meas = {(m["task"], m["n"], m["seed"]): m for m in _rows(measurements)}
    resid: dict[str, list[float]] = {}
    xs, ys = [], []
    for r in _rows(results):
        m = meas.get((r["task"], r["n"], r["seed"]))
        if r.get("arm") != "graft" or m is None or not m.get("embedding"):
            continue
        probe = facts_from_measurement(m["embedding"])["best_cut_score"]
        if probe is not None:
            resid.setdefault(r["strategy"], []).append(r["accuracy"] - probe)
        if r["strategy"] in table.strategies:
            images = int(m["facts"]["classes"]) * int(r["n"])
            passes = estimate_cost(table.strategies[r["strategy"]], images, True, 1.0, 32)["base_forward_passes"]
            xs.append(passes)
            ys.append(r["seconds"])
    acc = {s: (round(float(np.percentile(v, 10)), 3), round(float(np.percentile(v, 90)), 3), len(v))
           for s, v in resid.items()}
    a = np.stack([np.ones(len(xs)), np.asarray(xs, float)], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(a, np.asarray(ys, float), rcond=None)
    pred = a @ np.array([c0, c1])
    rel = np.abs(pred - np.asarray(ys)) / np.asarray(ys)
    return {"accuracy_vs_probe": acc, "overhead_s": round(float(c0), 2), "seconds_per_pass": float(c1),
            "overhead": None if not forward_rate else round(float(c0) * forward_rate),
            "per_pass": None if not forward_rate else round(float(c1) * forward_rate, 2),
            "forward_rate": forward_rate, "runs": len(ys),
            "time_error_median": round(float(np.median(rel)), 3), "time_error_p90": round(float(np.percentile(rel, 90)), 3)}


# ------------------------------------------------------------------------------------ the recipes suite
#
# bench/recipes.py: eleven domains x two networks x n in {10, 60} x seeds 0-2, graft's five strategies
# and the plain reference variants. Scored per network; LODO and leave-one-network-out re-fit every
# tunable threshold without the domain (network) scored.

RECIPES = ROOT / "bench" / "results" / "recipes.jsonl"
RECIPES_MEASUREMENTS = ROOT / "bench" / "results" / "recipes-measurements.jsonl"
#: the time baseline of the recipes suite: "always fine-tune every layer" (LP-FT of all layers)
RECIPES_BASELINE = "lp_ft"
#: a rules choice the recipes bench does not run, scored as the run of the same recipe
RECIPES_ALIAS = {"finetune_all": "lp_ft"}
RECIPES_SIZES = (10, 60)
RECIPES_SEEDS = (0, 1, 2)


def recipes_grid(path: Path = ROOT / "bench" / "recipes.py") -> dict:
    """NETWORKS, TASKS and GRAFT_STRATEGIES of bench/recipes.py, read from its source (importing it
    would load keras): the module-level assignments of those names (and the ones they use) evaluated
    in order."""
    import ast

    wanted = {"NETWORKS", "DEVSUITE", "DEVSUITE2", "TASKS", "GRAFT_STRATEGIES"}
    ns: dict = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in wanted for t in node.targets):
            exec(compile(ast.Module([node], []), str(path), "exec"), {}, ns)  # literals and tuples only
    return {"networks": tuple(ns["NETWORKS"]), "tasks": tuple(ns["TASKS"]),
            "strategies": tuple(ns["GRAFT_STRATEGIES"])}


def load_recipe_groups(results: Path = RECIPES, measurements: Path = RECIPES_MEASUREMENTS,
                       strategies: tuple[str, ...] | None = None, grid: dict | None = None
                       ) -> tuple[list[Group], tuple[str, ...], dict]:
    """Groups (network, task, n) of the recipes bench, and what is missing.

    A seed is scored only when it has a graft row of every strategy and a measurement; a (network,
    task, n) with no such seed is left out. The last row of each (network, task, n, seed, arm,
    strategy, variant) counts (reruns replace). Returns (groups, strategies, coverage) where coverage
    lists, per expected (network, task, n, seed) of the grid, the seeds scored and, for the others,
    what they lack."""
    grid = grid or recipes_grid()
    strategies = tuple(strategies or grid["strategies"])
    last: dict = {}
    for r in _rows(results):
        last[(r["network"], r["task"], r["n"], r["seed"], r["arm"], r["strategy"], r.get("variant"))] = r
    meas = {(m["network"], m["task"], m["n"], m["seed"]): m for m in _rows(measurements)}
    keys = {k[:4] for k in last} | set(meas)
    expected = {(net, t, n, sd) for net in grid["networks"] for t in grid["tasks"] for n in RECIPES_SIZES
                for sd in RECIPES_SEEDS}
    complete, partial = [], []
    for key in sorted(keys | expected):
        lacks = [s for s in strategies if (*key, "graft", s, None) not in last]
        if key not in meas:
            lacks.append("measurement")
        if not lacks:
            complete.append(key)
        elif key in keys:
            partial.append({"network": key[0], "task": key[1], "n": key[2], "seed": key[3], "lacks": lacks})
    groups = []
    for net, task, n in sorted({k[:3] for k in complete}):
        seeds = sorted(k[3] for k in complete if k[:3] == (net, task, n))
        acc, sec = {}, {}
        for sd in seeds:
            rows = {s: last[(net, task, n, sd, "graft", s, None)] for s in strategies}
            acc[sd] = {s: r["accuracy"] for s, r in rows.items()}
            sec[sd] = {s: r["seconds"] for s, r in rows.items()}
            for alias, same in RECIPES_ALIAS.items():
                if same in acc[sd] and alias not in acc[sd]:
                    acc[sd][alias], sec[sd][alias] = acc[sd][same], sec[sd][same]
        facts = {sd: facts_of(meas[(net, task, n, sd)]) for sd in seeds}
        recorded = {sd: meas[(net, task, n, sd)].get("rule_choice") for sd in seeds}
        groups.append(Group(task, n, seeds, acc, sec, facts, net, RECIPES_BASELINE,
                            best_plain(last, net, task, n, seeds), recorded))
    done = {k for k in complete}
    coverage = {"expected": len(expected), "scored_seeds": len(complete), "groups": len(groups),
                "scored_outside_grid": sorted(map(list, done - expected)),
                "partial": partial,
                "not_started": len(expected - keys)}
    return groups, strategies, coverage


def expectation_rows(results: Path = RECIPES, measurements: Path = RECIPES_MEASUREMENTS) -> list[dict]:
    """Every graft run of the recipes bench that has a measurement: network, task, n, seed, strategy,
    test accuracy and the best-cut probe score advise measured on its training images (the last row of
    each run counts)."""
    last = {(r["network"], r["task"], r["n"], r["seed"], r["strategy"]): r for r in _rows(results)
            if r.get("arm") == "graft"}
    meas = {(m["network"], m["task"], m["n"], m["seed"]): m for m in _rows(measurements)}
    out = []
    for key, r in sorted(last.items()):
        m = meas.get(key[:4])
        probe = facts_from_measurement(m["embedding"])["best_cut_score"] if m and m.get("embedding") else None
        if probe is not None:
            out.append(dict(zip(("network", "task", "n", "seed", "strategy"), key), accuracy=r["accuracy"],
                            probe=float(probe)))
    return out


def accuracy_ranges(rows: list[dict], rate: float = 0.8, conformal: bool = True) -> dict[str, tuple[float, float, int]]:
    """Per strategy, the range of (test accuracy - probe score) that a new run falls in with
    probability `rate`, and how many runs it is read from: the form of `advisor.expect.ACCURACY_VS_PROBE`.

    `conformal`: the split-conformal range. With n residuals sorted, a new exchangeable one falls
    between the i-th and j-th smallest with probability (j - i) / (n + 1), so the range runs from the
    floor((n + 1)(1 - rate) / 2)-th to the ceil((n + 1)(1 + rate) / 2)-th (the extremes when n is too
    small for that). Else the plain percentiles, which cover less than `rate` of new runs when n is
    small (the in-sample spread understates the next run's)."""
    resid: dict[str, list[float]] = {}
    for r in rows:
        resid.setdefault(r["strategy"], []).append(r["accuracy"] - r["probe"])
    out = {}
    for s, v in sorted(resid.items()):
        v = np.sort(np.asarray(v, dtype=float))
        n = len(v)
        if conformal:
            i = max(1, int(np.floor((n + 1) * (1 - rate) / 2)))
            j = min(n, int(np.ceil((n + 1) * (1 + rate) / 2)))
            lo, hi = v[i - 1], v[j - 1]
        else:
            lo, hi = np.percentile(v, 100 * (1 - rate) / 2), np.percentile(v, 100 * (1 + rate) / 2)
        out[s] = (round(float(lo), 3), round(float(hi), 3), n)
    return out


def _covered(rows: list[dict], ranges: dict) -> dict:
    """How many of `rows` land inside probe + their strategy's range (clipped to [0, 1]), below or above."""
    out = {"runs": 0, "inside": 0, "below": 0, "above": 0}
    for r in rows:
        rng = ranges.get(r["strategy"])
        if rng is None:
            continue
        lo, hi = max(0.0, r["probe"] + rng[0]), min(1.0, r["probe"] + rng[1])
        out["runs"] += 1
        side = "below" if r["accuracy"] < lo - 1e-9 else "above" if r["accuracy"] > hi + 1e-9 else "inside"
        out[side] += 1
    out["rate"] = round(out["inside"] / out["runs"], 3) if out["runs"] else None
    return out


def expectation_coverage(rows: list[dict], current: dict) -> dict:
    """Do the printed expected accuracy ranges contain what the strategy then reached, at their
    stated rate (80 %: the 10th-90th percentile)? Per network: the ranges advisor/expect.py prints now
    (`current`); ranges fitted on both networks' runs (in-sample); fitted on the other network only
    (leave-one-network-out); and fitted without the scored domain (leave-one-domain-out, both
    networks' other domains)."""
    networks = sorted({r["network"] for r in rows})
    pooled = accuracy_ranges(rows)
    out: dict = {"stated_rate": 0.8, "runs": len(rows), "pooled_ranges": pooled, "per_network": {}}
    for net in networks:
        mine = [r for r in rows if r["network"] == net]
        others = [r for r in rows if r["network"] != net]
        lodo = {"runs": 0, "inside": 0, "below": 0, "above": 0}
        for task in sorted({r["task"] for r in mine}):
            c = _covered([r for r in mine if r["task"] == task],
                         accuracy_ranges([r for r in rows if r["task"] != task]))
            for k in ("runs", "inside", "below", "above"):
                lodo[k] += c[k]
        lodo["rate"] = round(lodo["inside"] / lodo["runs"], 3) if lodo["runs"] else None
        out["per_network"][net] = {
            "current": _covered(mine, current),
            "pooled_in_sample": _covered(mine, pooled),
            "leave_one_network_out": _covered(mine, accuracy_ranges(others)) if others else None,
            "leave_one_domain_out": lodo,
        }
    return out


def coverage_markdown(rep: dict) -> str:
    lines = [f"Expected accuracy ranges (probe score + the strategy's split-conformal 80 % range of offsets) against the "
             f"test accuracy reached, {rep['runs']} graft runs; stated rate {rep['stated_rate']:.0%}.", "",
             "| network | ranges fitted on | runs | inside | below | above | rate |", "|---|---|---|---|---|---|---|"]
    names = {"current": "advisor/expect.py now", "pooled_in_sample": "both networks (in-sample)",
             "leave_one_network_out": "the other network only", "leave_one_domain_out": "other domains (LODO)"}
    for net, per in rep["per_network"].items():
        for key, label in names.items():
            c = per[key]
            if c:
                lines.append(f"| {net} | {label} | {c['runs']} | {c['inside']} | {c['below']} | {c['above']} | "
                             f"{_f(c['rate'], '.0%')} |")
    lines += ["", "Pooled offsets (both networks): " + ", ".join(
        f"{s} {lo:+.3f}..{hi:+.3f} ({n} runs)" for s, (lo, hi, n) in rep["pooled_ranges"].items())]
    return "\n".join(lines)


def best_plain(last: dict, network: str, task: str, n: int, seeds: list[int]) -> dict | None:
    """The plain reference variant (of any strategy) with the best mean test accuracy over `seeds`
    (every seed must have it); None when there is none."""
    best = None
    variants = {(k[5], k[6]) for k in last if k[:3] == (network, task, n) and k[4] == "reference"}
    for strategy, variant in sorted(variants, key=str):
        rows = [last.get((network, task, n, sd, "reference", strategy, variant)) for sd in seeds]
        if any(r is None for r in rows):
            continue
        a = float(np.mean([r["accuracy"] for r in rows]))
        if best is None or a > best["accuracy"]:
            best = {"strategy": strategy, "variant": variant, "accuracy": round(a, 4),
                    "seconds": round(float(np.mean([r["seconds"] for r in rows])), 1)}
    return best


def _score_full(g: Group, policy: dict[int, str], strategies) -> dict:
    """regret (points below the best of graft's strategies), time (/ the baseline run), seconds and
    accuracy (means over the seeds) of per-seed choices on one group."""
    unrun = sorted({policy[sd] for sd in g.seeds} - set(g.acc[g.seeds[0]]))
    if unrun:
        raise ValueError(f"{g.network} {g.task} n={g.n}: the rules choose {', '.join(unrun)}, which the bench "
                         f"did not run (it ran {', '.join(strategies)}); score a table that chooses among them")
    regret, t = score(g, policy, strategies)
    return {"regret": regret, "time": t,
            "seconds": float(np.mean([g.sec[sd][policy[sd]] for sd in g.seeds])),
            "accuracy": float(np.mean([g.acc[sd][policy[sd]] for sd in g.seeds]))}


def _policy_stats(items: list[tuple[Group, dict]]) -> dict:
    """Over (group, _score_full) pairs: mean regret; the worst domain (its regret: the mean over its
    sizes) and worst group; groups within 1 point; time against the baseline, as the mean of the
    per-group ratios (`time`) and as total seconds / total baseline seconds (`time_total`); and the
    mean points below the best plain reference variant (`below_plain`, negative: above it)."""
    if not items:
        return {"groups": 0}
    by_domain: dict[str, list[float]] = {}
    for g, s in items:
        by_domain.setdefault(g.task, []).append(s["regret"])
    dom = {d: float(np.mean(v)) for d, v in sorted(by_domain.items())}
    worst = max(dom, key=lambda d: dom[d])
    base = sum(float(np.mean([g.sec[sd][g.baseline] for sd in g.seeds])) for g, _ in items)
    plain = [(g.plain["accuracy"] - s["accuracy"]) * 100 for g, s in items if g.plain]
    return {"mean_regret": round(float(np.mean([s["regret"] for _, s in items])), 2),
            "worst_domain": worst, "worst_domain_regret": round(dom[worst], 2),
            "worst_group_regret": round(max(s["regret"] for _, s in items), 2),
            "within_1": int(sum(s["regret"] <= 1 for _, s in items)), "groups": len(items), "domains": len(dom),
            "time": round(float(np.mean([s["time"] for _, s in items])), 3),
            "time_total": round(sum(s["seconds"] for _, s in items) / base, 3),
            "below_plain": None if not plain else round(float(np.mean(plain)), 2),
            "per_domain": {d: round(v, 2) for d, v in dom.items()}}


def _fitted(table: RuleTable, train: list[Group], strategies, tune: list[str]) -> tuple[RuleTable, dict] | None:
    """The table with `tune` re-fitted on `train` (None when there is nothing to fit on)."""
    if not train or not tune:
        return None
    values = fit_thresholds(table, train, strategies, tune)
    return with_thresholds(table, values), {k: round(v, 4) for k, v in values.items()}


def recipes_report(table: RuleTable, groups: list[Group], strategies, tune: list[str],
                   coverage: dict | None = None) -> dict:
    """The recipes suite's scoring, as data (see the module docstring and docs/bench.md)."""
    networks = sorted({g.network for g in groups})
    domains = sorted({g.task for g in groups})
    # LODO pooled over both networks: one fit per domain, on every group of the other domains
    pooled = {d: _fitted(table, [g for g in groups if g.task != d], strategies, tune) for d in domains}
    out: dict = {"suite": "recipes", "rules": str(table.source), "strategies": list(strategies),
                 "baseline": RECIPES_BASELINE, "tuned": list(tune), "coverage": coverage or {}, "networks": {},
                 "lono": []}
    for net in networks:
        mine = [g for g in groups if g.network == net]
        lodo = {d: _fitted(table, [g for g in mine if g.task != d], strategies, tune)
                for d in sorted({g.task for g in mine})}
        pols: dict[str, list] = {"oracle (best graft strategy per task)": [], "rules (in-sample)": [],
                                 "rules, LODO (fit on this network)": [],
                                 "rules, LODO (fit on both networks)": []}
        pols.update({f"always {s}": [] for s in strategies})
        rows = []
        for g in mine:
            policy = choices(table, g)
            sc = _score_full(g, policy, strategies)
            oracle = g.oracle(strategies)
            pols["oracle (best graft strategy per task)"].append((g, _score_full(g, {sd: oracle for sd in g.seeds},
                                                                                 strategies)))
            pols["rules (in-sample)"].append((g, sc))
            for s in strategies:
                pols[f"always {s}"].append((g, _score_full(g, {sd: s for sd in g.seeds}, strategies)))
            row = {"task": g.task, "n": g.n, "seeds": g.seeds, "oracle": oracle,
                   "oracle_acc": round(g.mean_acc(oracle), 4),
                   "accuracy": {s: round(g.mean_acc(s), 4) for s in strategies},
                   "seconds": {s: round(float(np.mean([g.sec[sd][s] for sd in g.seeds])), 1) for s in strategies},
                   "plain": g.plain, "choice": [policy[sd] for sd in g.seeds],
                   "recorded_choice": [(g.recorded or {}).get(sd) for sd in g.seeds],
                   "rules_acc": round(sc["accuracy"], 4), "regret": round(sc["regret"], 2),
                   "below_plain": None if not g.plain else round((g.plain["accuracy"] - sc["accuracy"]) * 100, 2),
                   "oracle_below_plain": None if not g.plain else round((g.plain["accuracy"] - g.mean_acc(oracle)) * 100, 2),
                   "time": round(sc["time"], 3),
                   "facts": {k: g.facts[g.seeds[0]].get(k) for k in
                             ("similarity", "shift_ratio", "probe_lift", "top_cut_gain", "images_per_class_median")}}
            for key, name, fits in (("lodo", "rules, LODO (fit on this network)", lodo),
                                    ("lodo_pooled", "rules, LODO (fit on both networks)", pooled)):
                fit = fits.get(g.task)
                if fit is None:
                    row[key] = None
                    continue
                lp = fast_choices(fit[0], g)
                ls = _score_full(g, lp, strategies)
                pols[name].append((g, ls))
                row[key] = {"choice": [lp[sd] for sd in g.seeds], "regret": round(ls["regret"], 2),
                            "time": round(ls["time"], 3), "thresholds": fit[1]}
            rows.append(row)
        out["networks"][net] = {"groups": rows, "summary": {k: _policy_stats(v) for k, v in pols.items()}}
    whole = {net: _fitted(table, [g for g in groups if g.network == net], strategies, tune)
             for net in networks} if len(networks) > 1 else {}
    for a in networks:
        for b in networks:
            fit_a, fit_b = whole.get(a), whole.get(b)
            if a == b or fit_a is None or fit_b is None:
                continue
            on_b = [g for g in groups if g.network == b]
            lono = _policy_stats([(g, _score_full(g, fast_choices(fit_a[0], g), strategies)) for g in on_b])
            own = _policy_stats([(g, _score_full(g, fast_choices(fit_b[0], g), strategies)) for g in on_b])
            shipped = out["networks"][b]["summary"]["rules (in-sample)"]
            out["lono"].append({"fit_on": a, "scored_on": b, "thresholds": fit_a[1], "own_thresholds": fit_b[1],
                                "mean_regret": lono["mean_regret"], "worst_domain": lono["worst_domain"],
                                "worst_domain_regret": lono["worst_domain_regret"], "within_1": lono["within_1"],
                                "groups": lono["groups"], "time": lono["time"], "time_total": lono["time_total"],
                                "own_fit_mean_regret": own["mean_regret"],
                                "gap": round(lono["mean_regret"] - own["mean_regret"], 2),
                                "shipped_mean_regret": shipped["mean_regret"]})
    return out


def _f(v, spec=".2f", none="-") -> str:
    return none if v is None else format(v, spec)


def recipes_markdown(rep: dict) -> str:
    cov = rep["coverage"]
    out = [f"Rules: `{Path(rep['rules']).name}`; graft strategies scored: {', '.join(rep['strategies'])}; time "
           f"baseline: always {rep['baseline']}; LODO / LONO re-fit: {', '.join(rep['tuned']) or 'nothing'}.", ""]
    if cov:
        out += [f"Coverage: {cov['groups']} (network, task, n) groups scored, from {cov['scored_seeds']} of the "
                f"{cov['expected']} (network, task, n, seed) runs of the grid (every graft strategy and a "
                f"measurement); {len(cov['partial'])} partial, {cov['not_started']} not started.", ""]
        if cov["partial"]:
            out += ["Partial (left out): " + "; ".join(
                f"{p['network']} {p['task']} n={p['n']} s{p['seed']} lacks {', '.join(p['lacks'])}"
                for p in cov["partial"]) + ".", ""]
    for net, nr in rep["networks"].items():
        out += [f"#### {net}", "",
                "| task | n | seeds | oracle (acc) | best plain variant (acc) | rules' choice per seed | rules acc "
                "| regret | below best plain | time / lp_ft | LODO choice | LODO regret |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in nr["groups"]:
            p = r["plain"]
            plain = "-" if p is None else f"{p['strategy']} {p['variant']} ({p['accuracy']:.3f})"
            lodo = r.get("lodo")
            changed = " (recorded: " + ", ".join(map(str, r["recorded_choice"])) + ")"                 if r["recorded_choice"] != r["choice"] else ""
            out.append(f"| {r['task']} | {r['n']} | {','.join(map(str, r['seeds']))} | {r['oracle']} "
                       f"({r['oracle_acc']:.3f}) | {plain} | {', '.join(r['choice'])}{changed} | {r['rules_acc']:.3f} | "
                       f"{r['regret']:.1f} | {_f(r['below_plain'], '+.1f')} | {r['time']:.2f} | "
                       f"{'-' if lodo is None else ', '.join(lodo['choice'])} | "
                       f"{'-' if lodo is None else format(lodo['regret'], '.1f')} |")
        out += ["", "| policy | mean regret (points) | worst domain (points) | within 1 point | time / lp_ft "
                "(mean of ratios) | time / lp_ft (total) | below best plain (points) |",
                "|---|---|---|---|---|---|---|"]
        for name, s in nr["summary"].items():
            if not s.get("groups"):
                out.append(f"| {name} | - | - | - | - | - | - |")
                continue
            out.append(f"| {name} | {s['mean_regret']:.2f} | {s['worst_domain']} {s['worst_domain_regret']:.1f} | "
                       f"{s['within_1']}/{s['groups']} | {s['time']:.2f} | {s['time_total']:.2f} | "
                       f"{_f(s['below_plain'], '+.2f')} |")
        names = [k for k in nr["summary"] if not k.startswith("oracle")]
        short = {k: k.replace("rules, LODO (fit on this network)", "LODO (this net)")
                  .replace("rules, LODO (fit on both networks)", "LODO (both nets)").replace("always ", "")
                 for k in names}
        doms = sorted({r["task"] for r in nr["groups"]})
        out += ["", "Regret per domain (points, mean over its sizes):", "",
                "| domain | " + " | ".join(short[k] for k in names) + " |", "|---|" + "---|" * len(names)]
        for d in doms:
            out.append(f"| {d} | " + " | ".join(_f(nr["summary"][k].get("per_domain", {}).get(d), ".1f")
                                              for k in names) + " |")
        out.append("")
    if rep["lono"]:
        out += ["Leave-one-network-out: thresholds fitted on every task of one network, scored on the other "
                "(beside: the same fit on the scored network itself, and the rules as shipped).", "",
                "| fitted on | scored on | thresholds | mean regret | worst domain | fitted on the scored network "
                "| gap | rules as shipped |", "|---|---|---|---|---|---|---|---|"]
        for x in rep["lono"]:
            th = ", ".join(f"{k}={v:g}" for k, v in x["thresholds"].items())
            out.append(f"| {x['fit_on']} | {x['scored_on']} | {th} | {x['mean_regret']:.2f} | {x['worst_domain']} "
                       f"{x['worst_domain_regret']:.1f} | {x['own_fit_mean_regret']:.2f} | {x['gap']:+.2f} | "
                       f"{x['shipped_mean_regret']:.2f} |")
    return "\n".join(out)



def _tune_names(table: RuleTable, spec: str) -> list[str]:
    if spec == "none":
        return []
    if spec == "auto":
        measured = {"similarity", "shift_ratio", "shift_early", "shift_late", "probe_lift", "top_cut_gain",
                    "best_cut_score", "best_cut_depth", "images_per_class_median", "probe_lower"}
        return [name for name, facts in tunable(table).items() if set(facts) & measured]
    return [t for t in spec.split(",") if t]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("transfer", "recipes"), default="transfer",
                        help="transfer: bench/transfer.py's six domains, one network (the default); recipes: "
                             "bench/recipes.py's eleven domains x two networks, scored per network with LODO "
                             "and leave-one-network-out")
    parser.add_argument("--rules", default=None, help="rules file (default: rules.yaml)")
    parser.add_argument("--results", default=None,
                        help="result rows (default: bench/results/transfer.jsonl, or recipes.jsonl with --suite recipes)")
    parser.add_argument("--measurements", default=None,
                        help="advise's measurements (default: measurements.jsonl, or recipes-measurements.jsonl)")
    parser.add_argument("--n", type=int, action="append", help="only this size (repeatable)")
    parser.add_argument("--network", action="append", help="--suite recipes: only this network (repeatable)")
    parser.add_argument("--tune", default="auto",
                        help="comma-separated thresholds LODO re-chooses; auto: every threshold the "
                             "strategy rules compare a measured fact (or images per class) with; none: no LODO")
    parser.add_argument("--trials", default=str(TRIALS), help="bench/trial.py's rows")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calibrate", action="store_true",
                        help="print the accuracy ranges and time fit advisor/expect.py uses")
    parser.add_argument("--coverage", action="store_true",
                        help="--suite recipes: how often the expected accuracy ranges contain the accuracy reached, "
                             "per network, with the ranges fitted in-sample, leave-one-network-out and LODO")
    parser.add_argument("--forward-rate", type=float, default=None,
                        help="with --calibrate: the forward images/s advise measured on the bench machine")
    args = parser.parse_args(argv)
    recipes = args.suite == "recipes"
    results = Path(args.results or (RECIPES if recipes else RESULTS))
    measurements = Path(args.measurements or (RECIPES_MEASUREMENTS if recipes else MEASUREMENTS))
    table = load_rules(args.rules)
    if args.coverage:
        from advisor.expect import ACCURACY_VS_PROBE

        rows = expectation_rows(results, measurements) if recipes else []
        if not rows:
            print("advice: --coverage reads the recipes suite's runs (--suite recipes); none has a measurement yet",
                  file=sys.stderr)
            return 1
        rep = expectation_coverage(rows, ACCURACY_VS_PROBE)
        print(json.dumps(rep, indent=1) if args.json else coverage_markdown(rep))
        return 0
    if args.calibrate:
        print(json.dumps(calibrate(table, results, measurements, args.forward_rate), indent=1))
        return 0
    tune = _tune_names(table, args.tune)
    if recipes:
        groups, strategies, coverage = load_recipe_groups(results, measurements)
        groups = [g for g in groups if (not args.n or g.n in args.n)
                  and (not args.network or g.network in args.network)]
        try:
            rep = recipes_report(table, groups, strategies, tune, coverage)
        except ValueError as exc:
            print(f"advice: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(rep, indent=1) if args.json else recipes_markdown(rep))
        if not groups:
            print("no (network, task, n) has a measurement and a graft run of every strategy yet", file=sys.stderr)
            return 1
        return 0
    groups, strategies = load_groups(results, measurements)
    if args.n:
        groups = [g for g in groups if g.n in args.n]
    if not groups:
        print("no (task, n) has a measurement and a run of every strategy yet", file=sys.stderr)
        return 1
    rep = report(table, groups, strategies, tune, _rows(Path(args.trials)))
    print(json.dumps(rep, indent=1) if args.json else markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
