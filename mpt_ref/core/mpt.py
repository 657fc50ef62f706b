"""Multitask prompt, the plainest NumPy statement of spec/mpt.md.

    forward   X[b] = E[indices[b]]      P_k = C_k @ R_k      out[b] = X[b] ⊙ P_{t_b}
    backward  dX[b] = G[b] ⊙ P_{t_b}  → dE by the scatter-add of spec/embedding.md
              dP_k = Σ_{b: t_b = k} G[b] ⊙ X[b]      dC_k = dP_k @ R_kᵀ      dR_k = C_kᵀ @ dP_k

t_b = task_ids[b], or task_ids[0] for every row when task_ids has length 1. Tasks that do not occur
get zero gradient. Shape letters: B batch, T total virtual tokens, D token_dim, K num_tasks, R num_ranks.
The modules run the fast path of the same signatures, mpt_ref/kernels/mpt.py.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.errors import InputError


class MptCache(NamedTuple):
    X: Array           # B,T,D   E[indices]
    P: Array           # K,T,D   C_k @ R_k for every task
    t: IntArray        # B       task of each row
    indices: IntArray  # B,T
    C: Array           # K,T,R
    R: Array           # K,R,D


def check_ids(indices: IntArray, num_rows: int) -> None:
    """An id outside [0, T) is refused (NumPy would wrap a negative one silently)."""
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= num_rows):
        raise InputError(f"indices: expected values in [0, {num_rows}), got min {indices.min()}, max {indices.max()}")


def mpt_forward(params: Params, indices: IntArray, task_ids: IntArray) -> tuple[Array, MptCache]:
    """params {prefix_task_cols C (K,T,R), prefix_task_rows R (K,R,D), embedding.weight E (T,D)},
    indices (B,T), task_ids (B,) or (1,) -> out (B,T,D), cache."""
    C, R, E = params["prefix_task_cols"], params["prefix_task_rows"], params["embedding.weight"]
    check_ids(indices, E.shape[0])
    t = np.broadcast_to(task_ids, (indices.shape[0],))  # B
    X = E[indices]  # B,T,D
    P = C @ R  # K,T,D
    out = X * P[t]  # B,T,D
    return out, MptCache(X, P, t, indices, C, R)


def mpt_backward(dout: Array, cache: MptCache) -> Params:
    """dout G (B,T,D) -> gradient of sum(out * G), keyed and shaped like the params."""
    X, P, t, C, R = cache.X, cache.P, cache.t, cache.C, cache.R
    dX = dout * P[t]  # B,T,D
    dE = np.zeros((P.shape[1], dout.shape[2]), dtype=dout.dtype)  # T,D
    np.add.at(dE, cache.indices, dX)  # T,D   dE[indices[b, j]] += dX[b, j]
    dP = np.zeros(P.shape, dtype=dout.dtype)  # K,T,D
    np.add.at(dP, t, dout * X)  # K,T,D   dP[t_b] += G[b] ⊙ X[b]
    dC = dP @ R.transpose(0, 2, 1)  # K,T,R
    dR = C.transpose(0, 2, 1) @ dP  # K,R,D
    return {"prefix_task_cols": dC, "prefix_task_rows": dR, "embedding.weight": dE}
