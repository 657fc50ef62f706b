"""The ONNX step of ``mpt-ref demo``: export a module both ways and check it in onnxruntime."""

from __future__ import annotations

from typing import Any

from .exporter import export
from .parity import check_parity
from .runtimes import ORT_PROVIDERS, available_providers

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
                  f"max rel {m['max_rel']:.2e}  max ulp {m['max_ulp']:>4}  {len(verdicts)} cases  "
                  f"{'OK' if all(verdicts) else 'FAIL'}")
    print(f"ONNX parity: {'PASS' if ok else 'FAIL'}")
    return ok
