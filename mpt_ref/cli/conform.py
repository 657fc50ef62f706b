"""``mpt-ref conform --exec CMD``: property-based conformance of a port in any language.

The engine of ``assert_conforms`` (mpt_ref.testing.engine) drives a process speaking
spec/conform-protocol.md: the edge cases first, then hypothesis-drawn cases; each case called twice and
judged by the error model; a failure shrunk and written as a one-case vectors folder (``--out``).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from mpt_ref.cli._args import add_reports, kind_arg, positive_int, refuse_report_outputs, report_stream, seed_int
from mpt_ref.kind import Kind


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _conform(args: argparse.Namespace) -> int:
    from hypothesis import HealthCheck
    from hypothesis import settings as hsettings

    from mpt_ref._version import __version__
    from mpt_ref.conformance import report
    from mpt_ref.conformance.exec_port import ExecPort, parse_command
    from mpt_ref.conformance.failure_vector import check_failure_dir, rerun_command, write_failure_vector
    from mpt_ref.modules.bounds import TensorCheck
    from mpt_ref.testing import engine

    refuse_report_outputs(args)  # before any work
    parse_command(args.exec)
    pc = engine.precision_class(args.dtype, args.accumulation)
    kind: Kind = args.module
    out = report_stream(args)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    gradients = not args.forward_only
    out_dir = Path(args.out or f"conform-failure-{kind.value}-{pc.dtype.name}")
    check_failure_dir(out_dir)
    settings = hsettings(max_examples=args.examples, database=None, deadline=None,
                         suppress_health_check=list(HealthCheck), print_blob=False)
    quiet = args.quiet

    def progress(name: str, checks: list) -> None:
        n = int(name.split()[-1])
        if not quiet and n % 100 == 0:
            print(f"[{n} cases]", file=sys.stderr)

    failure_dir = None
    with ExecPort(args.exec, pc, persistent=not args.per_case, timeout=args.timeout_per_case) as port:
        outcome = engine.explore(kind, port, pc, settings=settings, seed=seed, shrink=not args.no_shrink,
                                 gradients=gradients, repeat=not args.no_repeat, on_case=progress)
        f = outcome.failure
        if f is not None:
            got = None
            if not engine.port_failed(f.checks):  # its outputs, for the hint and the failure folder
                try:
                    got = port(kind, f.case, gradients)
                except engine.PortFailure:
                    pass
            hint = engine.other_class_hint(kind, f.case, f.checks, lambda: got, pc, gradients) if got else ""
            message = engine.failure_message(kind, pc, f, hint, outcome.flaky)
            rerun = rerun_command(out_dir, args.exec, kind.value, pc, args.forward_only)
            failure_dir = write_failure_vector(out_dir, name=f"{kind.value}_{pc.dtype.name}_minimal", kind=kind,
                                               case=f.case, pc=pc, gradients=gradients, checks=f.checks,
                                               message=message, rerun=rerun, got=got)
    stats = outcome.stats
    what = "outputs and gradients" if gradients else "outputs only (gradients NOT checked)"
    if f is None:
        checks = [TensorCheck(f"{stats.cases} cases", "output and gradients" if gradients else "output", True)]
        verdict = (f"PASS: {kind.value} port conforms on {stats.cases} cases ({pc.name}; {what}; edge sizes first"
                   f"{'' if args.no_repeat else ', each case called twice'}; seed {seed})")
    else:
        checks = f.checks
        if not quiet:
            print(report.format_table(checks), file=out)
        print(message, file=out)
        verdict = (f"FAIL: {kind.value} port disagrees after {stats.cases} cases ({pc.name}; {what}; seed {seed}); "
                   f"minimal failing case written to {failure_dir}")
    print(verdict, file=out)
    if args.stats:
        print(f"stats: {stats.line()}", file=out)
    report.write_reports(checks, verdict, json_path=args.json, junit_path=args.junit_xml,
                         suite=f"mpt-ref conform --module {kind.value}", mpt_ref_version=__version__,
                         module=kind.value, dtype=pc.dtype.name, accumulation=pc.accumulation, cases=stats.cases,
                         seed=seed, command=args.exec, forward_only=args.forward_only,
                         failure_dir=None if failure_dir is None else str(failure_dir),
                         stats={"cases": stats.cases, "wall_s": stats.wall_s, "port_s": stats.port_s,
                                "judge_s": stats.judge_s, "generation_s": stats.generation_s})
    return 0 if f is None else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conform", help="property-based conformance of a port in any language: hypothesis-drawn "
                                       "cases through a process (spec/conform-protocol.md), a failure shrunk and "
                                       "written as a vector folder")
    p.add_argument("--exec", required=True, metavar="CMD",
                   help="the port's command line (split like a shell; no shell features). Persistent mode: it reads "
                        "case directory paths line by line on stdin and replies 'ok' or 'error <message>' per line")
    p.add_argument("--module", required=True, type=kind_arg, metavar="KIND",
                   help=f"the module kind the port implements ({', '.join(k.value for k in Kind)})")
    p.add_argument("--dtype", default="float32", metavar="D", help="float32 (default), float64 or float16")
    p.add_argument("--accumulation", choices=("float32", "float16"),
                   help="float16 only: where sums accumulate (default float32: GPU / MLAS half kernels; float16: "
                        "a framework's own float16 reductions on CPU)")
    p.add_argument("--examples", type=positive_int, default=200, metavar="N",
                   help="drawn cases besides the fixed edge cases (default 200)")
    p.add_argument("--seed", type=seed_int, metavar="S", help="hypothesis seed (default: random, printed)")
    p.add_argument("--forward-only", action="store_true", help="check outputs only (no grad_output-driven gradients)")
    p.add_argument("--timeout-per-case", type=positive_seconds, default=30.0, metavar="S",
                   help="seconds a port may take for one case (default 30); past it the port is killed and restarted")
    p.add_argument("--per-case", action="store_true",
                   help="start 'CMD CASE_DIR' once per case instead of one persistent process (exit status 0 = ok)")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case as found")
    p.add_argument("--no-repeat", action="store_true",
                   help="call the port once per case (default: twice, to catch state kept between calls)")
    p.add_argument("--out", metavar="DIR",
                   help="where the minimal failing case goes, as a one-case vectors folder "
                        "(default ./conform-failure-<module>-<dtype>)")
    p.add_argument("--stats", action="store_true", help="print cases per second (generation + judging, and the port)")
    add_reports(p)
    p.set_defaults(func=_conform)
