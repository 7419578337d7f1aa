"""`python -m harness` / `satpose`: one entry point, one sub-command per module.

Each command module exposes `register(sub, name)`, which adds its parser and sets `func`; only the chosen
command's module is imported. Options and `key=value` overrides may come in any order
(`train --preset quickstart train.max_steps=8 --run-dir R train.seed=1`). A command that fails on bad user
input raises `UserError`, which becomes one `error: ...` line on stderr and exit code 2.

This table is the one place where harness names a package above it: `sweep` lives in `sweeps/` (sweeps build
on harness, so the command is looked up by name when it is run).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from data_pipelines.errors import UserError

# sub-command -> module that implements it
COMMANDS = {
    "train": "harness.commands.train",
    "eval": "harness.commands.evaluate",
    "predict": "harness.commands.predict",
    "score": "harness.commands.score",
    "model-info": "harness.commands.model_info",
    "curves": "harness.commands.curves",
    "bench": "harness.commands.bench",
    "sweep": "sweeps.cli",
}


class _OneCommand:
    """Stands in for argparse's sub-parsers action: the command module adds its parser here."""

    def __init__(self, prog: str):
        self.prog = prog
        self.parser: argparse.ArgumentParser | None = None

    def add_parser(self, name: str, help: str | None = None, **kwargs) -> argparse.ArgumentParser:
        self.parser = argparse.ArgumentParser(prog=f"{self.prog} {name}", **kwargs)
        return self.parser


def command_parser(name: str) -> argparse.ArgumentParser:
    holder = _OneCommand("python -m harness")
    importlib.import_module(COMMANDS[name]).register(holder, name)
    assert holder.parser is not None, f"{COMMANDS[name]}.register added no parser"
    return holder.parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0],
                                     epilog="`python -m harness COMMAND --help` describes each command.")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help=", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's options and arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    top = build_parser().parse_args(argv)
    parser = command_parser(top.command)
    args = parser.parse_intermixed_args(top.args)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
