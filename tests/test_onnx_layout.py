"""PyTorch -> ONNX layout conversions (onnx_export/_layout.py): each function on its own, then a
single ONNX LSTM node built from them, judged against the float64 reference LSTM with the error model
(the reference itself against torch's LSTM), with gate-asymmetric weights so a gate-order or direction
bug cannot pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from mpt_ref import tolerances as tol
from mpt_ref.core.lstm_stack import lstm_stack_forward
from mpt_ref.judge.bounds import check_tensor
from mpt_ref.judge.error_bound import ErrorAlgebra, lstm_layer_bound
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close
from onnx_export import _layout
from onnx_export.opset import IR_VERSION, OPSET
from onnx_export.parity import check_output
from onnx_export.runtimes import run_model


def labelled_gates(H: int, width: int = 1) -> np.ndarray:
    """(4H, width): block g (torch order i, f, g, o = 0..3) holds 10*g + row within the block."""
    rows = np.concatenate([10 * g + np.arange(H) for g in range(4)]).astype(np.float64)
    return np.repeat(rows[:, None], width, axis=1)


@pytest.mark.parametrize("H", [1, 2, 5])
def test_gates_to_onnx_is_i_o_f_c_of_torch_i_f_g_o(H):
    x = labelled_gates(H, width=3)
    got = _layout.gates_to_onnx(x)
    i, f, g, o = (10 * k + np.arange(H) for k in range(4))  # torch's blocks by label
    want = np.concatenate([i, o, f, g])  # ONNX: i, o, f, c (= torch's g)
    np.testing.assert_array_equal(got[:, 0], want)
    np.testing.assert_array_equal(got[:, 2], want)
    np.testing.assert_array_equal(x, labelled_gates(H, 3))  # input untouched


@given(H=hs.dims(1, 5), width=hs.dims(1, 4), data=st.data())
def test_gates_to_onnx_is_a_block_permutation_with_an_inverse(H, width, data):
    x = data.draw(hs.finite_arrays((4 * H, width)))
    y = _layout.gates_to_onnx(x)
    blocks = np.split(y, 4)  # ONNX order i, o, f, c
    back = np.concatenate([blocks[0], blocks[2], blocks[3], blocks[1]])  # torch order i, f, g, o
    np.testing.assert_array_equal(back, x)


def test_gates_to_onnx_refuses_a_gate_axis_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        _layout.gates_to_onnx(np.zeros((6, 2)))


def test_lstm_w_r_stack_forward_then_reverse():
    H, I = 2, 3
    fwd, rev = labelled_gates(H, I), 100 + labelled_gates(H, I)
    W = _layout.lstm_w(fwd, rev)
    assert W.shape == (2, 4 * H, I)
    np.testing.assert_array_equal(W[0], _layout.gates_to_onnx(fwd))
    np.testing.assert_array_equal(W[1], _layout.gates_to_onnx(rev))
    R = _layout.lstm_r(labelled_gates(H, H), 100 + labelled_gates(H, H))
    assert R.shape == (2, 4 * H, H)
    np.testing.assert_array_equal(R[1, :H], 100 + np.arange(H)[:, None] * np.ones((1, H)))  # reverse i block


def test_lstm_b_packs_input_bias_then_recurrent_bias_per_direction():
    H = 3
    b_ih, b_hh = labelled_gates(H)[:, 0], 1000 + labelled_gates(H)[:, 0]
    B = _layout.lstm_b(b_ih, b_hh, 2000 + b_ih, 3000 + b_ih)
    assert B.shape == (2, 8 * H)
    np.testing.assert_array_equal(B[0, : 4 * H], _layout.gates_to_onnx(b_ih))  # Wb
    np.testing.assert_array_equal(B[0, 4 * H :], _layout.gates_to_onnx(b_hh))  # Rb
    np.testing.assert_array_equal(B[1, : 4 * H], _layout.gates_to_onnx(2000 + b_ih))
    np.testing.assert_array_equal(B[1, 4 * H :], _layout.gates_to_onnx(3000 + b_ih))


def test_transpose_permutations():
    x = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # B,T,I
    t = x.transpose(_layout.BATCH_FIRST_TO_TIME_MAJOR)
    assert t.shape == (3, 2, 4) and t[1, 0, 2] == x[0, 1, 2]
    y = np.arange(3 * 2 * 2 * 5).reshape(3, 2, 2, 5)  # T,dir,B,H
    merged = y.transpose(_layout.LSTM_Y_TO_TIME_BATCH_DIR).reshape(3, 2, 10)  # T,B,2H
    np.testing.assert_array_equal(merged[:, :, :5], y[:, 0])  # forward features first
    np.testing.assert_array_equal(merged[:, :, 5:], y[:, 1])


def one_layer_lstm_model(W, R, B, T, batch, I, H, dtype=np.float32) -> onnx.ModelProto:
    """X (T, B, I) -> Y (T, 2, B, H): one bidirectional LSTM node, layout 0."""
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(a.astype(dtype), n) for a, n in ((W, "W"), (R, "R"), (B, "B"))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H, direction="bidirectional")
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", et, [T, batch, I])],
                              [helper.make_tensor_value_info("Y", et, [T, 2, batch, H])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_lstm_layer(params, x, layer=0, provider="cpu", convert=True):
    """mpt_ref-keyed params of one layer -> ONNX LSTM on x (B, T, I) -> (B, T, 2H)."""
    k = lambda n, s="": params[f"lstm_head.{n}_l{layer}{s}"]  # noqa: E731
    if convert:
        W = _layout.lstm_w(k("weight_ih"), k("weight_ih", "_reverse"))
        R = _layout.lstm_r(k("weight_hh"), k("weight_hh", "_reverse"))
        B = _layout.lstm_b(k("bias_ih"), k("bias_hh"), k("bias_ih", "_reverse"), k("bias_hh", "_reverse"))
    else:  # the classic bug: torch's gate order fed to ONNX as is
        W = np.stack([k("weight_ih"), k("weight_ih", "_reverse")])
        R = np.stack([k("weight_hh"), k("weight_hh", "_reverse")])
        B = np.stack([np.concatenate([k("bias_ih"), k("bias_hh")]),
                      np.concatenate([k("bias_ih", "_reverse"), k("bias_hh", "_reverse")])])
    batch, T, I = x.shape
    H = R.shape[-1]
    model = one_layer_lstm_model(W, R, B, T, batch, I, H)
    y = run_model(model, {"X": x.transpose(1, 0, 2).astype(np.float32)}, provider)  # T,2,B,H
    return y.transpose(2, 0, 1, 3).reshape(batch, T, 2 * H)  # B,T,2H


def assert_lstm_stack_conforms(label, got, params, x, layers, provider="cpu"):
    """got (B, T, 2H), ``layers`` float32 ONNX LSTM nodes on x, against the float64 reference stack: every
    entry within the error model's bound of a float32 graph on ``provider`` (x and the weights rounded to
    float32, tolerances.ONNX_ROUNDING), as parity judges an export."""
    __tracebackhide__ = True
    want, _ = lstm_stack_forward(params, x, num_layers=layers)  # B,T,2H float64
    alg = ErrorAlgebra(tol.ONNX_ROUNDING[("float32", provider)])
    y = alg.param(x)  # X is fed in float32
    for k in range(layers):
        y, _ = lstm_layer_bound(alg, params, y, k)
    check = check_tensor(label, "Y", got, want, y.bound(alg.lam), provider=provider)
    assert check.ok, check.describe()


@settings(max_examples=10)
@given(case=hs.lstm_stack_cases(max_layers=1), provider=st.sampled_from(["cpu", "onnx-reference"]))
def test_converted_onnx_lstm_node_matches_the_reference_layer(case, provider):
    got = onnx_lstm_layer(case.params, case.inputs["x"], provider=provider)
    assert_lstm_stack_conforms("ONNX LSTM vs reference", got, case.params, case.inputs["x"], 1, provider)


def test_unconverted_gate_order_is_caught():
    """Teeth: torch's i,f,g,o fed unconverted gives a different LSTM for gate-asymmetric weights."""
    rng = np.random.default_rng(0)
    shapes = hs.lstm_param_shapes(3, 2, 1)
    params = {k: rng.uniform(-1, 1, s) for k, s in shapes.items()}
    x = rng.uniform(-1, 1, (2, 3, 3))
    want, _ = lstm_stack_forward(params, x, num_layers=1)
    assert np.abs(onnx_lstm_layer(params, x) - want).max() < 1e-5
    assert np.abs(onnx_lstm_layer(params, x, convert=False) - want).max() > 1e-2


