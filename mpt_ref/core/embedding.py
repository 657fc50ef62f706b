"""Prompt embedding lookup: out = E[indices]. Math: spec/embedding.md.

Shape letters: B batch, T' looked-up positions, T embedding rows (total virtual tokens), D token_dim,
N = B·T' looked-up rows in all.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray
from mpt_ref.core.parallel import for_each


class EmbeddingCache(NamedTuple):
    indices: IntArray  # B,T'   values in [0, T)
    num_rows: int      # T      rows of the embedding table


def embedding_forward(weight: Array, indices: IntArray) -> tuple[Array, EmbeddingCache]:
    """Row gather. weight (T,D), indices (B,T') -> out (B,T',D)."""
    out = weight[indices]  # B,T',D
    return out, EmbeddingCache(indices, weight.shape[0])


def id_groups(indices: IntArray) -> Iterator[tuple[int, IntArray]]:
    """(j, positions) for every id j present in ``indices``, positions into indices.reshape(-1) in
    increasing order (a stable sort of the ids: O(N log N) on integers, no pass over any (N, D) array)."""
    flat = indices.reshape(-1)  # N
    order = np.argsort(flat, kind="stable")  # N
    ids, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    for j, start, end in zip(ids.tolist(), starts.tolist(), ends.tolist()):
        yield j, order[start:end]


def embedding_backward(dout: Array, cache: EmbeddingCache) -> Array:
    """Scatter-add: dweight[j] = sum of dout over the positions where indices == j. -> (T,D).

    Positions are grouped by id once (integers only), then each id gathers its own rows of dout and
    sums them: one read of dout, temporaries of one id's rows at a time, a loop over the distinct ids
    (at most T), none over the batch. (A sorted copy of all of dout, np.add.at and
    np.add.reduceat(axis=0) compute the same sums 3-25x slower, measured at B32 T100 D4096.)
    """
    D = dout.shape[-1]
    rows = dout.reshape(-1, D)  # N,D
    dweight = np.zeros((cache.num_rows, D), dtype=dout.dtype)  # T,D

    def one_id(group: tuple[int, IntArray]) -> None:  # one row of dweight per id: thread-count independent
        j, positions = group
        dweight[j] = rows[positions].sum(axis=0)  # repeated ids add up, in position order

    for_each(one_id, id_groups(cache.indices))
    return dweight
