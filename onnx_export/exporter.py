"""``export(module, path=None, *, variant, dtype, opset)``: an mpt_ref module -> a checked ONNX model.

The graph is built with onnx.helper (no torch), stamped with the pinned opset and IR version
(opset.py), checked with ``onnx.checker.check_model(full_check=True)`` and strict shape inference,
and written atomically. Graphs: spec/onnx.md.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import onnx

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.errors import InputError
from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.kind import Kind
from onnx_export import _faithful, _folded
from onnx_export._graph import GraphBuilder, int64_input
from onnx_export._spec import ModuleSpec, module_spec
from onnx_export.opset import OPSET
from onnx_export.reference import VARIANTS

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
INPUT_INDICES, INPUT_TASK_IDS, OUTPUT = "indices", "task_ids", "prompt_embeddings"
META_PREFIX = "mpt_ref."  # metadata_props keys: mpt_ref.module, .kind, .variant, .dtype, .config, ...
# One entry per Kind: the graph's task-id input, None when the graph reads indices alone (Kind.takes_task_ids).
TASK_IDS_INPUT: dict[Kind, str | None] = {k: INPUT_TASK_IDS if k.takes_task_ids else None for k in Kind}
INPUT_DOCS = {
    INPUT_INDICES: "int64 (batch, tokens): virtual-token ids in [0, T); PEFT feeds arange(T) in every row. "
                   "An id outside [0, T) gives a NaN row.",
    INPUT_TASK_IDS: "int64 (B) or (1): task id per row in [0, num_tasks), length 1 broadcasts over the batch. "
                    "An id outside [0, num_tasks) gives NaN rows.",
}
OUTPUT_DOC = "(batch, tokens, token_dim) in the export dtype: the prompt embeddings PEFT prepends to the input"


def params_sha256(params: dict[str, np.ndarray]) -> str:
    """sha256 over (key, shape, float64 little-endian bytes) in key order: equal for a float32 module
    and its float64 copy, different for any other weights (another seed, another checkpoint)."""
    h = hashlib.sha256()
    for key in sorted(params):
        v = np.ascontiguousarray(params[key], dtype="<f8")
        h.update(f"{key}:{v.shape}:".encode())
        h.update(v.tobytes())
    return h.hexdigest()


def module_identity(module: Any, spec: ModuleSpec) -> dict[str, str]:
    """The metadata that tells which module a model was exported from: config, init seed, weights."""
    seed = getattr(module, "seed", None)
    return {"config": spec.config_json, "init_seed": "none" if seed is None else str(seed),
            "params_sha256": params_sha256(spec.params)}


def export_dtype(dtype: Any) -> str:
    """'float32' or 'float16' (numpy dtypes and their names accepted)."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise InputError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    return name


def tokens_dim(spec: ModuleSpec, variant: str) -> int | str:
    """The indices' token axis: T when the graph needs PEFT's full rows, else the symbol 'tokens'."""
    fixed = spec.fixed_tokens(variant)
    return "tokens" if fixed is None else fixed


def build_model(spec: ModuleSpec, *, variant: str = "faithful", dtype: Any = "float32",
                identity: dict[str, str] | None = None) -> onnx.ModelProto:
    """The unchecked model for a ModuleSpec (export() checks and infers shapes). ``identity``: extra
    metadata naming the module (module_identity)."""
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    dtype = export_dtype(dtype)
    g = GraphBuilder(DTYPES[dtype])
    tokens = tokens_dim(spec, variant)
    inputs = [int64_input(INPUT_INDICES, ["batch", tokens])]
    task_ids = TASK_IDS_INPUT[spec.kind]
    if task_ids is not None:
        inputs.append(int64_input(task_ids, ["task_batch"]))  # B or 1
    build = {"faithful": _faithful.build, "folded": _folded.build, "folded-any": _folded.build_any}[variant]
    out = build(g, spec, INPUT_INDICES, task_ids)
    g.nodes.append(onnx.helper.make_node("Identity", [out], [OUTPUT], name="prompt_embeddings/Identity"))
    doc = (f"mpt-ref {spec.module_name} ({spec.kind}), variant={variant}, dtype={dtype}. "
           "Ids outside their range give NaN outputs (spec/onnx.md, task-id policy).")
    meta = {"module": spec.module_name, "kind": spec.kind.value, "variant": variant, "dtype": dtype,
            "config": spec.config_json, "spec_version": SPEC_VERSION, "mpt_ref_version": __version__,
            "params_sha256": params_sha256(spec.params), **(identity or {})}
    model = g.model(inputs, OUTPUT, ["batch", tokens, spec.D], name=f"mpt_ref_{spec.kind.value}_{variant}", doc=doc,
                    metadata={META_PREFIX + k: v for k, v in meta.items()})
    model.producer_version = __version__
    for value in model.graph.input:
        value.doc_string = INPUT_DOCS[value.name]
    model.graph.output[0].doc_string = OUTPUT_DOC
    return model


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """Full checker plus strict shape inference (a graph whose shapes or types do not infer is refused);
    returns the model without the inferred ``value_info``: the symbolic shapes it records (``batch``)
    are hints a runtime may hold against fixed input shapes (tract refuses to unify them), and the
    runtimes infer them again anyway."""
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    onnx.checker.check_model(inferred, full_check=True)
    strip_value_info(model.graph)
    return model


def strip_value_info(graph: onnx.GraphProto) -> None:
    """Remove ``value_info`` from ``graph`` and every subgraph (If branches), in place."""
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                strip_value_info(attr.g)
            for sub in attr.graphs:
                strip_value_info(sub)


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The ``mpt_ref.*`` metadata of an exported model, without the prefix."""
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def export(
    module: Any,
    path: str | os.PathLike | None = None,
    *,
    variant: str = "faithful",
    dtype: Any = "float32",
    opset: int = OPSET,
    overwrite: bool = False,
) -> onnx.ModelProto:
    """Export a PromptEmbedding, MultitaskPromptEmbedding or PromptEncoder (MLP or LSTM; eval-mode
    semantics) to ONNX. Graph inputs ``indices`` int64 (batch, tokens) and, for MPT, ``task_ids``
    int64 (B or 1); output ``prompt_embeddings`` (batch, tokens, D) in ``dtype``.

    variant: "faithful" (the reference math node by node), "folded" (a precomputed prompt table and
    one Gather; MPT/LSTM: PEFT's arange rows only) or "folded-any" (the fastest graph exact for any
    rows: MPT = Gather(E) ⊙ Gather(P) with P = C R precomputed per task). dtype: "float32" or "float16". opset: only the pinned opset (onnx_export/opset.py).
    path: written atomically; an existing file is refused unless overwrite=True.
    """
    if isinstance(opset, bool) or opset != OPSET:
        raise InputError(f"opset: expected {OPSET} (the pinned opset, onnx_export/opset.py), got {opset!r}")
    spec = module_spec(module)
    model = check(build_model(spec, variant=variant, dtype=dtype, identity=module_identity(module, spec)))
    if path is not None:
        atomic_write_bytes(path, model.SerializeToString(), overwrite=overwrite)
    return model
