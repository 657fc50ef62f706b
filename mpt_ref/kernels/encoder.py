"""The P-tuning encoder, the fast path: the same signatures as mpt_ref/core/encoder.py. Without dropout
(eval mode, p = 0) it computes each distinct input once; with dropout it is the core itself (masks
differ per row).

The MLP head is token-wise, so out[b, j] = head(E)[indices[b, j]]: the head runs once over the T rows
of E and the result is gathered. The LSTM reads whole index rows, so it runs once per *distinct* index
row (PEFT feeds arange(T) in every row: one run for the whole batch) and the result is gathered.
Backward first sums the upstream gradient onto that distinct work (a scatter-add over tokens, or a
per-row-group sum), then runs the plain backward once.

What must stay true (tests/test_kernels.py pins it against mpt_ref.core.encoder on hypothesis cases,
with repeated and distinct index rows, dedup on and off): the output is the core's bit for bit (the
same head / LSTM arithmetic on each row, gathered); the gradients are the same sums regrouped before
the backward, within REGROUPED_SUMS_F64.

Shape letters: B batch, T' looked-up positions, T rows of E, D token_dim, U distinct index rows.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core import encoder as core
from mpt_ref.core.encoder import LSTM, MLP, EncoderCache

__all__ = ["LSTM", "MLP", "DedupCache", "EncoderCache", "prompt_encoder_backward", "prompt_encoder_forward"]
from mpt_ref.kernels.embedding import EmbeddingCache, embedding_backward


class DedupCache(NamedTuple):
    inner: EncoderCache     # the plain cache of the distinct work: 1,T (MLP) or U,T' (LSTM) rows
    token_wise: bool        # MLP: gather by token; LSTM: gather by row
    indices: IntArray       # B,T'   (token-wise: what to scatter-add dout by)
    inverse: IntArray       # B      (row-wise: distinct row of each batch row)


def dedup_forward(params: Params, indices: IntArray, *, encoder_type: str,
                  num_layers: int = 0) -> tuple[Array, DedupCache]:
    """Eval-mode forward, params (PEFT keys), indices (B, T') -> out (B, T', D), cache."""
    if encoder_type == MLP:
        T = params["embedding.weight"].shape[0]
        table, inner = core.prompt_encoder_forward(params, np.arange(T)[None], encoder_type=encoder_type)  # 1,T,D
        return table[0][indices], DedupCache(inner, True, indices, indices[:0, 0])  # B,T',D
    rows, inverse = np.unique(indices, axis=0, return_inverse=True)  # U,T' ; B
    inverse = inverse.reshape(-1)
    out, inner = core.prompt_encoder_forward(params, rows, encoder_type=encoder_type, num_layers=num_layers)  # U,T',D
    return out[inverse], DedupCache(inner, False, indices, inverse)  # B,T',D


def dedup_backward(dout: Array, cache: DedupCache) -> Params:
    """dout (B, T', D) -> grads with the params' keys (gradient of sum(out * dout))."""
    if cache.token_wise:
        T = cache.inner.embedding.num_rows
        dtable = embedding_backward(dout, EmbeddingCache(cache.indices, T))[None]  # 1,T,D  Σ dout per token
        return core.prompt_encoder_backward(dtable, cache.inner, scatter=embedding_backward)
    B, Tp, D = dout.shape
    U = cache.inner.embedding.indices.shape[0]
    onehot = (np.arange(U)[:, None] == cache.inverse[None, :]).astype(dout.dtype)  # U,B
    drows = (onehot @ dout.reshape(B, Tp * D)).reshape(U, Tp, D)  # Σ dout over the rows of each group
    return core.prompt_encoder_backward(drows, cache.inner, scatter=embedding_backward)


def prompt_encoder_forward(params: Params, indices: IntArray, *, encoder_type: str, num_layers: int = 0,
                           dropout_scales: Sequence[Array] | None = None) -> tuple[Array, EncoderCache | DedupCache]:
    """core.prompt_encoder_forward's contract; distinct work only when there is no dropout."""
    if dropout_scales is None and indices.size:
        return dedup_forward(params, indices, encoder_type=encoder_type, num_layers=num_layers)
    return core.prompt_encoder_forward(params, indices, encoder_type=encoder_type, num_layers=num_layers,
                                       dropout_scales=dropout_scales)


def prompt_encoder_backward(dout: Array, cache: EncoderCache | DedupCache) -> Params:
    """core.prompt_encoder_backward's contract, for either cache."""
    if isinstance(cache, DedupCache):
        return dedup_backward(dout, cache)
    return core.prompt_encoder_backward(dout, cache, scatter=embedding_backward)  # the id-group scatter-add
