"""Cross-check PromptEncoder (P-tuning MLP and LSTM) against real PEFT.

Skipped without torch and peft. PEFT's ``peft.tuners.p_tuning.PromptEncoder`` runs in float64 with our
parameters loaded, and torch autograd supplies the reference gradients of sum(out * dout). Train-mode
dropout cannot be seeded into torch's fused LSTM, so the dropout check runs PEFT's own parameter
tensors through one single-layer torch LSTM per layer (torch.func.functional_call) with our masks
injected in between, after checking that this composition reproduces PEFT's module exactly.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_grads_close

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.tuners.p_tuning import PromptEncoder as PeftPromptEncoder  # noqa: E402
from torch.func import functional_call  # noqa: E402

pytestmark = pytest.mark.peft

LSTM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def peft_config(config):
    """Our config as PEFT's (H := D when None), the type as PEFT's enum member (a plain "MLP" str crashes PEFT, spec/differences.md #17)."""
    d = {k: v for k, v in config.to_dict().items() if v is not None}
    d.setdefault("encoder_hidden_size", d["token_dim"])  # what PeftModel fills in; direct construction needs it
    d["encoder_reparameterization_type"] = peft.PromptEncoderReparameterizationType(d["encoder_reparameterization_type"])
    return peft.PromptEncoderConfig(**{k: v for k, v in d.items() if k != "peft_type"})


def peft_encoder(config, state, dtype=torch.float64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT/torch warnings are compared in their own tests
        module = PeftPromptEncoder(peft_config(config)).to(dtype)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return module


def peft_grads(module, out, dout):
    module.zero_grad()
    (out * torch.from_numpy(dout)).sum().backward()
    return {k: p.grad.numpy() for k, p in module.named_parameters()}


def ours(config, params, dtype=np.float64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = mpt_ref.PromptEncoder(config, dtype=dtype)
    module.load_state_dict(params)
    return module


def check_against_peft(case):
    ref = ours(case.config, case.params)
    theirs = peft_encoder(case.config, case.params)
    assert list(theirs.state_dict()) == list(ref.state_dict())
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == ref.parameter_shapes()
    idx = case.inputs["indices"]
    out = theirs(torch.from_numpy(idx))
    assert_close("out", ref.forward(idx), out.detach().numpy(), tol.PEFT_F64)
    assert_grads_close("grads", ref.backward(case.dout, idx), peft_grads(theirs, out, case.dout), tol.PEFT_F64)


# -- float64: forward and autograd gradients ------------------------------------------------------------


@pytest.mark.parametrize("kind, L", [("MLP", 2), ("LSTM", 1), ("LSTM", 2), ("LSTM", 3)])
@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_2_SEQ_LM"])  # S = 1, 2
def test_default_init_encoders_match_peft_float64(kind, L, task_type):
    """Our seeded init, realistic sizes: D=8, H=5, N=4, B=3 (PEFT indices arange(T) per row)."""
    cfg = mpt_ref.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=4, token_dim=8, encoder_hidden_size=5,
                                      encoder_reparameterization_type=kind, encoder_num_layers=L)
    params = mpt_ref.PromptEncoder(cfg, seed=L, dtype=np.float64).state_dict()
    T = cfg.total_virtual_tokens
    idx = np.tile(np.arange(T), (3, 1))
    dout = np.random.default_rng(L).standard_normal((3, T, 8))
    check_against_peft(hs.Case(cfg, params, {"indices": idx}, dout))


@settings(max_examples=25)
@given(hs.mlp_encoder_cases())
def test_mlp_encoder_matches_peft_float64(case):
    note(f"config={case.config.to_dict()}")
    check_against_peft(case)


@settings(max_examples=30)
@given(hs.lstm_encoder_cases(max_layers=3))
def test_lstm_encoder_matches_peft_float64(case):
    note(f"config={case.config.to_dict()}")
    check_against_peft(case)


@settings(max_examples=15)
@given(st.one_of(hs.mlp_encoder_cases(dtype=np.float32), hs.lstm_encoder_cases(dtype=np.float32)))
def test_float32_matches_peft_native_dtype(case):
    ref = ours(case.config, case.params, np.float32)
    theirs = peft_encoder(case.config, case.params, torch.float32)
    idx = case.inputs["indices"]
    out = theirs(torch.from_numpy(idx))
    want = out.detach().numpy()
    scale = float(np.abs(want).max(initial=0)) + 1
    f32 = tol.F32_ENCODER.scaled(scale)
    assert_close("out", ref.forward(idx), want, f32)
    grads, want_grads = ref.backward(case.dout, idx), peft_grads(theirs, out, case.dout)
    for k in grads:
        g_scale = float(np.abs(want_grads[k]).max(initial=0)) + 1
        g_tol = tol.F32_ENCODER_GRADS.scaled(g_scale)
        assert_close(k, grads[k], want_grads[k], g_tol)


# -- train-mode dropout with injected masks ------------------------------------------------------------


def peft_lstm_with_masks(module, x, scales):
    """PEFT's lstm_head run layer by layer with *its own* parameter tensors, our dropout scales between."""
    lstm = module.lstm_head
    params = dict(lstm.named_parameters())
    for k in range(lstm.num_layers):
        layer = torch.nn.LSTM(x.shape[-1], lstm.hidden_size, num_layers=1, bidirectional=True, batch_first=True).to(x.dtype)
        weights = {f"{n}_l0{s}": params[f"{n}_l{k}{s}"] for n in LSTM_NAMES for s in ("", "_reverse")}
        x = functional_call(layer, weights, (x,))[0]
        if scales is not None and k < lstm.num_layers - 1:
            x = x * torch.from_numpy(scales[k])
    return x


@settings(max_examples=20)
@given(hs.lstm_encoder_cases(dropout=True, max_layers=3))
def test_train_mode_dropout_matches_peft_with_injected_masks(case):
    ref = ours(case.config, case.params).train()
    theirs = peft_encoder(case.config, case.params)
    idx, masks = case.inputs["indices"], case.inputs["dropout_masks"]
    p = case.config.encoder_dropout
    emb = theirs.embedding(torch.from_numpy(idx))
    # the composition is PEFT's module exactly when no masks are applied
    theirs.eval()
    np.testing.assert_array_equal(theirs.mlp_head(peft_lstm_with_masks(theirs, emb, None)).detach().numpy(),
                                  theirs(torch.from_numpy(idx)).detach().numpy())
    scales = [m.astype(np.float64) / (1 - p) for m in masks]  # torch's inverted dropout: keep / (1 - p)
    out = theirs.mlp_head(peft_lstm_with_masks(theirs, emb, scales))
    assert_close("out", ref.forward(idx, dropout_masks=masks), out.detach().numpy(), tol.PEFT_F64)
    grads, want_grads = ref.backward(case.dout, idx, dropout_masks=masks), peft_grads(theirs, out, case.dout)
    assert list(grads) == list(want_grads)
    for k in grads:  # atol scaled by the gradient's size: 1/(1-p) up to 10 per layer grows the summed terms
        g_scale = float(np.abs(want_grads[k]).max(initial=0)) + 1
        assert_close(k, grads[k], want_grads[k], tol.PEFT_F64._replace(atol=tol.PEFT_F64.atol * g_scale))


def test_peft_train_mode_dropout_is_inverted_with_keep_rate_one_minus_p():
    """What the injection assumes about torch, recovered from PEFT's real train-mode LSTM: between
    layers each feature is either dropped (0) or kept and scaled by 1/(1−p), kept with rate 1 − p.
    Layer 1 is made invertible: w_hh = 0, i and o saturated open, f shut, and g reads one feature
    (forward direction: feature 0, reverse: feature 1), so h = tanh(tanh(input)) step by step."""
    T, p = 400, 0.4
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=T, token_dim=1, encoder_hidden_size=1,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2, encoder_dropout=p)
    module = PeftPromptEncoder(peft_config(cfg)).double()
    lstm = module.lstm_head
    with torch.no_grad():
        for s, feature in (("", 0), ("_reverse", 1)):
            getattr(lstm, f"weight_ih_l1{s}").zero_()[2, feature] = 1.0  # z_g = input feature
            getattr(lstm, f"weight_hh_l1{s}").zero_()
            getattr(lstm, f"bias_ih_l1{s}").copy_(torch.tensor([40.0, -40.0, 0.0, 40.0]))  # i = o = 1, f = 0
            getattr(lstm, f"bias_hh_l1{s}").zero_()
        x = module.embedding(torch.arange(T)[None])
        one = torch.nn.LSTM(1, 1, num_layers=1, bidirectional=True, batch_first=True).double()
        weights = {f"{n}_l0{s}": getattr(lstm, f"{n}_l0{s}") for n in LSTM_NAMES for s in ("", "_reverse")}
        layer0 = functional_call(one, weights, (x,))[0]  # (1, T, 2): what layer 1 reads without dropout
        np.testing.assert_allclose(torch.atanh(torch.atanh(lstm.eval()(x)[0])).numpy(), layer0.numpy(),
                                   rtol=tol.ATANH_ROUND_TRIP_F64.rtol)
        torch.manual_seed(0)
        dropped = torch.atanh(torch.atanh(lstm.train()(x)[0]))  # (1, T, 2): what layer 1 read in train mode
    ratio = (dropped / layer0).numpy().ravel()
    kept = np.abs(ratio) > 0.5
    np.testing.assert_allclose(ratio[kept], 1 / (1 - p), rtol=tol.DROPOUT_RATIO_F64.rtol)
    np.testing.assert_allclose(ratio[~kept], 0, atol=tol.DROPOUT_RATIO_F64.atol)
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / kept.size)  # 800 Bernoulli draws


