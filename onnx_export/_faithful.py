"""variant="faithful": the reference math node by node (spec/onnx.md, "faithful graphs").

Initializers used as they are carry their PEFT key; the LSTM's converted tensors carry the derived
names ``lstm_head.{W,R,B}_l{k}`` (onnx_export/_layout.py). Every Gather goes through the guards of
_guards.py. Shape letters: B batch, T' looked-up tokens, T rows of E, D, H, K, R, L as in spec/README.md.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from mpt_ref.kind import Kind
from onnx_export import _layout
from onnx_export._graph import GraphBuilder
from onnx_export._guards import nan_padded, redirect, task_rows, valid_ids
from onnx_export._spec import ModuleSpec


def lookup(g: GraphBuilder, table: str, rows: int, row_shape: tuple[int, ...], indices: str, hint: str) -> str:
    """table[indices] with invalid ids -> the NaN row. indices (B, T') -> (B, T', *row_shape)."""
    ids = redirect(g, indices, valid_ids(g, indices, rows, hint), rows, hint)  # B,T'
    return g.node("Gather", [nan_padded(g, table, row_shape, table), ids], f"{hint}_rows", axis=0)


def safe_lookup(g: GraphBuilder, table: str, rows: int, indices: str, hint: str) -> tuple[str, str]:
    """(table[ids], valid): invalid ids read row 0, and the caller NaNs what they reach with
    ``nan_where_invalid`` after the nonlinearities (a NaN row would not survive them: the CPU EP's
    LSTM activations and a CUDA Relu turn NaN into numbers)."""
    valid = valid_ids(g, indices, rows, hint)  # B,T'
    ids = redirect(g, indices, valid, 0, f"{hint}_row0")  # B,T'
    return g.node("Gather", [table, ids], f"{hint}_rows", axis=0), valid


def nan_where_invalid(g: GraphBuilder, out: str, valid: str, *, whole_row: bool) -> str:
    """Where(valid, out, NaN): out (B, T', D); valid (B, T') per position, or reduced over T' to
    whole rows when ``whole_row`` (an LSTM output depends on every position of its row)."""
    if whole_row:
        valid_i32 = g.node("Cast", [valid], "valid_i32", to=TensorProto.INT32)
        valid = g.node("Cast", [g.node("ReduceMin", [valid_i32, g.int_const("token_axis", [1])], "row_valid_i32",
                                       keepdims=1)], "row_valid", to=TensorProto.BOOL)  # B,1
    mask = g.node("Unsqueeze", [valid, g.int_const("last_axis", [2])], "valid_mask")  # B,T',1 or B,1,1
    nan = g.weight("nan", np.array(np.nan))
    return g.node("Where", [mask, out, nan], "nan_where_invalid")


def linear(g: GraphBuilder, spec: ModuleSpec, x: str, index: int) -> str:
    """torch Linear y = x Wᵀ + b with W (out, in) kept as is under its PEFT key: Transpose, MatMul, Add."""
    prefix = f"mlp_head.{index}"
    w = g.weight(f"{prefix}.weight", spec.params[f"{prefix}.weight"])  # out,in
    b = g.weight(f"{prefix}.bias", spec.params[f"{prefix}.bias"])  # out
    wt = g.node("Transpose", [w], f"{prefix}.weight_T", perm=[1, 0])  # in,out
    return g.node("Add", [g.node("MatMul", [x, wt], f"{prefix}_matmul"), b], f"{prefix}_out")


def mlp_head(g: GraphBuilder, spec: ModuleSpec, x: str, num_linear: int) -> str:
    """Linear, ReLU, Linear[, ReLU, Linear]: mlp_head.0, .2[, .4]."""
    for j in range(num_linear):
        if j:
            x = g.node("Relu", [x], f"mlp_head.{2 * j - 1}_relu")
        x = linear(g, spec, x, 2 * j)
    return x


def lstm_stack(g: GraphBuilder, spec: ModuleSpec, x: str) -> str:
    """Bidirectional L-layer LSTM, one node per layer: x (B, T', D) batch-first -> (T', B, 2H) time-major.

    The caller applies the row-wise head in time-major layout and transposes its (T', B, D) output: no
    Transpose may feed a MatMul, because onnxruntime 1.32's CPU EP crashes (SIGSEGV at session
    creation, default ORT_ENABLE_ALL) on float16 Transpose -> MatMul (spec/onnx.md, known runtime bugs)."""
    p = spec.params
    x = g.node("Transpose", [x], "lstm_input_time_major", perm=list(_layout.BATCH_FIRST_TO_TIME_MAJOR))  # T',B,D
    # zero initial states given explicitly (the default when absent), as data from x: tract cannot size
    # implicit states for a symbolic batch (it panicked, aborting the process) nor states whose shape is
    # computed with Shape (it mixed up batch sizes). x is finite here (invalid ids read row 0), so 0·x = 0.
    first = g.node("Gather", [x, g.int_const("step0", 0)], "lstm_first_step", axis=0)  # B,D
    zeros = g.node("ReduceSum", [g.node("Mul", [first, g.weight("lstm_zero", np.zeros(()))], "lstm_first_step_times_0"),
                                 g.int_const("feature_axis", [1])], "lstm_zeros_B1", keepdims=1)  # B,1
    state = g.node("Add", [zeros, g.weight("lstm_zero_state", np.zeros((1, spec.H)))], "lstm_zero_state")  # B,H
    state = g.node("Unsqueeze", [state, g.int_const("direction_axis", [0])], "lstm_zero_state_1")  # 1,B,H
    h0 = g.node("Concat", [state, state], "lstm_initial_state", axis=0)  # 2,B,H
    for k in range(spec.L):
        key = lambda name, suffix="": p[f"lstm_head.{name}_l{k}{suffix}"]  # noqa: E731
        w = g.weight(f"lstm_head.W_l{k}", _layout.lstm_w(key("weight_ih"), key("weight_ih", "_reverse")))  # 2,4H,I
        r = g.weight(f"lstm_head.R_l{k}", _layout.lstm_r(key("weight_hh"), key("weight_hh", "_reverse")))  # 2,4H,H
        b = g.weight(f"lstm_head.B_l{k}", _layout.lstm_b(key("bias_ih"), key("bias_hh"),
                                                           key("bias_ih", "_reverse"), key("bias_hh", "_reverse")))  # 2,8H
        y = g.node("LSTM", [x, w, r, b, "", h0, h0], f"lstm_l{k}_Y", hidden_size=spec.H,
                   direction="bidirectional")  # T',2,B,H
        y = g.node("Transpose", [y], f"lstm_l{k}_Y_time_batch_dir", perm=list(_layout.LSTM_Y_TO_TIME_BATCH_DIR))  # T',B,2,H
        x = g.node("Reshape", [y, g.int_const("merge_directions", [0, 0, -1])], f"lstm_l{k}_out")  # T',B,2H
    return x  # T',B,2H


def pad_empty_axes(g: GraphBuilder, x: str, indices: str) -> tuple[str, str]:
    """x (B, T', D) with one zero row appended on each axis of length 0 (B = 0 or T' = 0), and the shape
    [B, T'] to slice the result back to. onnxruntime's CPU LSTM aborts the process (SIGABRT) on an empty
    batch and refuses an empty sequence; non-empty inputs get zero padding, so their results are unchanged
    bit for bit (spec/onnx.md, empty inputs)."""
    shape = g.node("Shape", [indices], "indices_shape")  # [B, T']
    empty = g.node("Cast", [g.node("Equal", [shape, g.int_const("zeros_2", [0, 0])], "axis_is_empty")],
                   "axis_is_empty_i64", to=7)  # INT64 [B==0, T'==0]
    pads = g.node("Concat", [g.int_const("pads_begin", [0, 0, 0]), empty, g.int_const("pad_d", [0])],
                  "empty_axis_pads", axis=0)  # [0, 0, 0, B==0, T'==0, 0]
    return g.node("Pad", [x, pads], "empty_axes_padded", mode="constant"), shape


def _embedding(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    E = g.weight("embedding.weight", spec.params["embedding.weight"])  # T,D
    return lookup(g, E, spec.T, (spec.D,), indices, "indices")  # B,T',D


def _mpt(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b])"""
    T, D, K, R = spec.T, spec.D, spec.K, spec.R
    x = _embedding(g, spec, indices, task_ids)  # B,T',D
    t = task_rows(g, task_ids, indices, K)  # B
    t = redirect(g, t, valid_ids(g, t, K, "task_ids"), K, "task_ids")  # B, invalid -> K
    C = g.weight("prefix_task_cols", spec.params["prefix_task_cols"])  # K,T,R
    Rw = g.weight("prefix_task_rows", spec.params["prefix_task_rows"])  # K,R,D
    cols = g.node("Gather", [nan_padded(g, C, (T, R), C), t], "task_cols", axis=0)  # B,T,R
    rows = g.node("Gather", [nan_padded(g, Rw, (R, D), Rw), t], "task_rows", axis=0)  # B,R,D
    prompt = g.node("MatMul", [cols, rows], "task_prompt")  # B,T,D
    return g.node("Mul", [x, prompt], "modulated")  # B,T,D


def _mlp_encoder(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    E = g.weight("embedding.weight", spec.params["embedding.weight"])  # T,D
    x, valid = safe_lookup(g, E, spec.T, indices, "indices")  # B,T',D
    return nan_where_invalid(g, mlp_head(g, spec, x, num_linear=3), valid, whole_row=False)


def _lstm_encoder(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    E = g.weight("embedding.weight", spec.params["embedding.weight"])  # T,D
    x, valid = safe_lookup(g, E, spec.T, indices, "indices")  # B,T',D
    x, shape = pad_empty_axes(g, x, indices)  # B+[B==0], T'+[T'==0], D
    y = mlp_head(g, spec, lstm_stack(g, spec, x), num_linear=2)  # T',B,D
    y = g.node("Transpose", [y], "batch_first", perm=list(_layout.BATCH_FIRST_TO_TIME_MAJOR))  # B,T',D
    y = g.node("Slice", [y, g.int_const("slice_starts", [0, 0]), shape, g.int_const("slice_axes", [0, 1])],
               "unpadded")  # B,T',D
    return nan_where_invalid(g, y, valid, whole_row=True)


# the faithful graph of each kind: (g, spec, indices, task_ids) -> the name of the (B, T', D) output
BUILDERS = {Kind.PROMPT_EMBEDDING: _embedding, Kind.MPT: _mpt, Kind.MLP_ENCODER: _mlp_encoder,
            Kind.LSTM_ENCODER: _lstm_encoder}


def build(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The faithful graph of ``spec``; returns the name of the (B, T', D) output."""
    return BUILDERS[spec.kind](g, spec, indices, task_ids)
