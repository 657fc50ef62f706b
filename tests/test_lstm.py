"""One-direction LSTM layer (BPTT) and the bidirectional stack: gradients of every parameter of every
layer and direction, metamorphic properties, dropout masks, init, and the spec's hand-worked example."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, note, settings
from hypothesis import strategies as st

from mpt_ref import tolerances as tol
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.core.lstm import lstm_backward, lstm_forward
from mpt_ref.core.lstm_stack import (
    init_lstm_stack,
    lstm_keys,
    lstm_stack_backward,
    lstm_stack_forward,
)
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close, assert_grads_close
from mpt_ref.testing.properties import assert_linear_in_dout

LAYER_ARGS = ("w_ih", "w_hh", "b_ih", "b_hh")


def layer_functions(reverse):
    def forward(p):
        return lstm_forward(p["x"], *(p[k] for k in LAYER_ARGS), reverse=reverse)[0]

    def backward(dy, p):
        _, cache = lstm_forward(p["x"], *(p[k] for k in LAYER_ARGS), reverse=reverse)
        return dict(zip(("x", *LAYER_ARGS), lstm_backward(dy, cache)))

    return forward, backward


def stack_functions(num_layers, scales=None):
    def forward(p):
        return lstm_stack_forward(p, p["x"], num_layers=num_layers, dropout_scales=scales)[0]

    def backward(dy, p):
        dx, grads = lstm_stack_backward(dy, lstm_stack_forward(p, p["x"], num_layers=num_layers, dropout_scales=scales)[1])
        return {**grads, "x": dx}

    return forward, backward


def tiny_layer_case(B=1, T=1, I=1, H=1, reverse=False, seed=0):
    rng = np.random.default_rng(seed)
    params = {"w_ih": rng.uniform(-1, 1, (4 * H, I)), "w_hh": rng.uniform(-1, 1, (4 * H, H)),
              "b_ih": rng.uniform(-1, 1, 4 * H), "b_hh": rng.uniform(-1, 1, 4 * H)}
    return hs.Case({"reverse": reverse}, params, {"x": rng.uniform(-1, 1, (B, T, I))}, rng.uniform(-1, 1, (B, T, H)))


# -- the spec's hand-worked example (spec/lstm.md) ---------------------------------------------------

HAND = hs.Case(
    {"reverse": False},
    {"w_ih": np.array([[0.0], [0.0], [1.0], [0.0]]), "w_hh": np.array([[0.0], [0.0], [2.0], [0.0]]),
     "b_ih": np.zeros(4), "b_hh": np.array([0.0, np.log(3.0), 0.0, 0.0])},
    {"x": np.array([[[1.0], [-1.0]]])},
    np.array([[[1.0], [1.0]]]),
)


def test_hand_worked_example_matches_spec():
    forward, backward = layer_functions(reverse=False)
    params = {**HAND.params, **HAND.inputs}
    _, cache = lstm_forward(HAND.inputs["x"], *(HAND.params[k] for k in LAYER_ARGS))
    h10 = tol.HAND_WORKED_10_DIGITS
    assert_close("gates", cache.gates[0], np.array([[0.5, 0.75, 0.761594156, 0.5],
                                                    [0.5, 0.75, -0.5625804384, 0.5]]), h10)
    assert_close("c", cache.c[0, 1:, 0], np.array([0.380797078, 0.004307589274]), h10)
    assert_close("y", forward(params)[0, :, 0], np.array([0.1816997422, 0.002153781316]), h10)
    grads = backward(HAND.dout, params)
    want = {
        "x": np.array([[[0.2010145847], [0.170872642]]]),
        "w_ih": np.array([[0.2525842097], [-0.03569906365], [0.03014194278], [0.1208204954]]),
        "w_hh": np.array([[-0.01277735299], [0.006486510662], [0.03104751499], [0.0001956707549]]),
        "b_ih": np.array([0.1119417097, 0.03569906365, 0.3718872267, 0.1229742767]),
    }
    for key, value in want.items():
        assert_close(key, grads[key], value, h10)
    np.testing.assert_array_equal(grads["b_hh"], grads["b_ih"])
    # the reverse direction with the same weights, as worked in the spec
    rev_forward, rev_backward = layer_functions(reverse=True)
    assert_close("y reverse", rev_forward(params)[0, :, 0], np.array([-0.002153781316, -0.1816997422]), h10)
    rev = rev_backward(HAND.dout, params)
    assert_close("dw_ih reverse", rev["w_ih"][:, 0], np.array([0.2525842097, -0.03569906365, -0.03014194278, 0.1208204954]), h10)
    assert_close("dx reverse", rev["x"][0, :, 0], np.array([0.170872642, 0.2010145847]), h10)


# -- one layer -----------------------------------------------------------------------------------


@given(hs.lstm_layer_cases())
@example(tiny_layer_case())                          # H = I = T = B = 1
@example(tiny_layer_case(T=1, H=2, reverse=True))    # T = 1 reverse
@example(tiny_layer_case(B=2, T=3, I=1, H=1, reverse=True))
@example(tiny_layer_case(B=0, T=2, I=3, H=2))       # empty batch: backward once crashed reshaping (0, -1)
def test_layer_backward_matches_central_differences(case):
    note(f"reverse={case.config['reverse']} x shape={case.inputs['x'].shape}")
    reports = gradcheck(*layer_functions(case.config["reverse"]), {**case.params, **case.inputs}, case.dout)
    for rep in reports:
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@given(hs.lstm_layer_cases())
def test_reverse_direction_is_forward_direction_on_flipped_time(case):
    params = {**case.params, **case.inputs}
    flipped = {**params, "x": params["x"][:, ::-1]}
    fwd, fwd_backward = layer_functions(False)
    rev, rev_backward = layer_functions(True)
    np.testing.assert_array_equal(rev(params), fwd(flipped)[:, ::-1])
    g_rev, g_fwd = rev_backward(case.dout, params), fwd_backward(case.dout[:, ::-1], flipped)
    np.testing.assert_array_equal(g_rev["x"], g_fwd["x"][:, ::-1])
    for k in LAYER_ARGS:
        np.testing.assert_array_equal(g_rev[k], g_fwd[k])


@given(hs.lstm_layer_cases())
def test_layer_batch_invariance(case):
    forward, backward = layer_functions(case.config["reverse"])
    params = {**case.params, **case.inputs}
    out, grads = forward(params), backward(case.dout, params)
    x = params["x"]
    total = {k: 0 for k in LAYER_ARGS}
    for b in range(x.shape[0]):
        row = {**params, "x": x[b : b + 1]}
        assert_close(f"y[{b}]", forward(row)[0], out[b], tol.REORDER_F64)
        g = backward(case.dout[b : b + 1], row)
        assert_close(f"dx[{b}]", g["x"][0], grads["x"][b], tol.REORDER_F64)
        total = {k: total[k] + g[k] for k in LAYER_ARGS}
    for k in LAYER_ARGS:  # parameter gradients are sums over the batch rows
        assert_close(k, grads[k], total[k], tol.REORDER_F64)


@given(hs.lstm_layer_cases())
def test_layer_is_causal(case):
    """Forward direction: y[:, t] depends on x[:, :t+1] only (reverse: on x[:, t:])."""
    forward, _ = layer_functions(case.config["reverse"])
    params = {**case.params, **case.inputs}
    x = params["x"]
    T = x.shape[1]
    out = forward(params)
    for t in range(T):
        part = x[:, : t + 1] if not case.config["reverse"] else x[:, t:]
        sub = forward({**params, "x": part})
        got = sub[:, t] if not case.config["reverse"] else sub[:, 0]
        assert_close(f"y[:, {t}]", got, out[:, t], tol.REORDER_F64)


@given(hs.lstm_layer_cases(), st.floats(-3, 3), st.data())
def test_layer_backward_is_linear_in_dout(case, alpha, data):
    _, backward = layer_functions(case.config["reverse"])
    params = {**case.params, **case.inputs}
    other = data.draw(hs.finite_arrays(case.dout.shape), label="dout2")
    assert_linear_in_dout(lambda d: backward(d, params), case.dout, other, alpha)


@given(hs.lstm_layer_cases(dtype=np.float32))
def test_float32_stays_float32_and_agrees_with_float64(case):
    params = {**case.params, **case.inputs}
    forward, backward = layer_functions(case.config["reverse"])
    out, grads = forward(params), backward(case.dout, params)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    assert_close("y", out, forward(p64), tol.F32_ENCODER)  # |y| < 1, so no scaling


def test_single_step_is_the_gate_equations():
    """T = 1 from the zero state: c = σ(i)·tanh(g), y = σ(o)·tanh(c); direction is irrelevant."""
    case = tiny_layer_case(B=2, T=1, I=3, H=2, seed=3)
    p = case.params
    z = case.inputs["x"][:, 0] @ p["w_ih"].T + p["b_ih"] + p["b_hh"]  # B,4H (h0 = 0)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, g, o = sig(z[:, 0:2]), np.tanh(z[:, 4:6]), sig(z[:, 6:8])
    want = o * np.tanh(i * g)
    for reverse in (False, True):
        assert_close("y", layer_functions(reverse)[0]({**p, **case.inputs})[:, 0], want, tol.REORDER_F64)


# -- the bidirectional stack -------------------------------------------------------------------------


@settings(max_examples=20)  # 8L parameter tensors per example; 20 examples x L=1..3 cover every key
@given(hs.lstm_stack_cases())
@example(hs.Case({"num_layers": 3}, {k: np.random.default_rng(1).uniform(-1, 1, s)
                                     for k, s in hs.lstm_param_shapes(1, 1, 3).items()},
                 {"x": np.array([[[0.5]]])}, np.array([[[1.0, -1.0]]])))  # L=3, H=D=T=B=1
def test_stack_backward_matches_central_differences_for_every_layer_and_direction(case):
    L = case.config["num_layers"]
    note(f"L={L} x shape={case.inputs['x'].shape}")
    reports = gradcheck(*stack_functions(L), {**case.params, **case.inputs}, case.dout)
    assert {r.key for r in reports} == {*lstm_keys(L), "x"}
    for rep in reports:
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@settings(max_examples=10)
@given(hs.lstm_stack_cases(max_layers=3).filter(lambda c: c.config["num_layers"] > 1), st.data())
def test_stack_with_dropout_masks_matches_central_differences(case, data):
    L = case.config["num_layers"]
    shape = case.dout.shape
    masks = data.draw(hs.keep_masks(L - 1, shape), label="keep masks")
    p = data.draw(st.sampled_from([0.25, 0.5]), label="p")
    scales = [m / (1 - p) for m in masks]
    reports = gradcheck(*stack_functions(L, scales), {**case.params, **case.inputs}, case.dout)
    for rep in reports:
        assert rep.ok(tol.GRADCHECK_NONLINEAR_F64.rtol, tol.GRADCHECK_NONLINEAR_F64.atol), rep


@given(hs.lstm_stack_cases())
def test_stack_with_all_ones_scales_equals_no_dropout(case):
    L = case.config["num_layers"]
    ones = [np.ones(case.dout.shape)] * (L - 1)
    params = {**case.params, **case.inputs}
    f0, b0 = stack_functions(L)
    f1, b1 = stack_functions(L, ones)
    np.testing.assert_array_equal(f1(params), f0(params))
    assert_grads_close("grads", b1(case.dout, params), b0(case.dout, params), tol.EXACT)


@given(hs.lstm_stack_cases())
def test_stack_layer_is_concat_of_forward_and_reverse_layers(case):
    """Layer 0 of the stack = [lstm(x; forward params) | lstm(x; reverse params, reverse=True)]."""
    params, x = case.params, case.inputs["x"]
    y, _ = lstm_stack_forward(params, x, num_layers=1)
    fwd, _ = lstm_forward(x, *(params[f"lstm_head.{n}_l0"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    rev, _ = lstm_forward(x, *(params[f"lstm_head.{n}_l0_reverse"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                          reverse=True)
    np.testing.assert_array_equal(y, np.concatenate([fwd, rev], axis=-1))


def swap_directions(params, num_layers):
    """Exchange forward and reverse parameters. Above layer 0 the input halves swap too, so the
    input columns of weight_ih are exchanged: [W_a | W_b] -> [W_b | W_a]."""
    out = {}
    for k in range(num_layers):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            for mine, other in (("", "_reverse"), ("_reverse", "")):
                w = params[f"lstm_head.{name}_l{k}{other}"]
                if name == "weight_ih" and k > 0:
                    H = w.shape[1] // 2
                    w = np.concatenate([w[:, H:], w[:, :H]], axis=1)
                out[f"lstm_head.{name}_l{k}{mine}"] = w
    return out


@given(hs.lstm_stack_cases())
def test_stack_direction_swap_on_flipped_time(case):
    """Flipping time and exchanging the directions' parameters flips the output and swaps its halves."""
    L = case.config["num_layers"]
    x = case.inputs["x"]
    y, _ = lstm_stack_forward(case.params, x, num_layers=L)
    y_swapped, _ = lstm_stack_forward(swap_directions(case.params, L), x[:, ::-1], num_layers=L)
    H = y.shape[-1] // 2
    want = np.concatenate([y[..., H:], y[..., :H]], axis=-1)[:, ::-1]
    assert_close("y", y_swapped, want, tol.REORDER_F64)


