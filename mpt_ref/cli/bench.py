"""``mpt-ref bench``."""

from __future__ import annotations

import argparse

from mpt_ref.bench.run import format_table, run, to_json
from mpt_ref.io.atomic import atomic_write_bytes

MODULES = ("mpt", "mlp", "lstm")


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _main(args: argparse.Namespace) -> int:
    if args.gpu:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print("gpu section skipped: CUDAExecutionProvider not available (install onnxruntime-gpu on a GPU machine)")
    modules = [args.only] if args.only else list(MODULES)
    report = run(modules, quick=args.quick, threads=args.threads, repeats=args.repeats, sweep=not args.no_sweep)
    print(format_table(report))
    if args.json:
        atomic_write_bytes(args.json, to_json(report).encode(), overwrite=args.force)
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the NumPy reference against PEFT-torch and onnxruntime")
    p.add_argument("--only", choices=MODULES, help="one module family (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--threads", type=_at_least_one, default=2, help="threads for torch and onnxruntime (default 2)")
    p.add_argument("--repeats", type=_at_least_one, default=7, help="timed runs per peer (default 7)")
    p.add_argument("--no-sweep", action="store_true", help="skip the MPT scaling sweep over B and D")
    p.add_argument("--gpu", action="store_true", help="also the CUDA section (skipped without CUDAExecutionProvider)")
    p.add_argument("--json", help="write the results as JSON (atomically)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_main)
