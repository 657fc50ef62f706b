"""``mpt-ref export`` and ``mpt-ref parity``.

    mpt-ref export PEFT_ADAPTER_DIR -o prompt.onnx [--full-encoder]    (or, without an adapter dir:)
    mpt-ref export -o prompt.onnx [--config adapter_config.json] [--checkpoint weights.safetensors]
                   [--kind mpt] [--seed 0] [--variant folded|faithful|folded-any] [--dtype float32|float16]
                   [--providers cpu,cuda] [--batch 3] [--force]          (-o - writes the model to stdout)
    mpt-ref export ... --format prompt-table -o table.npy [--vocab-size V]   (TensorRT-LLM / NeMo table + JSON)
    mpt-ref export ... --format triton -o DIR [--name NAME] [--max-batch-size 8]   (Triton model repository)
    mpt-ref parity prompt.onnx [ADAPTER_DIR | module options] [--providers cpu,cuda,cuda-tf32,onnx-reference]

The module comes from --config (any of the three PEFT configs; its peft_type picks the module) or,
without one, from the built-in default of --kind, initialised with --seed; --checkpoint loads a
safetensors state dict under PEFT's module keys (a PEFT adapter's ``prompt_embeddings`` is read as
``embedding.weight``). ``parity`` without an adapter, --config or --kind reads the config the model names
in its ``mpt_ref.config`` metadata, as ``verify --onnx`` does, and the init seed it names (or, for a model
exported from a checkpoint, the weights it holds under PEFT keys). --variant defaults to folded, as in
``export-model`` (before this release ``export`` defaulted to faithful). A P-tuning config's ``inference_mode`` is ignored (PEFT saves it as true
always): the encoder's heads are built unless the checkpoint holds only the prompt table. Both commands
print the parity report (notes on stderr); exit status 1 when parity fails, 2 on bad arguments or files
(an option that does not apply to what was asked, e.g. --kind with an adapter directory, is refused).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from mpt_ref.cli._args import (
    STDOUT,
    add_json,
    add_runtime,
    add_timeout,
    kind_arg,
    load_onnx_model,
    note,
    positive_int,
    refuse_existing,
    report_stream,
    runtime_providers,
    seed_int,
    write_json,
)
from mpt_ref.cli.serve_formats import export_serving, refuse_unservable, serving_args
from mpt_ref.errors import CheckpointError, InputError
from mpt_ref.interop.adapter import load_peft_adapter
from mpt_ref.interop.build import DEFAULT_CONFIGS, build_module
from mpt_ref.kind import Kind
from mpt_ref.modules.prompt_encoder import PromptEncoder
from onnx_export._spec import module_spec
from onnx_export.exporter import DTYPES, export, metadata
from onnx_export.foreign import WEIGHTS_FROM_MODEL, reference_module
from onnx_export.parity import check_batch, check_parity
from onnx_export.reference import VARIANTS
from onnx_export.runtimes import PROVIDERS, check_provider


DEFAULT_VARIANT = "folded"  # export and export-model alike
DEFAULT_MAX_BATCH_SIZE = 8


def _refuse_with_adapter(args: argparse.Namespace) -> None:
    """Options that build a module from scratch do not apply to an adapter directory, and vice versa."""
    if args.adapter:
        given = [(o, v) for o, v in (("--config", args.config), ("--checkpoint", args.checkpoint),
                                     ("--kind", args.kind and args.kind.value), ("--seed", args.seed)) if v is not None]
        if given:
            raise InputError(f"{given[0][0]}: expected no {'/'.join(o for o, _ in given)} with ADAPTER_DIR (the adapter "
                             f"holds its config and weights), got {' '.join(f'{o} {v}' for o, v in given)}")
    elif args.full_encoder:
        raise InputError("--full-encoder: expected together with ADAPTER_DIR, got it without one")


def module_from_args(args: argparse.Namespace) -> Any:
    """From a PEFT adapter directory when one is given, else from --config/--checkpoint/--kind."""
    _refuse_with_adapter(args)
    if args.adapter:
        with warnings.catch_warnings():  # the P-tuning "table only" warning is restated below
            warnings.simplefilter("ignore")
            module = load_peft_adapter(args.adapter, full_encoder=args.full_encoder)
        if isinstance(module, PromptEncoder) and module.inference_mode:
            note("P-tuning adapter holds the encoder output only: exporting the prompt table lookup")
        return module
    if args.config and args.kind is not None:
        raise InputError(f"--kind: expected no --kind with --config (the config's peft_type names the module), "
                         f"got --kind {args.kind.value}")
    return build_module(args.config, args.checkpoint, args.kind or Kind.MPT, 0 if args.seed is None else args.seed)


def _module_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", nargs="?", metavar="ADAPTER_DIR",
                   help="a PEFT adapter directory (adapter_config.json + adapter_model.safetensors/.bin)")
    p.add_argument("--full-encoder", action="store_true",
                   help="with ADAPTER_DIR, P-tuning: the full encoder from mpt_ref_encoder.safetensors")
    p.add_argument("--config", help="adapter_config.json (or its directory); default: the built-in --kind config")
    p.add_argument("--checkpoint", help="state dict under PEFT keys (.safetensors, or a torch .bin read without torch); default: seeded init")
    p.add_argument("--kind", type=kind_arg, choices=list(DEFAULT_CONFIGS), default=None, metavar="KIND",
                   help=f"built-in config when no --config, of {', '.join(DEFAULT_CONFIGS)} (default mpt; "
                        "0.1 names prompt-tuning, mlp, lstm are accepted)")
    p.add_argument("--seed", type=seed_int, default=None, help="init seed, an integer >= 0 (default 0)")
    p.add_argument("--providers", default="cpu", help=f"comma-separated, of {', '.join(PROVIDERS)} (default cpu)")
    p.add_argument("--batch", type=positive_int, default=3, help="batch size of the parity inputs (default 3)")
    add_runtime(p)
    add_timeout(p)


def _checked(model: Any, module: Any, providers: list[str], args: argparse.Namespace, *, here: str = "here",
             weights: str = "", stream: Any = None) -> Any:
    report = check_parity(model, module, providers=providers, batch=args.batch, seed=args.seed or 0, here=here,
                          timeout=args.timeout)
    report.weights = report.weights or weights
    notes, report.notes = report.notes, []
    print(report.format(), file=stream or report_stream(args))
    report.notes = notes
    for line in notes:
        note(line)
    write_json(getattr(args, "json", None), {"verdict": "PASS" if report.ok else "FAIL", "report": report},
               getattr(args, "force", False))
    return report


def _report(model: Any, module: Any, providers: list[str], args: argparse.Namespace, **where: Any) -> int:
    return 0 if _checked(model, module, providers, args, **where).ok else 1


def _refuse_options_of_other_formats(args: argparse.Namespace) -> None:
    """--variant, --name, --max-batch-size, --vocab-size are refused where the format has no use for them."""
    applies = {"--variant": ("onnx", "triton"), "--name": ("triton",), "--max-batch-size": ("triton",),
               "--vocab-size": ("prompt-table",)}
    given = {"--variant": args.variant, "--name": args.name, "--max-batch-size": args.max_batch_size,
             "--vocab-size": args.vocab_size}
    for option, formats in applies.items():
        if given[option] is not None and args.format not in formats:
            raise InputError(f"{option}: expected with --format {' or '.join(formats)}, got it with --format "
                             f"{args.format}")
    if args.output == STDOUT and args.format != "onnx":
        raise InputError(f"--output: expected a path for --format {args.format} (it writes several files), got "
                         f"'{STDOUT}' (stdout takes --format onnx only)")
    args.variant = args.variant or DEFAULT_VARIANT
    args.max_batch_size = args.max_batch_size or DEFAULT_MAX_BATCH_SIZE


def _export(args: argparse.Namespace) -> int:
    providers = runtime_providers(args.runtime, args.providers)  # refuse a bad list, or an existing output, before any work or write
    _refuse_options_of_other_formats(args)
    for provider in providers:
        check_provider(provider)  # an unavailable one too (cuda without onnxruntime-gpu), before any write
    if args.format == "onnx":  # the serving formats write into directories and check their own files
        refuse_existing("--output", args.output, args.force, example="prompt.onnx")
        if args.output == STDOUT and sys.stdout.isatty():
            raise InputError(f"--output: '{STDOUT}' writes the binary model to stdout, which is a terminal here; "
                             f"redirect it (mpt-ref export -o - > prompt.onnx) or name a file")
    module = module_from_args(args)
    refuse_unservable(module, args)  # task_type null, a trained head: PEFT would not serve this prompt alone
    check_batch(args.batch, module_spec(module), "--batch")  # before the file is written
    if args.format != "onnx":  # the serving formats: mpt_ref/serve, spec/serving.md
        return export_serving(module, args, report=lambda model, mod, a: _checked(model, mod, providers, a))
    to_stdout = args.output == STDOUT
    model = export(module, None if to_stdout else args.output, variant=args.variant, dtype=args.dtype,
                   overwrite=args.force)
    if to_stdout:
        sys.stdout.buffer.write(model.SerializeToString())
        sys.stdout.flush()
    where = "stdout" if to_stdout else args.output
    print(f"wrote {where} ({model.ByteSize()} bytes): {type(module).__name__}, variant={args.variant}, "
          f"dtype={args.dtype}", file=sys.stderr if to_stdout else sys.stdout)
    return _report(model, module, providers, args, stream=sys.stderr if to_stdout else None)


WHOLE_MODEL_INPUTS = {"input_ids", "attention_mask"}


def refuse_whole_model(model: Any) -> None:
    """A model from export-model (prompt prepended to a base graph) is not a prompt graph: exit 2, naming
    what does check it, instead of a FAIL from the missing inputs."""
    inputs = {i.name for i in model.graph.input}
    if model.producer_name == "mpt-ref export-model" or WHOLE_MODEL_INPUTS <= inputs:
        raise InputError(f"model: expected a prompt graph written by mpt-ref export (inputs indices[, task_ids]), got "
                         f"a whole model (inputs {sorted(inputs)}) written by mpt-ref export-model; parity checks the "
                         "prompt graph that export-model prepends: mpt-ref export ADAPTER_DIR -o prompt.onnx "
                         "--variant folded checks it on writing, and mpt-ref parity prompt.onnx ADAPTER_DIR again")


def parity_module(model: Any, args: argparse.Namespace) -> tuple[Any, str, str]:
    """The module ``model`` is checked against, what it is called in notes, and where its weights come from
    when that limits what the check can see. Without an adapter, --config or --kind: the config the model
    names (mpt_ref.config, as verify --onnx reads it) with the seed it names, or its own weights."""
    if args.adapter:
        return module_from_args(args), "adapter", ""
    if args.config or args.kind is not None:
        return module_from_args(args), "--config" if args.config else "--kind default", ""
    meta = metadata(model)
    if not meta.get("config") or meta["config"] == "{}":  # no config stamped: the built-in default, as before
        return module_from_args(args), "--kind default", ""
    stamped = meta.get("init_seed", "none")
    if args.seed is not None or (stamped.isdigit() and len(stamped) <= 19):  # a seed numpy takes, not 5000 digits
        seed = args.seed if args.seed is not None else int(stamped)
        return reference_module(model, None, args.checkpoint, seed), "model's metadata", ""
    if args.checkpoint:
        return reference_module(model, None, args.checkpoint, 0), "model's metadata", ""
    try:
        module = reference_module(model, None, None, 0, weights_from_model=True)
    except CheckpointError:
        raise InputError("model: expected the adapter or --checkpoint it was exported from (it names no init seed, "
                         "and its graph holds no tensors under every PEFT key of its config), got neither") from None
    return module, "model's metadata", WEIGHTS_FROM_MODEL


def _parity(args: argparse.Namespace) -> int:
    providers = runtime_providers(args.runtime, args.providers)
    refuse_existing("--json", args.json, args.force)
    model = load_onnx_model("model", args.model)
    refuse_whole_model(model)
    module, here, weights = parity_module(model, args)
    return _report(model, module, providers, args, here=here, weights=weights)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a module to ONNX and print its onnxruntime parity report")
    p.add_argument("-o", "--output", required=True,
                   help=f"the .onnx file to write (atomically; '{STDOUT}': the model to stdout, the report to stderr)")
    p.add_argument("--variant", choices=VARIANTS, default=None,
                   help=f"folded: a precomputed prompt table; faithful: the reference math node by node; folded-any: "
                        f"a table that serves any rows (default {DEFAULT_VARIANT}, as export-model; it was faithful "
                        "before this release; spec/onnx.md)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the graph's float type (default float32)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    serving_args(p)
    _module_args(p)
    p.set_defaults(func=_export, max_batch_size=None)  # None: not given (refused outside --format triton)

    p = sub.add_parser("parity", help="run an exported prompt graph in onnxruntime against the float64 reference")
    p.add_argument("model", help="an .onnx file written by mpt-ref export")
    _module_args(p)
    add_json(p, "the parity report")
    p.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    p.set_defaults(func=_parity)
