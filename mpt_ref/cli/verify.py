"""``mpt-ref vectors`` and ``mpt-ref verify``."""

from __future__ import annotations

import argparse

from mpt_ref.cli._args import (
    STDOUT,
    add_reports,
    add_runtime,
    add_timeout,
    kind_arg,
    load_onnx_model,
    positive_int,
    progress,
    refuse_report_outputs,
    report_stream,
    runtime_providers,
)
from mpt_ref.errors import InputError
from mpt_ref.cli.conform import positive_seconds
from mpt_ref.conformance import report
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.location import default_vectors_dir
from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.conformance.verify import vectors_digest, verify_directory, verify_exec
from mpt_ref.kind import Kind


def _vectors(args: argparse.Namespace) -> int:
    if args.out_dir == STDOUT:
        raise InputError(f"OUT_DIR: expected a directory (the vectors are many files), got '{STDOUT}' (stdout)")
    out = vec.write_vectors(args.out_dir, force=args.force, progress=progress)
    print(f"wrote {len(vec.read_index(out)['cases'])} cases to {out}")
    return 0


# the options of one mode only, with their defaults (a value other than the default: given)
ONNX_ONLY = {"--config": ("config", None), "--checkpoint": ("checkpoint", None), "--providers": ("providers", "cpu"),
             "--batch": ("batch", 3)}
CANDIDATE_ONLY = {"--vectors": ("vectors", None), "--module": ("module", None), "--forward-only": ("forward_only", False)}


def refuse_options_of_the_other_mode(args: argparse.Namespace) -> None:
    mode, other = ("--onnx", CANDIDATE_ONLY) if args.onnx else ("--candidate", ONNX_ONLY)
    given = [option for option, (dest, default) in other.items() if getattr(args, dest) != default]
    if given:
        raise InputError(f"{given[0]}: expected only with {'--candidate' if mode == '--onnx' else '--onnx'}, got it "
                         f"with {mode} ({', '.join(given)} do{'es' if len(given) == 1 else ''} not apply)")


def _verify(args: argparse.Namespace) -> int:
    refuse_options_of_the_other_mode(args)
    refuse_report_outputs(args)  # before any work
    out = report_stream(args)
    if args.onnx:
        providers = runtime_providers(args.runtime, args.providers)
        load_onnx_model("--onnx", args.onnx)  # a missing or non-ONNX file: exit 2 naming the option
        from onnx_export.foreign import verify_onnx

        result = verify_onnx(args.onnx, args.config, args.checkpoint, providers=providers, batch=args.batch,
                             timeout=args.timeout)
        print(result.format(), file=out)
        report.write_reports(result.comparisons, result.verdict_line(), json_path=args.json,
                             junit_path=args.junit_xml, suite=f"mpt-ref verify --onnx {args.onnx}",
                             module=result.module, variant=result.variant, dtype=result.dtype)
        return 0 if result.ok else 1
    vectors = args.vectors if args.vectors is not None else default_vectors_dir()
    if args.exec:
        from mpt_ref.conformance.exec_port import parse_command

        parse_command(args.exec)
        result = verify_exec(vectors, args.exec, module=args.module, forward_only=args.forward_only,
                             timeout=args.timeout_per_case, per_case=args.per_case, progress=progress)
    else:
        result = verify_directory(vectors, args.candidate, module=args.module, forward_only=args.forward_only,
                                  progress=progress)
    verdict = ("PASS" if result.ok else "FAIL") + f": {report.summary_line(result.checks)} in {len(result.cases)} cases" + (
        " (forward only: gradients NOT checked)" if result.forward_only else " (outputs and gradients)")
    shown_checks = [c for c in result.checks if not c.ok] if args.quiet else result.checks
    if shown_checks:
        print(report.format_table(shown_checks), file=out)
    hint = result.module_hint()
    if hint:
        print(f"hint: {hint}", file=out)
    print(verdict, file=out)
    report.write_reports(result.checks, verdict, json_path=args.json, junit_path=args.junit_xml,
                         suite="mpt-ref verify " + ("--exec" if args.exec else "--candidate"), vectors=str(vectors),
                         vectors_digest=vectors_digest(vectors), mpt_ref_version=__version__,
                         spec_version=SPEC_VERSION, cases=result.cases, forward_only=result.forward_only,
                         module=None if result.module is None else result.module.value, hint=hint or None)
    return 0 if result.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vectors", help="write the golden conformance vectors to OUT_DIR")
    p.add_argument("out_dir", help="a new directory for the vectors (spec/vectors holds the committed copy)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_vectors)

    p = sub.add_parser("verify", help="check another implementation: its outputs against the conformance "
                                      "vectors (--candidate), or an ONNX model against the reference (--onnx)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--candidate",
                      help="directory with <case>/output.safetensors (key 'output') and <case>/grads.safetensors "
                           "(PEFT keys), one subdirectory per case")
    what.add_argument("--onnx", help="an ONNX model made by anyone (e.g. torch.onnx.export of a PEFT module)")
    what.add_argument("--exec", metavar="CMD",
                      help="a port's command line speaking spec/conform-protocol.md: run on every case, twice (a port "
                           "whose results change from call to call is reported as keeping state)")
    p.add_argument("--vectors", help="with --candidate / --exec: vectors directory (default: the golden vectors installed "
                                   "with mpt-ref, a copy of spec/vectors)")
    p.add_argument("--module", type=kind_arg, metavar="KIND",
                   help=f"with --candidate / --exec: check only the cases of this module kind ({', '.join(k.value for k in Kind)})")
    p.add_argument("--forward-only", action="store_true",
                   help="with --candidate / --exec: check outputs only (gradients are required otherwise)")
    p.add_argument("--timeout-per-case", type=positive_seconds, default=30.0, metavar="S",
                   help="with --exec: seconds a port may take for one case (default 30)")
    p.add_argument("--per-case", action="store_true",
                   help="with --exec: start 'CMD CASE_DIR' once per case instead of one persistent process")
    add_reports(p)
    p.add_argument("--config", help="with --onnx: adapter_config.json (or its directory) of the module; default: "
                                    "the config stamped in the model's mpt_ref.config metadata")
    p.add_argument("--checkpoint", help="with --onnx: safetensors weights under PEFT keys (default: the "
                                        "model's initializers named by PEFT keys)")
    p.add_argument("--providers", default="cpu", help="with --onnx: comma-separated providers (default cpu)")
    p.add_argument("--batch", type=positive_int, default=3, help="with --onnx: batch size when the batch is dynamic")
    add_runtime(p)
    add_timeout(p)
    p.set_defaults(func=_verify)
