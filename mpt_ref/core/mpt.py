"""Multitask prompt: shared prompt ⊙ low-rank task matrix. Math: spec/mpt.md.

    out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]),   t_b = task_ids[b]  (or task_ids[0] when len 1)

Shape letters: B batch, T total virtual tokens, D token_dim, K num_tasks, R num_ranks, U distinct tasks
in the batch. Each distinct task's prompt C[u] @ R[u] is formed once (U matmuls, not B), and the
gradients of C and R are summed per task before the small matmuls. tests/test_mpt.py checks this equals
the per-row definition (spec/mpt.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core.embedding import EmbeddingCache, embedding_backward, embedding_forward


class MptCache(NamedTuple):
    x: Array                # B,T,D   E[indices]; 1,T,D when every row of indices is the same
    embedding: EmbeddingCache
    tasks: IntArray         # U       distinct task ids, sorted
    inverse: IntArray       # B       row b uses task slot inverse[b]
    task_prompts: Array     # U,T,D   C[u] @ R[u]
    cols: Array             # K,T,R
    rows: Array             # K,R,D


def mpt_cache(params: Params, indices: IntArray, task_ids: IntArray) -> MptCache:
    """What mpt_backward needs, without forming the (B,T,D) output (the classes' stateless backward
    uses this instead of a second full forward)."""
    cols, rows = params["prefix_task_cols"], params["prefix_task_rows"]
    B = indices.shape[0]
    shared = B > 0 and bool((indices == indices[:1]).all())
    x, emb_cache = embedding_forward(params["embedding.weight"], indices[:1] if shared else indices)  # 1|B,T,D
    tasks, inverse = np.unique(task_ids, return_inverse=True)  # U ; B_t
    inverse = np.broadcast_to(inverse.reshape(-1), (B,))  # a length-1 task_ids applies to every row
    task_prompts = cols[tasks] @ rows[tasks]  # U,T,D
    return MptCache(x, emb_cache, tasks, inverse, task_prompts, cols, rows)


def mpt_forward(params: Params, indices: IntArray, task_ids: IntArray) -> tuple[Array, MptCache]:
    """params {prefix_task_cols (K,T,R), prefix_task_rows (K,R,D), embedding.weight (T,D)},
    indices (B,T), task_ids (B,) or (1,) -> out (B,T,D), cache.

    When all rows of indices agree (PEFT always feeds arange(T)), E[indices] is gathered once and
    each task's prompt E ⊙ P_u is formed once, so the output costs one gather of U tables.
    """
    cache = mpt_cache(params, indices, task_ids)
    x, inverse, task_prompts = cache.x, cache.inverse, cache.task_prompts
    out = (x * task_prompts)[inverse] if x.shape[0] == 1 else x * task_prompts[inverse]  # B,T,D
    return out, cache


def mpt_backward(dout: Array, cache: MptCache) -> Params:
    """Gradient of sum(out * dout) -> {key: grad} with the params' keys and shapes."""
    x, tasks, inverse, task_prompts = cache.x, cache.tasks, cache.inverse, cache.task_prompts
    B, T, D = dout.shape
    U = tasks.shape[0]
    onehot = (np.arange(U)[:, None] == inverse[None, :]).astype(dout.dtype)  # U,B  sums rows per task
    if x.shape[0] == 1 and B > 0:  # shared rows: reduce dout per task first, one pass over dout
        dout_per_task = (onehot @ dout.reshape(B, T * D)).reshape(U, T, D)  # Σ_{b: t_b=u} G[b]
        dp = dout_per_task * x  # U,T,D
        dx = (dout_per_task * task_prompts).sum(axis=0, keepdims=True)  # 1,T,D
    else:
        dp = (onehot @ (dout * x).reshape(B, T * D)).reshape(U, T, D)  # U,T,D
        dx = dout * task_prompts[inverse]  # B,T,D
    dcols = np.zeros_like(cache.cols)  # K,T,R
    drows = np.zeros_like(cache.rows)  # K,R,D
    dcols[tasks] = dp @ cache.rows[tasks].transpose(0, 2, 1)  # U,T,R
    drows[tasks] = cache.cols[tasks].transpose(0, 2, 1) @ dp  # U,R,D
    return {
        "prefix_task_cols": dcols,
        "prefix_task_rows": drows,
        "embedding.weight": embedding_backward(dx, cache.embedding),
    }
