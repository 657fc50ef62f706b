"""The ONNX versions every exported file is stamped with. The only place these numbers live.

onnx 1.23's ``helper.make_model`` stamps IR version 14, which onnxruntime 1.31 refuses ("Unsupported
model IR version: 14, max supported IR version: 13"). We pin the default-domain opset to 21 and the
IR version to 10, the lowest IR that carries opset 21 (``onnx.helper.VERSION_TABLE``: onnx 1.16 =
IR 10, opset 21). onnxruntime 1.20.1 — the oldest version ``pyproject.toml`` allows, and the oldest the
exported graphs were measured right on — runs them, and so do 1.31 and 1.32 (tests/test_onnx_export.py
checks the stamps and the table; spec/onnx.md, runtimes, lists the other runtimes measured).

Operator versions this pins (every op the graphs use; tests/test_onnx_export.py checks the list):
Add-14, And-7, Cast-21, Concat-13, CumSum-14, Equal-19, Gather-13, GreaterOrEqual-16,
Identity-21, LSTM-14, Less-13, MatMul-13, Mul-14, Or-7, Pad-21, ReduceMin-20, ReduceSum-13, Relu-14,
Reshape-21, Shape-21, Slice-13, Sub-14, Transpose-21, Unsqueeze-21, Where-16.
"""

from __future__ import annotations

OPSET = 21       # default ONNX domain ("ai.onnx")
IR_VERSION = 10  # lowest IR version that supports OPSET; onnxruntime >= 1.20.1 (the floor) reads it
