"""``mpt-ref export --format prompt-table|triton``: the serving formats of the export command (their
options and what they write; the code is in mpt_ref/serve, the contract in spec/serving.md).

    --format prompt-table -o table.npy   the (K, T, D) table TensorRT-LLM / NeMo take, + table.json
    --format triton -o DIR               DIR/NAME/config.pbtxt + DIR/NAME/1/model.onnx (the prompt graph)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mpt_ref.errors import InputError
from mpt_ref.serve.prompt_table import write_prompt_table
from mpt_ref.serve.triton import write_triton_repository
from onnx_export.exporter import export

FORMATS = ("onnx", "prompt-table", "triton")


def serving_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (default): the prompt graph; prompt-table: TensorRT-LLM/NeMo table .npy + .json "
                        "sidecar; triton: a Triton model repository in the -o directory")
    p.add_argument("--vocab-size", type=int, help="prompt-table: the base vocabulary size V, to list the prompt ids")
    p.add_argument("--name", help="triton: the model name (default: the graph's, prompt_<kind>_<variant>, e.g. prompt_mpt_folded)")
    p.add_argument("--max-batch-size", type=int, default=8, help="triton: max_batch_size (default 8)")


def export_serving(module: Any, args: argparse.Namespace, *, report: Callable[[Any, Any, argparse.Namespace], int]) -> int:
    if args.format == "prompt-table":
        if args.name:
            raise InputError("--name: expected with --format triton, got it with --format prompt-table")
        table, side = write_prompt_table(module, args.output, dtype=args.dtype, vocab_size=args.vocab_size,
                                         overwrite=args.force)
        print(f"wrote {table} and {side}: {type(module).__name__}, dtype={args.dtype}")
        return 0
    if args.vocab_size is not None:
        raise InputError("--vocab-size: expected with --format prompt-table, got it with --format triton")
    model = export(module, None, variant=args.variant, dtype=args.dtype)
    name = args.name or f"prompt_{model.graph.name.removeprefix('mpt_ref_')}"
    config, path = write_triton_repository(model, args.output, name, max_batch_size=args.max_batch_size,
                                           overwrite=args.force)
    print(f"wrote {config} and {path}: {type(module).__name__}, variant={args.variant}, dtype={args.dtype}")
    return report(model, module, args)
