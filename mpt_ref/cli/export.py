"""``mpt-ref export`` and ``mpt-ref parity``.

    mpt-ref export PEFT_ADAPTER_DIR -o prompt.onnx [--full-encoder]    (or, without an adapter dir:)
    mpt-ref export -o prompt.onnx [--config adapter_config.json] [--checkpoint weights.safetensors]
                   [--kind mpt] [--seed 0] [--variant faithful|folded|folded-any] [--dtype float32|float16]
                   [--providers cpu,cuda] [--batch 3] [--force]
    mpt-ref export ... --format prompt-table -o table.npy [--vocab-size V]   (TensorRT-LLM / NeMo table + JSON)
    mpt-ref export ... --format triton -o DIR [--name NAME] [--max-batch-size 8]   (Triton model repository)
    mpt-ref parity prompt.onnx (same module options) [--providers cpu,cuda,cuda-tf32,onnx-reference]

The module comes from --config (any of the three PEFT configs; its peft_type picks the module) or,
without one, from the built-in default of --kind, initialised with --seed; --checkpoint loads a
safetensors state dict under PEFT's module keys (a PEFT adapter's ``prompt_embeddings`` is read as
``embedding.weight``). A P-tuning config's ``inference_mode`` is ignored (PEFT saves it as true
always): the encoder's heads are built unless the checkpoint holds only the prompt table. Both commands print the parity report; exit status 1 when parity fails, 2 on
bad arguments or files.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from mpt_ref.cli._args import (
    add_json,
    add_timeout,
    kind_arg,
    load_onnx_model,
    positive_int,
    provider_list,
    refuse_existing,
    report_stream,
    seed_int,
    write_json,
)
from mpt_ref.cli.serve_formats import export_serving, serving_args
from mpt_ref.errors import InputError
from mpt_ref.interop.adapter import load_peft_adapter
from mpt_ref.interop.build import DEFAULT_CONFIGS, build_module
from mpt_ref.modules.kind import Kind
from mpt_ref.modules.prompt_encoder import PromptEncoder
from onnx_export.exporter import DTYPES, export
from onnx_export._spec import module_spec
from onnx_export.parity import check_batch, check_parity
from onnx_export.reference import VARIANTS
from onnx_export.runtimes import PROVIDERS, check_provider


def module_from_args(args: argparse.Namespace) -> Any:
    """From a PEFT adapter directory when one is given, else from --config/--checkpoint/--kind."""
    if args.adapter:
        if args.config or args.checkpoint:
            raise InputError("ADAPTER_DIR: expected either an adapter directory or --config/--checkpoint, got both")
        with warnings.catch_warnings():  # the P-tuning "table only" warning is restated below
            warnings.simplefilter("ignore")
            module = load_peft_adapter(args.adapter, full_encoder=args.full_encoder)
        if isinstance(module, PromptEncoder) and module.inference_mode:
            print("note: P-tuning adapter holds the encoder output only: exporting the prompt table lookup")
        return module
    return build_module(args.config, args.checkpoint, args.kind, args.seed)


def _module_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", nargs="?", metavar="ADAPTER_DIR",
                   help="a PEFT adapter directory (adapter_config.json + adapter_model.safetensors/.bin)")
    p.add_argument("--full-encoder", action="store_true",
                   help="with ADAPTER_DIR, P-tuning: the full encoder from mpt_ref_encoder.safetensors")
    p.add_argument("--config", help="adapter_config.json (or its directory); default: the built-in --kind config")
    p.add_argument("--checkpoint", help="state dict under PEFT keys (.safetensors, or a torch .bin read without torch); default: seeded init")
    p.add_argument("--kind", type=kind_arg, choices=list(DEFAULT_CONFIGS), default=Kind.MPT, metavar="KIND",
                   help=f"built-in config when no --config, of {', '.join(DEFAULT_CONFIGS)} "
                        "(0.1 names prompt-tuning, mlp, lstm are accepted)")
    p.add_argument("--seed", type=seed_int, default=0, help="init seed, an integer >= 0 (default 0)")
    p.add_argument("--providers", default="cpu", help=f"comma-separated, of {', '.join(PROVIDERS)} (default cpu)")
    p.add_argument("--batch", type=positive_int, default=3, help="batch size of the parity inputs (default 3)")
    add_timeout(p)


def _report(model: Any, module: Any, providers: list[str], args: argparse.Namespace) -> int:
    report = check_parity(model, module, providers=providers, batch=args.batch, seed=args.seed, timeout=args.timeout)
    print(report.format(), file=report_stream(args))
    write_json(getattr(args, "json", None), {"verdict": "PASS" if report.ok else "FAIL", "report": report},
               getattr(args, "force", False))
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    providers = provider_list(args.providers)  # refuse a bad list, or an existing output, before any work or write
    for provider in providers:
        check_provider(provider)  # an unavailable one too (cuda without onnxruntime-gpu)
    if args.format == "onnx":  # the serving formats write into directories and check their own files
        refuse_existing("--output", args.output, args.force)
    module = module_from_args(args)
    check_batch(args.batch, module_spec(module), "--batch")  # before the file is written
    if args.format != "onnx":  # the serving formats: mpt_ref/serve, spec/serving.md
        return export_serving(module, args, report=lambda model, mod, a: _report(model, mod, providers, a))
    model = export(module, args.output, variant=args.variant, dtype=args.dtype, overwrite=args.force)
    print(f"wrote {args.output} ({model.ByteSize()} bytes): {type(module).__name__}, variant={args.variant}, "
          f"dtype={args.dtype}")
    return _report(model, module, providers, args)


def _parity(args: argparse.Namespace) -> int:
    providers = provider_list(args.providers)
    refuse_existing("--json", args.json, args.force)
    model = load_onnx_model("model", args.model)
    module = module_from_args(args)
    return _report(model, module, providers, args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a module to ONNX and print its onnxruntime parity report")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--variant", choices=VARIANTS, default="faithful",
                   help="faithful: the reference math node by node; folded: a precomputed prompt table "
                        "(default faithful; spec/onnx.md)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the graph's float type (default float32)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    serving_args(p)
    _module_args(p)
    p.set_defaults(func=_export)

    p = sub.add_parser("parity", help="run an exported model in onnxruntime against the float64 reference")
    p.add_argument("model", help="an .onnx file written by mpt-ref export")
    _module_args(p)
    add_json(p, "the parity report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_parity)
