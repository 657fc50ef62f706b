"""Meta-tests: the oracle must catch planted bugs, and must pass correct implementations.

Each "port" below is mpt-ref itself with one classic porting bug planted; ``assert_conforms`` (or the
vector verifier) has to fail on it. The controls (unmodified ports) have to pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import mpt_ref
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES
from mpt_ref.conformance.verify import selected_cases, verify_directory
from mpt_ref.core.mpt import mpt_backward, mpt_forward
from mpt_ref.modules.config import config_from_dict
from mpt_ref.kind import Kind
from mpt_ref.testing.conformance import assert_conforms


def encoder_port(tamper=lambda p: p):
    """mpt-ref's PromptEncoder as a port built from the config it is handed, with ``tamper`` applied to
    the parameters it loads; train mode when dropout masks come."""
    def forward(params, indices, dropout_masks, config):
        enc = mpt_ref.PromptEncoder(config, dtype=params["embedding.weight"].dtype)
        enc.load_state_dict(tamper(params))
        if not dropout_masks:
            enc.eval()
        return enc.forward(indices, dropout_masks=dropout_masks)
    return forward


LOWER = {np.dtype(np.float64): np.float32, np.dtype(np.float32): np.float16}


def mpt_port(tamper_tasks=lambda t, k: t, dtype=None, tamper_out=None, lower=False, tamper=lambda p: p):
    def forward(params, indices, task_ids, config):
        K = params["prefix_task_cols"].shape[0]
        want = params["embedding.weight"].dtype
        cast = LOWER[want] if lower else dtype
        p = {k: v.astype(cast) for k, v in tamper(params).items()} if cast else tamper(params)
        out, _ = mpt_forward(p, indices, tamper_tasks(task_ids, K))
        if tamper_out is not None:
            out = tamper_out(out, p, indices, task_ids)
        return out.astype(want)
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


def overwriting_mpt_backward(params, dout, indices, task_ids, config):
    """Scatter by assignment: repeated ids / tasks keep only one contribution."""
    _, cache = mpt_forward(params, indices, task_ids)
    grads = mpt_backward(dout, cache)
    D = dout.shape[-1]
    x_rows = params["embedding.weight"][indices]  # B,T,D
    dx = dout * cache.P[cache.t]
    dE = np.zeros_like(params["embedding.weight"])
    dE[indices.reshape(-1)] = dx.reshape(-1, D)  # BUG: = instead of +=
    dC = np.zeros_like(params["prefix_task_cols"])
    tasks = np.broadcast_to(task_ids, (indices.shape[0],))
    for b, t in enumerate(tasks):
        dC[t] = (dout[b] * x_rows[b]) @ params["prefix_task_rows"][t].T  # BUG: = instead of +=
    return {**grads, "embedding.weight": dE, "prefix_task_cols": dC}


def gate_bias_tail(params):
    """A 4-wide vector loop over hidden units without its tail: b_ih of units >= 4 of every gate is lost."""
    out = dict(params)
    for k, v in params.items():
        if k.startswith("lstm_head.bias_ih_l"):
            blocks = [b.copy() for b in np.split(v, 4)]
            for b in blocks:
                b[4:] = 0
            out[k] = np.concatenate(blocks)
    return out


def hidden_bias_tail(params):
    """The MLP's second Linear written with 4-wide vectors and no tail: bias units >= 4 lost."""
    b = params["mlp_head.2.bias"].copy()
    b[4:] = 0
    return {**params, "mlp_head.2.bias": b}


def batch_tail(out, p, indices, task_ids):
    """A 4-row batch kernel called once: rows >= 4 never written."""
    out = out.copy()
    out[4:] = 0
    return out


def token_dim_tail(out, p, indices, task_ids):
    """The product with the task prompt vectorized 8 columns wide, no tail: columns >= 8 are E only."""
    out = out.copy()
    out[..., 8:] = p["embedding.weight"][indices][..., 8:]
    return out


def square_factors_transposed(params):
    """A port that infers the factor layout from shapes and guesses (K, R, T) when T == R."""
    C = params["prefix_task_cols"]
    return {**params, "prefix_task_cols": C.transpose(0, 2, 1).copy()} if C.shape[1] == C.shape[2] else params


# Bugs that only appear at sizes beyond toy shapes: caught by assert_conforms in 10/10 seeds.
SIZE_BUGS = {
    "lstm gate bias tail (H > 4)": dict(forward=encoder_port(gate_bias_tail), module="lstm_encoder"),
    "mlp hidden bias tail (H > 4)": dict(forward=encoder_port(hidden_bias_tail), module="mlp_encoder"),
    "mpt batch rows >= 4 unwritten (B > 4)": dict(forward=mpt_port(tamper_out=batch_tail), module="mpt"),
    "mpt columns >= 8 unscaled (D > 8)": dict(forward=mpt_port(tamper_out=token_dim_tail), module="mpt"),
    "mpt factors transposed when T == R": dict(forward=mpt_port(tamper=square_factors_transposed), module="mpt"),
}

