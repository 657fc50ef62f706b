"""PromptEncoder train/eval modes, dropout masks, prompt_table and inference mode."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from encoder_helpers import (
    IDX,
    LSTM_DROPOUT,
    encoder_cases,
    module_for,
)
from hypothesis import given
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import (
    assert_close,
    assert_grads_close,
)

# -- train / eval and dropout -------------------------------------------------------------------------


@given(encoder_cases())
def test_train_mode_without_dropout_equals_eval(case):
    """p = 0 (or MLP, or L = 1): train mode is exactly eval mode, forward and backward."""
    module = module_for(case)
    idx = case.inputs["indices"]
    assert module.training  # a fresh module is in train mode, as in torch
    out_train, g_train = module.forward(idx), module.backward(case.dout, idx)
    module.eval()
    np.testing.assert_array_equal(module.forward(idx), out_train)
    assert_grads_close("grads", module.backward(case.dout, idx), g_train, tol.EXACT)


@given(hs.lstm_encoder_cases(dropout=True))
def test_eval_mode_ignores_dropout(case):
    module = module_for(case).eval()
    no_dropout = dataclasses.replace(case.config, encoder_dropout=0.0)
    plain = mpt_ref.PromptEncoder(no_dropout, dtype=np.float64)
    plain.load_state_dict(case.params)
    idx = case.inputs["indices"]
    np.testing.assert_array_equal(module.forward(idx), plain.forward(idx))
    np.testing.assert_array_equal(module.prompt_table(), plain.prompt_table())


@given(hs.lstm_encoder_cases(dropout=True), st.integers(0, 2**32 - 1))
def test_forward_without_masks_draws_them_from_the_module_generator(case, seed):
    a, b = module_for(case), module_for(case)
    a.rng, b.rng = np.random.default_rng(seed), np.random.default_rng(seed)
    idx = case.inputs["indices"]
    masks = b.sample_dropout_masks(idx.shape[0])
    np.testing.assert_array_equal(a.forward(idx), b.forward(idx, dropout_masks=masks))


@given(hs.lstm_encoder_cases(dropout=True))
def test_dropout_is_inverted_and_between_layers_only(case):
    """Keeping everything scales each layer boundary by 1/(1−p): equal to an eval encoder whose
    weight_ih of layers k >= 1 is pre-scaled by 1/(1−p) (the next layer is linear in its input)."""
    module = module_for(case).train()
    idx = case.inputs["indices"]
    keep_all = [np.ones_like(m) for m in case.inputs["dropout_masks"]]
    scaled = dict(case.params)
    for k in range(1, case.config.encoder_num_layers):
        for suffix in ("", "_reverse"):
            scaled[f"lstm_head.weight_ih_l{k}{suffix}"] = case.params[f"lstm_head.weight_ih_l{k}{suffix}"] / (1 - case.config.encoder_dropout)
    ref = module_for(case).eval()
    ref.load_state_dict(scaled)
    assert_close("out", module.forward(idx, dropout_masks=keep_all), ref.forward(idx), tol.REORDER_F64)


def test_sampled_keep_rate_is_one_minus_p():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=50, token_dim=4, encoder_hidden_size=25,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=3, encoder_dropout=0.3)
    masks = mpt_ref.PromptEncoder(cfg, seed=0).sample_dropout_masks(40)
    assert len(masks) == 2 and all(m.shape == (40, 50, 50) and m.dtype == np.bool_ for m in masks)
    n = masks[0].size
    for m in masks:  # 100k Bernoulli(0.7) draws each: 5 sigma is 0.0073
        assert abs(m.mean() - 0.7) < 5 * np.sqrt(0.21 / n)


def test_sample_dropout_masks_is_empty_without_dropout():
    for kw in (dict(encoder_reparameterization_type="MLP", encoder_dropout=0.5),
               dict(encoder_reparameterization_type="LSTM", encoder_dropout=0.0),
               dict(encoder_reparameterization_type="LSTM", encoder_dropout=0.5, encoder_num_layers=1)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, **kw))
        assert module.sample_dropout_masks(3) == []
        assert module.forward(np.zeros((1, 2), np.int64), dropout_masks=[]).shape == (1, 2, 2)


# -- prompt_table and inference mode -----------------------------------------------------------------


@given(encoder_cases() | hs.lstm_encoder_cases(dropout=True))
def test_prompt_table_is_eval_output_for_arange_and_keeps_mode(case):
    module = module_for(case).train()
    T = case.config.total_virtual_tokens
    table = module.prompt_table()
    assert module.training
    np.testing.assert_array_equal(table, module.eval().forward(np.arange(T)[None])[0])


@given(encoder_cases())
def test_inference_mode_round_trip(case):
    """What PEFT saves (prompt_embeddings = the eval output) loaded into an inference-mode encoder
    reproduces the trained encoder's prompt by lookup."""
    trained = module_for(case)
    cfg = dataclasses.replace(case.config, inference_mode=True)
    loaded = mpt_ref.PromptEncoder(cfg, dtype=np.float64)
    assert list(loaded.state_dict()) == ["embedding.weight"]
    loaded.load_state_dict({"embedding.weight": trained.prompt_table()})
    idx = case.inputs["indices"]
    table = trained.prompt_table()
    np.testing.assert_array_equal(loaded.forward(idx), table[idx])  # a plain lookup of the stored prompt
    assert_close("prompt", table, trained.eval().forward(np.arange(table.shape[0])[None])[0], tol.REORDER_F64)
    np.testing.assert_array_equal(loaded.prompt_table(), trained.prompt_table())
    grads = loaded.backward(case.dout, idx)
    want = np.zeros_like(trained.prompt_table())
    np.add.at(want, idx.ravel(), case.dout.reshape(-1, case.config.token_dim))
    assert_close("dE", grads["embedding.weight"], want, tol.REORDER_F64)


