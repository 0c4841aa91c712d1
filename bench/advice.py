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

It trains nothing: everything comes from the result files.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass
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

    def mean_acc(self, strategy: str) -> float:
        return float(np.mean([self.acc[s][strategy] for s in self.seeds]))

    def oracle(self, strategies) -> str:
        return max(strategies, key=self.mean_acc)


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
        facts = {}
        for sd in seeds:
            m = meas[(task, n, sd)]
            f = dict(m["facts"])
            if m.get("embedding"):
                emb = facts_from_measurement(m["embedding"])
                f.update({k: v for k, v in emb.items() if k != "best_cut_score" or v is not None})
                f["top_cut_gain"] = emb["cut_gain"]
            facts[sd] = derived(f)
        groups.append(Group(task, n, seeds, acc, sec, facts))
    return groups, chosen


def with_thresholds(table: RuleTable, values: dict[str, float]) -> RuleTable:
    """A copy of the table with some thresholds set (as `--set` would, without reloading the file)."""
    out = copy.deepcopy(table)
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
    acc = float(np.mean([group.acc[sd][policy[sd]] for sd in group.seeds]))
    base = float(np.mean([group.sec[sd][BASELINE] for sd in group.seeds]))
    sec = float(np.mean([group.sec[sd][policy[sd]] for sd in group.seeds]))
    return (oracle - acc) * 100, sec / base


def _evaluate_table(table: RuleTable, groups: list[Group], strategies) -> tuple[float, float]:
    scores = [score(g, choices(table, g), strategies) for g in groups]
    return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))


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
            sub = Group(g.task, g.n, seeds, g.acc, g.sec, g.facts)
            regret, _ = score(sub, picks, strategies)
            base = float(np.mean([g.sec[sd][BASELINE] for sd in seeds]))
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default=None, help="rules file (default: rules.yaml)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--measurements", default=str(MEASUREMENTS))
    parser.add_argument("--n", type=int, action="append", help="only this size (repeatable)")
    parser.add_argument("--tune", default="auto",
                        help="comma-separated thresholds LODO re-chooses; auto: every threshold the "
                             "strategy rules compare a measured fact (or images per class) with; none: no LODO")
    parser.add_argument("--trials", default=str(TRIALS), help="bench/trial.py's rows")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calibrate", action="store_true",
                        help="print the accuracy ranges and time fit advisor/expect.py uses")
    parser.add_argument("--forward-rate", type=float, default=None,
                        help="with --calibrate: the forward images/s advise measured on the bench machine")
    args = parser.parse_args(argv)
    table = load_rules(args.rules)
    if args.calibrate:
        print(json.dumps(calibrate(table, Path(args.results), Path(args.measurements), args.forward_rate), indent=1))
        return 0
    groups, strategies = load_groups(Path(args.results), Path(args.measurements))
    if args.n:
        groups = [g for g in groups if g.n in args.n]
    if not groups:
        print("no (task, n) has a measurement and a run of every strategy yet", file=sys.stderr)
        return 1
    if args.tune == "none":
        tune = []
    elif args.tune == "auto":
        measured = {"similarity", "shift_ratio", "shift_early", "shift_late", "probe_lift", "top_cut_gain",
                    "best_cut_score", "best_cut_depth", "images_per_class_median"}
        tune = [name for name, facts in tunable(table).items() if set(facts) & measured]
    else:
        tune = [t for t in args.tune.split(",") if t]
    rep = report(table, groups, strategies, tune, _rows(Path(args.trials)))
    print(json.dumps(rep, indent=1) if args.json else markdown(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
