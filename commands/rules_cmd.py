"""`python cli.py rules check FILE` and `python cli.py rules show [FILE]`."""

from __future__ import annotations

import json

from graft.console import make_console


def register(sub) -> None:
    p = sub.add_parser("rules", help="check a rules file or show the rule table",
                       description="Check a rules file (facts, thresholds, gaps, overlaps) or show it as tables.")
    rsub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    rsub.required = True
    c = rsub.add_parser("check", help="load and check a rules file; exit 2 with FILE:LINE on an error")
    c.add_argument("file", help="the rules file")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    c.set_defaults(func=run_check)
    s = rsub.add_parser("show", help="show the thresholds, the strategy table and the modifiers")
    s.add_argument("file", nargs="?", help="the rules file (default: graft's rules.yaml)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--json", action="store_true", help="print the loaded table as JSON")
    s.set_defaults(func=run_show)


def run_check(args) -> int:
    from advisor.rules import load_rules, parse_overrides

    table = load_rules(args.file, parse_overrides(args.overrides))
    make_console().print(f"[green]ok[/] {args.file}: rules_version {table.version}, {len(table.thresholds)} thresholds, "
                    f"{len(table.strategy_rules)} strategy rules (hit policy {table.hit_policy}, no gaps"
                    f"{', no overlaps' if table.hit_policy == 'unique' else ', every rule can win'}), "
                    f"{len(table.modifier_rules)} modifiers")
    return 0


def run_show(args) -> int:
    from advisor.render import rules_table
    from advisor.rules import load_rules, parse_overrides

    table = load_rules(args.file, parse_overrides(args.overrides))
    if args.json:
        print(json.dumps({
            "source": table.source, "version": table.version, "hit_policy": table.hit_policy,
            "thresholds": {k: t.value for k, t in table.thresholds.items()},
            "strategy_rules": [{"name": r.name, "line": r.line, "when": [c.text() for c in r.conditions],
                                "then": r.then} for r in table.strategy_rules],
            "modifiers": [{"name": r.name, "line": r.line, "when": [c.text() for c in r.conditions],
                           "then": r.then} for r in table.modifier_rules],
            "strategies": table.strategies}, indent=1))
        return 0
    make_console().print(rules_table(table))
    return 0
