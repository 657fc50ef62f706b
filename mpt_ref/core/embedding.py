"""Prompt embedding lookup: out = E[indices]. Math: spec/embedding.md.

Shape letters: B batch, T' looked-up positions, T embedding rows (total virtual tokens), D token_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray


class EmbeddingCache(NamedTuple):
    indices: IntArray  # B,T'   values in [0, T)
    num_rows: int      # T      rows of the embedding table


def embedding_forward(weight: Array, indices: IntArray) -> tuple[Array, EmbeddingCache]:
    """Row gather. weight (T,D), indices (B,T') -> out (B,T',D)."""
    out = weight[indices]  # B,T',D
    return out, EmbeddingCache(indices, weight.shape[0])


def embedding_backward(dout: Array, cache: EmbeddingCache) -> Array:
    """Scatter-add: dweight[j] = sum of dout over the positions where indices == j. -> (T,D).

    The rows of dout are sorted by id once, then each id's contiguous block is summed: one pass over
    dout, a loop over the distinct ids (at most T), none over the batch. (np.add.at and
    np.add.reduceat(axis=0) compute the same sums several times slower.)
    """
    D = dout.shape[-1]
    flat = cache.indices.reshape(-1)  # B*T'
    dweight = np.zeros((cache.num_rows, D), dtype=dout.dtype)  # T,D
    order = np.argsort(flat, kind="stable")
    ids, starts = np.unique(flat[order], return_index=True)
    rows = dout.reshape(-1, D)[order]  # B*T',D  grouped by id
    for j, start, end in zip(ids, starts, np.append(starts[1:], flat.size)):
        dweight[j] = rows[start:end].sum(axis=0)  # repeated ids add up
    return dweight
