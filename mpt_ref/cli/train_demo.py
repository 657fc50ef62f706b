"""``mpt-ref train-demo``: both MPT stages on the embedded default, then the comparison table."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from mpt_ref.errors import OutputExistsError
from mpt_ref.train.experiment import QUICK, Settings, format_table, run

SOURCE_NAME = "mpt_source.safetensors"  # what train.experiment.run writes into --out


def _main(args: argparse.Namespace) -> int:
    if args.out:  # refuse an unusable --out before training, not after
        Path(args.out).mkdir(parents=True, exist_ok=True)
    s = QUICK if args.quick else Settings()
    if args.out:
        source = Path(args.out) / SOURCE_NAME
        if (source.exists() or source.is_symlink()) and not args.force:
            raise OutputExistsError(f"--out: expected a directory without {SOURCE_NAME}, got {source} existing "
                                    "(pass --force to replace it)")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise OutputExistsError(f"--out: expected a directory, got an existing file {args.out}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(s, Path(args.out or tmp), progress=lambda m: print(m, file=sys.stderr))
    print(format_table(results, s))
    print(f"train-demo finished in {time.perf_counter() - t0:.1f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-demo", help="MPT end to end: source training (teachers + distillation), target "
                                          "adaptation from each PEFT init vs prompt tuning and P-tuning")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke run)")
    p.add_argument("--out", help="directory for the source checkpoint (default: a temporary one)")
    p.add_argument("--force", action="store_true", help=f"replace an existing OUT/{SOURCE_NAME}")
    p.set_defaults(func=_main)
