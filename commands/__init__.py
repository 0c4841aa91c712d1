"""CLI commands: one module each, with `register(subparsers)`; the handler returns an exit code."""

from commands import advise_cmd, apply_cmd, inspect_cmd, rules_cmd

COMMANDS = [advise_cmd, apply_cmd, rules_cmd, inspect_cmd]
