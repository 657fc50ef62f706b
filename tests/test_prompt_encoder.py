"""PromptEncoder (P-tuning, MLP and LSTM): contract, gradients, train/eval and dropout masks,
prompt_table, inference mode, init, PEFT's warnings and errors."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core.encoder import prompt_encoder_backward, prompt_encoder_forward
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.core.lstm_stack import lstm_stack_forward
from mpt_ref.modules.config import PromptEncoderReparameterizationType as EncoderType
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import (
    assert_close,
    assert_grads_close,
    assert_same_keys_and_shapes,
)
from mpt_ref.testing.properties import assert_batch_invariant, assert_linear_in_dout

MLP_WARNING = "for MLP, the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers are used."
KINK_MARGIN = 1e-4  # ReLU inputs closer than this to 0 make central differences (h=1e-6) meaningless


def module_for(case, dtype=np.float64) -> mpt_ref.PromptEncoder:
    module = mpt_ref.PromptEncoder(case.config, dtype=dtype)
    module.load_state_dict({k: v.astype(dtype) for k, v in case.params.items()})
    return module


def encoder_cases(**kw):
    return st.one_of(hs.mlp_encoder_cases(**kw), hs.lstm_encoder_cases(**kw))


def head_relu_inputs(module, indices, masks=None):
    """The pre-activations of every ReLU in the head (to keep gradcheck away from the kinks)."""
    params = module.state_dict()
    x = params["embedding.weight"][indices]
    if module.encoder_type == EncoderType.LSTM:
        p = module.dropout
        scales = None if masks is None else [m / (1 - p) for m in masks]
        x, _ = lstm_stack_forward(params, x, num_layers=module.num_layers, dropout_scales=scales)
    pre = []
    for j in range(2 if module.encoder_type == EncoderType.MLP else 1):
        x = x @ params[f"mlp_head.{2 * j}.weight"].T + params[f"mlp_head.{2 * j}.bias"]
        pre.append(x.ravel())
        x = np.maximum(x, 0)
    return np.concatenate(pre)


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
    """Eval mode computes each distinct input once (encoder_dedup.py); it must equal the plain core."""
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
    """Quirk Q6: with S = 2 PEFT feeds only the first N outputs to the model. The MLP is row-wise, so
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


# -- init ------------------------------------------------------------------------------------------


def test_init_is_seeded_and_float32_is_rounded_float64():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=4, token_dim=3, encoder_hidden_size=2,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2)
    a = mpt_ref.PromptEncoder(cfg, seed=5, dtype=np.float64).state_dict()
    b = mpt_ref.PromptEncoder(cfg, seed=5, dtype=np.float32).state_dict()
    c = mpt_ref.PromptEncoder(cfg, seed=6, dtype=np.float64).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k].astype(np.float32), b[k])
        assert not np.array_equal(a[k], c[k])


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_init_distributions(kind):
    D, H = 40, 25
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=50, token_dim=D, encoder_hidden_size=H,
                                      encoder_reparameterization_type=kind)
    params = mpt_ref.PromptEncoder(cfg, seed=0, dtype=np.float64).state_dict()
    E = params.pop("embedding.weight")  # N(0, 1): 2000 draws
    assert abs(E.mean()) < 0.12 and 0.9 < E.std() < 1.1
    for key, value in params.items():
        if key.startswith("lstm_head."):
            bound = 1 / np.sqrt(H)
        else:  # mlp_head.{j}.weight is (out, in); the bias shares the weight's fan_in
            bound = 1 / np.sqrt(params[key.rsplit(".", 1)[0] + ".weight"].shape[1])
        assert np.abs(value).max() <= bound, key
        assert np.abs(value).max() > 0.8 * bound, key  # uniform over the whole interval
        assert abs(value.mean()) < 0.2 * bound, key


# -- warnings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [EncoderType.MLP, "MLP"])
def test_mlp_warns_with_peft_text_when_num_layers_is_not_2(kind):
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type=kind,
                                      encoder_num_layers=3)
    with pytest.warns(UserWarning, match=f"^{re.escape(MLP_WARNING)}$"):
        mpt_ref.PromptEncoder(cfg)
    cfg.encoder_reparameterization_type = "MLP"  # a plain str set after construction (PEFT: AttributeError, Q1)
    with pytest.warns(UserWarning, match=f"^{re.escape(MLP_WARNING)}$"):
        mpt_ref.PromptEncoder(cfg)


def test_no_warning_for_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("MLP", "LSTM"):
            mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2,
                                                             encoder_reparameterization_type=kind, encoder_dropout=0.1))


def test_lstm_one_layer_dropout_warns_like_torch():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type="LSTM",
                                      encoder_num_layers=1, encoder_dropout=0.25)
    text = ("dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            "num_layers greater than 1, but got dropout=0.25 and num_layers=1")
    with pytest.warns(UserWarning, match=f"^{re.escape(text)}$"):
        module = mpt_ref.PromptEncoder(cfg)
    assert module.sample_dropout_masks(2) == []  # and no dropout happens


# -- error contracts ----------------------------------------------------------------------------------

LSTM_DROPOUT = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=1,
                                           encoder_reparameterization_type="LSTM", encoder_num_layers=3,
                                           encoder_dropout=0.5)
IDX = np.array([[0, 1]])


def test_unknown_encoder_type_gives_peft_error():
    peft_text = "Prompt encoder type not recognized. Please use one of MLP (recommended) or LSTM"
    with pytest.raises(mpt_ref.ConfigError, match=re.escape(peft_text)):
        mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type="GRU")
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2)
    cfg.encoder_reparameterization_type = "mlp"  # mutated after validation
    with pytest.raises(ValueError, match=re.escape(peft_text) + ".*'mlp'"):
        mpt_ref.PromptEncoder(cfg)


@pytest.mark.parametrize(
    "config, dtype, exc, match",
    [
        # (missing token_dim and an integer dtype are cases of the error contract, test_error_contract.py)
        (mpt_ref.PromptTuningConfig(num_virtual_tokens=2, token_dim=2), np.float32, mpt_ref.ConfigError,
         "PromptEncoderConfig, got PromptTuningConfig"),
    ],
)
def test_bad_construction_raises(config, dtype, exc, match):
    with pytest.raises(exc, match=match):
        mpt_ref.PromptEncoder(config, dtype=dtype)


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
