"""A Triton Inference Server model repository for an ONNX model (the onnxruntime backend):

    DIR/<name>/config.pbtxt     name, backend "onnxruntime", max_batch_size, dynamic_batching, and every
                                graph input/output with its name, data type and dims
    DIR/<name>/1/model.onnx     the model
    DIR/<name>/1/model.py       backend "python" only: a short model running model.onnx with onnxruntime, for
                                Triton builds without the onnxruntime backend (nvidia-pytriton's bundled server)

The config is derived from the graph's signature. With max_batch_size > 0 (batching on), Triton's dims
leave out the batch axis, so every input and output must have a symbolic first axis; a symbolic axis
becomes -1. A graph input with only the batch axis (``task_ids``, shape (B,)) becomes dims [1] with
``reshape { shape: [] }``: each request sends one task id and Triton batches them back to (B,).
The text is protobuf text format of Triton's ModelConfig (model_config.proto); tests parse it with the
tritonclient package's ``model_config_pb2`` (the optional ``serve`` extra). Spec: spec/serving.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from mpt_ref import _checks
from mpt_ref.errors import InputError
from mpt_ref.io.staged import StagedSet
from onnx_export.runtimes import load_model

# ONNX element type -> Triton DataType name (model_config.proto)
TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.UINT8: "TYPE_UINT8", TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16", TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16", TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16", TensorProto.STRING: "TYPE_STRING",
}
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _signature(values: list[onnx.ValueInfoProto], what: str, batching: bool) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        if t.elem_type not in TRITON_TYPES:
            raise InputError(f"model {what} {v.name!r}: expected a tensor type Triton knows, got "
                             f"{TensorProto.DataType.Name(t.elem_type)}")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        reshape = None
        if batching:
            if not dims or dims[0] != -1:
                raise InputError(f"model {what} {v.name!r}: expected a symbolic batch axis first (max_batch_size > 0), "
                                 f"got dims {dims}")
            dims = dims[1:]
            if not dims:  # (B,) -> one value per request
                dims, reshape = [1], []
        out.append({"name": v.name, "data_type": TRITON_TYPES[t.elem_type], "dims": dims, "reshape": reshape})
    return out


def model_signature(model: onnx.ModelProto, *, max_batch_size: int) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as Triton sees them: name, data_type, dims (batch axis removed when batching)."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    batching = max_batch_size > 0
    return _signature(inputs, "input", batching), _signature(list(model.graph.output), "output", batching)


def _list(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]" if values else "[ ]"


def _tensor_block(kind: str, entries: list[dict]) -> list[str]:
    lines = [f"{kind} ["]
    for k, e in enumerate(entries):
        lines += ["  {", f'    name: "{e["name"]}"', f"    data_type: {e['data_type']}",
                  f"    dims: {_list(e['dims'])}"]
        if e["reshape"] is not None:
            lines.append(f"    reshape: {{ shape: {_list(e['reshape'])} }}")
        lines.append("  }," if k < len(entries) - 1 else "  }")
    return lines + ["]"]


BACKENDS = ("onnxruntime", "python")
# The python backend's model: runs 1/model.onnx with onnxruntime, one session per model instance. For Triton
# builds without the onnxruntime backend (e.g. the tritonserver bundled with nvidia-pytriton).
PYTHON_MODEL = '''"""Triton python backend model written by mpt-ref: runs model.onnx beside it with onnxruntime (CPU).
Each request is run as sent (its own batch axis); inputs with a reshape in config.pbtxt get it applied."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], i.get("reshape", {}).get("shape")) for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {}
            for name, reshape in self.inputs:
                value = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                if reshape is not None:
                    value = value.reshape((value.shape[0], *[int(d) for d in reshape]))
                feeds[name] = value
            try:
                outs = self.session.run(self.outputs, feeds)
            except Exception as exc:  # onnxruntime refusing the input: an error response, not a crash
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(o))
                                                         for n, o in zip(self.outputs, outs)]))
        return responses
'''


def triton_config(model: onnx.ModelProto, name: str, *, max_batch_size: int = 8, backend: str = "onnxruntime") -> str:
    """config.pbtxt text for ``model`` served as ``name`` by the onnxruntime backend (or the python backend
    running the same model.onnx with onnxruntime: ``backend="python"``)."""
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    if not NAME_RE.match(name or ""):
        raise InputError(f"name: expected a model name of letters, digits, '_', '.', '-', got {name!r}")
    max_batch_size = _checks.positive_int("max_batch_size", max_batch_size, minimum=0)
    inputs, outputs = model_signature(model, max_batch_size=max_batch_size)
    lines = [f'name: "{name}"', f'backend: "{backend}"', f"max_batch_size: {max_batch_size}"]
    lines += _tensor_block("input", inputs) + _tensor_block("output", outputs)
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    lines.append("instance_group [ { kind: KIND_CPU } ]  # KIND_GPU with the CUDA execution provider")
    return "\n".join(lines) + "\n"


CONFIG_NAME, MODEL_PATH, PYTHON_MODEL_PATH = "config.pbtxt", "1/model.onnx", "1/model.py"


def write_triton_repository(
    model: onnx.ModelProto,
    directory: str | os.PathLike,
    name: str,
    *,
    max_batch_size: int = 8,
    overwrite: bool = False,
    check: Callable[[onnx.ModelProto], Any] | None = None,
    with_set: Callable[[], None] | None = None,
    backend: str = "onnxruntime",
) -> tuple[Any, Path, Path]:
    """Write DIR/name/config.pbtxt and DIR/name/1/model.onnx (and 1/model.py for the python backend) as one set: staged beside DIR/name, the model
    read back from the staged file and passed to ``check`` (which returns a report with ``.ok``), and
    swapped into place only when the check passes (always, without a check). Returns (the report or None,
    config path, model path). An existing DIR/name is replaced only with ``overwrite``. ``with_set``: called after
    a passing check, just before the swap, to write what belongs to the same set elsewhere (export-model's
    -o file); if it raises, nothing is swapped in."""
    config = triton_config(model, name, max_batch_size=max_batch_size, backend=backend)
    root = Path(directory) / name
    report = None
    with StagedSet(root, names=(CONFIG_NAME, "1"), overwrite=overwrite) as stage:
        written = stage.write(MODEL_PATH, model.SerializeToString())
        stage.write(CONFIG_NAME, config.encode())
        if backend == "python":
            stage.write(PYTHON_MODEL_PATH, PYTHON_MODEL.encode())
        if check is not None:
            report = check(load_model(written, "staged model"))
        if report is None or report.ok:
            if with_set is not None:
                with_set()
            stage.commit()
    return report, root / CONFIG_NAME, root / MODEL_PATH
