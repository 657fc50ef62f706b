"""Each kind's forward and backward under one signature: the core's table, one entry per Kind.

    forward(params, indices, task_ids, dropout_scales) -> (out, cache)     backward(dout, cache) -> grads

params under PEFT keys; indices (B, T'); task_ids (B,) or (1,) for MPT, else ignored; dropout_scales
(L−1 arrays (B, T', 2H), entries 0 or 1/(1−p)) for the LSTM encoder, else ignored (None: no dropout).
grads are keyed like params. ``op_table`` builds the same table from any modules with the core's
signatures: mpt_ref/kernels/ops.py builds the fast paths' from theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Callable, NamedTuple

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core import embedding, encoder, mpt
from mpt_ref.kind import Kind


class Op(NamedTuple):
    forward: Callable[[Params, IntArray, IntArray | None, Sequence[Array] | None], tuple[Array, Any]]
    backward: Callable[[Array, Any], Params]


def num_lstm_layers(params: Mapping[str, Any]) -> int:
    """L of an LSTM encoder's params (0 for any other kind)."""
    return sum(k.startswith("lstm_head.weight_ih_l") and not k.endswith("_reverse") for k in params)


def op_table(embedding_ops: ModuleType, mpt_ops: ModuleType, encoder_ops: ModuleType) -> dict[Kind, Op]:
    """The table of the modules' ops, which have the signatures of mpt_ref.core.{embedding, mpt, encoder}."""

    def table_forward(p: Params, idx: IntArray, t: IntArray | None, s: Sequence[Array] | None) -> tuple[Array, Any]:
        return embedding_ops.embedding_forward(p["embedding.weight"], idx)

    def table_backward(dout: Array, cache: Any) -> Params:
        return {"embedding.weight": embedding_ops.embedding_backward(dout, cache)}

    def encoder_op(encoder_type: str) -> Op:
        def forward(p: Params, idx: IntArray, t: IntArray | None, s: Sequence[Array] | None) -> tuple[Array, Any]:
            return encoder_ops.prompt_encoder_forward(p, idx, encoder_type=encoder_type, num_layers=num_lstm_layers(p),
                                                      dropout_scales=s)
        return Op(forward, encoder_ops.prompt_encoder_backward)

    return {
        Kind.PROMPT_EMBEDDING: Op(table_forward, table_backward),
        Kind.MPT: Op(lambda p, idx, t, s: mpt_ops.mpt_forward(p, idx, t), mpt_ops.mpt_backward),
        Kind.MLP_ENCODER: encoder_op(encoder_ops.MLP),
        Kind.LSTM_ENCODER: encoder_op(encoder_ops.LSTM),
    }


OPS = op_table(embedding, mpt, encoder)
