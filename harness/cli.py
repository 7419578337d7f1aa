"""`python -m harness` / `satpose`: one entry point, one sub-command per module.

Each command module exposes `register(subparsers)` which adds its parser and sets `func`; a command that
fails on bad user input raises `UserError`, which becomes one `error: ...` line on stderr and exit code 2.
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
    "sweep": "sweeps.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).register(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
