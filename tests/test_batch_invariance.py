"""Batch invariance: row b of a batch equals the same row run alone, bit for bit for PT, MPT and the MLP
encoder; to rounding (a few ulp, tolerances.REORDER_*) for the LSTM, whose per-step GEMM the BLAS blocks by
B (spec/lstm.md, "Batch invariance")."""

from __future__ import annotations

import numpy as np
import pytest

import mpt_ref
from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import REORDER_F32, REORDER_F64


def modules(dtype):
    T, D = 6, 16
    yield "pt", mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=D), seed=0, dtype=dtype)
    yield "mpt", mpt_ref.MultitaskPromptEmbedding(
        mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=T, token_dim=D, num_tasks=3, num_ranks=2), seed=0, dtype=dtype)
    for kind, layers in (("MLP", 2), ("LSTM", 1), ("LSTM", 2)):
        cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=T, token_dim=D, encoder_hidden_size=24,
                                          encoder_num_layers=layers, encoder_reparameterization_type=kind)
        yield f"{kind.lower()}-{layers}", mpt_ref.PromptEncoder(cfg, seed=0, dtype=dtype).eval()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [2, 5, 33])
def test_rows_of_a_batch_equal_the_rows_alone(dtype, batch):
    rng = np.random.default_rng(batch)
    for name, module in modules(dtype):
        T = 6
        idx = np.tile(np.arange(T), (batch, 1)) if name == "mpt" else rng.integers(0, T, size=(batch, T))
        tasks = rng.integers(0, 3, size=batch)
        out = module(idx, tasks) if name == "mpt" else module(idx)
        for b in range(batch):
            alone = module(idx[b : b + 1], tasks[b : b + 1]) if name == "mpt" else module(idx[b : b + 1])
            if name.startswith("lstm"):
                tol = REORDER_F32 if dtype == np.float32 else REORDER_F64
                assert_close(f"{name} row {b}", alone[0], out[b], tol)
            else:
                assert np.array_equal(out[b], alone[0]), (name, b, float(np.abs(out[b] - alone[0]).max()))
