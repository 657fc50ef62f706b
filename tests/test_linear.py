"""Linear layer, activations and the ``mlp_head`` Sequentials: gradients, metamorphic properties and
the spec's hand-worked MLP example (spec/mlp.md)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpt_ref import tolerances as tol
from mpt_ref.core.activations import (
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    tanh,
    tanh_backward,
)
from mpt_ref.core.gradcheck import gradcheck, numeric_gradients
from mpt_ref.core.linear import init_linear, linear_backward, linear_forward
from mpt_ref.core.mlp_head import (
    head_keys,
    init_mlp_head,
    mlp_head_backward,
    mlp_head_forward,
)
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_grads_close
from mpt_ref.testing.properties import assert_linear_in_dout

KINK_MARGIN = 1e-4  # ReLU inputs closer than this to 0 make central differences (h=1e-6) meaningless


@st.composite
def linear_cases(draw, dtype=np.float64):
    lead = draw(st.lists(hs.dims(0, 3), min_size=0, max_size=2), label="leading axes")  # empty batch included
    I, O = draw(hs.dims(1, 5), label="I"), draw(hs.dims(1, 5), label="O")
    return hs.Case(
        None,
        {"x": draw(hs.finite_arrays((*lead, I), dtype), label="x"),
         "weight": draw(hs.finite_arrays((O, I), dtype), label="W"),
         "bias": draw(hs.finite_arrays((O,), dtype), label="b")},
        {},
        draw(hs.finite_arrays((*lead, O), dtype), label="dy"),
    )


def linear_functions():
    def forward(p):
        return linear_forward(p["x"], p["weight"], p["bias"])[0]

    def backward(dy, p):
        return dict(zip(("x", "weight", "bias"), linear_backward(dy, linear_forward(p["x"], p["weight"], p["bias"])[1])))

    return forward, backward


@given(linear_cases())
def test_linear_backward_matches_central_differences(case):
    for rep in gradcheck(*linear_functions(), case.params, case.dout):
        assert rep.ok(tol.GRADCHECK_F64.rtol, tol.GRADCHECK_F64.atol), rep


@given(linear_cases())
def test_linear_equals_per_row_definition(case):
    """y[n, o] = Σ_i x[n, i] W[o, i] + b[o], written with einsum (no transpose to get wrong)."""
    x, W, b = case.params["x"], case.params["weight"], case.params["bias"]
    y, cache = linear_forward(x, W, b)
    assert_close("y", y, np.einsum("...i,oi->...o", x, W) + b, tol.REORDER_F64)
    dx, dW, db = linear_backward(case.dout, cache)
    dy = case.dout.reshape(-1, W.shape[0])
    assert_close("dx", dx, np.einsum("...o,oi->...i", case.dout, W), tol.REORDER_F64)
    assert_close("dW", dW, np.einsum("no,ni->oi", dy, x.reshape(-1, W.shape[1])), tol.REORDER_F64)
    assert_close("db", db, dy.sum(axis=0), tol.REORDER_F64)


@given(linear_cases(), st.floats(-3, 3), st.data())
def test_linear_backward_is_linear_in_dout(case, alpha, data):
    _, backward = linear_functions()
    other = data.draw(hs.finite_arrays(case.dout.shape), label="dout2")
    assert_linear_in_dout(lambda d: backward(d, case.params), case.dout, other, alpha)


def test_init_linear_bounds_and_order():
    rng = np.random.default_rng(0)
    W, b = init_linear(rng, 16, 300, np.float64)
    assert W.shape == (300, 16) and b.shape == (300,)
    assert np.abs(W).max() <= 0.25 and np.abs(b).max() <= 0.25  # 1/sqrt(fan_in) = 1/4
    assert np.abs(W).max() > 0.24 and np.abs(b).max() > 0.23  # the bound is actually reached (4800 and 300 draws)
    again = np.random.default_rng(0)
    np.testing.assert_array_equal(again.uniform(-0.25, 0.25, (300, 16)), W)  # weight drawn before bias


# -- activations ---------------------------------------------------------------------------------


ACTIVATIONS = [(relu, relu_backward), (sigmoid, sigmoid_backward), (tanh, tanh_backward)]


# Away from ReLU's kink by construction (filtering with assume() rejected most draws: arrays favour 0).
AWAY_FROM_KINK = hnp.arrays(np.float64, (7,), elements=st.one_of(st.floats(-6.0, -2 * KINK_MARGIN),
                                                                  st.floats(2 * KINK_MARGIN, 6.0)))


@pytest.mark.parametrize("fn, fn_backward", ACTIVATIONS, ids=["relu", "sigmoid", "tanh"])
@given(x=AWAY_FROM_KINK, dy=hs.finite_arrays((7,)))
def test_activation_backward_through_saved_output_matches_central_differences(fn, fn_backward, x, dy):
    numeric = numeric_gradients(lambda p: float(np.sum(fn(p["x"]) * dy)), {"x": x})["x"][1]
    assert_close("dx", fn_backward(dy, fn(x)), numeric, tol.GRADCHECK_NONLINEAR_F64)


def test_activation_closed_forms_and_conventions():
    x = np.array([-2.0, 0.0, np.log(3.0)])
    np.testing.assert_allclose(sigmoid(x), [1 / (1 + np.e**2), 0.5, 0.75], rtol=tol.CLOSED_FORM_F64.rtol)
    np.testing.assert_array_equal(relu(x), [0.0, 0.0, np.log(3.0)])
    np.testing.assert_array_equal(relu_backward(np.ones(3), relu(x)), [0.0, 0.0, 1.0])  # zero at 0 (torch)
    np.testing.assert_allclose(tanh(np.array([np.log(3.0) / 2])), [0.5], rtol=tol.CLOSED_FORM_F64.rtol)  # tanh(ln3/2) = 1/2


def test_sigmoid_saturates_without_overflow_and_keeps_dtype():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.exp overflow would warn
        for dtype in (np.float32, np.float64):
            y = sigmoid(np.array([-1e4, -800.0, 800.0, 1e4], dtype=dtype))
            assert y.dtype == dtype
            np.testing.assert_array_equal(y, [0.0, 0.0, 1.0, 1.0])


# -- heads -------------------------------------------------------------------------------------


@st.composite
def head_cases(draw, dtype=np.float64):
    num_linear = draw(st.sampled_from([2, 3]), label="Linear layers")  # LSTM mode, MLP mode
    widths = tuple(draw(hs.dims(1, 4), label=f"width {j}") for j in range(num_linear + 1))
    B, T = draw(hs.dims(1, 3), label="B"), draw(hs.dims(1, 3), label="T")
    params = {k: draw(hs.finite_arrays(s, dtype), label=k) for k, s in hs.head_param_shapes(widths).items()}
    params["x"] = draw(hs.finite_arrays((B, T, widths[0]), dtype), label="x")
    return hs.Case(num_linear, params, {}, draw(hs.finite_arrays((B, T, widths[-1]), dtype), label="dout"))


def head_functions(num_linear):
    def forward(p):
        return mlp_head_forward(p, p["x"], num_linear=num_linear)[0]

    def backward(dout, p):
        dx, grads = mlp_head_backward(dout, mlp_head_forward(p, p["x"], num_linear=num_linear)[1])
        return {**grads, "x": dx}

    return forward, backward


def relu_inputs(params, num_linear):
    """Every pre-activation that passes through a ReLU."""
    y, pre = params["x"], []
    for j in range(num_linear - 1):
        y = y @ params[f"mlp_head.{2 * j}.weight"].T + params[f"mlp_head.{2 * j}.bias"]
        pre.append(y.ravel())
        y = np.maximum(y, 0)
    return np.concatenate(pre)


@given(head_cases())
def test_head_backward_matches_central_differences(case):
    num_linear = case.config
    assume(np.abs(relu_inputs(case.params, num_linear)).min() > KINK_MARGIN)
    for rep in gradcheck(*head_functions(num_linear), case.params, case.dout):
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@given(head_cases())
def test_head_grads_have_exactly_the_head_keys_in_peft_order(case):
    _, backward = head_functions(case.config)
    grads = backward(case.dout, case.params)
    assert list(grads) == [*head_keys(case.config), "x"]
    assert all(grads[k].shape == case.params[k].shape for k in grads)


@given(head_cases())
def test_head_is_row_wise(case):
    """Batch and token invariance: every (b, t) row is mapped on its own."""
    forward, _ = head_functions(case.config)
    out = forward(case.params)
    x = case.params["x"]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            single = forward({**case.params, "x": x[b : b + 1, t : t + 1]})
            assert_close(f"out[{b},{t}]", single[0, 0], out[b, t], tol.REORDER_F64)


def test_init_mlp_head_shapes_and_bounds():
    params = init_mlp_head(np.random.default_rng(0), (4, 9, 9, 4), np.float32)
    assert {k: v.shape for k, v in params.items()} == hs.head_param_shapes((4, 9, 9, 4))
    assert all(v.dtype == np.float32 for v in params.values())
    assert np.abs(params["mlp_head.0.weight"]).max() <= 0.5 and np.abs(params["mlp_head.2.bias"]).max() <= 1 / 3


# The spec's hand-worked MLP-head example (spec/mlp.md): D = 1, H = 2, two token rows.
HAND_MLP = {
    "mlp_head.0.weight": np.array([[1.0], [-1.0]]), "mlp_head.0.bias": np.array([0.0, 0.5]),
    "mlp_head.2.weight": np.array([[1.0, 2.0], [-1.0, 1.0]]), "mlp_head.2.bias": np.array([0.0, -1.0]),
    "mlp_head.4.weight": np.array([[2.0, -1.0]]), "mlp_head.4.bias": np.array([0.5]),
}


def test_hand_worked_mlp_example_matches_spec():
    x = np.array([[[1.0], [-2.0]]])  # B=1, T=2, D=1: the rows E[[0, 1]]
    out, cache = mlp_head_forward(HAND_MLP, x, num_linear=3)
    assert_close("out", out, np.array([[[2.5], [9.0]]]), tol.REORDER_F64)
    dx, grads = mlp_head_backward(np.array([[[1.0], [2.0]]]), cache)
    want = {
        "mlp_head.0.weight": np.array([[2.0], [-12.0]]), "mlp_head.0.bias": np.array([2.0, 6.0]),
        "mlp_head.2.weight": np.array([[2.0, 10.0], [0.0, -5.0]]), "mlp_head.2.bias": np.array([6.0, -2.0]),
        "mlp_head.4.weight": np.array([[11.0, 3.0]]), "mlp_head.4.bias": np.array([3.0]),
    }
    assert_grads_close("grads", grads, want, tol.REORDER_F64)
    assert_close("dx", dx, np.array([[[2.0], [-6.0]]]), tol.REORDER_F64)
