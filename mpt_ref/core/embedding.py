"""Prompt embedding lookup, the plainest NumPy statement of spec/embedding.md.

    forward   out[b, j] = E[indices[b, j]]
    backward  dE[r]     = Σ_{(b, j): indices[b, j] = r} G[b, j]      (scatter-add)

Shape letters: B batch, T' looked-up positions, T rows of E (total virtual tokens), D token_dim.
The modules run the fast path of the same signature, mpt_ref/kernels/embedding.py.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray


class EmbeddingCache(NamedTuple):
    indices: IntArray  # B,T'   values in [0, T)
    num_rows: int      # T      rows of the embedding table


def embedding_forward(weight: Array, indices: IntArray) -> tuple[Array, EmbeddingCache]:
    """Row gather. weight E (T,D), indices (B,T') -> out (B,T',D), cache."""
    out = weight[indices]  # B,T',D
    return out, EmbeddingCache(indices, weight.shape[0])


def embedding_backward(dout: Array, cache: EmbeddingCache) -> Array:
    """dout G (B,T',D) -> dE (T,D): each position's row of G added to the row of E it read, in
    position order (rows never looked up get zero)."""
    dweight = np.zeros((cache.num_rows, dout.shape[-1]), dtype=dout.dtype)  # T,D
    np.add.at(dweight, cache.indices, dout)  # T,D   dE[indices[b, j]] += G[b, j]
    return dweight
