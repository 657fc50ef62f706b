"""Multitask prompt: shared prompt ⊙ low-rank task matrix. Math: spec/mpt.md.

    out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]),   t_b = task_ids[b]  (or task_ids[0] when len 1)

Shape letters: B batch, T total virtual tokens, D token_dim, K num_tasks, R num_ranks, U distinct tasks
in the batch. Each distinct task's prompt C[u] @ R[u] is formed once (U matmuls, not B), and the
gradients of C and R are summed per task before the small matmuls. tests/test_mpt.py checks this equals
the per-row definition.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._types import Array, IntArray, Params
from .embedding import EmbeddingCache, embedding_backward, embedding_forward

KEYS = ("prefix_task_cols", "prefix_task_rows", "embedding.weight")  # PEFT state_dict order


class MptCache(NamedTuple):
    x: Array                # B,T,D   E[indices]
    embedding: EmbeddingCache
    tasks: IntArray         # U       distinct task ids, sorted
    inverse: IntArray       # Bt      row b uses task slot inverse[b]; Bt = B or 1 (broadcast)
    task_prompts: Array     # U,T,D   C[u] @ R[u]
    cols: Array             # K,T,R
    rows: Array             # K,R,D


def mpt_forward(params: Params, indices: IntArray, task_ids: IntArray) -> tuple[Array, MptCache]:
    """params {prefix_task_cols (K,T,R), prefix_task_rows (K,R,D), embedding.weight (T,D)},
    indices (B,T), task_ids (B,) or (1,) -> out (B,T,D), cache."""
    cols, rows = params["prefix_task_cols"], params["prefix_task_rows"]
    x, emb_cache = embedding_forward(params["embedding.weight"], indices)  # B,T,D
    tasks, inverse = np.unique(task_ids, return_inverse=True)  # U ; Bt
    task_prompts = cols[tasks] @ rows[tasks]  # U,T,D
    out = x * task_prompts[inverse]  # B,T,D  (a length-1 inverse broadcasts over B)
    return out, MptCache(x, emb_cache, tasks, inverse, task_prompts, cols, rows)


def mpt_backward(dout: Array, cache: MptCache) -> Params:
    """Gradient of sum(out * dout) -> {key: grad} with the params' keys and shapes."""
    x, tasks, inverse, task_prompts = cache.x, cache.tasks, cache.inverse, cache.task_prompts
    dx = dout * task_prompts[inverse]  # B,T,D
    B, T, D = dout.shape
    dp_rows = (dout * x).reshape(B, T * D)  # B,T*D
    if inverse.shape[0] == 1:  # one task broadcast over the batch
        dp = dp_rows.sum(axis=0, keepdims=True)  # 1,T*D
    else:  # sum the rows of each task: one-hot (U,B) @ (B,T*D)
        onehot = (inverse[None, :] == np.arange(tasks.shape[0])[:, None]).astype(dout.dtype)  # U,B
        dp = onehot @ dp_rows  # U,T*D
    dp = dp.reshape(task_prompts.shape)  # U,T,D
    dcols = np.zeros_like(cache.cols)  # K,T,R
    drows = np.zeros_like(cache.rows)  # K,R,D
    dcols[tasks] = dp @ cache.rows[tasks].transpose(0, 2, 1)  # U,T,R
    drows[tasks] = cache.cols[tasks].transpose(0, 2, 1) @ dp  # U,R,D
    return {
        "prefix_task_cols": dcols,
        "prefix_task_rows": drows,
        "embedding.weight": embedding_backward(dx, cache.embedding),
    }