def test_inference_mode_builds_no_heads_and_does_not_warn():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=3, token_dim=2, encoder_num_layers=5, inference_mode=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = mpt_ref.PromptEncoder(cfg, seed=0)
    assert module.parameter_shapes() == {"embedding.weight": (3, 2)}


# -- dropout mask errors ----------------------------------------------------------------------------


def test_backward_in_train_mode_with_dropout_requires_the_masks():
    module = mpt_ref.PromptEncoder(LSTM_DROPOUT, seed=0, dtype=np.float64)
    module.forward(IDX)  # forward may draw its own masks ...
    with pytest.raises(mpt_ref.InputError, match=r"dropout_masks: expected the 2 keep mask\(s\) forward used"):
        module.backward(np.ones((1, 2, 2)), IDX)  # ... backward cannot guess them
    masks = module.sample_dropout_masks(1)
    module.backward(np.ones((1, 2, 2)), IDX, dropout_masks=masks)
    module.eval().backward(np.ones((1, 2, 2)), IDX)  # eval: no masks needed


@pytest.mark.parametrize(
    "masks, exc, match",
    [
        # the JSON-expressible mask errors are in the error contract (tests/test_error_contract.py)
        (np.ones((2, 1, 2, 2), bool), mpt_ref.InputError, "L-1=2"),  # an array, not a list of L-1 arrays
    ],
)
def test_bad_dropout_masks_raise(masks, exc, match):
    module = mpt_ref.PromptEncoder(LSTM_DROPOUT, seed=0)
    with pytest.raises(exc, match=match):
        module.forward(IDX, dropout_masks=masks)


def test_masks_where_no_dropout_applies_raise():
    module = mpt_ref.PromptEncoder(LSTM_DROPOUT, seed=0).eval()
    masks = module.sample_dropout_masks(1)
    with pytest.raises(mpt_ref.InputError, match=r"expected None, because no dropout applies \(eval mode\)"):
        module.forward(IDX, dropout_masks=masks)
    mlp = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2))
    with pytest.raises(mpt_ref.InputError, match="MLP encoder has no dropout"):
        mlp.forward(IDX, dropout_masks=masks)
