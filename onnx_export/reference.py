"""What an exported graph must output: the mpt_ref math in float64, plus the NaN policy of spec/onnx.md.

``expected_output`` is the oracle of the parity checker and the tests. It evaluates the module's own
parameters (as the module holds them, cast to float64) with mpt_ref's functional cores, on the ids
made valid, then writes NaN exactly where the exported graph must produce NaN:

- faithful: every output vector that depends on an invalid id — the position of an invalid index
  (embedding, MLP, MPT), the whole row of an invalid index for the LSTM (both directions read every
  position), the whole row of an invalid task id (MPT);
- folded-any: as faithful (every row is exact);
- folded: as faithful for the embedding and the MLP (a table lookup is exact for any indices); for the
  LSTM and MPT, whose tables hold the prompt for PEFT's indices only, also every row that is not arange(T).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mpt_ref import _checks
from mpt_ref.core.ops import OPS
from mpt_ref.errors import InputError
from mpt_ref.kind import Kind
from onnx_export._spec import ModuleSpec

VARIANTS = ("faithful", "folded", "folded-any")


class NanPolicy(NamedTuple):
    task_ids: bool      # the graph reads task ids: an invalid one makes its row NaN
    whole_row: bool     # an invalid index makes its whole row NaN (the LSTM reads every position)
    peft_rows: bool     # the folded graph is exact only for PEFT's rows (arange(T)), NaN elsewhere


# One entry per Kind: the NaN policy of spec/onnx.md (module docstring).
NAN_POLICY = {
    Kind.PROMPT_EMBEDDING: NanPolicy(task_ids=False, whole_row=False, peft_rows=False),
    Kind.MPT: NanPolicy(task_ids=True, whole_row=False, peft_rows=True),
    Kind.MLP_ENCODER: NanPolicy(task_ids=False, whole_row=False, peft_rows=False),
    Kind.LSTM_ENCODER: NanPolicy(task_ids=False, whole_row=True, peft_rows=True),
}


def float64_params(spec: ModuleSpec) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in spec.params.items()}


def module_math(spec: ModuleSpec, indices: np.ndarray, task_ids: np.ndarray | None = None) -> np.ndarray:
    """The module's forward in float64 for valid ids: indices (B, T'), task_ids (B,) -> (B, T', D)."""
    return OPS[spec.kind].forward(float64_params(spec), indices, task_ids, None)[0]


def prompt_table(spec: ModuleSpec) -> np.ndarray:
    """What PEFT's indices give, in float64: (T, D) for an encoder, (K, T, D) per task for MPT."""
    arange = np.arange(spec.T)[None]  # 1,T
    if spec.kind.takes_task_ids:  # one prompt per task
        K = spec.K
        return module_math(spec, np.repeat(arange, K, axis=0), np.arange(K))  # K,T,D
    return module_math(spec, arange)[0]  # T,D


def task_prompt_factors(spec: ModuleSpec) -> np.ndarray:
    """MPT's per-task prompt factors in float64: (K, T, D), row k = C_k @ R_k (folded-any's table)."""
    p = float64_params(spec)
    return p["prefix_task_cols"] @ p["prefix_task_rows"]  # K,T,D


def expected_output(spec: ModuleSpec, indices: Any, task_ids: Any = None, *, variant: str = "faithful") -> np.ndarray:
    """float64 (B, T', D): the graph's required output, NaN where spec/onnx.md's policy says so."""
    if variant not in VARIANTS:
        raise InputError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    idx = _checks.int_array("indices", indices, ndim=2)
    B, tokens = idx.shape
    if spec.fixed_tokens(variant) not in (None, tokens):
        raise InputError(f"indices: expected shape (B, T) with T={spec.T} (total virtual tokens), got shape {idx.shape}")
    idx_ok = (idx >= 0) & (idx < spec.T)  # B,T'
    safe_idx = np.where(idx_ok, idx, 0)
    policy = NAN_POLICY[spec.kind]
    task_ok = np.ones(B, dtype=bool)
    safe_t = None
    if policy.task_ids:
        t = np.broadcast_to(_checks.task_ids(task_ids, B, num_tasks=None), (B,))  # any range: NaN policy below
        task_ok = (t >= 0) & (t < spec.K)  # B
        safe_t = np.where(task_ok, t, 0)
    out = module_math(spec, safe_idx, safe_t)  # B,T',D
    rows_peft = (idx == np.arange(tokens)).all(axis=1) & (tokens == spec.T)  # B
    if variant == "folded" and policy.peft_rows:
        nan = ~(rows_peft & task_ok)[:, None] & np.ones((1, tokens), dtype=bool)  # B,T'
    elif policy.whole_row:
        nan = ~idx_ok.all(axis=1, keepdims=True) & np.ones((1, tokens), dtype=bool)  # B,T'
    else:
        nan = ~idx_ok | ~task_ok[:, None]  # B,T'
    out[nan] = np.nan
    return out