PLANTED = {
    "lstm gate order swapped": dict(forward=encoder_port(swap_gates), module="lstm_encoder"),
    "lstm directions swapped": dict(forward=encoder_port(swap_directions), module="lstm_encoder"),
    "lstm missing bias_hh": dict(forward=encoder_port(drop_bias("lstm_head.bias_hh_l0")), module="lstm_encoder"),
    "mlp missing first bias": dict(forward=encoder_port(drop_bias("mlp_head.0.bias")), module="mlp_encoder"),
    "mlp transposed square weight": dict(forward=encoder_port(transpose("mlp_head.2.weight")), module="mlp_encoder"),
    "mpt task ids off by one": dict(forward=mpt_port(lambda t, k: (t + 1) % k), module="mpt"),
    "mpt accumulation one precision lower": dict(forward=mpt_port(lower=True), module="mpt"),
    "mpt scatter overwrites": dict(forward=mpt_port(), backward=overwriting_mpt_backward, module="mpt"),
    **SIZE_BUGS,
}
DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug, dtype):
    """At default settings (the active hypothesis profile), in float32 as in float64."""
    with pytest.raises(AssertionError):
        assert_conforms(**PLANTED[bug], dtype=dtype, shrink=False)  # detection is the point here


@pytest.mark.parametrize("bug", sorted(SIZE_BUGS))
def test_size_bug_is_caught_in_every_seed(bug):
    """Bugs invisible at toy sizes are found in 10/10 seeds at default settings (float32, the dtype
    ports run in)."""
    missed = []
    for seed in range(10):
        try:
            assert_conforms(**SIZE_BUGS[bug], dtype=np.float32, seed=seed, shrink=False)
            missed.append(seed)
        except AssertionError:
            pass
    assert not missed, f"{bug}: not caught with seeds {missed}"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(forward=mpt_port(), backward=lambda p, d, indices, task_ids, config: mpt_backward(d, mpt_forward(p, indices, task_ids)[1]),
             module="mpt"),
        dict(forward=encoder_port(), module="lstm_encoder"),
        dict(forward=encoder_port(), module="mlp_encoder"),
        dict(forward=lambda p, indices, config: p["embedding.weight"][indices], module="prompt_embedding"),
    ],
    ids=["mpt", "lstm", "mlp", "prompt_embedding"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_correct_ports_pass(kwargs, dtype):
    assert_conforms(**kwargs, dtype=dtype)


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
    save_file({"output": buggy}, str(tmp_path / "port" / spec.name / "output.safetensors"))
    checks = verify_directory(tmp_path / "vectors", tmp_path / "port", forward_only=True).checks
    assert [c.ok for c in checks] == [False]
    c_avg, r_avg = source["prefix_task_cols"].mean(0), source["prefix_task_rows"].mean(0)  # in the source dtype
    correct = E[indices] * (c_avg.astype(np.float64) @ r_avg.astype(np.float64))
    save_file({"output": correct}, str(tmp_path / "port" / spec.name / "output.safetensors"))
    assert [c.ok for c in verify_directory(tmp_path / "vectors", tmp_path / "port", forward_only=True).checks] == [True]


VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


@pytest.mark.parametrize("bug", sorted(SIZE_BUGS))
def test_size_bug_is_caught_by_the_vectors(bug, tmp_path):
    """The vectors now hold B >= 8, H >= 16, D >= 33, T == R > 1: each size-only bug fails a case."""
    kw = SIZE_BUGS[bug]
    kind = Kind.parse(kw["module"])
    for name in selected_cases(VECTORS, kind):
        case = vec.read_case(VECTORS, name)
        if case.record["dtype"] == "float16" or case.record.get("mode") == "train":
            continue  # the planted ports are mpt-ref's float32/float64 modules in eval mode
        inputs = case.tensors["inputs"]
        args = [inputs["indices"], inputs["task_ids"]] if kind == Kind.MPT else [inputs["indices"]]
        if kind.is_encoder:
            args.append(None)
        out = kw["forward"](dict(case.tensors["params"]), *args, config_from_dict(case.record["config"]))
        (tmp_path / name).mkdir()
        save_file({"output": np.ascontiguousarray(out)}, str(tmp_path / name / "output.safetensors"))
    result = verify_directory(VECTORS, tmp_path, module=kind, forward_only=True)
    assert not result.ok, bug
    assert any("wide" in c.case for c in result.checks if not c.ok)  # the new, larger cases see it
