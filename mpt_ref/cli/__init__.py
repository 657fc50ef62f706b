"""The ``mpt-ref`` command. Each subcommand lives in its own module exposing ``register(subparsers)``;
this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import sys

from mpt_ref.errors import MptRefError

# module paths, each with register(subparsers) adding one or more subcommands with set_defaults(func=...)
COMMANDS = ("mpt_ref.cli.demo", "mpt_ref.cli.verify", "mpt_ref.cli.export", "mpt_ref.cli.inspect", "mpt_ref.cli.bench",
            "mpt_ref.cli.train_demo", "mpt_ref.cli.export_model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpt-ref", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MptRefError as exc:
        print(f"mpt-ref {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
