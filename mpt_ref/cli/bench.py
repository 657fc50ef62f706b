"""``mpt-ref bench``: the estimate first, progress on stderr, then the table (results on stdout)."""

from __future__ import annotations

import argparse
import sys

from mpt_ref.cli._args import STDOUT, detail, kind_arg, positive_int, progress, refuse_existing, verbosity, warn
from mpt_ref.errors import InputError

KINDS = ("mpt", "mlp_encoder", "lstm_encoder")  # mpt_ref.bench.run.MODULES, without importing it for --help
FULL_REPEATS, QUICK_REPEATS = 7, 3


def _main(args: argparse.Namespace) -> int:
    from mpt_ref.bench.run import MODULES, estimate_s, minutes, run
    from mpt_ref.io.atomic import atomic_write_bytes

    refuse_existing("--json", args.json, args.force)  # before a run of minutes, not after
    if args.plot:
        if args.plot == STDOUT:
            raise InputError(f"--plot: expected a .png path, got '{STDOUT}' (a PNG is not for a terminal)")
        refuse_existing("--plot", args.plot, args.force, example="bench.png")
        from mpt_ref.bench.plot import require_matplotlib

        require_matplotlib()  # refused now, not after the run
    if args.gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            warn("--gpu: CUDAExecutionProvider not available (install onnxruntime-gpu on a GPU machine): skipped")
    modules = [args.only] if args.only else list(MODULES)
    sweep = not args.no_sweep
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    warmup = 1 if args.quick else 2
    eta = estimate_s(modules, quick=args.quick, repeats=repeats, warmup=warmup, sweep=sweep)
    what = "quick run" if args.quick else "full run; --quick for a smoke run of seconds"
    progress(f"mpt-ref bench: about {minutes(eta)} on a quiet 2-core machine, longer on a busy one ({what}); "
             "progress below")
    report = run(modules, quick=args.quick, threads=args.threads, repeats=repeats, warmup=warmup, sweep=sweep,
                 progress=progress, detail=detail if verbosity() > 0 else (lambda m: None))
    from mpt_ref.bench.report import format_table, markdown_table, to_json

    out = sys.stderr if args.json == STDOUT else sys.stdout
    print(format_table(report), file=out)
    if args.markdown:
        print(markdown_table(report), file=out)
    if args.json == STDOUT:
        print(to_json(report))
    elif args.json:
        atomic_write_bytes(args.json, to_json(report).encode(), overwrite=args.force)
        progress(f"wrote {args.json}")
    if args.plot:
        from mpt_ref.bench.plot import write_plot

        progress(f"wrote {write_plot(report, args.plot)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the NumPy reference against PEFT-torch and onnxruntime")
    p.add_argument("--only", type=kind_arg, choices=KINDS, metavar="KIND",
                   help=f"one module kind, of {', '.join(KINDS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats after 1 warm-up, no torch.onnx.export peer: a smoke run (~10 s with PEFT installed, "
                        "~2 s without)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads for torch and onnxruntime (default 2)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help=f"timed runs per peer (default {FULL_REPEATS}, {QUICK_REPEATS} with --quick)")
    p.add_argument("--no-sweep", action="store_true", help="skip the MPT scaling sweep over B and D")
    p.add_argument("--gpu", action="store_true", help="also the CUDA section (skipped without CUDAExecutionProvider)")
    p.add_argument("--markdown", action="store_true",
                   help="also print the README Performance table (median and min-max, roofline column) for this run")
    p.add_argument("--plot", metavar="PATH.png",
                   help="also draw each peer's ratio to PEFT-torch and fraction of the roofline per case "
                        "(needs matplotlib: pip install 'mpt-ref[plot]')")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH (atomically; '-' for stdout, the table then "
                                                    "goes to stderr)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json or --plot file")
    p.set_defaults(func=_main)
