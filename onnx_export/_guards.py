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


def task_rows(g: GraphBuilder, task_ids: str, indices: str, num_tasks: int) -> str:
    """task_ids of length B or 1 -> (B,), one task per row, each in [0, num_tasks] (an invalid id ->
    num_tasks, the NaN row); a length that is neither gives NaN rows (or an error where two lengths > 1
    cannot broadcast), never a silent broadcast.

    Built only from ops tract's symbolic analysis follows (no Expand or Reshape to a computed shape, no
    Range): zeros (B,) from the first column of indices plus task_ids broadcasts a length-1 array, then
    Gather(sum, arange(B)) with arange(B) a CumSum of ones. B = 1 with a longer task_ids would take its
    first id, so the lengths n and B, summed as data, must agree (or n = 1); otherwise every row gets -1,
    which the caller's guard sends to the NaN row."""
    zero = g.int_const("zero_i64", 0)
    one = g.int_const("one_i64", 1)
    zeros = g.node("Mul", [g.node("Gather", [indices, zero], "indices_col0", axis=1), zero], "zeros_B")  # B
    ones = g.node("Add", [zeros, one], "ones_B")  # B
    # the ids are range-checked before any arithmetic (invalid -> K): tract narrowed task ids that were added
    # to values derived from a whole model's indices to 32 bits
    checked = redirect(g, task_ids, valid_ids(g, task_ids, num_tasks, "task_ids_in"), num_tasks, "task_ids_in")  # n
    summed = g.node("Add", [zeros, checked], "task_ids_broadcast")  # B (n if B = 1)
    ones_i32 = g.node("Cast", [ones], "ones_B_i32", to=TensorProto.INT32)  # int32: tract's CumSum takes no shape values
    positions = g.node("Sub", [g.node("CumSum", [ones_i32, g.int_const("axis_0", 0)], "cumsum_B"),
                               g.node("Cast", [one], "one_i32", to=TensorProto.INT32)], "arange_B")  # B: 0..B-1
    t = g.node("Gather", [summed, positions], "task_ids_per_row", axis=0)  # B
    batch = g.node("ReduceSum", [ones], "batch_size", keepdims=0)  # B, as data
    count = g.node("ReduceSum", [g.node("Add", [g.node("Mul", [task_ids, zero], "zeros_n"), one], "ones_n")],
                   "task_ids_length", keepdims=0)  # n
    ok = g.node("Or", [g.node("Equal", [count, one], "task_ids_length_1"),
                       g.node("Equal", [count, batch], "task_ids_length_B")], "task_ids_length_ok")
    return g.node("Where", [ok, t, g.int_const("bad_length", -1)], "task_ids_checked")  # B


def rows_are_arange(g: GraphBuilder, indices: str, tokens: int) -> str:
    """bool (B,): row b of indices (B, T) equals arange(T) — PEFT's prompt_tokens."""
    arange = g.int_const("arange_T", np.arange(tokens))
    equal = g.node("Cast", [g.node("Equal", [indices, arange], "indices_eq_arange")], "indices_eq_arange_i32",
                   to=TensorProto.INT32)
    row_min = g.node("ReduceMin", [equal, g.int_const("token_axis", [1])], "row_is_arange_i32", keepdims=0)
    return g.node("Cast", [row_min], "row_is_arange", to=TensorProto.BOOL)
