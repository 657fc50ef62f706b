"""Argument checks shared by the commands, so every argument is refused before any work or write."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from mpt_ref.errors import InputError, OutputExistsError
from mpt_ref.io.atomic import atomic_write_bytes, check_output_file

STDOUT = "-"

# -q (-1): results and errors only; default (0): also progress and notes; -v (1): also detail. All but
# results go to stderr, so `mpt-ref ... > out.txt` keeps the results alone.
_VERBOSITY = [0]


def set_verbosity(level: int) -> None:
    _VERBOSITY[0] = level


def verbosity() -> int:
    return _VERBOSITY[0]


def note(message: str) -> None:
    """A ``note:`` line on stderr (hidden by -q)."""
    if _VERBOSITY[0] >= 0:
        print(f"note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """A ``warning:`` line on stderr (an option that does not apply, ...); shown even with -q."""
    print(f"warning: {message}", file=sys.stderr)


def progress(message: str) -> None:
    """A progress line on stderr (hidden by -q)."""
    if _VERBOSITY[0] >= 0:
        print(message, file=sys.stderr, flush=True)


def detail(message: str) -> None:
    """A line on stderr with -v only."""
    if _VERBOSITY[0] > 0:
        print(message, file=sys.stderr, flush=True)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= minimum (argparse then exits 2 with the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


seed_int = int_at_least(0)      # numpy's default_rng refuses negative seeds
positive_int = int_at_least(1)  # batch sizes, threads, repeats


def seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0 (--timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def add_timeout(p: argparse.ArgumentParser) -> None:
    from onnx_export.providers import DEFAULT_TIMEOUT

    p.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"stop a run of the model that takes longer, exit 2 (default {DEFAULT_TIMEOUT:g})")


def refuse_existing(option: str, path: str | None, force: bool, example: str = "report.json") -> None:
    """Refuse an output that exists (unless --force), or that no --force may replace (a folder, a FIFO, a
    device, a symlink to one), before anything runs."""
    if path and path != STDOUT and Path(path).is_dir():  # --force would not help: say what would
        raise OutputExistsError(f"{option}: expected a file path, got an existing directory: {path} (name a file "
                                f"in it, e.g. {Path(path) / example})")
    if path and path != STDOUT and Path(path).exists() and not force:
        raise OutputExistsError(f"{option}: expected a new file, got an existing one: {path} (use --force)")
    if path and path != STDOUT:
        try:
            check_output_file(path)
        except OutputExistsError as exc:
            raise OutputExistsError(f"{option}: {exc}") from None


def refuse_same_outputs(*options: tuple[str, str | None]) -> None:
    """Two report options naming one file: one report would silently replace the other."""
    seen: dict[str, str] = {}
    for option, path in options:
        if not path or path == STDOUT:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{option}: expected another file than {seen[key]}'s, got the same one: {path}")
        seen[key] = option


def add_reports(p: argparse.ArgumentParser) -> None:
    """--json, --junit-xml and --force of the commands that judge (verify, conform); checked by
    refuse_report_outputs before any work."""
    p.add_argument("--json", metavar="PATH", help=f"also write the report as JSON to PATH (atomically; '{STDOUT}' for "
                                                  "stdout, the table then goes to stderr)")
    p.add_argument("--junit-xml", metavar="PATH", help="also write the report as JUnit XML to PATH (CI systems)")
    p.add_argument("--force", action="store_true", help="overwrite existing --json / --junit-xml files")


def refuse_report_outputs(args: argparse.Namespace) -> None:
    """The report paths of add_reports, before any work: each new (or --force), writable as a file, and not
    one file named twice (one report would silently replace the other)."""
    refuse_existing("--json", args.json, args.force)
    refuse_existing("--junit-xml", args.junit_xml, args.force)
    refuse_same_outputs(("--json", args.json), ("--junit-xml", args.junit_xml))


def add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", metavar="PATH", help=f"also write {what} as JSON to PATH (atomically; '-' for stdout, "
                                                  "the table then goes to stderr)")


def report_stream(args: argparse.Namespace) -> Any:
    """Where the human-readable report goes: stderr when the JSON takes stdout."""
    return sys.stderr if getattr(args, "json", None) == STDOUT else sys.stdout


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    return value


def write_json(path: str | None, payload: Any, force: bool) -> None:
    if not path:
        return
    text = json.dumps(_plain(payload), indent=2, sort_keys=True) + "\n"
    if path == STDOUT:
        sys.stdout.write(text)
    else:
        atomic_write_bytes(path, text.encode(), overwrite=force)
        print(f"wrote {path}", file=sys.stderr)


def load_onnx_model(option: str, path: str) -> Any:
    """The ONNX model at ``path``, or InputError naming ``option`` (missing file, not a ModelProto)."""
    from onnx_export.runtimes import load_model

    return load_model(path, option)


def kind_arg(text: str) -> Any:
    """argparse type for a module kind: Kind.parse, its message kept (argparse exits 2 with it)."""
    from mpt_ref.kind import Kind

    try:
        return Kind.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def provider_list(text: str) -> list[str]:
    """--providers: a comma-separated list of onnx_export.providers.PROVIDERS, refused as a whole otherwise."""
    from onnx_export.providers import PROVIDERS

    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PROVIDERS]
    if not names or bad:
        raise InputError(f"--providers: expected a comma-separated list of {list(PROVIDERS)}, got {text!r}")
    return names


def runtime_providers(runtime: str, providers: str) -> list[str]:
    """--runtime with --providers: onnxruntime takes the --providers list; reference, openvino and tract
    are one provider each (--providers left at its default). A runtime whose package is missing here is
    refused with the command that installs it (exit 2)."""
    from onnx_export.runtimes import check_provider, runtime_providers as named

    chosen = named(runtime)
    if runtime == "onnxruntime":
        return provider_list(providers)
    if providers != "cpu":
        raise InputError(f"--providers: expected only with --runtime onnxruntime, got {providers!r} with --runtime {runtime}")
    return [check_provider(p) for p in chosen]


def add_runtime(p: argparse.ArgumentParser) -> None:
    from onnx_export.providers import RUNTIMES

    p.add_argument("--runtime", choices=list(RUNTIMES), default="onnxruntime",
                   help="where the model runs (default onnxruntime, its execution providers from --providers); "
                        "openvino runs in f32 precision (pip install 'mpt-ref[openvino]'), tract: pip install "
                        "'mpt-ref[tract]', reference: onnx.reference")
