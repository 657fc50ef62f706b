"""Running an exported model: onnxruntime on a named provider, or onnx.reference.ReferenceEvaluator.

Provider names (keys of the error-model table ``mpt_ref.tolerances.ONNX_ROUNDING``):

    cpu             CPUExecutionProvider
    cuda            CUDAExecutionProvider with use_tf32=0 (strict float32 MatMul)
    cuda-tf32       CUDAExecutionProvider with use_tf32=1 (onnxruntime's default on Ampere and later)
    onnx-reference  onnx.reference.ReferenceEvaluator, the ONNX spec's pure-Python implementation
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import onnx

from mpt_ref.errors import InputError, shown
from mpt_ref.io.limits import MAX_MODEL_BYTES, read_regular_file

ORT_PROVIDERS: dict[str, tuple[str, dict[str, str]]] = {
    "cpu": ("CPUExecutionProvider", {}),
    "cuda": ("CUDAExecutionProvider", {"use_tf32": "0"}),
    "cuda-tf32": ("CUDAExecutionProvider", {"use_tf32": "1"}),
}
REFERENCE_EVALUATOR = "onnx-reference"
PROVIDERS = (*ORT_PROVIDERS, REFERENCE_EVALUATOR)


def available_providers() -> list[str]:
    """The provider names usable here, in PROVIDERS order."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [name for name, (ep, _) in ORT_PROVIDERS.items() if ep in have] + [REFERENCE_EVALUATOR]


def check_provider(name: str) -> str:
    if name not in PROVIDERS:
        raise InputError(f"provider: expected one of {list(PROVIDERS)}, got {name!r}")
    if name not in available_providers():
        ep = ORT_PROVIDERS[name][0]
        raise InputError(
            f"provider: expected an available one ({', '.join(available_providers())}), got {name!r} "
            f"({ep} is not in onnxruntime.get_available_providers(); install onnxruntime-gpu)"
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


class Runner:
    """One loaded session (onnxruntime) or evaluator; ``run(feeds)`` -> the single output."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, provider: str = "cpu") -> None:
        self.provider = check_provider(provider)
        data = _model_bytes(model)
        if provider == REFERENCE_EVALUATOR:
            from onnx.reference import ReferenceEvaluator

            self._ref = ReferenceEvaluator(onnx.load_from_string(data))
            self._sess = None
            return
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
        self._ref = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._sess is not None:
            return self._sess.run(None, dict(feeds))[0]
        return np.asarray(self._ref.run(None, dict(feeds))[0])


def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: Mapping[str, np.ndarray], provider: str = "cpu") -> np.ndarray:
    """Load and run once."""
    return Runner(model, provider).run(feeds)
