"""PromptEncoder (P-tuning, MLP and LSTM): PEFT's keys and shapes, gradients, the fast path, float32."""

from __future__ import annotations

import numpy as np
from encoder_helpers import (
    KINK_MARGIN,
    LSTM_DROPOUT,
    encoder_cases,
    head_relu_inputs,
    module_for,
)
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core.encoder import prompt_encoder_backward, prompt_encoder_forward
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import (
    assert_close,
    assert_grads_close,
    assert_same_keys_and_shapes,
)
from mpt_ref.testing.properties import assert_batch_invariant, assert_linear_in_dout

# -- structure -----------------------------------------------------------------------------------


@given(hs.encoder_configs(dropout=False) | hs.encoder_configs("LSTM", dropout=True))
def test_keys_and_shapes_are_peft_state_dict(config):
    module = mpt_ref.PromptEncoder(config, seed=0)
    want = hs.encoder_param_shapes(config)
    assert list(module.state_dict()) == list(want)
    assert module.parameter_shapes() == want
    assert all(v.dtype == np.float32 for v in module.state_dict().values())
    assert module.hidden_size == (config.encoder_hidden_size or config.token_dim)
    assert module.config.encoder_hidden_size == module.hidden_size  # H := D filled in a copy
    assert config.encoder_hidden_size is None or config.encoder_hidden_size == module.hidden_size


def test_lstm_key_names_spelled_out():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=3, encoder_hidden_size=2,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2)
    keys = list(mpt_ref.PromptEncoder(cfg).state_dict())
    assert keys[:2] == ["embedding.weight", "lstm_head.weight_ih_l0"]
    assert keys[5:10] == ["lstm_head.weight_ih_l0_reverse", "lstm_head.weight_hh_l0_reverse",
                          "lstm_head.bias_ih_l0_reverse", "lstm_head.bias_hh_l0_reverse", "lstm_head.weight_ih_l1"]
    assert keys[-5:] == ["lstm_head.bias_hh_l1_reverse", "mlp_head.0.weight", "mlp_head.0.bias",
                         "mlp_head.2.weight", "mlp_head.2.bias"]


# -- gradients -----------------------------------------------------------------------------------


@settings(max_examples=30)
@given(encoder_cases(max_batch=2))
def test_backward_matches_central_differences(case):
    module = module_for(case)
    idx = case.inputs["indices"]
    assume(np.abs(head_relu_inputs(module, idx)).min() > KINK_MARGIN)
    note(f"config={case.config.to_dict()}")
    kw = dict(encoder_type=module.encoder_type, num_layers=module.num_layers)
    reports = gradcheck(
        lambda p: prompt_encoder_forward(p, idx, **kw)[0],
        lambda d, p: prompt_encoder_backward(d, prompt_encoder_forward(p, idx, **kw)[1]),
        case.params, case.dout, max_entries=6,  # 6 random entries per key keep L=3 fast; test_lstm checks all
    )
    assert [r.key for r in reports] == list(module.state_dict())
    for rep in reports:
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@settings(max_examples=10)  # the class path reloads the params per probe; test_lstm.py covers masks in depth
@given(hs.lstm_encoder_cases(dropout=True, max_batch=2))
def test_train_mode_backward_with_masks_matches_central_differences(case):
    module = module_for(case).train()
    idx, masks = case.inputs["indices"], case.inputs["dropout_masks"]
    assume(np.abs(head_relu_inputs(module, idx, masks)).min() > KINK_MARGIN)

    def forward(p):
        module.load_state_dict(p)
        return module.forward(idx, dropout_masks=masks)

    def backward(d, p):
        module.load_state_dict(p)
        return module.backward(d, idx, dropout_masks=masks)

    for rep in gradcheck(forward, backward, case.params, case.dout, max_entries=4):
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@given(encoder_cases(), st.booleans())
def test_class_fast_path_equals_plain_functional_core(case, repeat_rows):
    """Eval mode computes each distinct input once (kernels/encoder.py); it must equal the plain core."""
    module = module_for(case)
    idx = case.inputs["indices"]
    if repeat_rows:  # PEFT's case: every row the same, so the LSTM runs once for the whole batch
        idx = np.repeat(idx[:1], idx.shape[0], axis=0)
    out, cache = prompt_encoder_forward(case.params, idx, encoder_type=module.encoder_type, num_layers=module.num_layers)
    assert_close("out", module.forward(idx), out, tol.REGROUPED_SUMS_F64)
    grads = module.backward(case.dout, idx)
    assert_same_keys_and_shapes("grads", grads, module.state_dict())
    assert_grads_close("grads", grads, prompt_encoder_backward(case.dout, cache), tol.REGROUPED_SUMS_F64)


