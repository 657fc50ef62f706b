"""The P-tuning prompt encoder as functions: embedding → (bidirectional L-layer LSTM) → MLP head.
Math: spec/mlp.md, spec/lstm.md.

    MLP:   out = head3(E[indices])                 head3: D → H → H → D   (mlp_head.0/2/4)
    LSTM:  out = head2(lstm_head(E[indices]))      lstm_head: D → 2H, L layers; head2: 2H → 2H → D

Shape letters: B batch, T total virtual tokens (rows of E), T' looked-up positions (PEFT: T'=T),
D token_dim, H encoder_hidden_size, L encoder_num_layers. ``encoder_type`` is "MLP" or "LSTM" (PEFT's
``PromptEncoderReparameterizationType`` values, which compare equal to these strings).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core.embedding import EmbeddingCache, embedding_backward, embedding_forward
from mpt_ref.core.lstm_stack import (
    LSTMStackCache,
    lstm_stack_backward,
    lstm_stack_forward,
)
from mpt_ref.core.mlp_head import HeadCache, mlp_head_backward, mlp_head_forward

MLP, LSTM = "MLP", "LSTM"


class EncoderCache(NamedTuple):
    embedding: EmbeddingCache
    lstm: LSTMStackCache | None  # None in MLP mode
    head: HeadCache


def prompt_encoder_forward(
    params: Params,
    indices: IntArray,
    *,
    encoder_type: str,
    num_layers: int = 0,
    dropout_scales: Sequence[Array] | None = None,
) -> tuple[Array, EncoderCache]:
    """params (PEFT keys), indices (B, T') -> out (B, T', D), cache.

    num_layers and dropout_scales (L−1 arrays (B, T', 2H), entries 0 or 1/(1−p)) are used in LSTM
    mode only; pass dropout_scales=None for eval mode or p = 0.
    """
    x, emb_cache = embedding_forward(params["embedding.weight"], indices)  # B,T',D
    lstm_cache = None
    if encoder_type == LSTM:
        x, lstm_cache = lstm_stack_forward(params, x, num_layers=num_layers, dropout_scales=dropout_scales)  # B,T',2H
        out, head_cache = mlp_head_forward(params, x, num_linear=2)  # B,T',D
    else:
        out, head_cache = mlp_head_forward(params, x, num_linear=3)  # B,T',D
    return out, EncoderCache(emb_cache, lstm_cache, head_cache)


def prompt_encoder_backward(dout: Array, cache: EncoderCache, *,
                            scatter: Callable[[Array, EmbeddingCache], Array] = embedding_backward) -> Params:
    """dout (B, T', D) -> grads with the params' keys, in PEFT order (embedding, lstm_head, mlp_head).

    ``scatter``: the embedding backward used for dE (the kernels pass their own, same sums, faster)."""
    dx, head_grads = mlp_head_backward(dout, cache.head)  # B,T',2H (LSTM) or B,T',D (MLP)
    lstm_grads: Params = {}
    if cache.lstm is not None:
        dx, lstm_grads = lstm_stack_backward(dx, cache.lstm)  # B,T',D
    return {"embedding.weight": scatter(dx, cache.embedding), **lstm_grads, **head_grads}