@pytest.mark.peft
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_converted_layers_match_torch_nn_lstm(layers):
    torch = pytest.importorskip("torch")
    torch.manual_seed(layers)
    D, H, T, B = 3, 4, 5, 2
    lstm = torch.nn.LSTM(D, H, num_layers=layers, bidirectional=True, batch_first=True).double()
    params = {f"lstm_head.{k}": v.detach().numpy() for k, v in lstm.state_dict().items()}
    x = np.random.default_rng(layers).uniform(-1, 1, (B, T, D))
    with torch.no_grad():
        want = lstm(torch.from_numpy(x))[0].numpy()  # B,T,2H
    y = x
    for k in range(layers):
        y = onnx_lstm_layer(params, y, layer=k).astype(np.float64)
    assert_close("reference LSTM stack vs torch", lstm_stack_forward(params, x, num_layers=layers)[0], want,
                 tol.PEFT_F64)
    assert_lstm_stack_conforms("ONNX LSTM stack vs reference", y, params, x, layers)


@pytest.mark.peft
@pytest.mark.parametrize("encoder_type, layers", [("MLP", 2), ("LSTM", 1), ("LSTM", 3)])
def test_exported_encoder_matches_peft_prompt_encoder(encoder_type, layers):
    """PEFT's own PromptEncoder (torch, float64) -> its state_dict into mpt_ref -> ONNX -> onnxruntime: the
    reference agrees with PEFT, and each graph with the reference within the error model's bounds."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from peft.tuners.p_tuning.model import PromptEncoder as PeftPromptEncoder

    import mpt_ref
    from onnx_export import export

    kw = dict(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=6, encoder_hidden_size=3,
              encoder_reparameterization_type=encoder_type, encoder_num_layers=layers)
    torch.manual_seed(layers)
    theirs = PeftPromptEncoder(peft.PromptEncoderConfig(**kw, num_transformer_submodules=1)).double().eval()
    ours = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(**kw), seed=0, dtype=np.float64)  # PEFT's exact weights
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    idx = np.tile(np.arange(4), (3, 1))
    with torch.no_grad():
        want = theirs(torch.from_numpy(idx)).numpy()
    assert_close(f"{encoder_type} L={layers} reference vs PEFT", ours.forward(idx), want, tol.PEFT_F64)
    for variant in ("faithful", "folded"):
        got = run_model(export(ours, variant=variant), {"indices": idx})
        check = check_output(f"{encoder_type} L={layers} {variant}", ours, {"indices": idx}, got, variant=variant)
        assert check.ok, check.describe()
