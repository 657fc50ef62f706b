"""``mpt-ref demo``: build the embedded default MPT model, run forward and backward, and check every
parameter gradient against float64 central differences, then export it to ONNX and check it in
onnxruntime. Exit status 1 if any check fails."""

from __future__ import annotations

import argparse
import time

import numpy as np

from .config import MultitaskPromptTuningConfig
from .gradcheck import gradcheck
from .mpt import mpt_backward, mpt_forward
from .multitask import MultitaskPromptEmbedding
from .tolerances import GRADCHECK_F64

DEFAULT_CONFIG = dict(task_type="CAUSAL_LM", num_virtual_tokens=10, token_dim=32, num_tasks=3, num_ranks=2)
DEFAULT_TASK_IDS = (2, 0, 1, 0)  # repeated and unsorted, so the per-task gradient sums are exercised


def run_demo(seed: int = 0) -> bool:
    config = MultitaskPromptTuningConfig(**DEFAULT_CONFIG)
    model = MultitaskPromptEmbedding(config, seed=seed, dtype=np.float64)
    T, D = model.total_virtual_tokens, model.token_dim
    task_ids = np.array(DEFAULT_TASK_IDS)
    indices = np.tile(np.arange(T), (task_ids.size, 1))  # what PEFT's get_prompt feeds
    print(f"mpt-ref demo: MultitaskPromptEmbedding T={T} D={D} K={config.num_tasks} R={config.num_ranks}, "
          f"B={task_ids.size}, task_ids={task_ids.tolist()}, float64, seed={seed}")

    t0 = time.perf_counter()
    out = model.forward(indices, task_ids)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    grads = model.backward(dout, indices, task_ids)
    print(f"forward {out.shape} + backward in {1e3 * (time.perf_counter() - t0):.2f} ms; "
          f"|out| max {np.abs(out).max():.3e}")

    def forward(p):
        return mpt_forward(p, indices, task_ids)[0]

    def backward(d, p):
        return mpt_backward(d, mpt_forward(p, indices, task_ids)[1])

    functional = backward(dout, model.state_dict())
    ok = all(np.array_equal(grads[k], functional[k]) for k in grads)  # the class is a thin wrapper
    print(f"{'parameter':<20} {'shape':<14} {'entries':>7} {'max|grad|':>10} {'max abs err':>12}  verdict")
    for rep in gradcheck(forward, backward, model.state_dict(), dout):
        good = rep.ok(GRADCHECK_F64.rtol, GRADCHECK_F64.atol)
        ok &= good
        print(f"{rep.key:<20} {str(grads[rep.key].shape):<14} {rep.checked:>7} {rep.max_abs_grad:>10.3e} "
              f"{rep.max_abs_err:>12.3e}  {'OK' if good else 'FAIL'}")
    print(f"gradient check vs central differences (rtol {GRADCHECK_F64.rtol:g}, atol {GRADCHECK_F64.atol:g}): "
          f"{'PASS' if ok else 'FAIL'}")
    from onnx_export.demo import export_and_check  # ONNX export + onnxruntime parity (spec/onnx.md)

    ok &= export_and_check(model, seed=seed)
    return ok


def _main(args: argparse.Namespace) -> int:
    return 0 if run_demo(args.seed) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="forward, backward and gradient check of the default MPT model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_main)
