"""graft's command line: `python cli.py COMMAND ...`.

This file only parses arguments, calls library functions and renders their results; each command
lives in its own module under `commands/` and registers itself with `register(subparsers)`.
Exit codes: 0 ok, 1 failed, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter off stderr

from commands import COMMANDS  # noqa: E402
from graft.errors import GraftError  # noqa: E402
from graft.quiet import import_tensorflow_quietly  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line, exit code 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graft", description="Transfer-learning advice and network surgery for Keras 3.")
    from graft import __version__

    parser.add_argument("--version", action="version", version=f"graft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "uses_keras", False):  # only the commands that need it pay for TensorFlow's import
        import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except GraftError as exc:
        print(f"graft: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