@given(hs.lstm_stack_cases())
def test_stack_batch_invariance(case):
    L = case.config["num_layers"]
    forward, _ = stack_functions(L)
    params = {**case.params, **case.inputs}
    out = forward(params)
    for b in range(out.shape[0]):
        assert_close(f"y[{b}]", forward({**params, "x": params["x"][b : b + 1]})[0], out[b], tol.REORDER_F64)


def test_init_lstm_stack_keys_shapes_and_bound():
    params = init_lstm_stack(np.random.default_rng(0), 5, 4, 3, np.float32)
    assert list(params) == list(hs.lstm_param_shapes(5, 4, 3))
    assert {k: v.shape for k, v in params.items()} == hs.lstm_param_shapes(5, 4, 3)
    values = np.concatenate([v.ravel() for v in params.values()])
    assert values.dtype == np.float32 and np.abs(values).max() <= 0.5  # 1/sqrt(H) = 1/2
    assert np.abs(values).max() > 0.49
    assert list(params)[:9] == [
        "lstm_head.weight_ih_l0", "lstm_head.weight_hh_l0", "lstm_head.bias_ih_l0", "lstm_head.bias_hh_l0",
        "lstm_head.weight_ih_l0_reverse", "lstm_head.weight_hh_l0_reverse", "lstm_head.bias_ih_l0_reverse",
        "lstm_head.bias_hh_l0_reverse", "lstm_head.weight_ih_l1",
    ]
