"""Serving a prompt-tuned model: whole-model ONNX (prompt prepended to a base graph, checked on onnxruntime),
the prompt table TensorRT-LLM / NeMo take, a Triton Inference Server model repository, vLLM's prompt_embeds,
an onnxruntime-genai model folder; adapters PEFT would not serve as a bare prompt are refused (servable.py).
Multi-file outputs are written as one set (mpt_ref/io/staged.py). Spec: spec/serving.md."""
