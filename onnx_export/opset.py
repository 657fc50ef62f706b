"""The ONNX versions every exported file is stamped with. The only place these numbers live.

onnx 1.23's ``helper.make_model`` stamps IR version 14, which onnxruntime 1.31 refuses ("Unsupported
model IR version: 14, max supported IR version: 13"). We pin the default-domain opset to 21 and the
IR version to 10, the lowest IR that carries opset 21 (``onnx.helper.VERSION_TABLE``: onnx 1.16 =
IR 10, opset 21). onnxruntime has run both since 1.18 — the oldest version ``pyproject.toml`` allows —
so the files load in 1.31 and 1.32 alike (tests/test_onnx_export.py checks the stamps and the table).

Operator versions this pins (every op the graphs use; tests/test_onnx_export.py checks the list):
Add-14, And-7, Cast-21, Concat-13, Equal-19, Expand-13, Gather-13, GreaterOrEqual-16, Identity-21, If-21,
LSTM-14, Less-13, MatMul-13, Mul-14, Pad-21, ReduceMin-20, Relu-14, Reshape-21, Shape-21, Slice-13,
Transpose-21, Unsqueeze-21, Where-16.
"""

from __future__ import annotations

OPSET = 21       # default ONNX domain ("ai.onnx")
IR_VERSION = 10  # lowest IR version that supports OPSET; onnxruntime >= 1.18 reads it
