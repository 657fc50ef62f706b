"""The ONNX versions every exported file is stamped with. The only place these numbers live.

onnx 1.23's ``helper.make_model`` stamps IR version 14, which onnxruntime 1.31 refuses ("Unsupported
model IR version: 14, max supported IR version: 13"). We pin the default-domain opset to 21 and the
IR version to 10, the lowest IR that carries opset 21 (``onnx.helper.VERSION_TABLE``: onnx 1.16 =
IR 10, opset 21). onnxruntime has run both since 1.18 — the oldest version ``pyproject.toml`` allows —
so the files load in 1.31 and 1.32 alike (tests/test_onnx_export.py checks the stamps and the table).

Operator versions this pins (all the graphs use): Gather-13, MatMul-13, Mul-14, Add-14, Relu-14,
Transpose-21, Reshape-21, Concat-13, LSTM-14, Where-16, And-7, Less-13, GreaterOrEqual-16, Equal-19,
Expand-13, Shape-21, Cast-21, ReduceMin-20, Unsqueeze-21.
"""

from __future__ import annotations

OPSET = 21       # default ONNX domain ("ai.onnx")
IR_VERSION = 10  # lowest IR version that supports OPSET; onnxruntime >= 1.18 reads it
