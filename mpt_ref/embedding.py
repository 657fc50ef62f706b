"""Prompt embedding lookup: out = E[indices]. Math: spec/embedding.md.

Shape letters: B batch, T' looked-up positions, T embedding rows (total virtual tokens), D token_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._types import Array, IntArray


class EmbeddingCache(NamedTuple):
    indices: IntArray  # B,T'   values in [0, T)
    num_rows: int      # T      rows of the embedding table


def embedding_forward(weight: Array, indices: IntArray) -> tuple[Array, EmbeddingCache]:
    """Row gather. weight (T,D), indices (B,T') -> out (B,T',D)."""
    out = weight[indices]  # B,T',D
    return out, EmbeddingCache(indices, weight.shape[0])


def embedding_backward(dout: Array, cache: EmbeddingCache) -> Array:
    """Scatter-add: dweight[j] = sum of dout over the positions where indices == j. -> (T,D)."""
    D = dout.shape[-1]
    dweight = np.zeros((cache.num_rows, D), dtype=dout.dtype)  # T,D
    np.add.at(dweight, cache.indices.reshape(-1), dout.reshape(-1, D))  # accumulates repeated ids
    return dweight
