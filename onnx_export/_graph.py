"""A small graph builder over ``onnx.helper``: nodes, initializers, unique names, one float dtype.

Float initializers are cast to the export dtype when added; integer constants keep int64. Every node
output gets a readable unique name derived from a hint, so a graph reads like the math in spec/onnx.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpt_ref.errors import InputError
from onnx_export.opset import IR_VERSION, OPSET

NAN_SENTINELS = {"nan"}  # _faithful.nan_where_invalid's scalar; the guards' rows end in ".nan_row"


class GraphBuilder:
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.elem_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def _unique(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """A float initializer named exactly ``name`` (a PEFT key or a documented derived name), cast
        to the export dtype."""
        if name in self._names:
            raise ValueError(f"initializer name {name!r} used twice")
        self._names.add(name)
        source = np.asarray(array)
        with np.errstate(over="ignore", invalid="ignore"):
            cast = source.astype(self.dtype)
        if not (name in NAN_SENTINELS or name.endswith(".nan_row")):  # the NaN rows of _guards.py are meant
            if not np.isfinite(source).all():
                raise InputError(f"module: expected finite parameters to export, got NaN or inf in {name!r}")
            if not np.isfinite(cast).all():
                big = float(np.max(np.abs(source)))
                raise InputError(f"dtype: expected every value of {name!r} representable in {self.dtype} "
                                 f"(|x| <= {float(np.finfo(self.dtype).max)}), got |x| up to {big:.6g}; "
                                 "export float32 instead")
        self.initializers.append(numpy_helper.from_array(cast, name))
        return name

    def int_const(self, hint: str, values: Any) -> str:
        """An int64 initializer (shapes, axes, bounds, sentinels)."""
        name = self._unique(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: Sequence[str], hint: str, *, outputs: int = 1, **attrs: Any) -> Any:
        """Add one node; returns its output name (or a tuple of names when ``outputs`` > 1)."""
        names = [self._unique(hint if k == 0 else f"{hint}_out{k}") for k in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=self._unique(f"{hint}/{op}"), **attrs))
        return names[0] if outputs == 1 else tuple(names)

    def model(
        self,
        inputs: Sequence[onnx.ValueInfoProto],
        output: str,
        output_shape: Sequence[int | str],
        *,
        name: str,
        doc: str,
        metadata: dict[str, str],
    ) -> onnx.ModelProto:
        out = helper.make_tensor_value_info(output, self.elem_type, list(output_shape))
        graph = helper.make_graph(self.nodes, name, list(inputs), [out], initializer=self.initializers, doc_string=doc)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="mpt-ref onnx_export",
            doc_string=doc,
        )
        helper.set_model_props(model, metadata)
        return model


def int64_input(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, list(shape))
