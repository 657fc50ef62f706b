"""``mpt-ref vectors`` and ``mpt-ref verify``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpt_ref.cli._args import (
    add_json,
    load_onnx_model,
    positive_int,
    refuse_existing,
    report_stream,
    write_json,
)
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.location import default_vectors_dir
from mpt_ref.errors import InputError


def _vectors(args: argparse.Namespace) -> int:
    out = vec.write_vectors(args.out_dir, force=args.force, progress=lambda m: print(m, file=sys.stderr))
    print(f"wrote {len(vec.read_index(out)['cases'])} cases to {out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    refuse_existing("--json", args.json, args.force)
    out = report_stream(args)
    if args.onnx:
        if not args.config:
            raise InputError("--config: expected an adapter_config.json for --onnx, got none")
        load_onnx_model("--onnx", args.onnx)  # a missing or non-ONNX file: exit 2 naming the option
        from onnx_export.foreign import verify_onnx

        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        report = verify_onnx(args.onnx, args.config, args.checkpoint, providers=providers, batch=args.batch)
        print(report.format(), file=out)
        write_json(args.json, {"verdict": "PASS" if report.ok else "FAIL", "report": report}, args.force)
        return 0 if report.ok else 1
    if not Path(args.candidate).is_dir():
        raise InputError(f"--candidate: expected a directory of <case>/output.safetensors, got {args.candidate!r}")
    vectors = args.vectors if args.vectors is not None else default_vectors_dir()
    checks = vec.verify_directory(vectors, args.candidate, progress=lambda m: print(m, file=sys.stderr))
    print(vec.format_report(checks), file=out)
    ok = bool(checks) and all(c.ok for c in checks)
    write_json(args.json, {"verdict": "PASS" if ok else "FAIL", "vectors": str(vectors), "checks": checks}, args.force)
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectors", help="write the golden conformance vectors to OUT_DIR")
    p.add_argument("out_dir", help="a new directory for the vectors (spec/vectors holds the committed copy)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_vectors)

    p = sub.add_parser("verify", help="check another implementation: its outputs against the conformance "
                                      "vectors (--candidate), or an ONNX model against the reference (--onnx)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--candidate",
                      help="directory with <case>/output.safetensors (key 'output') and optionally "
                           "<case>/grads.safetensors (PEFT keys), one subdirectory per case")
    what.add_argument("--onnx", help="an ONNX model made by anyone (e.g. torch.onnx.export of a PEFT module)")
    p.add_argument("--vectors", help="with --candidate: vectors directory (default: the golden vectors installed "
                                   "with mpt-ref, a copy of spec/vectors)")
    p.add_argument("--config", help="with --onnx: adapter_config.json (or its directory) of the module")
    p.add_argument("--checkpoint", help="with --onnx: safetensors weights under PEFT keys (default: the "
                                        "model's initializers named by PEFT keys)")
    p.add_argument("--providers", default="cpu", help="with --onnx: comma-separated providers (default cpu)")
    p.add_argument("--batch", type=positive_int, default=3, help="with --onnx: batch size when the batch is dynamic")
    add_json(p, "the verdict and every check")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_verify)
