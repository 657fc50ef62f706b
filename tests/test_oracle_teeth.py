"""Meta-tests: the oracle must catch planted bugs, and must pass correct implementations.

Each "port" below is mpt-ref itself with one classic porting bug planted; ``assert_conforms`` (or the
vector verifier) has to fail on it. The controls (unmodified ports) have to pass.
"""

from __future__ import annotations

import numpy as np
import pytest

import mpt_ref
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES
from mpt_ref.core.mpt import mpt_backward, mpt_forward
from mpt_ref.testing.conformance import assert_conforms

EXAMPLES = 40  # enough for hypothesis to find every planted bug below; each is found in < 10 examples


def encoder_from_params(params: dict) -> mpt_ref.PromptEncoder:
    """A PromptEncoder rebuilt from parameter shapes alone (what a port knows)."""
    T, D = params["embedding.weight"].shape
    if "lstm_head.weight_hh_l0" in params:
        H = params["lstm_head.weight_hh_l0"].shape[1]
        L = sum(k.startswith("lstm_head.weight_ih_l") and not k.endswith("_reverse") for k in params)
        cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=T, token_dim=D, encoder_hidden_size=H,
                                          encoder_reparameterization_type="LSTM", encoder_num_layers=L)
    else:
        cfg = mpt_ref.PromptEncoderConfig(num_virtual_tokens=T, token_dim=D,
                                          encoder_hidden_size=params["mlp_head.0.weight"].shape[0])
    enc = mpt_ref.PromptEncoder(cfg, dtype=params["embedding.weight"].dtype).eval()
    enc.load_state_dict(params)
    return enc


def encoder_port(tamper=lambda p: p):
    return lambda params, indices: encoder_from_params(tamper(params)).forward(indices)


def mpt_port(tamper_tasks=lambda t, k: t, dtype=None):
    def forward(params, indices, task_ids):
        K = params["prefix_task_cols"].shape[0]
        p = {k: v.astype(dtype) for k, v in params.items()} if dtype else params
        out, _ = mpt_forward(p, indices, tamper_tasks(task_ids, K))
        return out.astype(params["embedding.weight"].dtype)
    return forward


def swap_gates(params):
    """Read PyTorch's i, f, g, o blocks as i, g, f, o (a port that assumed another gate order)."""
    out = dict(params)
    for k, v in params.items():
        if k.startswith("lstm_head."):
            i, f, g, o = np.split(v, 4, axis=0)
            out[k] = np.concatenate([i, g, f, o], axis=0)
    return out


def swap_directions(params):
    out = dict(params)
    for k in params:
        if k.startswith("lstm_head.") and k.endswith("_reverse"):
            fwd = k[: -len("_reverse")]
            out[fwd], out[k] = params[k], params[fwd]
    return out


def drop_bias(key):
    return lambda params: {**params, key: np.zeros_like(params[key])}


def transpose(key):
    return lambda params: {**params, key: params[key].T.copy()}


def overwriting_mpt_backward(params, grad_output, indices, task_ids):
    """Scatter by assignment: repeated ids / tasks keep only one contribution."""
    _, cache = mpt_forward(params, indices, task_ids)
    grads = mpt_backward(grad_output, cache)
    D = grad_output.shape[-1]
    x_rows = params["embedding.weight"][indices]  # B,T,D
    dx = grad_output * cache.task_prompts[cache.inverse]
    dE = np.zeros_like(params["embedding.weight"])
    dE[indices.reshape(-1)] = dx.reshape(-1, D)  # BUG: = instead of +=
    dC = np.zeros_like(params["prefix_task_cols"])
    tasks = np.broadcast_to(task_ids, (indices.shape[0],))
    for b, t in enumerate(tasks):
        dC[t] = (grad_output[b] * x_rows[b]) @ params["prefix_task_rows"][t].T  # BUG: = instead of +=
    return {**grads, "embedding.weight": dE, "prefix_task_cols": dC}


PLANTED = {
    "lstm gate order swapped": dict(forward=encoder_port(swap_gates), module="lstm_encoder"),
    "lstm directions swapped": dict(forward=encoder_port(swap_directions), module="lstm_encoder"),
    "lstm missing bias_hh": dict(forward=encoder_port(drop_bias("lstm_head.bias_hh_l0")), module="lstm_encoder"),
    "mlp missing first bias": dict(forward=encoder_port(drop_bias("mlp_head.0.bias")), module="mlp_encoder"),
    "mlp transposed square weight": dict(forward=encoder_port(transpose("mlp_head.2.weight")), module="mlp_encoder"),
    "mpt task ids off by one": dict(forward=mpt_port(lambda t, k: (t + 1) % k), module="mpt"),
    "mpt float32 accumulation": dict(forward=mpt_port(dtype=np.float32), module="mpt"),
    "mpt scatter overwrites": dict(forward=mpt_port(), backward=overwriting_mpt_backward, module="mpt"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug):
    with pytest.raises(AssertionError):
        assert_conforms(**PLANTED[bug], max_examples=EXAMPLES, shrink=False)  # detection is the point here


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(forward=mpt_port(), backward=lambda p, d, indices, task_ids: mpt_backward(d, mpt_forward(p, indices, task_ids)[1]),
             module="mpt"),
        dict(forward=encoder_port(), module="lstm_encoder"),
        dict(forward=encoder_port(), module="mlp_encoder"),
        dict(forward=lambda p, indices: p["embedding.weight"][indices], module="prompt_embedding"),
    ],
    ids=["mpt", "lstm", "mlp", "prompt_embedding"],
)
def test_correct_ports_pass(kwargs):
    assert_conforms(**kwargs, max_examples=EXAMPLES)


def test_average_of_products_is_caught_by_the_vectors(tmp_path):
    """AVERAGE_SOURCE_TASKS multiplies averaged factors; a port that averages the task prompts instead
    produces another output, which the verifier flags."""
    spec = next(c for c in CASES if c.name == "mpt_init_average")
    vec.write_vectors(tmp_path / "vectors", [spec])
    case = vec.read_case(tmp_path / "vectors", spec.name)
    source = vec.load_source(tmp_path / "vectors", spec.name)
    E = source["prompt_embeddings"].astype(np.float64)
    avg_of_products = np.mean([c @ r for c, r in zip(source["prefix_task_cols"], source["prefix_task_rows"])], axis=0)
    indices = case.tensors["inputs"]["indices"]
    buggy = E[indices] * avg_of_products
    (tmp_path / "port" / spec.name).mkdir(parents=True)
    from safetensors.numpy import save_file
    save_file({"output": buggy}, str(tmp_path / "port" / spec.name / "output.safetensors"))
    checks = vec.verify_directory(tmp_path / "vectors", tmp_path / "port")
    assert [c.ok for c in checks] == [False]
    c_avg, r_avg = source["prefix_task_cols"].mean(0), source["prefix_task_rows"].mean(0)  # in the source dtype
    correct = E[indices] * (c_avg.astype(np.float64) @ r_avg.astype(np.float64))
    save_file({"output": correct}, str(tmp_path / "port" / spec.name / "output.safetensors"))
    assert [c.ok for c in vec.verify_directory(tmp_path / "vectors", tmp_path / "port")] == [True]
