"""Multitask prompt, the fast path: the same signatures as mpt_ref/core/mpt.py (the plain statement of
spec/mpt.md), tuned for memory and speed. The modules run this one.

    out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]),   t_b = task_ids[b]  (or task_ids[0] when len 1)

Shape letters: B batch, T total virtual tokens, D token_dim, K num_tasks, R num_ranks, U distinct tasks
in the batch, c rows of a batch chunk. Each distinct task's prompt P_u = C[u] @ R[u] is formed once
(U matmuls, not B), and the gradients of C and R are summed per task before the small matmuls.

Memory (spec/performance.md): the only (B,T,D) arrays are the output and the caller's dout. The
forward gathers E[indices] straight into the output and multiplies it by P in place, chunk by chunk
of batch rows (temporaries of one chunk, ~1 MiB); the cache keeps E and the indices, not E[indices],
and the backward gathers one chunk of E[indices] at a time again. dE is summed per id directly from
dout and P (no dout ⊙ P array). When every row of indices is the same (PEFT feeds arange(T)), dout
is first reduced per task and everything else is (U,T,D).

What must stay true (tests/test_kernels.py pins each against mpt_ref.core.mpt on hypothesis cases and at
the sizes where the branches switch: shared rows or not, one or several tasks per chunk, one row per
chunk, 1-3 threads):
- the forward is bit for bit the plain one (same products E[indices[b]] * P[t_b], same P per task);
- dE sums, per id, the rows dout ⊙ P in position order (the plain np.add.at's order) except with
  shared rows, where dout is summed per task first; dC, dR sum dP per task in chunks: both are
  another order of the same sums, so they agree within the error model (REORDER_* tolerances);
- any thread count gives the same bits (items write disjoint outputs);
- no (B,T,D) temporary besides the output and dout (spec/performance.md).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core.mpt import check_ids
from mpt_ref.kernels.chunks import batch_chunks, id_chunks, row_chunks
from mpt_ref.kernels.embedding import sum_id_groups
from mpt_ref.kernels.parallel import for_each


class MptCache(NamedTuple):
    weight: Array           # T,D     E itself (read again by the backward; E[indices] is never kept)
    indices: IntArray       # B,T
    x: Array | None         # 1,T,D   E[indices[0]] when every row of indices is the same, else None
    tasks: IntArray         # U       distinct task ids, sorted
    inverse: IntArray       # B       row b uses task slot inverse[b]
    task_prompts: Array     # U,T,D   C[u] @ R[u]
    cols: Array             # K,T,R
    rows: Array             # K,R,D


def _chunk_prompts(task_prompts: Array, inverse: IntArray, sl: slice) -> Array:
    """P of each row of the chunk: a (1,T,D) view when the chunk has one task, else a (c,T,D) copy."""
    slots = inverse[sl]
    if (slots == slots[0]).all():
        return task_prompts[slots[0]][None]  # 1,T,D  view
    return task_prompts[slots]  # c,T,D


def _sum_per_task(dout: Array, gather: tuple[Array, IntArray] | None, inverse: IntArray, U: int) -> Array:
    """(U,T,D): Σ_{b: t_b=u} dout[b], or Σ dout[b] ⊙ E[indices[b]] when gather = (E, indices). Rows are
    taken task by task, in batch order, a chunk at a time (streaming adds, no BLAS: memory-bound)."""
    B, T, D = dout.shape
    acc = np.zeros((U, T, D), dtype=dout.dtype)  # U,T,D
    by_task = np.argsort(inverse, kind="stable")  # B  rows grouped by task, batch order within
    bounds = np.searchsorted(inverse[by_task], np.arange(U + 1))  # U+1
    for u in range(U):
        for rows in row_chunks(by_task[bounds[u]:bounds[u + 1]], T * D):
            one = rows.shape[0] == 1
            if gather is None:
                terms = dout[rows[0]][None] if one else dout.take(rows, axis=0)  # c,T,D
            else:
                terms = np.take(gather[0], gather[1][rows], axis=0, mode="clip")  # c,T,D  E[indices] of the rows
                terms *= dout[rows[0]] if one else dout.take(rows, axis=0)  # in place
            acc[u] += terms[0] if one else terms.sum(axis=0)
    return acc


def mpt_cache(params: Params, indices: IntArray, task_ids: IntArray) -> MptCache:
    """Everything mpt_backward needs, without forming the (B,T,D) output."""
    cols, rows, weight = params["prefix_task_cols"], params["prefix_task_rows"], params["embedding.weight"]
    check_ids(indices, weight.shape[0])  # the gathers below clip
    B = indices.shape[0]
    shared = B > 0 and bool((indices == indices[:1]).all())
    x = weight[indices[:1]] if shared else None  # 1,T,D
    tasks, inverse = np.unique(task_ids, return_inverse=True)  # U ; B_t
    inverse = np.broadcast_to(inverse.reshape(-1), (B,))  # a length-1 task_ids applies to every row
    task_prompts = cols[tasks] @ rows[tasks]  # U,T,D
    return MptCache(weight, indices, x, tasks, inverse, task_prompts, cols, rows)


def mpt_forward(params: Params, indices: IntArray, task_ids: IntArray) -> tuple[Array, MptCache]:
    """params {prefix_task_cols (K,T,R), prefix_task_rows (K,R,D), embedding.weight (T,D)},
    indices (B,T), task_ids (B,) or (1,) -> out (B,T,D), cache.

    Shared rows: each task's prompt E ⊙ P_u is formed once and the output is one gather of U tables.
    Other rows: E[indices] is gathered into the output, then multiplied in place by P, chunk by chunk.
    """
    cache = mpt_cache(params, indices, task_ids)
    x, inverse, task_prompts = cache.x, cache.inverse, cache.task_prompts
    if x is not None:
        return np.take(x * task_prompts, inverse, axis=0), cache  # B,T,D  one write of the output
    B, T = indices.shape
    D = cache.weight.shape[1]
    out = np.empty((B, T, D), dtype=np.result_type(cache.weight, task_prompts))  # B,T,D

    def chunk(sl: slice) -> None:  # disjoint rows of out: any thread count gives the same bits
        np.take(cache.weight, indices[sl], axis=0, out=out[sl], mode="clip")  # c,T,D  (ids checked in mpt_cache: clipping never changes one)
        out[sl] *= _chunk_prompts(task_prompts, inverse, sl)  # c,T,D  in place

    for_each(chunk, batch_chunks(B, T * D))
    return out, cache


def mpt_backward(dout: Array, cache: MptCache) -> Params:
    """Gradient of sum(out * dout) -> {key: grad} with the params' keys and shapes.

        dP_u = Σ_{b: t_b=u} dout[b] ⊙ E[indices[b]]        dE[j] = Σ_{(b,s): indices[b,s]=j} dout[b,s] ⊙ P_{t_b}[s]
        dC_u = dP_u R_uᵀ,  dR_u = C_uᵀ dP_u
    """
    tasks, inverse, task_prompts, weight = cache.tasks, cache.inverse, cache.task_prompts, cache.weight
    B, T, D = dout.shape
    U = tasks.shape[0]
    dE = np.zeros(weight.shape, dtype=dout.dtype)  # T,D
    if cache.x is not None and B > 0:  # shared rows: reduce dout per task first, one pass over dout
        dout_per_task = _sum_per_task(dout, None, inverse, U)  # U,T,D  Σ_{b: t_b=u} dout[b]
        dp = dout_per_task * cache.x  # U,T,D
        dx = np.einsum("utd,utd->td", dout_per_task, task_prompts)  # T,D   one row of indices
        for positions, groups in id_chunks(cache.indices[0], D):
            sum_id_groups(dx.take(positions, axis=0), groups, dE)
    else:
        dp = _sum_per_task(dout, (weight, cache.indices), inverse, U)  # U,T,D  Σ dout[b] ⊙ E[indices[b]]
        rows = dout.reshape(-1, D)  # BT,D
        prompt_rows = task_prompts.reshape(U * T, D)  # UT,D
        slot_rows = (inverse[:, None] * T + np.arange(T)).reshape(-1)  # BT  row of prompt_rows per position

        def one_chunk(chunk: tuple[IntArray, list[tuple[int, int, int]]]) -> None:  # whole ids: own rows of dE
            positions, groups = chunk
            g = rows.take(positions, axis=0)  # n,D  these ids' rows of dout, grouped by id
            g *= prompt_rows.take(slot_rows[positions], axis=0)  # n,D
            sum_id_groups(g, groups, dE)  # each id in position order

        for_each(one_chunk, id_chunks(cache.indices, D))
    dcols = np.zeros_like(cache.cols)  # K,T,R
    drows = np.zeros_like(cache.rows)  # K,R,D
    dcols[tasks] = dp @ cache.rows[tasks].transpose(0, 2, 1)  # U,T,R
    drows[tasks] = cache.cols[tasks].transpose(0, 2, 1) @ dp  # U,R,D
    return {"prefix_task_cols": dcols, "prefix_task_rows": drows, "embedding.weight": dE}
