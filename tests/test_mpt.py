"""MultitaskPromptEmbedding and the mpt_forward/mpt_backward core: gradients, metamorphic properties,
error contracts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, note
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.core.mpt import mpt_backward, mpt_forward
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import (
    assert_close,
    assert_grads_close,
    assert_same_keys_and_shapes,
)
from mpt_ref.testing.properties import assert_batch_invariant, assert_linear_in_dout


def module_for(case, dtype=np.float64) -> mpt_ref.MultitaskPromptEmbedding:
    module = mpt_ref.MultitaskPromptEmbedding(case.config, dtype=dtype)
    module.load_state_dict(case.params)
    return module


def per_row_oracle(params, indices, task_ids):
    """The literal per-row definition (PEFT's math, one row at a time), with np.add.at scatter-adds."""
    E, C, R = params["embedding.weight"], params["prefix_task_cols"], params["prefix_task_rows"]
    tasks = np.broadcast_to(task_ids, (indices.shape[0],))
    out = np.stack([E[indices[b]] * (C[t] @ R[t]) for b, t in enumerate(tasks)]).reshape(
        indices.shape + (E.shape[1],)
    )

    def backward(dout):
        dE, dC, dR = np.zeros_like(E), np.zeros_like(C), np.zeros_like(R)
        for b, t in enumerate(tasks):
            dP = dout[b] * E[indices[b]]
            np.add.at(dE, indices[b], dout[b] * (C[t] @ R[t]))
            dC[t] += dP @ R[t].T
            dR[t] += C[t].T @ dP
        return {"prefix_task_cols": dC, "prefix_task_rows": dR, "embedding.weight": dE}

    return out, backward


# The spec's hand-worked example (spec/mpt.md): T=2, D=2, K=2, R=1.
HAND = hs.Case(
    mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=2, token_dim=2, num_tasks=2, num_ranks=1),
    {
        "prefix_task_cols": np.array([[[1.0], [2.0]], [[-1.0], [0.5]]]),
        "prefix_task_rows": np.array([[[3.0, 1.0]], [[2.0, -2.0]]]),
        "embedding.weight": np.array([[1.0, 2.0], [3.0, 4.0]]),
    },
    {"indices": np.array([[0, 1], [0, 1]]), "task_ids": np.array([1, 0])},
    np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]),
)


def test_hand_worked_example_matches_spec():
    """Numbers worked by hand in spec/mpt.md."""
    module = module_for(HAND)
    out = module.forward(**HAND.inputs)
    want_out = np.array([[[-2.0, 4.0], [3.0, -4.0]], [[3.0, 2.0], [18.0, 8.0]]])
    assert_close("out", out, want_out, tol.REORDER_F64)
    grads = module.backward(HAND.dout, **HAND.inputs)
    want = {
        "prefix_task_cols": np.array([[[5.0], [13.0]], [[2.0], [-8.0]]]),
        "prefix_task_rows": np.array([[[7.0, 10.0]], [[-1.0, 2.0]]]),
        "embedding.weight": np.array([[1.0, 1.0], [6.0, 1.0]]),
    }
    assert_grads_close("grads", grads, want, tol.REORDER_F64)


@given(hs.mpt_cases())
@example(HAND)
def test_mpt_backward_matches_central_differences(case):
    note(f"config={case.config.to_dict()} inputs={case.inputs}")
    idx, tasks = case.inputs["indices"], case.inputs["task_ids"]
    reports = gradcheck(
        lambda p: mpt_forward(p, idx, tasks)[0],
        lambda d, p: mpt_backward(d, mpt_forward(p, idx, tasks)[1]),
        case.params,
        case.dout,
    )
    for rep in reports:
        assert rep.ok(tol.GRADCHECK_F64.rtol, tol.GRADCHECK_F64.atol), rep


@given(hs.mpt_cases(dtype=np.float64))
def test_grouped_by_task_equals_per_row_definition(case):
    out, cache = mpt_forward(case.params, case.inputs["indices"], case.inputs["task_ids"])
    want_out, want_backward = per_row_oracle(case.params, case.inputs["indices"], case.inputs["task_ids"])
    assert_close("out", out, want_out, tol.REORDER_F64)
    assert_grads_close("grads", mpt_backward(case.dout, cache), want_backward(case.dout), tol.REORDER_F64)


@given(hs.mpt_cases(dtype=np.float32))
def test_float32_contract_and_agreement_with_float64(case):
    module = module_for(case, dtype=np.float32)
    out = module.forward(**case.inputs)
    grads = module.backward(case.dout, **case.inputs)
    assert out.dtype == np.float32
    assert_same_keys_and_shapes("grads", grads, module.state_dict())
    p64 = {k: v.astype(np.float64) for k, v in case.params.items()}
    want_out, want_backward = per_row_oracle(p64, case.inputs["indices"], case.inputs["task_ids"])
    scale = float(np.abs(want_out).max(initial=0.0)) + 1.0
    assert_close("out", out, want_out, tol.REORDER_F32.scaled(scale))


@given(hs.mpt_cases(), st.floats(-3, 3), st.data())
def test_backward_is_linear_in_dout(case, alpha, data):
    module = module_for(case)
    other = data.draw(hs.finite_arrays(case.dout.shape), label="dout2")
    assert_linear_in_dout(lambda d: module.backward(d, **case.inputs), case.dout, other, alpha)


