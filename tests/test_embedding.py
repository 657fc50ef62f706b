"""PromptEmbedding and the embedding core: scatter-add gradient, properties, error contracts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core.embedding import embedding_backward, embedding_forward
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_same_keys_and_shapes


def module_for(case, dtype=np.float64):
    module = mpt_ref.PromptEmbedding(case.config, dtype=dtype)
    module.load_state_dict(case.params)
    return module


@given(hs.prompt_embedding_cases())
def test_embedding_backward_matches_central_differences(case):
    idx = case.inputs["indices"]
    reports = gradcheck(
        lambda p: embedding_forward(p["embedding.weight"], idx)[0],
        lambda d, p: {"embedding.weight": embedding_backward(d, embedding_forward(p["embedding.weight"], idx)[1])},
        case.params,
        case.dout,
    )
    assert all(r.ok(tol.GRADCHECK_F64.rtol, tol.GRADCHECK_F64.atol) for r in reports), reports


@given(hs.prompt_embedding_cases())
def test_scatter_add_accumulates_repeated_ids(case):
    """dE[j] is the sum of dout over every position holding j; rows never looked up get zero."""
    module = module_for(case)
    grads = module.backward(case.dout, case.inputs["indices"])
    assert_same_keys_and_shapes("grads", grads, module.state_dict())
    idx = case.inputs["indices"]
    for j in range(case.config.total_virtual_tokens):
        want = case.dout[idx == j].sum(axis=0) if (idx == j).any() else np.zeros(case.config.token_dim)
        assert_close(f"dE[{j}]", grads["embedding.weight"][j], want, tol.REORDER_F64)


@given(hs.prompt_embedding_cases())
def test_forward_is_a_row_gather_and_batch_invariant(case):
    module = module_for(case)
    idx = case.inputs["indices"]
    out = module.forward(idx)
    for b in range(idx.shape[0]):
        np.testing.assert_array_equal(module.forward(idx[b : b + 1])[0], out[b])
        for j in range(idx.shape[1]):
            np.testing.assert_array_equal(out[b, j], case.params["embedding.weight"][idx[b, j]])


def test_get_prompt_repeats_the_table():
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=2, task_type="SEQ_2_SEQ_LM")
    module = mpt_ref.PromptEmbedding(cfg, seed=0)
    prompt = module.get_prompt(4)
    assert prompt.shape == (4, 6, 2)  # T = N * S = 3 * 2
    np.testing.assert_array_equal(prompt, module.forward(np.tile(np.arange(6), (4, 1))))


@pytest.mark.parametrize(
    "indices, exc, match",
    [
        ([[0, 3]], mpt_ref.IndexRangeError, r"\[0, 3\).*got 3"),
        ([[-1]], mpt_ref.IndexRangeError, "got -1"),
        ([[0.0]], mpt_ref.InputTypeError, "integer"),
        ([0, 1], mpt_ref.InputError, "2-D"),
    ],
)
def test_bad_indices_raise(indices, exc, match):
    module = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=2), seed=0)
    with pytest.raises(exc, match=match):
        module.forward(indices)


def test_dtype_must_be_float32_or_float64():
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=2)
    with pytest.raises(mpt_ref.InputTypeError, match="float32 or float64, got float16"):
        mpt_ref.PromptEmbedding(cfg, dtype=np.float16)


def test_hand_worked_example_matches_spec():
    """Numbers worked by hand in spec/embedding.md."""
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=2)
    module = mpt_ref.PromptEmbedding(cfg, dtype=np.float64)
    module.load_state_dict({"embedding.weight": np.array([[1.0, 2.0], [3.0, 4.0]])})
    indices = [[1, 1, 0]]
    np.testing.assert_array_equal(module.forward(indices), [[[3.0, 4.0], [3.0, 4.0], [1.0, 2.0]]])
    grads = module.backward(np.array([[[1.0, 0.0], [2.0, 1.0], [0.0, 5.0]]]), indices)
    np.testing.assert_array_equal(grads["embedding.weight"], [[0.0, 5.0], [3.0, 1.0]])


@given(hs.prompt_embedding_cases())
def test_forward_backward_equals_forward_then_backward(case):
    module = module_for(case)
    out, grads = module.forward_backward(case.dout, case.inputs["indices"])
    np.testing.assert_array_equal(out, module.forward(case.inputs["indices"]))
    np.testing.assert_array_equal(grads["embedding.weight"], module.backward(case.dout, case.inputs["indices"])["embedding.weight"])
