"""``mpt-ref vectors`` and ``mpt-ref verify``."""

from __future__ import annotations

import argparse
import sys

from . import vectors as vec


def _vectors(args: argparse.Namespace) -> int:
    out = vec.write_vectors(args.out_dir, force=args.force, progress=lambda m: print(m, file=sys.stderr))
    print(f"wrote {len(vec.read_index(out)['cases'])} cases to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    checks = vec.verify_directory(args.vectors, args.candidate, progress=lambda m: print(m, file=sys.stderr))
    print(vec.format_report(checks))
    return 0 if checks and all(c.ok for c in checks) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectors", help="write the golden conformance vectors to OUT_DIR")
    p.add_argument("out_dir")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_vectors)

    p = sub.add_parser("verify", help="check another implementation against the conformance vectors")
    p.add_argument("--vectors", default="spec/vectors", help="vectors directory (default: spec/vectors)")
    p.add_argument("--candidate", required=True,
                   help="directory with <case>/output.safetensors (key 'output') and optionally "
                        "<case>/grads.safetensors (PEFT keys), one subdirectory per case")
    p.set_defaults(func=_verify)
