"""variant="folded" (and "folded-any", below): the deployment forms. The module is evaluated once, in float64, for PEFT's
indices (arange(T)) and rounded once to the export dtype; the graph is one Gather of that table.

- embedding: the table is ``embedding.weight`` itself, so the folded graph equals the faithful one.
- mlp: ``prompt_table`` (T, D); the head acts row by row, so table[indices] is exact for any indices.
- lstm: ``prompt_table`` (T, D), gathered as one (T, D) block per row; rows that are not arange(T)
  come out NaN (an LSTM output depends on the whole row, so a table cannot serve them).
- mpt: ``task_prompt_table`` (K, T, D), row k = E ⊙ (C_k @ R_k), and one Gather by task id picks a
  row's whole prompt (the fastest standard-op form measured); as for the LSTM, a row that is not
  PEFT's arange(T) comes out NaN (folded-any serves any rows). An invalid task id gives a NaN row.

variant="folded-any": the fastest graph exact for *any* index rows. MPT: the per-task prompt factor table P (K, T, D), P_k = C_k @ R_k evaluated in float64
and rounded once, then out = Gather(E, indices) ⊙ Gather(P, t): two Gathers and one Mul, no MatMul,
with the faithful graph's id policy (an invalid index: NaN at its position; an invalid task id: NaN
row). Embedding and MLP: as "folded" (already exact for any indices). LSTM: the faithful graph (an
LSTM output depends on the whole row, so no table can serve every row).
"""


from __future__ import annotations

from mpt_ref.kind import Kind
from onnx_export import _faithful
from onnx_export._faithful import lookup
from onnx_export._graph import GraphBuilder
from onnx_export._guards import (
    nan_padded,
    redirect,
    rows_are_arange,
    task_rows,
    valid_ids,
)
from onnx_export._spec import ModuleSpec
from onnx_export.reference import prompt_table, task_prompt_factors


def _embedding_lookup(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The embedding is its own table: the faithful graph's one Gather."""
    return lookup(g, g.weight("embedding.weight", spec.params["embedding.weight"]), spec.T, (spec.D,), indices,
                  "indices")  # B,T',D


def _prompt_table_lookup(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The MLP acts token by token: one Gather from the table of its T prompt rows, exact for any rows."""
    return lookup(g, g.weight("prompt_table", prompt_table(spec)), spec.T, (spec.D,), indices, "indices")  # B,T',D


def _lstm_arange_rows(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The LSTM reads whole rows: the folded table answers PEFT's arange(T) rows, any other row is NaN."""
    T, D = spec.T, spec.D
    peft_rows = rows_are_arange(g, indices, T)  # B
    table = g.node("Unsqueeze", [g.weight("prompt_table", prompt_table(spec)), g.int_const("axis0", [0])],
                   "prompt_table_1")  # 1,T,D
    sel = redirect(g, g.int_const("row0", 0), peft_rows, 1, "row")  # B, not arange -> the NaN block
    return g.node("Gather", [nan_padded(g, table, (T, D), "prompt_table"), sel], "prompt_rows", axis=0)  # B,T,D


def _mpt_arange_rows(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """One Gather of the task prompt table by task id for rows that are PEFT's arange(T); any other row is
    sent to the NaN block, as for the LSTM (folded-any serves any rows). Branch-free: an If choosing the
    any-rows form at run time gave wrong prompts on onnxruntime's OpenVINO EP once a session switched
    branches, and computing both forms with Where cost 10x the folded-any graph on onnxruntime (bench)."""
    T, D = spec.T, spec.D
    peft_rows = rows_are_arange(g, indices, T)  # B
    table = g.weight("task_prompt_table", prompt_table(spec))  # K,T,D
    t = task_rows(g, task_ids, indices, spec.K)  # B
    t = redirect(g, t, valid_ids(g, t, spec.K, "task_ids"), spec.K, "task_ids")  # B, invalid -> the NaN block
    t = redirect(g, t, peft_rows, spec.K, "row")  # B, a row that is not arange(T) -> the NaN block
    return g.node("Gather", [nan_padded(g, table, (T, D), "task_prompt_table"), t], "prompt_rows", axis=0)  # B,T,D


def _mpt_any_rows(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """out = Gather(E, indices) ⊙ Gather(P, t), P_k = C_k @ R_k in float64 rounded once; faithful id policy."""
    T, D, K = spec.T, spec.D, spec.K
    x = lookup(g, g.weight("embedding.weight", spec.params["embedding.weight"]), T, (D,), indices, "indices")  # B,T,D
    t = task_rows(g, task_ids, indices, K)  # B
    t = redirect(g, t, valid_ids(g, t, K, "task_ids"), K, "task_ids")  # B, invalid -> the NaN block
    table = g.weight("task_prompt_factors", task_prompt_factors(spec))  # K,T,D
    prompt = g.node("Gather", [nan_padded(g, table, (T, D), "task_prompt_factors"), t], "task_prompt", axis=0)  # B,T,D
    return g.node("Mul", [x, prompt], "modulated")  # B,T,D


# the folded graph of each kind (fastest for PEFT's rows), and the folded-any graph (any rows): the LSTM's
# is its faithful graph, the token-wise kinds' the folded one. (g, spec, indices, task_ids) -> output name
BUILDERS = {Kind.PROMPT_EMBEDDING: _embedding_lookup, Kind.MPT: _mpt_arange_rows,
            Kind.MLP_ENCODER: _prompt_table_lookup, Kind.LSTM_ENCODER: _lstm_arange_rows}
ANY_ROWS_BUILDERS = {Kind.PROMPT_EMBEDDING: _embedding_lookup, Kind.MPT: _mpt_any_rows,
                     Kind.MLP_ENCODER: _prompt_table_lookup, Kind.LSTM_ENCODER: _faithful.BUILDERS[Kind.LSTM_ENCODER]}


def build(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The folded graph of ``spec``; returns the name of the (B, T', D) output."""
    return BUILDERS[spec.kind](g, spec, indices, task_ids)


def build_any(g: GraphBuilder, spec: ModuleSpec, indices: str, task_ids: str | None) -> str:
    """The folded-any graph of ``spec``; returns the name of the (B, T', D) output."""
    return ANY_ROWS_BUILDERS[spec.kind](g, spec, indices, task_ids)
