"""Verify an ONNX model made by anyone (e.g. ``torch.onnx.export`` of a PEFT module) against mpt-ref.

The model needs one int64 input of rank 2 (the prompt indices, B×T) and, for MPT, one int64 input of
rank 1 (task ids); names are free. Weights come from ``checkpoint`` (a safetensors state dict under
PEFT keys, or a PEFT adapter file) or else from the model's initializers whose names are PEFT keys
(true of ``torch.onnx.export`` for the embedding and MPT factors, not for its converted LSTM weights).
Without a checkpoint the reference takes its weights from the model itself, so a weight-conversion bug
(rows of two tasks swapped, a transposed matrix) cannot be seen: the report's verdict line says so.
The config comes from ``config_path`` or else from the model's ``mpt_ref.config`` metadata (stamped by
onnx_export), read as untrusted text: the caps of any adapter_config.json, and never an init that opens
a file it names. The model itself is checked before it runs (runtimes.check_runnable), its weights'
shapes against the config before the reference module is built, and its declared batch against the
caps before any input is made; every run is stopped after ``timeout`` seconds. Inputs are generated in
range only: foreign graphs have no id policy to check. A model exported by mpt-ref itself is judged by
its stamped variant (a folded MPT/LSTM graph answers PEFT's rows only). Judged with the error model of spec/tolerances.md through parity.run_cases, the same provider
loop as ``check_parity``. ``mpt-ref verify --onnx`` is the command.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from mpt_ref.errors import CheckpointError, InputError, shown
from mpt_ref.interop.build import build_module
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    config_from_json,
    load_config,
    parameter_shapes,
)
from mpt_ref.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from onnx_export._spec import module_spec
from onnx_export.exporter import INPUT_INDICES, INPUT_TASK_IDS, metadata
from onnx_export.parity import ParityReport, check_batch, run_cases
from onnx_export.reference import VARIANTS
from onnx_export.runtimes import DEFAULT_TIMEOUT, check_runnable, check_timeout, load_model

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


def weights_from_initializers(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The initializers named by the keys of ``shapes`` (PEFT keys), each checked against its expected
    shape from the proto's declared dims before its array is made."""
    found = {t.name: t for t in model.graph.initializer if t.name in shapes}
    missing = [k for k in shapes if k not in found]
    if missing:
        raise CheckpointError(f"model initializers: expected tensors named {missing} (PEFT keys), got none by "
                              "those names; pass the weights with --checkpoint")
    out = {}
    for key, tensor in found.items():
        if tuple(tensor.dims) != shapes[key]:
            raise CheckpointError(f"model initializer {key!r}: expected shape {shapes[key]} (from the config), got "
                                  f"{tuple(tensor.dims)}")
        try:
            out[key] = numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001 - data that does not match its dims or type
            raise CheckpointError(f"model initializer {key!r}: expected data matching its dims {tuple(tensor.dims)}, "
                                  f"got {type(exc).__name__}: {shown(exc)}") from None
    return out


WEIGHTS_FROM_MODEL = ("weights taken from the model itself (no --checkpoint): a weight-conversion bug "
                      "cannot be seen")
METADATA = "the model's mpt_ref.config metadata"


def metadata_config(model: onnx.ModelProto) -> PromptLearningConfig:
    """The config stamped in the model, read as untrusted text: the size, field and whole-model caps of
    any adapter_config.json, and no init that reads a file (a source checkpoint, a tokenizer) or text: the
    weights come from the model's initializers or --checkpoint, never from a path the model names."""
    stamped = metadata(model).get("config")
    if not stamped or stamped == "{}":
        raise InputError("--config: expected an adapter_config.json, got none (and the model has no "
                         "mpt_ref.config metadata to read it from)")
    config = config_from_json(stamped.encode("utf-8"), METADATA)
    if isinstance(config, PromptTuningConfig):  # MPT included
        config = dataclasses.replace(config, prompt_tuning_init="RANDOM", prompt_tuning_init_text=None,
                                     tokenizer_name_or_path=None, tokenizer_kwargs=None)
    if isinstance(config, MultitaskPromptTuningConfig):
        config = dataclasses.replace(config, prompt_tuning_init_state_dict_path=None)
    return config


def reference_module(model: onnx.ModelProto, config_path: str | os.PathLike | None,
                     checkpoint: str | os.PathLike | None, seed: int, *, weights_from_model: bool = False) -> Any:
    """The reference module (one reader, shared by ``verify --onnx`` and ``parity``): config from
    ``config_path`` or the model's mpt_ref.config metadata (``metadata_config``, untrusted); weights from
    ``checkpoint``, else the model's own initializers when ``weights_from_model``, else the seeded init.
    Weights' shapes are checked against the config before the module is built."""
    config = load_config(config_path) if config_path is not None else metadata_config(model)
    if checkpoint is not None:
        return build_module(None, str(checkpoint), Kind.MPT, seed, config=config)
    if weights_from_model:
        state = weights_from_initializers(model, parameter_shapes(config, full_encoder=True))
        return build_module(None, None, Kind.MPT, seed, config=config, state=state)
    return build_module(None, None, Kind.MPT, seed, config=config)


def verify_onnx(
    model_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    providers: Sequence[str] = ("cpu",),
    batch: int = 3,
    seed: int = 0,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ParityReport:
    """Run the model on in-range inputs (PEFT's arange rows and random rows, and a second batch size
    when the batch is dynamic) and compare with the float64 reference of the configured module. A run
    longer than ``timeout`` seconds is stopped (RunTimeout)."""
    check_timeout(timeout)
    model = check_runnable(load_model(model_path, "--onnx"))
    module: Any = reference_module(model, config_path, checkpoint, seed, weights_from_model=checkpoint is None)
    spec = module_spec(module)
    check_batch(batch, spec, "--batch")
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
    if variant not in VARIANTS:
        raise InputError(f"model: expected mpt_ref.variant metadata of {list(VARIANTS)} (or none), got "
                         f"{shown(variant, 80)!r}")
    if fixed_tokens not in (None, T):
        raise InputError(f"model: expected indices with T={T} tokens (or a dynamic axis), got {fixed_tokens}")
    if fixed_batch is not None:
        check_batch(fixed_batch, spec, "model: its fixed batch")  # a declared dim never sizes an allocation
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
    if not spec.kind.takes_task_ids:
        feeds = [(name, {INPUT_INDICES: f[INPUT_INDICES]}) for name, f in feeds]
    comparisons = run_cases(model, spec, feeds, providers, dtype=dtype, variant=variant, input_names=names,
                            timeout=timeout)
    return ParityReport(spec.module_name, "foreign", dtype, comparisons,
                        weights=WEIGHTS_FROM_MODEL if checkpoint is None else "")
