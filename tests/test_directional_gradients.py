"""Gradients at realistic sizes: directional central differences (core/gradcheck.directional_gradcheck).

The per-entry checks (test_mpt, test_embedding, test_lstm, test_prompt_encoder, test_linear) perturb every
entry of small hypothesis cases; their cost grows with the number of entries. Here each key moves along
random directions v at once, two forwards per direction, so the sizes are PEFT's (D = 768, T = 100, H = 768;
B·T·D past the kernels' chunk size): the plain reference and the fast paths (kernels/) both, on PEFT's
shared rows and on arbitrary rows, eval and train mode. The last test shows the check's teeth: one wrong
gradient entry out of 76,800 is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
from encoder_helpers import relu_inputs

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.core import embedding as core_embedding
from mpt_ref.core import encoder as core_encoder
from mpt_ref.core import mpt as core_mpt
from mpt_ref.core.gradcheck import directional_gradcheck
from mpt_ref.kernels import embedding as fast_embedding
from mpt_ref.kernels import encoder as fast_encoder
from mpt_ref.kernels import mpt as fast_mpt
from mpt_ref.kernels.chunks import CHUNK_ELEMENTS

IMPLS = {"core": (core_embedding, core_mpt, core_encoder), "kernels": (fast_embedding, fast_mpt, fast_encoder)}
# PEFT's arange(T) in every row (the kernels' shared-row paths) or drawn rows; the core has one path for both
RUNS = [("core", "any-rows"), ("kernels", "peft-rows"), ("kernels", "any-rows")]


def indices_for(rows: str, rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    if rows == "peft-rows":
        return np.broadcast_to(np.arange(T), (B, T)).copy()  # B,T
    return rng.integers(0, T, (B, T))  # B,T  repeats within and across rows


def assert_directional(reports, keys) -> None:
    assert [r.key for r in reports] == list(keys)
    for rep in reports:
        assert rep.ok(tol.DIRECTIONAL_F64), rep


@pytest.mark.parametrize("impl, rows", RUNS)
def test_embedding_at_peft_sizes(impl, rows):
    emb = IMPLS[impl][0]
    rng = np.random.default_rng(1)
    T, D, B = 100, 768, 8
    idx = indices_for(rows, rng, B, T)
    params = {"embedding.weight": rng.standard_normal((T, D))}
    dout = rng.standard_normal((B, T, D))
    reports = directional_gradcheck(
        lambda p: emb.embedding_forward(p["embedding.weight"], idx)[0],
        lambda d, p: {"embedding.weight": emb.embedding_backward(d, emb.embedding_forward(p["embedding.weight"], idx)[1])},
        params, dout)
    assert_directional(reports, params)


@pytest.mark.parametrize("impl, rows", RUNS)
def test_mpt_at_peft_sizes(impl, rows):
    """K = 4 tasks, R = 2, B = 8 rows with repeated tasks; B·T·D = 614,400 spans three kernel chunks."""
    mpt = IMPLS[impl][1]
    rng = np.random.default_rng(2)
    K, T, R, D, B = 4, 100, 2, 768, 8
    assert B * T * D > 2 * CHUNK_ELEMENTS
    config = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=T, token_dim=D, num_tasks=K, num_ranks=R)
    params = {k: v.astype(np.float64) for k, v in mpt_ref.MultitaskPromptEmbedding(config, seed=2).state_dict().items()}
    params["prefix_task_rows"] = rng.standard_normal((K, R, D))  # PEFT's init is ones: move off the symmetric point
    idx, tasks = indices_for(rows, rng, B, T), np.array([3, 0, 3, 1, 1, 3, 0, 2])
    dout = rng.standard_normal((B, T, D))
    reports = directional_gradcheck(
        lambda p: mpt.mpt_forward(p, idx, tasks)[0],
        lambda d, p: mpt.mpt_backward(d, mpt.mpt_forward(p, idx, tasks)[1]),
        params, dout)
    assert_directional(reports, params)


KINK_GAP = 1e-5  # 10 h: a direction rarely moves a ReLU input that far; one that crosses is drawn again
ENCODERS = {  # (config, B): PEFT's default hidden size (= token_dim) for the MLP; a two-layer LSTM
    "mlp": (dict(encoder_reparameterization_type="MLP", num_virtual_tokens=20, token_dim=768), 4),
    "lstm": (dict(encoder_reparameterization_type="LSTM", num_virtual_tokens=20, token_dim=256,
                  encoder_hidden_size=128, encoder_num_layers=2, encoder_dropout=0.1), 3),
}


# eval: both layers (kernels/ computes distinct work only); train (LSTM dropout masks): kernels/ is the core
ENCODER_RUNS = [(impl, enc, rows, "eval") for impl, rows in RUNS for enc in ENCODERS] + [
    ("core", "lstm", "any-rows", "train")]


@pytest.mark.parametrize("impl, encoder, rows, mode", ENCODER_RUNS)
def test_prompt_encoder_at_peft_sizes(impl, encoder, rows, mode):
    """Eval mode takes the distinct-row path in kernels/; train mode draws inter-layer dropout masks (LSTM)."""
    enc = IMPLS[impl][2]
    kw, B = ENCODERS[encoder]
    config = mpt_ref.PromptEncoderConfig(**kw)
    module = mpt_ref.PromptEncoder(config, seed=3, dtype=np.float64)
    params = module.state_dict()
    if encoder == "lstm":  # PEFT's init puts the head's 15,360 ReLU inputs within ±0.05: spread them out
        params["mlp_head.0.weight"] = params["mlp_head.0.weight"] * 10
    rng = np.random.default_rng(3)
    T, D, H = config.num_virtual_tokens, config.token_dim, module.hidden_size
    idx = indices_for(rows, rng, B, T)
    masks = None
    if mode == "train":
        masks = [(rng.random((B, T, 2 * H)) >= config.encoder_dropout).astype(np.float64)]  # L-1 masks, B,T,2H
    scales = None if masks is None else [m / (1 - config.encoder_dropout) for m in masks]
    call = dict(encoder_type=module.encoder_type, num_layers=module.num_layers)
    kinks = lambda p: relu_inputs(p, idx, dropout=config.encoder_dropout, masks=masks, **call)  # noqa: E731
    assert np.abs(kinks(params)).min() > KINK_GAP  # the data (seed 3) keeps the ReLUs out of reach
    dout = rng.standard_normal((B, T, D))
    reports = directional_gradcheck(
        lambda p: enc.prompt_encoder_forward(p, idx, dropout_scales=scales, **call)[0],
        lambda d, p: enc.prompt_encoder_backward(d, enc.prompt_encoder_forward(p, idx, dropout_scales=scales, **call)[1]),
        params, dout, kinks=kinks, directions=1 if encoder == "lstm" else 2)  # LSTM: 21 keys, 1 direction each
    assert_directional(reports, params)


@pytest.mark.parametrize("wrong", ["one entry", "one row dropped"])
def test_the_check_catches_one_wrong_gradient_entry_at_peft_sizes(wrong):
    """A backward wrong in one entry of dE (T·D = 76,800 entries) by 1 % of its value, or missing one row."""
    rng = np.random.default_rng(4)
    K, T, R, D, B = 2, 100, 1, 768, 4
    params = {"prefix_task_cols": rng.standard_normal((K, T, R)), "prefix_task_rows": rng.standard_normal((K, R, D)),
              "embedding.weight": rng.standard_normal((T, D))}
    idx, tasks = np.broadcast_to(np.arange(T), (B, T)), np.array([0, 1, 1, 0])
    dout = rng.standard_normal((B, T, D))

    def bad_backward(d, p):
        grads = core_mpt.mpt_backward(d, core_mpt.mpt_forward(p, idx, tasks)[1])
        dE = grads["embedding.weight"]
        if wrong == "one entry":
            dE[57, 311] *= 1.01
        else:
            dE[-1] = 0.0  # a T-tail bug
        return grads

    reports = directional_gradcheck(lambda p: core_mpt.mpt_forward(p, idx, tasks)[0], bad_backward, params, dout)
    verdicts = {r.key: r.ok(tol.DIRECTIONAL_F64) for r in reports}
    assert verdicts == {"prefix_task_cols": True, "prefix_task_rows": True, "embedding.weight": False}, reports


def test_directional_check_refuses_float32_and_no_directions():
    params = {"embedding.weight": np.ones((2, 3), np.float32)}
    with pytest.raises(TypeError, match=r"params\['embedding.weight'\] must be float64, got float32"):
        directional_gradcheck(lambda p: p["embedding.weight"], lambda d, p: {"embedding.weight": d}, params, np.ones((2, 3)))
    with pytest.raises(ValueError, match="directions must be >= 1, got 0"):
        directional_gradcheck(lambda p: p["embedding.weight"], lambda d, p: {"embedding.weight": d},
                              {"embedding.weight": np.ones((2, 3))}, np.ones((2, 3)), directions=0)
