"""Benchmarks of the NumPy reference against PEFT on torch and onnxruntime (``mpt-ref bench``)."""
