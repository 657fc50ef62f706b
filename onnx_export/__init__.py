"""onnx_export: mpt-ref modules -> ONNX graphs (built with onnx.helper, no torch), and a parity checker
that runs them in onnxruntime against the float64 reference. Spec: spec/onnx.md."""

from .exporter import export, metadata
from .opset import IR_VERSION, OPSET
from .reference import expected_output

__all__ = ["IR_VERSION", "OPSET", "expected_output", "export", "metadata"]
