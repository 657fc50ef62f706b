"""``mpt-ref demo``: build the embedded default MPT model and both P-tuning encoders (MLP, LSTM), run
forward and backward, check every entry of every parameter gradient against float64 central
differences, then export each to ONNX and check it in onnxruntime. Exit status 1 if any check fails."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from mpt_ref.cli._args import seed_int
from mpt_ref.core.gradcheck import gradcheck
from mpt_ref.modules.config import MultitaskPromptTuningConfig, PromptEncoderConfig
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder
from mpt_ref.tolerances import GRADCHECK_F64, GRADCHECK_NONLINEAR_F64, Tol
from onnx_export.exporter import export
from onnx_export.parity import check_parity
from onnx_export.runtimes import ORT_PROVIDERS, available_providers

DEFAULT_CONFIG = dict(task_type="CAUSAL_LM", num_virtual_tokens=10, token_dim=32, num_tasks=3, num_ranks=2)
DEFAULT_TASK_IDS = (2, 0, 1, 0)  # repeated and unsorted, so the per-task gradient sums are exercised
ENCODER_CONFIG = dict(task_type="CAUSAL_LM", num_virtual_tokens=6, token_dim=8, encoder_hidden_size=5)


DEMO_EXPORTS = (("faithful", "float32"), ("folded", "float32"), ("folded", "float16"))


def export_and_check(module: Any, *, seed: int = 0) -> bool:
    """Export ``module`` as DEMO_EXPORTS (in memory), run each on every available onnxruntime provider
    against the float64 reference and print one line per model and provider. True when all pass."""
    providers = [p for p in available_providers() if p in ORT_PROVIDERS]
    print(f"ONNX export + onnxruntime parity ({', '.join(providers)}) vs the float64 reference:")
    ok = True
    for variant, dtype in DEMO_EXPORTS:
        model = export(module, variant=variant, dtype=dtype)
        report = check_parity(model, module, providers=providers, seed=seed)
        ok &= report.ok
        for provider, m in report.max_errors().items():
            verdicts = [c.ok for c in report.comparisons if c.provider == provider]
            print(f"  {variant:<8} {dtype:<7} {provider:<9} {model.ByteSize():>7} bytes  max abs {m['max_abs']:.2e}  "
                  f"max |err|/bound {m['max_ratio']:.2g}  max ulp {m['max_ulp']:>4}  {len(verdicts)} cases  "
                  f"{'OK' if all(verdicts) else 'FAIL'}")
    print(f"ONNX parity: {'PASS' if ok else 'FAIL'}")
    return ok


def check_gradients(label: str, module: Any, inputs: dict[str, np.ndarray], tol: Tol, seed: int,
                    max_entries: int | None = None) -> bool:
    """Forward + backward of ``module`` (float64), then every parameter vs central differences (every
    entry unless ``max_entries``; the table's "checked" column says how many of each were)."""
    t0 = time.perf_counter()
    out = module.forward(**inputs)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    grads = module.backward(dout, **inputs)
    print(f"{label}: forward {out.shape} + backward in {1e3 * (time.perf_counter() - t0):.2f} ms; "
          f"|out| max {np.abs(out).max():.3e}")
    original = module.state_dict()

    def forward(p: dict) -> np.ndarray:
        module.load_state_dict(p)
        return module.forward(**inputs)

    def backward(d: np.ndarray, p: dict) -> dict:
        module.load_state_dict(p)
        return module.backward(d, **inputs)

    try:
        reports = gradcheck(forward, backward, original, dout, max_entries=max_entries)
    finally:
        module.load_state_dict(original)
    ok = True
    print(f"  {'parameter':<32} {'shape':<14} {'entries':>9} {'max|grad|':>10} {'max abs err':>12}  verdict")
    for rep in reports:
        good = rep.ok(tol.rtol, tol.atol)
        ok &= good
        checked = f"{rep.checked}/{grads[rep.key].size}"
        print(f"  {rep.key:<32} {str(grads[rep.key].shape):<14} {checked:>9} {rep.max_abs_grad:>10.3e} "
              f"{rep.max_abs_err:>12.3e}  {'OK' if good else 'FAIL'}")
    print(f"  gradient check vs central differences (rtol {tol.rtol:g}, atol {tol.atol:g}): {'PASS' if ok else 'FAIL'}")
    return ok


def run_demo(seed: int = 0) -> bool:

    config = MultitaskPromptTuningConfig(**DEFAULT_CONFIG)
    mpt = MultitaskPromptEmbedding(config, seed=seed, dtype=np.float64)
    task_ids = np.array(DEFAULT_TASK_IDS)
    indices = np.tile(np.arange(mpt.total_virtual_tokens), (task_ids.size, 1))  # what PEFT's get_prompt feeds
    print(f"mpt-ref demo (float64, seed={seed})")
    ok = check_gradients(f"MultitaskPromptEmbedding T={mpt.total_virtual_tokens} D={mpt.token_dim} "
                         f"K={config.num_tasks} R={config.num_ranks}, task_ids={task_ids.tolist()}",
                         mpt, {"indices": indices, "task_ids": task_ids}, GRADCHECK_F64, seed)
    ok &= export_and_check(mpt, seed=seed)
    for kind, extra in (("MLP", {}), ("LSTM", {"encoder_num_layers": 2})):
        cfg = PromptEncoderConfig(**ENCODER_CONFIG, encoder_reparameterization_type=kind, **extra)
        encoder = PromptEncoder(cfg, seed=seed, dtype=np.float64).eval()
        rows = np.random.default_rng(seed).integers(0, encoder.total_virtual_tokens, (2, encoder.total_virtual_tokens))
        ok &= check_gradients(f"PromptEncoder {kind} T={encoder.total_virtual_tokens} D={encoder.token_dim} "
                              f"H={encoder.hidden_size} L={encoder.num_layers}", encoder, {"indices": rows},
                              GRADCHECK_NONLINEAR_F64, seed)
        ok &= export_and_check(encoder, seed=seed)
    print(f"mpt-ref demo: {'PASS' if ok else 'FAIL'}")
    return ok


def _main(args: argparse.Namespace) -> int:
    return 0 if run_demo(args.seed) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="forward, backward, gradient check and ONNX parity of the default MPT "
                                     "model and both P-tuning encoders")
    p.add_argument("--seed", type=seed_int, default=0, help="init and input seed (an integer >= 0, default 0)")
    p.set_defaults(func=_main)
