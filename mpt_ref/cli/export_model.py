"""``mpt-ref export-model``: a PEFT prompt-learning adapter in front of a base-model ONNX graph.

    mpt-ref export-model ADAPTER_DIR --base-onnx BASE.onnx --base-weights BASE.safetensors -o model.onnx
                         [--embedding-key KEY] [--variant folded|faithful] [--force]
                         [--triton DIR [--name NAME] [--max-batch-size 8] [--triton-backend onnxruntime|python]]

BASE.onnx is ``torch.onnx.export`` of the transformers model called with ``inputs_embeds`` and
``attention_mask``; its word embeddings are read from BASE.safetensors (usual key names found
automatically, --embedding-key otherwise). The written model takes ``input_ids``, ``attention_mask``
(and ``task_ids`` for MPT) and returns the base graph's outputs over the N + S positions, as PEFT's
forward does. --triton also writes a Triton model repository for it. Before anything is written the model
is run on onnxruntime and checked (prompt rows against the float64 reference within the error model,
token rows and mask bit for bit, outputs against the base graph alone); the verdict is printed, exit 1
on FAIL (nothing written), 2 on bad arguments or files, or an adapter that cannot be served this way.
"""

from __future__ import annotations

import argparse
import warnings

from mpt_ref.errors import InputError
from mpt_ref.serve.triton import BACKENDS
from mpt_ref.serve.whole_model import export_model
from onnx_export.reference import VARIANTS


def _signature(model) -> str:
    init = {i.name for i in model.graph.initializer}
    ins = [i.name for i in model.graph.input if i.name not in init]
    return f"inputs {ins}, outputs {[o.name for o in model.graph.output]}"


def _run(args: argparse.Namespace) -> int:
    if args.name and not args.triton:
        raise InputError("--name: expected together with --triton DIR, got --name alone")
    if args.triton_backend != "onnxruntime" and not args.triton:
        raise InputError("--triton-backend: expected together with --triton DIR, got it alone")
    with warnings.catch_warnings():  # the P-tuning "table only" warning: the table is what PEFT serves too
        warnings.simplefilter("ignore", UserWarning)
        model, report = export_model(args.adapter, args.base_onnx, args.base_weights, args.output,
                                     embedding_key=args.embedding_key, variant=args.variant, overwrite=args.force,
                                     triton=args.triton, name=args.name or "prompt_model",
                                     max_batch_size=args.max_batch_size, triton_backend=args.triton_backend)
    print(report.format())
    if not report.ok:
        print(f"not written: {args.output}" + (f", {args.triton}" if args.triton else "")
              + " (a model that fails its check replaces nothing)")
        return 1
    print(f"wrote {args.output} ({model.ByteSize()} bytes): {_signature(model)}")
    if args.triton:
        root = f"{args.triton}/{args.name or 'prompt_model'}"
        print(f"wrote {root}/config.pbtxt and {root}/1/model.onnx (checked from the written file)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-model", help="one ONNX model: a PEFT prompt adapter prepended to a base-model graph")
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="a PEFT adapter directory (PT, MPT or P-tuning)")
    p.add_argument("--base-onnx", required=True, help="the base model's ONNX graph (inputs_embeds, attention_mask)")
    p.add_argument("--base-weights", required=True, help="the base model's .safetensors holding its word embeddings")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--embedding-key", help="the word-embedding key in --base-weights (default: found automatically)")
    p.add_argument("--variant", choices=VARIANTS, default="folded", help="the prompt graph's variant (default folded)")
    p.add_argument("--triton", metavar="DIR", help="also write a Triton model repository DIR/NAME/{config.pbtxt,1/model.onnx}")
    p.add_argument("--name", help="the Triton model name (default prompt_model)")
    p.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size (default 8)")
    p.add_argument("--triton-backend", choices=BACKENDS, default="onnxruntime",
                   help="Triton backend: onnxruntime (default), or python (1/model.py runs model.onnx with onnxruntime)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=_run)
