"""The ``mpt-ref`` command. Each subcommand lives in its own module exposing ``register(subparsers)``;
this file only wires them up and applies the conventions every command shares:

exit status 0 = pass, 1 = a check ran and its verdict is FAIL, 2 = bad usage or unreadable input (one
line on stderr, no traceback; ``--debug`` shows it), 3 = an internal error (a bug: the message asks
for ``--debug``), 141 = stdout closed early (``mpt-ref ... | head``), quietly.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import MptRefError

# module paths, each with register(subparsers) adding one or more subcommands with set_defaults(func=...)
COMMANDS = ("mpt_ref.cli.demo", "mpt_ref.cli.verify", "mpt_ref.cli.export", "mpt_ref.cli.inspect", "mpt_ref.cli.bench",
            "mpt_ref.cli.train_demo", "mpt_ref.cli.export_model", "mpt_ref.cli.conform")

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL, EXIT_PIPE = 0, 1, 2, 3, 141

DESCRIPTION = ("Reference implementation of PEFT's prompt tuning, multitask prompt tuning (MPT) and P-tuning: "
               "gradient checks, golden conformance vectors, ONNX export and parity, PEFT adapter inspection.")
EPILOG = ("exit status: 0 pass, 1 a check failed (verdict FAIL), 2 bad usage or unreadable input, "
          "3 internal error (rerun with --debug and report it). 'mpt-ref COMMAND --help' for each command.")

# errors raised by the libraries underneath when a user's file is not what it claims to be
_INPUT_ERROR_NAMES = {
    "google.protobuf.message.DecodeError",
    "onnx.checker.ValidationError",
    "onnx.onnx_cpp2py_export.checker.ValidationError",
    "onnx.shape_inference.InferenceError",
    "onnx.onnx_cpp2py_export.shape_inference.InferenceError",
    "safetensors_rust.SafetensorError",
    "builtins.SafetensorError",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpt-ref", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version",
                        version=f"mpt-ref {__version__} (spec {SPEC_VERSION})", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    for command in sub.choices.values():  # also accepted after the command (SUPPRESS keeps the top-level value)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of any error")
    return parser


def is_input_error(exc: BaseException) -> bool:
    """Bad usage or unreadable input (exit 2) rather than a bug (exit 3)."""
    if isinstance(exc, (MptRefError, OSError, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # a NUL in a user path (os/pathlib)
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in _INPUT_ERROR_NAMES for c in type(exc).__mro__)


MAX_MESSAGE = 2000  # characters of an error line: a message never floods the terminal


def _one_line(exc: BaseException) -> str:
    """The error as one bounded line: ours as written, an OSError as path + reason, else type + text."""
    if isinstance(exc, MptRefError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = (f"{exc.filename}: " if exc.filename else "") + (exc.strerror or type(exc).__name__)
    elif isinstance(exc, ValueError) and "null byte" in str(exc):
        text = "a path: expected no NUL character, got one"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return (text.splitlines() or ["failed"])[0][:MAX_MESSAGE]


def _closed_pipe() -> int:
    """stdout's reader went away: no traceback, and no second error when Python flushes at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to redirect
        pass
    return EXIT_PIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"mpt-ref {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        if is_input_error(exc):
            print(f"mpt-ref {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"mpt-ref {args.command}: internal error: {type(exc).__name__}: {exc}"
              + ("" if args.debug else " (rerun with --debug for the traceback, and please report it)"),
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