# -- construction parity: warnings, errors, key order --------------------------------------------------


def captured_warnings(build):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_mlp_num_layers_warning_text_equals_peft():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=2, encoder_num_layers=5)
    theirs = captured_warnings(lambda: PeftPromptEncoder(peft_config(cfg)))
    assert theirs and captured_warnings(lambda: mpt_ref.PromptEncoder(cfg)) == theirs


def test_lstm_single_layer_dropout_warning_text_equals_torch():
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=2,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=1, encoder_dropout=0.3)
    theirs = captured_warnings(lambda: PeftPromptEncoder(peft_config(cfg)))
    assert theirs and captured_warnings(lambda: mpt_ref.PromptEncoder(cfg)) == theirs


def test_peft_crashes_on_plain_string_mlp_where_we_warn():
    """spec/differences.md #17, pinned so that a PEFT fix is noticed: PEFT raises AttributeError, we warn."""
    d = dict(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=2, encoder_num_layers=3, num_transformer_submodules=1)
    with pytest.raises(AttributeError, match="value"):
        PeftPromptEncoder(peft.PromptEncoderConfig(encoder_reparameterization_type="MLP", **d))
    with pytest.warns(UserWarning, match="ignored"):
        mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(encoder_reparameterization_type="MLP", **d))


def test_unknown_type_error_text_contains_peft_text():
    """PEFT's sentence appears in ours (config.py ends it with "; got '<type>'" instead of PEFT's final ".")."""
    with pytest.raises(ValueError) as theirs:
        PeftPromptEncoder(peft.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_hidden_size=2,
                                                   num_transformer_submodules=1, encoder_reparameterization_type="GRU"))
    peft_text = re.escape(str(theirs.value).rstrip("."))
    with pytest.raises(mpt_ref.ConfigError, match=peft_text):
        mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_reparameterization_type="GRU")
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2)
    cfg.encoder_reparameterization_type = "GRU"  # mutated after the config's own check
    with pytest.raises(mpt_ref.ConfigError, match=re.escape(str(theirs.value))):
        mpt_ref.PromptEncoder(cfg)


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_inference_mode_keys_equal_peft(kind):
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=3, token_dim=4, encoder_hidden_size=2,
                                      encoder_reparameterization_type=kind, inference_mode=True)
    theirs = PeftPromptEncoder(peft_config(cfg))
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == mpt_ref.PromptEncoder(cfg).parameter_shapes()


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_init_ranges_match_peft(kind):
    """Same distributions: per key, the max |value| of both inits sits just under the same bound."""
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=20, token_dim=16, encoder_hidden_size=9,
                                      encoder_reparameterization_type=kind)
    torch.manual_seed(0)
    theirs = {k: v.double().numpy() for k, v in PeftPromptEncoder(peft_config(cfg)).state_dict().items()}
    mine = mpt_ref.PromptEncoder(cfg, seed=0, dtype=np.float64).state_dict()
    for k in mine:
        if k == "embedding.weight":  # N(0, 1) on both sides: 320 draws
            assert 0.85 < mine[k].std() < 1.15 and 0.85 < theirs[k].std() < 1.15
            continue
        a, b = np.abs(mine[k]).max(), np.abs(theirs[k]).max()
        assert abs(a - b) < 0.25 * max(a, b), (k, a, b)
