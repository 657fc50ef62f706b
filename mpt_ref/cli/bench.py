"""``mpt-ref bench``."""

from __future__ import annotations

import argparse
import sys

from mpt_ref.bench.run import MODULES, format_table, markdown_table, run, to_json
from mpt_ref.cli._args import STDOUT, kind_arg, positive_int, refuse_existing
from mpt_ref.io.atomic import atomic_write_bytes


def _main(args: argparse.Namespace) -> int:
    refuse_existing("--json", args.json, args.force)  # before a run of a minute, not after
    if args.gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("gpu section skipped: CUDAExecutionProvider not available (install onnxruntime-gpu on a GPU machine)")
    modules = [args.only] if args.only else list(MODULES)
    report = run(modules, quick=args.quick, threads=args.threads, repeats=args.repeats, sweep=not args.no_sweep)
    print(format_table(report), file=sys.stderr if args.json == STDOUT else sys.stdout)
    if args.markdown:
        print(markdown_table(report), file=sys.stderr if args.json == STDOUT else sys.stdout)
    if args.json == STDOUT:
        print(to_json(report))
    elif args.json:
        atomic_write_bytes(args.json, to_json(report).encode(), overwrite=args.force)
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the NumPy reference against PEFT-torch and onnxruntime")
    p.add_argument("--only", type=kind_arg, choices=MODULES, metavar="KIND",
                   help=f"one module kind, of {', '.join(MODULES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for torch and onnxruntime (default 2)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed runs per peer (default 7)")
    p.add_argument("--no-sweep", action="store_true", help="skip the MPT scaling sweep over B and D")
    p.add_argument("--gpu", action="store_true", help="also the CUDA section (skipped without CUDAExecutionProvider)")
    p.add_argument("--markdown", action="store_true",
                   help="also print the README Performance table (with the roofline column) for this run")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH (atomically; '-' for stdout, the table then "
                                                    "goes to stderr)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_main)
