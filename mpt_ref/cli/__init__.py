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
import time
import traceback

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.cli import _args
from mpt_ref.errors import MptRefError

# command -> (the module whose register(subparsers) adds it with set_defaults(func=...), its one-line help).
# Only the chosen command's module is imported: `mpt-ref --help` and `--version` import none of them
# (the other commands appear as help-only entries; tests/test_cli.py checks these lines match).
COMMANDS = {
    "demo": ("mpt_ref.cli.demo", "forward, backward, gradient check and ONNX parity of the default MPT model "
                                 "and both P-tuning encoders"),
    "vectors": ("mpt_ref.cli.verify", "write the golden conformance vectors to OUT_DIR"),
    "verify": ("mpt_ref.cli.verify", "check another implementation: its outputs against the conformance vectors "
                                     "(--candidate), or an ONNX model against the reference (--onnx)"),
    "export": ("mpt_ref.cli.export", "export a module to ONNX and print its onnxruntime parity report"),
    "parity": ("mpt_ref.cli.export", "run an exported prompt graph in onnxruntime against the float64 reference"),
    "inspect": ("mpt_ref.cli.inspect", "what a PEFT adapter, a checkpoint or an .onnx file holds: config, files, "
                                       "tensors (key, shape, stored dtype), checksums, ONNX metadata and signature"),
    "bench": ("mpt_ref.cli.bench", "time the NumPy reference against PEFT-torch and onnxruntime"),
    "train-demo": ("mpt_ref.cli.train_demo", "a few-shot experiment: MPT (source stage with distillation, target "
                                             "adaptation) against prompt tuning and P-tuning baselines, with 95 %% CIs"),
    "export-model": ("mpt_ref.cli.export_model", "one ONNX model: a PEFT prompt adapter prepended to a base-model graph"),
    "conform": ("mpt_ref.cli.conform", "property-based conformance of a port in any language: hypothesis-drawn "
                                       "cases through a process (spec/conform-protocol.md), a failure shrunk and "
                                       "written as a vector folder"),
}

EXIT_USAGE, EXIT_INTERNAL, EXIT_PIPE = 2, 3, 141

DESCRIPTION = ("Reference implementation of PEFT's prompt tuning, multitask prompt tuning (MPT) and P-tuning: "
               "gradient checks, golden conformance vectors, ONNX export and parity, PEFT adapter inspection.")
EPILOG = ("exit status: 0 pass, 1 a check failed (verdict FAIL), 2 bad usage or unreadable input, "
          "3 internal error (rerun with --debug and report it). Results go to stdout; progress, notes and "
          "warnings to stderr (-q hides progress and notes, -v adds detail). "
          "'mpt-ref COMMAND --help' for each command.")

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


def _common_options(p: argparse.ArgumentParser, default: object) -> None:
    """--debug, -q, -v: on the top level, and again after the command (SUPPRESS keeps the top-level value)."""
    p.add_argument("--debug", action="store_true", default=default, help="show the full traceback of any error")
    quiet = p.add_mutually_exclusive_group()
    quiet.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print results and errors only (no progress, no notes)")
    quiet.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="more detail on stderr (each step, the time taken)")


def chosen_command(argv: list[str]) -> str | None:
    """The command named in argv (the first word that is not an option), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(only: str | None = None, *, all_commands: bool = True) -> argparse.ArgumentParser:
    """The parser with every command's options (``all_commands``), or only ``only``'s module imported and
    the other commands as help-only entries (what main does: nothing else is imported)."""
    parser = argparse.ArgumentParser(prog="mpt-ref", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version",
                        version=f"mpt-ref {__version__} (spec {SPEC_VERSION})", help="print the version and exit")
    _common_options(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = None if all_commands else (COMMANDS[only][0] if only else "")
    loaded = set()
    for name, (module, help_line) in COMMANDS.items():
        if wanted is None or module == wanted:
            if module not in loaded:
                importlib.import_module(module).register(sub)
                loaded.add(module)
        else:
            sub.add_parser(name, help=help_line, add_help=False)
    for name in sub.choices:
        if wanted is None or COMMANDS.get(name, ("",))[0] == wanted:
            _common_options(sub.choices[name], argparse.SUPPRESS)
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


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argv -> the namespace; an unknown option is refused with the usage of the command it was given to."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(chosen_command(argv), all_commands=False)
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    _args.set_verbosity(-1 if args.quiet else 1 if args.verbose else 0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    start = time.perf_counter()
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        _args.detail(f"mpt-ref {args.command}: exit {status} after {time.perf_counter() - start:.2f} s")
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