@given(hs.mpt_cases())
def test_batch_invariance(case):
    """Row b's output does not depend on the other rows of the batch."""
    module = module_for(case)
    idx, tasks = case.inputs["indices"], case.inputs["task_ids"]
    per_row = tasks.shape[0] > 1  # length-1 task_ids apply to every row
    assert_batch_invariant(lambda s: module.forward(idx[s], tasks[s] if per_row else tasks), idx.shape[0])


@given(hs.mpt_cases())
def test_length_one_task_ids_equals_repeated_task(case):
    module = module_for(case)
    idx = case.inputs["indices"]
    t = case.inputs["task_ids"][:1]
    repeated = np.repeat(t, idx.shape[0])
    assert_close("out", module.forward(idx, t), module.forward(idx, repeated), tol.REORDER_F64)
    assert_grads_close(
        "grads", module.backward(case.dout, idx, t), module.backward(case.dout, idx, repeated), tol.REORDER_F64
    )


@given(hs.mpt_cases())
def test_rank_one_all_ones_factors_reduce_to_plain_embedding(case):
    params = dict(case.params)
    K, T, _ = params["prefix_task_cols"].shape
    D = params["embedding.weight"].shape[1]
    params["prefix_task_cols"], params["prefix_task_rows"] = np.ones((K, T, 1)), np.ones((K, 1, D))
    out, _ = mpt_forward(params, case.inputs["indices"], case.inputs["task_ids"])
    np.testing.assert_array_equal(out, params["embedding.weight"][case.inputs["indices"]])


@given(hs.mpt_cases())
def test_unused_tasks_get_zero_gradient(case):
    grads = module_for(case).backward(case.dout, **case.inputs)
    unused = np.setdiff1d(np.arange(case.config.num_tasks), case.inputs["task_ids"])
    assert not grads["prefix_task_cols"][unused].any() and not grads["prefix_task_rows"][unused].any()


@given(hs.mpt_cases())
def test_state_dict_round_trip(case):
    module = module_for(case)
    fresh = mpt_ref.MultitaskPromptEmbedding(case.config, seed=123, dtype=np.float64)
    assert fresh.load_state_dict(module.state_dict()) == ([], [])
    np.testing.assert_array_equal(fresh.forward(**case.inputs), module.forward(**case.inputs))
    assert list(fresh.state_dict()) == ["prefix_task_cols", "prefix_task_rows", "embedding.weight"]


def test_empty_batch():
    module = module_for(HAND)
    out = module.forward(np.zeros((0, 2), np.int64), [1])
    assert out.shape == (0, 2, 2)
    grads = module.backward(np.zeros((0, 2, 2)), np.zeros((0, 2), np.int64), [1])
    assert all(not g.any() for g in grads.values())


def test_seed_reproducible_and_float32_is_rounded_float64():
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_tasks=2, num_ranks=2)
    a = mpt_ref.MultitaskPromptEmbedding(cfg, seed=7, dtype=np.float64).state_dict()
    b = mpt_ref.MultitaskPromptEmbedding(cfg, seed=7, dtype=np.float32).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k].astype(np.float32), b[k])
    assert 0.005 < a["prefix_task_cols"].std() < 0.05  # N(0, 0.02^2), 12 samples


# -- error contracts ----------------------------------------------------------------------------

def test_errors_are_catchable_as_builtins_and_base():
    module = module_for(HAND)
    for call, builtin in [(lambda: module.forward(HAND.inputs["indices"], [-1]), IndexError),
                          (lambda: module.forward(HAND.inputs["indices"], None), ValueError),
                          (lambda: module.forward(HAND.inputs["indices"], [0.5]), TypeError)]:
        with pytest.raises(builtin):
            call()
        with pytest.raises(mpt_ref.MptRefError):
            call()


@pytest.mark.parametrize(
    "state, match",
    [
        ({"embedding.weight": np.zeros((2, 2))}, "missing"),
        ({**HAND.params, "extra": np.zeros(1)}, "unexpected"),
        ({**HAND.params, "prefix_task_rows": np.zeros((2, 1, 3))}, r"expected shape \(2, 1, 2\), got \(2, 1, 3\)"),
        ({**HAND.params, "embedding.weight": np.zeros((2, 2), np.int64)}, "float"),
    ],
)
def test_bad_state_dict_raises_and_changes_nothing(state, match):
    module = module_for(HAND)
    before = module.state_dict()
    with pytest.raises(mpt_ref.CheckpointError, match=match):
        module.load_state_dict(state)
    for k, v in module.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@given(hs.mpt_cases())
def test_forward_backward_equals_forward_then_backward(case):
    module = module_for(case)
    out, grads = module.forward_backward(case.dout, **case.inputs)
    np.testing.assert_array_equal(out, module.forward(**case.inputs))
    for k, g in module.backward(case.dout, **case.inputs).items():
        np.testing.assert_array_equal(grads[k], g)


def test_core_refuses_out_of_range_ids_instead_of_clipping():
    params = {"prefix_task_cols": np.ones((1, 2, 1)), "prefix_task_rows": np.ones((1, 1, 3)),
              "embedding.weight": np.ones((2, 3))}
    for bad in ([[0, 2]], [[-1, 0]]):
        with pytest.raises(mpt_ref.InputError, match="indices"):
            mpt_forward(params, np.array(bad), np.array([0]))
