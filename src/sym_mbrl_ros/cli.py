"""The ``sym-mbrl`` command. Each sub-command lives in ``sym_mbrl_ros.commands.<name>``.

A command module provides ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors the user can fix are raised as :class:`UserError` (or ``TaskError``) and printed as one
sentence with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# Order is the order shown by --help.
COMMANDS = [
    "tasks",
    "collect",
    "fit",
    "predict",
    "import-bag",
    "show",
    "train",
    "eval",
    "train-sr",
    "up",
    "controller",
    "fake-hardware",
    "demo",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage; keep it to one sentence
        self.exit(2, f"sym-mbrl: error: {message} (see `sym-mbrl --help`)\n")


def _load(name: str):
    module = f"sym_mbrl_ros.commands.{name.replace('-', '_')}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None  # not implemented in this build
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sym-mbrl",
        description="Learn a robot's dynamics as symbolic expressions and learn to control it "
        "from very little data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        mod = _load(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .envs.base import TaskError

    try:
        return int(args._run(args) or 0)
    except (UserError, TaskError) as exc:
        print(f"sym-mbrl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
