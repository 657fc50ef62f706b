"""``backward`` after ``forward`` reuses the forward's work only when provably the same computation
(modules/base.py): equal inputs and unchanged parameters. Its result never depends on what ran before.
Every expected value comes from a fresh module that never ran a forward."""

from __future__ import annotations

import numpy as np
import pytest

import mpt_ref
from mpt_ref.train.optim import SGD, Adam


def mpt_module(seed=0):
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=4, token_dim=3, num_tasks=3, num_ranks=2)
    return mpt_ref.MultitaskPromptEmbedding(cfg, seed=seed, dtype=np.float64)


def lstm_module(seed=0, dropout=0.0):
    cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=4, token_dim=3, encoder_hidden_size=2,
                                      encoder_reparameterization_type="LSTM", encoder_num_layers=2,
                                      encoder_dropout=dropout)
    return mpt_ref.PromptEncoder(cfg, seed=seed, dtype=np.float64)


def pt_module(seed=0):
    cfg = mpt_ref.PromptTuningConfig(num_virtual_tokens=4, token_dim=3)
    return mpt_ref.PromptEmbedding(cfg, seed=seed, dtype=np.float64)


RNG = np.random.default_rng(0)
IDX = RNG.integers(0, 4, (5, 4))
TASKS = RNG.integers(0, 3, 5)
DOUT = RNG.standard_normal((5, 4, 3))
CASES = {
    "mpt": (mpt_module, (IDX, TASKS), {}),
    "lstm": (lambda: lstm_module().eval(), (IDX,), {}),
    "prompt_embedding": (pt_module, (IDX,), {}),
}


def fresh_grads(build, params, inputs, kwargs):
    module = build()
    module.load_state_dict(params)
    return module.backward(DOUT, *inputs, **kwargs)


def assert_grads_equal(got, want):
    assert list(got) == list(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_after_forward_reuses_the_cache_and_equals_stateless_backward(name, monkeypatch):
    build, inputs, kwargs = CASES[name]
    module = build()
    want = fresh_grads(build, module.state_dict(), inputs, kwargs)
    module.forward(*inputs, **kwargs)
    calls = []
    monkeypatch.setattr(module, "_cache_core", lambda prepared: calls.append(1) or type(module)._cache_core(module, prepared))
    assert_grads_equal(module.backward(DOUT, *inputs, **kwargs), want)
    assert calls == []  # no second forward
    np.testing.assert_array_equal(module.forward_backward(DOUT, *inputs, **kwargs)[0], module.forward(*inputs, **kwargs))


@pytest.mark.parametrize("name", list(CASES))
def test_backward_with_other_inputs_recomputes(name):
    build, inputs, kwargs = CASES[name]
    module = build()
    module.forward(*inputs, **kwargs)
    other = (np.flip(inputs[0], axis=1).copy(),) + inputs[1:]
    assert_grads_equal(module.backward(DOUT, *other, **kwargs), fresh_grads(build, module.state_dict(), other, kwargs))


@pytest.mark.parametrize("name", list(CASES))
def test_inputs_mutated_in_place_between_the_calls_are_seen(name):
    build, inputs, kwargs = CASES[name]
    module = build()
    idx = inputs[0].copy()
    module.forward(idx, *inputs[1:], **kwargs)
    idx[0] = (idx[0] + 1) % 4  # the caller reuses its buffer
    assert_grads_equal(module.backward(DOUT, idx, *inputs[1:], **kwargs),
                       fresh_grads(build, module.state_dict(), (idx,) + inputs[1:], kwargs))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("how", ["load_state_dict", "set_parameters", "sgd", "adam"])
def test_parameter_writes_between_the_calls_never_reuse_a_stale_cache(name, how):
    build, inputs, kwargs = CASES[name]
    module = build()
    module.forward(*inputs, **kwargs)
    key = "embedding.weight"
    if how == "load_state_dict":
        module.load_state_dict({key: module.state_dict()[key] + 1.0}, strict=False)
    elif how == "set_parameters":
        module.set_parameters({key: module.state_dict()[key] * 2.0})
    else:
        opt = SGD(module, lr=0.5) if how == "sgd" else Adam(module, lr=0.5)
        opt.step({k: np.ones_like(v) for k, v in module.state_dict().items()})
    assert_grads_equal(module.backward(DOUT, *inputs, **kwargs), fresh_grads(build, module.state_dict(), inputs, kwargs))


@pytest.mark.parametrize("name", list(CASES))
def test_in_place_write_into_a_parameter_array_is_refused(name):
    """The optimizers' old style (``theta -= lr * g`` on the module's own arrays) cannot happen silently."""
    build, inputs, kwargs = CASES[name]
    module = build()
    module.forward(*inputs, **kwargs)
    for theta in module._params.values():
        with pytest.raises(ValueError, match="read-only"):
            theta -= 1.0
    assert all(v.flags.writeable for v in module.state_dict().values())  # copies are the user's


def test_dropout_masks_are_part_of_the_inputs():
    module = lstm_module(dropout=0.5)
    masks = module.sample_dropout_masks(5)
    module.forward(IDX, dropout_masks=masks)
    other = [~m for m in masks]
    want = fresh_grads(lambda: lstm_module(dropout=0.5), module.state_dict(), (IDX,), {"dropout_masks": other})
    assert_grads_equal(module.backward(DOUT, IDX, dropout_masks=other), want)
    want = fresh_grads(lambda: lstm_module(dropout=0.5), module.state_dict(), (IDX,), {"dropout_masks": masks})
    assert_grads_equal(module.backward(DOUT, IDX, dropout_masks=masks), want)


def test_mode_switch_between_the_calls_is_seen():
    module = lstm_module(dropout=0.5)
    masks = module.sample_dropout_masks(5)
    module.forward(IDX, dropout_masks=masks)
    module.eval()
    want = fresh_grads(lambda: lstm_module(dropout=0.5).eval(), module.state_dict(), (IDX,), {})
    assert_grads_equal(module.backward(DOUT, IDX), want)


def test_set_parameters_refuses_unknown_keys():
    with pytest.raises(mpt_ref.CheckpointError, match="unknown"):
        mpt_module().set_parameters({"nope": np.zeros(1)})
