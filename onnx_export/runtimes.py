"""Running an exported model on a named provider: onnxruntime, onnx.reference, OpenVINO or tract.

Provider names (keys of the error-model table ``mpt_ref.tolerances.ONNX_ROUNDING``):

    cpu             onnxruntime, CPUExecutionProvider
    cuda            onnxruntime, CUDAExecutionProvider with use_tf32=0 (strict float32 MatMul)
    cuda-tf32       onnxruntime, CUDAExecutionProvider with use_tf32=1 (onnxruntime's default on Ampere and later)
    openvino-ep     onnxruntime's OpenVINOExecutionProvider (package onnxruntime-openvino), CPU, precision FP32
    onnx-reference  onnx.reference.ReferenceEvaluator, the ONNX spec's pure-Python implementation
    openvino        the OpenVINO runtime (package openvino), CPU with INFERENCE_PRECISION_HINT=f32 (its
                    default on CPUs with bf16 units is bf16, far outside a float32 graph's error bound)
    tract           tract (package tract), the model made fixed-shape for each distinct input shape

Runtime names (``mpt-ref parity --runtime``) group them: onnxruntime (cpu, cuda, cuda-tf32, openvino-ep),
reference (onnx-reference), openvino, tract. Every provider is one small class with ``run(feeds)``
(``_Backend``); ``Runner`` picks it. OpenVINO narrows int64 inputs to int32 before the graph sees them:
ids are used modulo 2^32 there (spec/onnx.md, runtimes), so callers check ids first
(``mpt_ref.serve.ids.checked_ids``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from mpt_ref.errors import InputError, shown
from mpt_ref.io.limits import MAX_MODEL_BYTES, read_regular_file

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


def available_providers() -> list[str]:
    """The provider names usable here, in PROVIDERS order."""
    have: set[str] = set()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        have = set(ort.get_available_providers())
    return ([name for name, (ep, _) in ORT_PROVIDERS.items() if ep in have] + [REFERENCE_EVALUATOR]
            + [name for name in (OPENVINO, TRACT) if importlib.util.find_spec(name) is not None])


def check_provider(name: str) -> str:
    if name not in PROVIDERS:
        raise InputError(f"provider: expected one of {list(PROVIDERS)}, got {name!r}")
    if name not in available_providers():
        where = (f"{ORT_PROVIDERS[name][0]} is not in onnxruntime.get_available_providers()" if name in ORT_PROVIDERS
                 else f"the {name} package is not installed")
        raise InputError(
            f"provider: expected an available one ({', '.join(available_providers())}), got {name!r} "
            f"({where}; {INSTALL_HINTS[name]})"
        )
    return name


def _model_bytes(model: onnx.ModelProto | str | os.PathLike) -> bytes:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    return read_regular_file(model, MAX_MODEL_BYTES, InputError, "ONNX model file")


def load_model(path: str | os.PathLike, what: str = "model") -> onnx.ModelProto:
    """The ONNX model in the file at ``path``: a regular file (a FIFO or device is refused before a byte is
    read) of at most 2 GiB that parses as a ModelProto; anything else is an InputError naming ``what``."""
    data = read_regular_file(path, MAX_MODEL_BYTES, lambda m: InputError(f"{what}: {m}"), "ONNX model file")
    try:
        return onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        raise InputError(f"{what}: expected an ONNX model file, got unreadable {str(path)!r} "
                         f"({type(exc).__name__}: {shown(exc)})") from None


class _Backend:
    """One loaded model on one provider: ``run(feeds)`` -> the first output as a NumPy array."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class _Reference(_Backend):
    def __init__(self, data: bytes, provider: str) -> None:
        from onnx.reference import ReferenceEvaluator

        self._ref = ReferenceEvaluator(onnx.load_from_string(data))

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._ref.run(None, dict(feeds))[0])


class _OnnxRuntime(_Backend):
    def __init__(self, data: bytes, provider: str) -> None:
        import onnxruntime as ort

        if provider.startswith("cuda") and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # onnxruntime-gpu finds its CUDA libraries
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        ep, ep_options = ORT_PROVIDERS[provider]
        providers: list[Any] = [(ep, ep_options)] if ep_options else [ep]
        if ep != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # ops the EP lacks fall back, as in deployment
        self._sess = ort.InferenceSession(data, options, providers=providers)

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._sess.run(None, dict(feeds))[0]


class _OpenVino(_Backend):
    """OpenVINO's CPU plugin in float32 precision (its default on bf16-capable CPUs is bf16)."""

    def __init__(self, data: bytes, provider: str) -> None:
        import openvino as ov

        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:  # read_model takes a path; no external data to keep
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            model = core.read_model(str(path))
        self._compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        result = self._compiled(dict(feeds))
        return np.asarray(result[self._compiled.output(0)])


class _Tract(_Backend):
    """tract: the model loaded as exported (symbolic batch and token axes), typed, optimised, runnable."""

    def __init__(self, data: bytes, provider: str) -> None:
        import tract

        with tempfile.TemporaryDirectory() as tmp:  # tract loads from a path
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            model = tract.onnx().load(str(path))
        self._names = [model.input_name(i) for i in range(model.input_count())]
        self._runnable = model.into_model().into_runnable()

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._runnable.run([np.asarray(feeds[name]) for name in self._names])[0].to_numpy()


def _backend_class(provider: str) -> type[_Backend]:
    if provider == REFERENCE_EVALUATOR:
        return _Reference
    if provider == OPENVINO:
        return _OpenVino
    if provider == TRACT:
        return _Tract
    return _OnnxRuntime


class Runner:
    """One loaded session (onnxruntime), evaluator, compiled model (OpenVINO) or tract model;
    ``run(feeds)`` -> the single output."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, provider: str = "cpu") -> None:
        self.provider = check_provider(provider)
        self._backend = _backend_class(provider)(_model_bytes(model), provider)

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._backend.run(feeds)


def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: Mapping[str, np.ndarray], provider: str = "cpu") -> np.ndarray:
    """Load and run once."""
    return Runner(model, provider).run(feeds)
