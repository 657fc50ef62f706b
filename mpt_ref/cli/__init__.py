"""The ``mpt-ref`` command. Each subcommand lives in its own module exposing ``register(subparsers)``;
this file only wires them up."""

from __future__ import annotations

import argparse
import importlib
import sys

from mpt_ref.errors import MptRefError

# module paths, each with register(subparsers) adding one or more subcommands with set_defaults(func=...)
COMMANDS = ("mpt_ref.cli.demo", "mpt_ref.cli.verify", "mpt_ref.cli.export", "mpt_ref.cli.inspect", "mpt_ref.cli.bench",
            "mpt_ref.cli.train_demo")


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
        return _fail(args.command, str(exc))
    except OSError as exc:  # user paths: read-only, missing, under a file, too long, a directory, full disk
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args.command, f"{where}{exc.strerror or type(exc).__name__}")
    except ValueError as exc:
        if "null byte" not in str(exc):  # a NUL in a path; anything else is a bug: keep its traceback
            raise
        return _fail(args.command, "a path: expected no NUL character, got one")


def _fail(command: str, message: str) -> int:
    """One line on stderr, exit 2 (bad usage or unreadable input), no traceback."""
    print(f"mpt-ref {command}: error: {message.splitlines()[0] if message else 'failed'}"[:2000], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
