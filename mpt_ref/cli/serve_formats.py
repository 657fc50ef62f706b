"""``mpt-ref export --format prompt-table|triton``: the serving formats of the export command (their
options and what they write; the code is in mpt_ref/serve, the contract in spec/serving.md).

    --format prompt-table -o DIR   DIR/prompt_table.npy (the (K, T, D) table TensorRT-LLM / NeMo take)
                                   + DIR/prompt_table.json (its sidecar)
    --format triton -o DIR         DIR/NAME/config.pbtxt + DIR/NAME/1/model.onnx (the prompt graph)
    --format ortgenai -o DIR --base-weights BASE.safetensors --decoder BUILT
                                   an onnxruntime-genai model folder: embeddings.onnx (W + the flattened
                                   prompt table), genai_config.json (a decoder-pipeline), prompt_ids.json,
                                   and the decoder BUILT by the model builder with exclude_embeds=true

Each set is staged beside its place, read back and checked there, and swapped into place whole only when
the check passes (the verdict is printed; exit 1 on FAIL, nothing replaced). An adapter PEFT does not serve
as a prompt in front of a base model (task_type null, a trained head) is refused (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from mpt_ref.errors import InputError
from mpt_ref.serve.ortgenai import write_ortgenai
from mpt_ref.serve.prompt_table import SIDECAR_NAME, TABLE_NAME, write_prompt_table
from mpt_ref.serve.servable import check_servable
from mpt_ref.serve.triton import BACKENDS, write_triton_repository
from mpt_ref.serve.whole_model import read_word_embeddings
from onnx_export.exporter import export

FORMATS = ("onnx", "prompt-table", "triton", "ortgenai")


def serving_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (default): the prompt graph; prompt-table: a directory with the TensorRT-LLM/NeMo "
                        "table prompt_table.npy + prompt_table.json; triton: a Triton model repository in the -o "
                        "directory")
    p.add_argument("--vocab-size", type=int, help="prompt-table: the base vocabulary size V, to list the prompt ids")
    p.add_argument("--name", help="triton: the model name (default: the graph's, prompt_<kind>_<variant>, e.g. prompt_mpt_folded)")
    p.add_argument("--max-batch-size", type=int, default=8, help="triton: max_batch_size (default 8)")
    p.add_argument("--triton-backend", choices=BACKENDS, default="onnxruntime",
                   help="triton: onnxruntime (default), or python (1/model.py runs model.onnx with onnxruntime)")
    p.add_argument("--base-weights", help="ortgenai: the base model's .safetensors holding its word embeddings")
    p.add_argument("--embedding-key", help="ortgenai: the word-embedding key in --base-weights (default: found "
                                           "automatically)")
    p.add_argument("--decoder", help="ortgenai: the onnxruntime-genai model builder's folder for the base model, built "
                                     "with --extra_options exclude_embeds=true")


def refuse_unservable(module: Any, args: argparse.Namespace) -> None:
    """Every export format: an adapter PEFT would not serve as a prompt in front of its base is refused."""
    check_servable(module, getattr(args, "adapter", None))


def export_serving(module: Any, args: argparse.Namespace, *, report: Callable[..., Any]) -> int:
    """report(model, module, args, *, quiet=False) -> the parity report of a prompt graph (printed unless quiet)."""
    ortgenai = (args.base_weights, args.embedding_key, args.decoder)
    if args.format != "ortgenai" and any(a is not None for a in ortgenai):
        raise InputError(f"--base-weights, --embedding-key, --decoder: expected with --format ortgenai, got them with "
                         f"--format {args.format}")
    if args.format != "triton" and args.triton_backend != "onnxruntime":
        raise InputError(f"--triton-backend: expected with --format triton, got it with --format {args.format}")
    refuse_unservable(module, args)
    if args.format == "prompt-table":
        if args.name:
            raise InputError("--name: expected with --format triton, got it with --format prompt-table")
        checked, directory = write_prompt_table(module, args.output, dtype=args.dtype, vocab_size=args.vocab_size,
                                                overwrite=args.force)
        return _verdict(checked, directory, f"wrote {directory}/{TABLE_NAME} and {directory}/{SIDECAR_NAME}: "
                                            f"{type(module).__name__}, dtype={args.dtype}")
    if args.format == "ortgenai":
        return _ortgenai(module, args)
    if args.vocab_size is not None:
        raise InputError("--vocab-size: expected with --format prompt-table, got it with --format triton")
    model = export(module, None, variant=args.variant, dtype=args.dtype)
    name = args.name or f"prompt_{model.graph.name.removeprefix('mpt_ref_')}"
    parity, config, path = write_triton_repository(model, args.output, name, max_batch_size=args.max_batch_size,
                                                   overwrite=args.force, check=lambda m: report(m, module, args),
                                                   backend=args.triton_backend)
    if not parity.ok:
        print(f"not written: {config.parent} (a set that fails its check replaces nothing)")
        return 1
    print(f"wrote {config} and {path} (checked from the written file): {type(module).__name__}, "
          f"variant={args.variant}, dtype={args.dtype}")
    return 0


def _ortgenai(module: Any, args: argparse.Namespace) -> int:
    if args.base_weights is None or args.decoder is None:
        raise InputError("--format ortgenai: expected --base-weights BASE.safetensors and --decoder BUILT_DIR, got "
                         f"{'--base-weights' if args.base_weights is None else '--decoder'} missing")
    if args.name or args.vocab_size is not None or args.dtype != "float32":
        raise InputError("--format ortgenai: expected no --name, --vocab-size or --dtype (the decoder's float32 is "
                         "used), got one of them")
    _, w = read_word_embeddings(args.base_weights, args.embedding_key)
    checked, directory = write_ortgenai(module, w, args.decoder, args.output, overwrite=args.force)
    return _verdict(checked, directory, f"wrote {directory}: embeddings.onnx, genai_config.json (decoder-pipeline), "
                                        f"prompt_ids.json and the decoder's files: {type(module).__name__}")


def _verdict(checked: Any, directory: Any, wrote: str) -> int:
    """Print a staged set's check; exit 1 (nothing replaced) when it failed, else say what was written."""
    print(checked.format())
    if not checked.ok:
        print(f"not written: {directory} (a set that fails its check replaces nothing)")
        return 1
    print(wrote)
    return 0
