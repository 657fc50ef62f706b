"""Serving a prompt-tuned model: whole-model ONNX (prompt prepended to a base graph), the prompt table
TensorRT-LLM / NeMo take, and a Triton Inference Server model repository. Spec: spec/serving.md."""
