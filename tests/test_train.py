"""The MPT training loop (mpt_ref/train): gradients of every loss and of the frozen base model against
central differences, optimizer parity with torch.optim, learning, checkpoint round trip, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpt_ref.cli
from mpt_ref import tolerances as tol
from mpt_ref.core.gradcheck import numeric_gradients
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close
from mpt_ref.train.base_model import BaseModel, base_backward, base_forward
from mpt_ref.train.data import make_tasks, sample
from mpt_ref.train.experiment import QUICK, run, source_stage, target_methods
from mpt_ref.train.loop import Batch, train
from mpt_ref.train.losses import cross_entropy, distillation_kl, mse
from mpt_ref.train.optim import SGD, Adam


def numeric(f, x):
    return numeric_gradients(lambda p: f(p["x"]), {"x": x.copy()})["x"][1].reshape(x.shape)


@given(hs.finite_arrays((3, 4)), hs.finite_arrays((3, 4)), st.floats(0.5, 4.0))
def test_loss_gradients_match_central_differences(s, t, temperature):
    labels = np.array([0, 3, 1])
    for name, f in [("cross_entropy", lambda x: cross_entropy(x, labels)),
                    ("kl", lambda x: distillation_kl(x, t, temperature)), ("mse", lambda x: mse(x, t))]:
        assert_close(name, f(s)[1], numeric(lambda x: f(x)[0], s), tol.GRADCHECK_NONLINEAR_F64)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    z = np.array([[1.0, -2.0, 0.5]])
    assert distillation_kl(z, z, 2.0)[0] == pytest.approx(0.0, abs=1e-15)
    assert distillation_kl(z, z[:, ::-1], 2.0)[0] > 0


@given(st.integers(0, 2**16), st.booleans())
def test_base_model_prompt_gradient_matches_central_differences(seed, with_hidden):
    rng = np.random.default_rng(seed)
    model = BaseModel.init(vocab=11, dim=4, classes=3, seed=seed)
    prompt = rng.standard_normal((2, 3, 4))
    ids, mask = rng.integers(0, 11, (2, 5)), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1.0]])
    dlogits, dhidden = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)) if with_hidden else None

    def scalar(p):
        logits, hidden, _ = base_forward(model, p, ids, mask)
        return float((logits * dlogits).sum() + (0 if dhidden is None else (hidden * dhidden).sum()))

    _, _, cache = base_forward(model, prompt, ids, mask)
    assert_close("dprompt", base_backward(model, dlogits, dhidden, cache), numeric(scalar, prompt),
                 tol.GRADCHECK_NONLINEAR_F64)


def test_masked_tokens_do_not_change_the_output():
    model = BaseModel.init(11, 4, 2, seed=0)
    prompt = np.ones((1, 2, 4))
    mask = np.array([[1, 1, 0.0]])
    a = base_forward(model, prompt, np.array([[1, 2, 3]]), mask)[0]
    b = base_forward(model, prompt, np.array([[1, 2, 9]]), mask)[0]
    np.testing.assert_allclose(a, b, rtol=tol.EXACT.rtol, atol=tol.EXACT.atol)


@pytest.mark.peft
@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd", lambda p: SGD(p, lr=0.1), lambda t, p: t.optim.SGD(p, lr=0.1)),
    ("sgd momentum nesterov wd", lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd momentum dampening", lambda p: SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
     lambda t, p: t.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3)),
    ("adam defaults", lambda p: Adam(p), lambda t, p: t.optim.Adam(p)),
    ("adam wd", lambda p: Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1),
     lambda t, p: t.optim.Adam(p, lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
])
def test_optimizers_match_torch_step_for_step(name, ours, theirs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 2)), "b": rng.standard_normal(4)}
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in params.values()]
    opt, topt = ours(params), theirs(torch, tparams)
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for tp, g in zip(tparams, grads.values()):
            tp.grad = torch.tensor(g)
        opt.step(grads)
        topt.step()
        for (k, v), tp in zip(params.items(), tparams):
            assert_close(f"{name} {k}", v, tp.detach().numpy(), tol.PEFT_F64)


def test_training_loss_decreases_on_a_fixed_seed():
    import mpt_ref

    model = BaseModel.init(24, 8, 2, seed=0)
    task = make_tasks(24, 1, 0, 3, seed=0)[0][0]
    rng = np.random.default_rng(0)
    module = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=8), seed=0, dtype=np.float64)
    fixed = Batch(*sample(task, 32, 6, 24, rng), 0)  # one batch: the loss is then deterministic per step
    hist = train(model, module, lambda step: fixed, steps=60, lr=0.2)
    assert hist["loss"][-1] < hist["loss"][0] - 0.05
    assert np.all(np.isfinite(hist["loss"]))


def test_source_checkpoint_loads_through_every_peft_init(tmp_path):
    s = QUICK
    model = BaseModel.init(s.vocab, s.dim, 2, seed=0)
    sources, _ = make_tasks(s.vocab, s.sources, s.targets, s.group, 0)
    out = source_stage(model, sources, s, tmp_path / "src.safetensors", progress=lambda m: None)
    sd = {k: v.astype(np.float32) for k, v in out["student"].state_dict().items()}
    methods = target_methods(s, tmp_path / "src.safetensors", closest=1, seed=0)
    for name in ("MPT AVERAGE_SOURCE_TASKS", "MPT EXACT_SOURCE_TASK", "MPT ONLY_SOURCE_SHARED"):
        got = methods[name].state_dict()
        np.testing.assert_array_equal(got["embedding.weight"], sd["embedding.weight"].astype(np.float64))
    np.testing.assert_array_equal(methods["MPT EXACT_SOURCE_TASK"].state_dict()["prefix_task_rows"][0],
                                  sd["prefix_task_rows"][1])
    np.testing.assert_array_equal(methods["MPT AVERAGE_SOURCE_TASKS"].state_dict()["prefix_task_cols"][0],
                                  sd["prefix_task_cols"].mean(axis=0))


def test_a_full_quick_run_is_reproducible_bit_for_bit(tmp_path):
    a = run(QUICK, tmp_path / "a", progress=lambda m: None)
    b = run(QUICK, tmp_path / "b", progress=lambda m: None)
    assert a == b
    assert (tmp_path / "a" / "mpt_source.safetensors").read_bytes() == (tmp_path / "b" / "mpt_source.safetensors").read_bytes()


def test_train_demo_quick_runs(capsys):
    assert mpt_ref.cli.main(["train-demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "MPT AVERAGE_SOURCE_TASKS" in out and "P-tuning LSTM" in out and "params:" in out