@given(encoder_cases(), st.floats(-3, 3), st.data())
def test_backward_is_linear_in_dout(case, alpha, data):
    module = module_for(case)
    idx = case.inputs["indices"]
    other = data.draw(hs.finite_arrays(case.dout.shape), label="dout2")
    assert_linear_in_dout(lambda d: module.backward(d, idx), case.dout, other, alpha)


@given(encoder_cases() | hs.lstm_encoder_cases(dropout=True))
def test_batch_invariance(case):
    """Row b depends only on indices[b] (and, in train mode with dropout, its own mask rows)."""
    module = module_for(case)
    idx = case.inputs["indices"]
    masks = case.inputs.get("dropout_masks")
    assert_batch_invariant(lambda s: module.forward(idx[s], dropout_masks=None if masks is None else [m[s] for m in masks]),
                           idx.shape[0], tol.REORDER_F64)


@given(encoder_cases(dtype=np.float32))
def test_float32_module_agrees_with_float64(case):
    m32, m64 = module_for(case, np.float32), module_for(case, np.float64)
    idx = case.inputs["indices"]
    out = m32.forward(idx)
    assert out.dtype == np.float32
    want = m64.forward(idx)
    scale = float(np.abs(want).max(initial=0)) + 1
    assert_close("out", out, want, tol.F32_ENCODER.scaled(scale))
    grads = m32.backward(case.dout, idx)
    assert all(g.dtype == np.float32 for g in grads.values())


def test_mlp_s2_extra_rows_are_dead_but_lstm_rows_are_not():
    """PEFT with S = 2 PEFT feeds only the first N outputs to the model. The MLP is row-wise, so
    rows N..2N−1 of E get no gradient; the bidirectional LSTM mixes them into the first N outputs."""
    for kind, dead in (("MLP", True), ("LSTM", False)):
        cfg = mpt_ref.PromptEncoderConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, token_dim=4,
                                          encoder_hidden_size=3, encoder_reparameterization_type=kind)
        module = mpt_ref.PromptEncoder(cfg, seed=1, dtype=np.float64)
        idx = np.arange(6)[None]
        dout = np.zeros((1, 6, 4))
        dout[:, :3] = np.random.default_rng(0).standard_normal((1, 3, 4))
        dE = module.backward(dout, idx)["embedding.weight"]
        assert (not dE[3:].any()) == dead, kind
        assert dE[:3].any()


# -- forward_backward and the empty batch ----------------------------------------------------------



def test_empty_batch_and_state_dict_round_trip():
    module = mpt_ref.PromptEncoder(LSTM_DROPOUT, seed=0, dtype=np.float64)
    empty = np.zeros((0, 2), np.int64)
    masks = module.sample_dropout_masks(0)
    assert module.forward(empty, dropout_masks=masks).shape == (0, 2, 2)
    grads = module.backward(np.zeros((0, 2, 2)), empty, dropout_masks=masks)
    assert list(grads) == list(module.state_dict()) and not any(g.any() for g in grads.values())
    fresh = mpt_ref.PromptEncoder(LSTM_DROPOUT, seed=1, dtype=np.float64).eval()
    assert fresh.load_state_dict(module.state_dict()) == ([], [])
    np.testing.assert_array_equal(fresh.prompt_table(), module.prompt_table())


@given(encoder_cases())
def test_forward_backward_equals_forward_then_backward(case):
    module = module_for(case)
    idx = case.inputs["indices"]
    out, grads = module.forward_backward(case.dout, idx)
    np.testing.assert_array_equal(out, module.forward(idx))
    for k, g in module.backward(case.dout, idx).items():
        np.testing.assert_array_equal(grads[k], g)
