"""The runtimes and execution providers mpt-ref can run a model on, by name: what the CLI's choices and
defaults need, without importing onnx or onnxruntime (runtimes.py runs the models)."""

from __future__ import annotations

from mpt_ref.errors import InputError

DEFAULT_TIMEOUT = 600.0  # seconds one run of a model may take (mpt-ref's models run in milliseconds)

ORT_PROVIDERS: dict[str, tuple[str, dict[str, str]]] = {
    "cpu": ("CPUExecutionProvider", {}),
    "cuda": ("CUDAExecutionProvider", {"use_tf32": "0"}),
    "cuda-tf32": ("CUDAExecutionProvider", {"use_tf32": "1"}),
    "openvino-ep": ("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32"}),
}
REFERENCE_EVALUATOR = "onnx-reference"
OPENVINO, TRACT = "openvino", "tract"
PROVIDERS = (*ORT_PROVIDERS, REFERENCE_EVALUATOR, OPENVINO, TRACT)
# runtime name (mpt-ref parity --runtime) -> its providers; onnxruntime's are chosen with --providers
RUNTIMES: dict[str, tuple[str, ...]] = {
    "onnxruntime": tuple(ORT_PROVIDERS),
    "reference": (REFERENCE_EVALUATOR,),
    "openvino": (OPENVINO,),
    "tract": (TRACT,),
}
# what to install for a provider that is missing here
INSTALL_HINTS = {
    "cuda": "pip install onnxruntime-gpu",
    "cuda-tf32": "pip install onnxruntime-gpu",
    "openvino-ep": "pip install onnxruntime-openvino (it replaces the onnxruntime package; use its own venv)",
    OPENVINO: "pip install 'mpt-ref[openvino]'",
    TRACT: "pip install 'mpt-ref[tract]'",
}
# what a report says about the settings a provider runs with
SETTINGS = {
    "openvino-ep": "OpenVINO EP in FP32 precision",
    OPENVINO: "OpenVINO CPU with INFERENCE_PRECISION_HINT=f32",
    TRACT: "tract, the model as exported: symbolic batch and token axes",
}


def runtime_providers(runtime: str) -> tuple[str, ...]:
    """The providers of a runtime name (RUNTIMES), or InputError naming --runtime."""
    if runtime not in RUNTIMES:
        raise InputError(f"--runtime: expected one of {list(RUNTIMES)}, got {runtime!r}")
    return RUNTIMES[runtime]
