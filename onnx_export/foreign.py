"""Verify an ONNX model made by anyone (e.g. ``torch.onnx.export`` of a PEFT module) against mpt-ref.

The model needs one int64 input of rank 2 (the prompt indices, B×T) and, for MPT, one int64 input of
rank 1 (task ids); names are free. Weights come from ``checkpoint`` (a safetensors state dict under
PEFT keys, or a PEFT adapter file) or else from the model's initializers whose names are PEFT keys
(true of ``torch.onnx.export`` for the embedding and MPT factors, not for its converted LSTM weights).
Without a checkpoint the reference takes its weights from the model itself, so a weight-conversion bug
(rows of two tasks swapped, a transposed matrix) cannot be seen: the report's verdict line says so.
The config comes from ``config_path`` or else from the model's ``mpt_ref.config`` metadata (stamped by
onnx_export). Inputs are generated in range only: foreign graphs have no id policy to check. A model
exported by mpt-ref itself is judged by its stamped variant (a folded MPT/LSTM graph answers PEFT's rows
only). Judged with the error model of spec/tolerances.md through parity.run_cases, the same provider
loop as ``check_parity``. ``mpt-ref verify --onnx`` is the command.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from mpt_ref.errors import CheckpointError, InputError
from mpt_ref.interop.build import build_module
from mpt_ref.modules.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from onnx_export._spec import module_spec
from onnx_export.exporter import INPUT_INDICES, INPUT_TASK_IDS, metadata
from onnx_export.parity import ParityReport, run_cases
from onnx_export.runtimes import load_model

_ONNX_FLOATS = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def _graph_inputs(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto | None]:
    initializers = {t.name for t in model.graph.initializer}
    ints = [v for v in model.graph.input
            if v.name not in initializers and v.type.tensor_type.elem_type == onnx.TensorProto.INT64]
    by_rank = {len(v.type.tensor_type.shape.dim): v for v in reversed(ints)}
    if 2 not in by_rank:
        raise InputError(f"model: expected an int64 input of rank 2 (indices), got inputs "
                         f"{[v.name for v in model.graph.input if v.name not in initializers]}")
    return by_rank[2], by_rank.get(1)


def _static(value_info: onnx.ValueInfoProto, axis: int) -> int | None:
    dim = value_info.type.tensor_type.shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def weights_from_initializers(model: onnx.ModelProto, keys: Sequence[str]) -> dict[str, np.ndarray]:
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in keys}
    missing = [k for k in keys if k not in found]
    if missing:
        raise CheckpointError(f"model initializers: expected tensors named {missing} (PEFT keys), got none by "
                              "those names; pass the weights with --checkpoint")
    return found


WEIGHTS_FROM_MODEL = ("weights taken from the model itself (no --checkpoint): a weight-conversion bug "
                      "cannot be seen")


def reference_module(model: onnx.ModelProto, config_path: str | os.PathLike | None,
                     checkpoint: str | os.PathLike | None, seed: int) -> Any:
    """The reference module: config from ``config_path`` or the model's mpt_ref.config metadata (one
    reader, shared by ``verify --onnx`` and ``parity``)."""
    if config_path is not None:
        return build_module(str(config_path), None if checkpoint is None else str(checkpoint), Kind.MPT, seed)
    stamped = metadata(model).get("config")
    if not stamped or stamped == "{}":
        raise InputError("--config: expected an adapter_config.json, got none (and the model has no "
                         "mpt_ref.config metadata to read it from)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adapter_config.json"
        path.write_text(stamped)
        return build_module(str(path), None if checkpoint is None else str(checkpoint), Kind.MPT, seed)


def verify_onnx(
    model_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    providers: Sequence[str] = ("cpu",),
    batch: int = 3,
    seed: int = 0,
) -> ParityReport:
    """Run the model on in-range inputs (PEFT's arange rows and random rows, and a second batch size
    when the batch is dynamic) and compare with the float64 reference of the configured module."""
    model = load_model(model_path, "--onnx")
    module: Any = reference_module(model, config_path, checkpoint, seed)
    if checkpoint is None:
        module.load_state_dict(weights_from_initializers(model, list(module.state_dict())))
    spec = module_spec(module)
    idx_info, task_info = _graph_inputs(model)
    if isinstance(module, MultitaskPromptEmbedding) and task_info is None:
        raise InputError("model: expected an int64 input of rank 1 (task_ids) for a multitask prompt, got none")
    dtype = _ONNX_FLOATS.get(model.graph.output[0].type.tensor_type.elem_type)
    if dtype is None:
        raise InputError(f"model: expected a float32 or float16 output, got ONNX type "
                         f"{model.graph.output[0].type.tensor_type.elem_type}")
    fixed_batch, fixed_tokens = _static(idx_info, 0), _static(idx_info, 1)
    T = spec.T
    variant = metadata(model).get("variant", "faithful")  # our own folded exports answer arange rows only
    if fixed_tokens not in (None, T):
        raise InputError(f"model: expected indices with T={T} tokens (or a dynamic axis), got {fixed_tokens}")
    batches = [fixed_batch] if fixed_batch else [batch, 1]
    rng = np.random.default_rng(seed)
    cases = []
    for b in batches:
        tasks = rng.integers(0, max(spec.K, 1), size=b)
        cases.append((f"peft rows, B={b}", np.tile(np.arange(T), (b, 1)), tasks))
        cases.append((f"random rows, B={b}", rng.integers(0, T, size=(b, T)), tasks))
    names = {INPUT_INDICES: idx_info.name, **({INPUT_TASK_IDS: task_info.name} if task_info is not None else {})}
    feeds = [(name, {INPUT_INDICES: indices, **({INPUT_TASK_IDS: tasks} if task_info is not None else {})})
             for name, indices, tasks in cases]
    if spec.kind != Kind.MPT:
        feeds = [(name, {INPUT_INDICES: f[INPUT_INDICES]}) for name, f in feeds]
    comparisons = run_cases(model, spec, feeds, providers, dtype=dtype, variant=variant, input_names=names)
    return ParityReport(spec.module_name, "foreign", dtype, comparisons,
                        weights=WEIGHTS_FROM_MODEL if checkpoint is None else "")
