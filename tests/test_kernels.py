"""The fast paths (mpt_ref/kernels/) against the plain reference (mpt_ref/core/), on hypothesis cases and
at the sizes where their branches switch: chunk sizes from one row / one id group per chunk to all in one,
1-3 threads, shared index rows or not, repeated or distinct encoder rows. Bit for bit where a kernel
keeps the reference's order of operations, else within the REORDER / REGROUPED tolerances (the same
sums in another order), atol scaled by the sums' absolute terms (the reference run on |inputs|)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from encoder_helpers import encoder_cases, module_for
from hypothesis import given
from hypothesis import strategies as st
from test_mpt import per_row_oracle

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core import embedding as core_embedding
from mpt_ref.core import encoder as core_encoder
from mpt_ref.core import mpt as core_mpt
from mpt_ref.core.ops import OPS
from mpt_ref.kernels import chunks, parallel
from mpt_ref.kernels import embedding as fast_embedding
from mpt_ref.kernels import encoder as fast_encoder
from mpt_ref.kernels import mpt as fast_mpt
from mpt_ref.kernels.ops import KERNEL_OPS
from mpt_ref.kind import Kind
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_grads_close

# chunk sizes (elements of rows): 1 = every row / id group its own chunk, 7 and 64 = several rows or
# groups per chunk, the default = everything in one chunk at these sizes; then 1-3 threads.
SWITCHES = st.tuples(st.sampled_from([1, 7, 64, chunks.CHUNK_ELEMENTS]), st.integers(1, 3))


@contextlib.contextmanager
def fast_path(chunk_elements: int, threads: int):
    before = chunks.CHUNK_ELEMENTS
    chunks.CHUNK_ELEMENTS = chunk_elements
    parallel.set_threads(threads)
    try:
        yield
    finally:
        chunks.CHUNK_ELEMENTS = before
        parallel.set_threads(1)


def absolute(params):
    return {k: np.abs(v) for k, v in params.items()}


def reorder_tol(dtype, scale: float) -> tol.Tol:
    return (tol.REORDER_F32 if np.dtype(dtype) == np.float32 else tol.REORDER_F64).scaled(scale + 1.0)


# -- MPT ------------------------------------------------------------------------------------------

@given(st.sampled_from([np.float64, np.float32]).flatmap(lambda dt: hs.mpt_cases(dtype=dt, max_batch=9)),
       st.booleans(), SWITCHES)
def test_mpt_kernel_matches_plain_reference(case, shared_rows, switches):
    """Forward bit for bit; dE bit for bit when rows are not shared and D > 1 (ids summed in position
    order); everything within REORDER_* of the plain gradients."""
    idx, tasks = case.inputs["indices"], case.inputs["task_ids"]
    if shared_rows:  # PEFT's arange(T) in every row: the kernel reduces dout per task first
        idx = np.repeat(idx[:1], idx.shape[0], axis=0)
    with fast_path(*switches):
        out, cache = fast_mpt.mpt_forward(case.params, idx, tasks)
        grads = fast_mpt.mpt_backward(case.dout, cache)
        lean = fast_mpt.mpt_backward(case.dout, fast_mpt.mpt_cache(case.params, idx, tasks))
    want_out, want_cache = core_mpt.mpt_forward(case.params, idx, tasks)
    want = core_mpt.mpt_backward(case.dout, want_cache)
    np.testing.assert_array_equal(out, want_out)
    for k in want:
        np.testing.assert_array_equal(lean[k], grads[k])  # the cache without an output: same gradients
    if cache.x is None and case.dout.shape[-1] > 1:
        np.testing.assert_array_equal(grads["embedding.weight"], want["embedding.weight"])
    terms = core_mpt.mpt_backward(np.abs(case.dout), core_mpt.mpt_forward(absolute(case.params), idx, tasks)[1])
    for k in want:
        assert_close(k, grads[k], want[k], reorder_tol(case.dout.dtype, float(terms[k].max(initial=0.0))))


@given(hs.mpt_cases(dtype=np.float32))
def test_fast_forward_and_scatter_are_bitwise_the_per_row_definition(case):
    """The chunked in-place forward and the id-grouped dE keep the plain definition's operations:
    out[b] = E[idx[b]] * P[t_b] elementwise, and dE[j] = the sum of (dout ⊙ P[t])'s rows at the
    positions of id j, in position order (one NumPy sum per id). So they agree bit for bit with it
    (same P); with a sequential np.add.at within tolerance (NumPy sums a (n, 1) column pairwise).
    (Shared rows reduce dout per task first: another order, covered by the per-row tests.)"""
    idx, task_ids = case.inputs["indices"], case.inputs["task_ids"]
    out, cache = fast_mpt.mpt_forward(case.params, idx, task_ids)
    E = case.params["embedding.weight"]
    P = cache.task_prompts[cache.inverse]  # B,T,D
    np.testing.assert_array_equal(out, E[idx] * P)
    if cache.x is not None:
        return
    terms = (case.dout * P).reshape(-1, E.shape[1])  # B*T,D  dout ⊙ P[t] per position
    flat = idx.reshape(-1)
    dE = np.stack([terms[flat == j].sum(axis=0) for j in range(E.shape[0])])  # T,D  (empty sum: 0)
    got = fast_mpt.mpt_backward(case.dout, cache)["embedding.weight"]
    np.testing.assert_array_equal(got, dE)
    sequential = np.zeros_like(E)
    np.add.at(sequential, flat, terms)
    scale = float(np.abs(terms).sum(axis=0).max(initial=0.0)) + 1.0
    assert_close("dE vs np.add.at", got, sequential, tol.REORDER_F32.scaled(scale))


def test_fast_paths_chunked_and_mixed_tasks_equal_per_row_definition():
    """Sizes where a batch chunk holds several rows of several tasks (T·D small), and where one row is
    a chunk (T·D large), for distinct and shared index rows."""
    rng = np.random.default_rng(3)
    for B, T, D, K, shared in [(300, 4, 8, 3, False), (300, 4, 8, 3, True), (5, 9, 40000, 2, False)]:
        params = {"prefix_task_cols": rng.standard_normal((K, T, 2)), "prefix_task_rows": rng.standard_normal((K, 2, D)),
                  "embedding.weight": rng.standard_normal((T, D))}
        idx = np.tile(np.arange(T), (B, 1)) if shared else rng.integers(0, T, (B, T))
        tasks = rng.integers(0, K, B)
        dout = rng.standard_normal((B, T, D))
        out, cache = fast_mpt.mpt_forward(params, idx, tasks)
        want_out, want_backward = per_row_oracle(params, idx, tasks)
        assert_close("out", out, want_out, tol.REORDER_F64)
        assert_grads_close("grads", fast_mpt.mpt_backward(dout, cache), want_backward(dout), tol.REORDER_F64)


def test_thread_pool_gives_the_same_bits_for_any_thread_count():
    """The pooled work (forward chunks, id groups of the scatter-add) keeps each output's arithmetic:
    1, 2 and 3 threads agree bit for bit, in float32 and float64, for chunked and one-row chunks."""
    rng = np.random.default_rng(5)
    try:
        for B, T, D, dtype in [(64, 5, 7, np.float32), (6, 7, 50000, np.float64)]:
            params = {"prefix_task_cols": rng.standard_normal((3, T, 2)).astype(dtype),
                      "prefix_task_rows": rng.standard_normal((3, 2, D)).astype(dtype),
                      "embedding.weight": rng.standard_normal((T, D)).astype(dtype)}
            idx, tasks = rng.integers(0, T, (B, T)), rng.integers(0, 3, B)
            dout = rng.standard_normal((B, T, D)).astype(dtype)
            results = []
            for n in (1, 2, 3):
                parallel.set_threads(n)
                out, cache = fast_mpt.mpt_forward(params, idx, tasks)
                results.append((out, fast_mpt.mpt_backward(dout, cache)))
            for out, grads in results[1:]:
                np.testing.assert_array_equal(out, results[0][0])
                for k in grads:
                    np.testing.assert_array_equal(grads[k], results[0][1][k])
    finally:
        parallel.set_threads(1)
    with pytest.raises(mpt_ref.InputError, match="threads"):
        parallel.set_threads(0)


def test_kernel_refuses_out_of_range_ids_instead_of_clipping():
    params = {"prefix_task_cols": np.ones((1, 2, 1)), "prefix_task_rows": np.ones((1, 1, 3)),
              "embedding.weight": np.ones((2, 3))}
    for bad in ([[0, 2]], [[-1, 0]]):
        for forward in (fast_mpt.mpt_forward, fast_mpt.mpt_cache, core_mpt.mpt_forward):
            with pytest.raises(mpt_ref.InputError, match=r"indices: expected values in \[0, 2\)"):
                forward(params, np.array(bad), np.array([0]))


# -- embedding ------------------------------------------------------------------------------------

@given(st.sampled_from([np.float64, np.float32]).flatmap(lambda dt: hs.prompt_embedding_cases(dtype=dt, max_batch=9)),
       SWITCHES)
def test_embedding_kernel_matches_plain_reference(case, switches):
    """dE bit for bit when D > 1 (each id's rows summed in position order, as np.add.at); D = 1 within
    REORDER_* (NumPy sums one column pairwise)."""
    weight, idx = case.params["embedding.weight"], case.inputs["indices"]
    with fast_path(*switches):
        out, cache = fast_embedding.embedding_forward(weight, idx)
        got = fast_embedding.embedding_backward(case.dout, cache)
    want_out, want_cache = core_embedding.embedding_forward(weight, idx)
    want = core_embedding.embedding_backward(case.dout, want_cache)
    np.testing.assert_array_equal(out, want_out)
    if case.dout.shape[-1] > 1:
        np.testing.assert_array_equal(got, want)
    scale = float(core_embedding.embedding_backward(np.abs(case.dout), want_cache).max(initial=0.0))
    assert_close("dE", got, want, reorder_tol(case.dout.dtype, scale))


# -- encoder --------------------------------------------------------------------------------------

@given(encoder_cases(), st.booleans(), SWITCHES)
def test_encoder_kernel_matches_plain_reference(case, repeat_rows, switches):
    """Distinct work only (dedup on) and the core itself (with dropout scales: dedup off)."""
    module = module_for(case)
    idx = case.inputs["indices"]
    if repeat_rows:  # PEFT's case: every row the same, so the LSTM runs once for the whole batch
        idx = np.repeat(idx[:1], idx.shape[0], axis=0)
    kw = {"encoder_type": module.encoder_type, "num_layers": module.num_layers}
    with fast_path(*switches):
        out, cache = fast_encoder.prompt_encoder_forward(case.params, idx, **kw)
        grads = fast_encoder.prompt_encoder_backward(case.dout, cache)
    want_out, want_cache = core_encoder.prompt_encoder_forward(case.params, idx, **kw)
    assert isinstance(cache, fast_encoder.DedupCache)
    assert_close("out", out, want_out, tol.REGROUPED_SUMS_F64)
    assert_grads_close("grads", grads, core_encoder.prompt_encoder_backward(case.dout, want_cache),
                       tol.REGROUPED_SUMS_F64)
    if module.encoder_type == "LSTM" and module.num_layers > 1:  # dropout scales: the core, bit for bit
        scales = [np.ones(idx.shape + (2 * module.hidden_size,))] * (module.num_layers - 1)
        out, cache = fast_encoder.prompt_encoder_forward(case.params, idx, dropout_scales=scales, **kw)
        want_out, want_cache = core_encoder.prompt_encoder_forward(case.params, idx, dropout_scales=scales, **kw)
        np.testing.assert_array_equal(out, want_out)
        assert_grads_close("grads", fast_encoder.prompt_encoder_backward(case.dout, cache),
                           core_encoder.prompt_encoder_backward(case.dout, want_cache), tol.EXACT)


# -- every kind through the tables -----------------------------------------------------------------

@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_every_kind_kernel_op_matches_the_core_op(kind):
    """KERNEL_OPS[kind] against OPS[kind] on the kind's edge example (sizes past the SIMD widths):
    forward within REGROUPED_SUMS_F64 (bit for bit for the prompt tables), gradients likewise."""
    case = hs.edge_examples(kind, limits=hs.SizeLimits(max_work=20_000))[0]
    idx, tasks = case.inputs["indices"], case.inputs.get("task_ids")
    out, cache = KERNEL_OPS[kind].forward(case.params, idx, tasks, None)
    want_out, want_cache = OPS[kind].forward(case.params, idx, tasks, None)
    scale = float(np.abs(want_out).max(initial=0.0)) + 1.0
    assert_close("out", out, want_out, tol.REGROUPED_SUMS_F64.scaled(scale))
    if not kind.is_encoder:
        np.testing.assert_array_equal(out, want_out)
    assert_grads_close("grads", KERNEL_OPS[kind].backward(case.dout, cache),
                       OPS[kind].backward(case.dout, want_cache),
                       tol.REGROUPED_SUMS_F64.scaled(scale * case.dout.shape[0]))  # B rows regrouped per sum
