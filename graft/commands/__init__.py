"""CLI commands: one module each, with `register(subparsers)`; the handler returns an exit code."""

from graft.commands import inspect_cmd

COMMANDS = [inspect_cmd]
