"""onnx_export: mpt-ref modules -> ONNX graphs (built with onnx.helper, no torch), and a parity checker
that runs them in onnxruntime against the float64 reference. Spec: spec/onnx.md."""

from onnx_export.exporter import export, metadata
from onnx_export.opset import IR_VERSION, OPSET
from onnx_export.reference import expected_output

__all__ = ["IR_VERSION", "OPSET", "expected_output", "export", "metadata"]
