"""onnx_export: mpt-ref modules -> ONNX graphs (built with onnx.helper, no torch), and a parity checker
that runs them in onnxruntime against the float64 reference. Spec: spec/onnx.md.

The names below are imported on first use (PEP 562), so ``onnx_export.providers`` (the runtime names the
CLI offers) loads without onnx."""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"export": "exporter", "metadata": "exporter", "IR_VERSION": "opset", "OPSET": "opset",
         "expected_output": "reference"}
__all__ = ["IR_VERSION", "OPSET", "expected_output", "export", "metadata"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'onnx_export' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"onnx_export.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
