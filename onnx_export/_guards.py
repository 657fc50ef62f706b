"""The id guards of every exported graph: the NaN-sentinel policy of spec/onnx.md.

ONNX Gather wraps negative ids and leaves ids >= the table length to the runtime (onnxruntime's CPU
EP raises, its CUDA EP returns whatever memory holds). So no id reaches a Gather unchecked: each
gathered table gets one extra all-NaN row at index ``upper`` (appended in the graph with Concat, so
the PEFT-named initializer stays untouched), and every invalid id is redirected to that row with
Where. The cost is O(ids), never a pass over the (B, T, D) output; the outcome is the same on every
execution provider: what depends on an invalid id comes out NaN.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from onnx_export._graph import GraphBuilder


def valid_ids(g: GraphBuilder, ids: str, upper: int, hint: str) -> str:
    """bool, same shape as ``ids``: 0 <= ids < upper."""
    lo = g.node("GreaterOrEqual", [ids, g.int_const("zero", 0)], f"{hint}_nonneg")
    hi = g.node("Less", [ids, g.int_const(f"{hint}_upper", upper)], f"{hint}_below_{upper}")
    return g.node("And", [lo, hi], f"{hint}_valid")


def redirect(g: GraphBuilder, ids: str, valid: str, sentinel: int, hint: str) -> str:
    """ids where valid, else ``sentinel`` (the index of the NaN row)."""
    return g.node("Where", [valid, ids, g.int_const(f"{hint}_sentinel", sentinel)], f"{hint}_guarded")


def nan_padded(g: GraphBuilder, table: str, row_shape: tuple[int, ...], hint: str) -> str:
    """Concat(table, NaN row) along axis 0: (n, *row_shape) -> (n + 1, *row_shape)."""
    nan_row = g.weight(f"{hint}.nan_row", np.full((1, *row_shape), np.nan))
    return g.node("Concat", [table, nan_row], f"{hint}_nan_padded", axis=0)


def batch_shape(g: GraphBuilder, indices: str) -> str:
    """[B] as a 1-D int64 tensor: the batch size of ``indices``."""
    return g.node("Shape", [indices], "batch_size", start=0, end=1)


def task_rows(g: GraphBuilder, task_ids: str, indices: str) -> str:
    """task_ids of length B or 1 -> (B,), one task per row; any other length fails at run time.

    Expand broadcasts a length-1 task_ids to (B,); Reshape to (B,) then refuses every length other
    than B or 1 (Expand alone would broadcast B=1 up to the task_ids length)."""
    batch = batch_shape(g, indices)
    expanded = g.node("Expand", [task_ids, batch], "task_ids_expanded")
    return g.node("Reshape", [expanded, batch], "task_ids_per_row", allowzero=1)


def rows_are_arange(g: GraphBuilder, indices: str, tokens: int) -> str:
    """bool (B,): row b of indices (B, T) equals arange(T) — PEFT's prompt_tokens."""
    arange = g.int_const("arange_T", np.arange(tokens))
    equal = g.node("Cast", [g.node("Equal", [indices, arange], "indices_eq_arange")], "indices_eq_arange_i32",
                   to=TensorProto.INT32)
    row_min = g.node("ReduceMin", [equal, g.int_const("token_axis", [1])], "row_is_arange_i32", keepdims=0)
    return g.node("Cast", [row_min], "row_is_arange", to=TensorProto.BOOL)
