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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from mpt_ref.errors import InputError, MptRefError, RunTimeout, shown
from mpt_ref.io.limits import MAX_MODEL_BYTES, read_regular_file
from onnx_export.providers import (  # noqa: F401  (the names, re-exported here)
    DEFAULT_TIMEOUT,
    INSTALL_HINTS,
    OPENVINO,
    ORT_PROVIDERS,
    PROVIDERS,
    REFERENCE_EVALUATOR,
    RUNTIMES,
    SETTINGS,
    TRACT,
    runtime_providers,
)

# operator domains a model may use: standard ONNX, ONNX-ML, and onnxruntime's own contrib operators
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


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


def load_model(path: str | os.PathLike, what: str = "model") -> onnx.ModelProto:
    """The ONNX model in the file at ``path``: a regular file (a FIFO or device is refused before a byte is
    read) of at most 2 GiB that parses as a ModelProto; anything else is an InputError naming ``what``."""
    data = read_regular_file(path, MAX_MODEL_BYTES, lambda m: InputError(f"{what}: {m}"), "ONNX model file")
    try:
        return onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: not an ONNX file
        raise InputError(f"{what}: expected an ONNX model file, got unreadable {str(path)!r} "
                         f"({type(exc).__name__}: {shown(exc)})") from None


def _graphs(graph: onnx.GraphProto, depth: int = 0) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (Loop/If/Scan bodies) inside it."""
    yield graph
    if depth > 64:
        raise InputError("model: expected subgraphs nested at most 64 deep, got deeper")
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _graphs(sub, depth + 1)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def check_runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """Refuse, as one InputError naming what is wrong, a model no runtime here should be handed: an IR
    version or opset newer than this onnx knows, operators of an unknown domain, weights in external
    files (a model is read as one file: its weights never come from paths it names), no output."""
    if model.ir_version > onnx.IR_VERSION or model.ir_version < 3:
        raise InputError(f"model: expected an ONNX IR version in [3, {onnx.IR_VERSION}], got {model.ir_version}")
    newest = onnx.defs.onnx_opset_version()
    domains = {f.domain for f in model.functions}  # a model's own functions define their domain
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not 1 <= imp.version <= newest:
            raise InputError(f"model: expected an ONNX opset in [1, {newest}], got {imp.version}")
        if imp.domain not in KNOWN_DOMAINS and imp.domain not in domains:
            raise InputError(f"model: expected operators of the domains {list(KNOWN_DOMAINS[1:])} or standard ONNX, "
                             f"got custom domain {shown(imp.domain, 80)!r}")
    graphs = list(_graphs(model.graph))
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    for node in nodes:
        if node.domain not in KNOWN_DOMAINS and node.domain not in domains:
            raise InputError(f"model: expected operators of standard domains, got {shown(node.op_type, 80)!r} "
                             f"of custom domain {shown(node.domain, 80)!r}")
    for graph in graphs:
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
                raise InputError(f"model: expected every weight inside the model file, got {shown(tensor.name, 80)!r} "
                                 f"in external file {shown(where, 80)!r} (not read: save the model as one file)")
    if not model.graph.output:
        raise InputError("model: expected at least one graph output, got none")
    return model


class _Backend:
    """One loaded model on one provider: ``run(feeds)`` -> the first output as a NumPy array.
    ``run_within`` stops a run at ``timeout`` seconds: onnxruntime through RunOptions.terminate; the
    others run in a worker thread that is stopped by an exception raised in it at its next Python
    bytecode (the onnx.reference evaluator, written in Python, stops within one operator; a native
    runtime such as OpenVINO or tract stops when its current call returns)."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def run_within(self, feeds: Mapping[str, np.ndarray], timeout: float, timed_out: Callable[[], Exception]
                   ) -> np.ndarray:
        result: list[Any] = []

        def work() -> None:
            try:
                result.append(("ok", self.run(feeds)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result.append(("error", exc))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(timeout)
        if not result:
            _stop(thread)
            raise timed_out()
        kind, value = result[0]
        if kind == "error":
            raise value
        return np.asarray(value)


def _stop(thread: threading.Thread) -> None:
    """Raise SystemExit inside ``thread`` (CPython's PyThreadState_SetAsyncExc), so an abandoned run does not
    keep a core and the GIL busy after its caller has moved on; waits up to a second for it to end."""
    import ctypes

    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    thread.join(1.0)


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

    def run_within(self, feeds: Mapping[str, np.ndarray], timeout: float, timed_out: Callable[[], Exception]
                   ) -> np.ndarray:
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4  # the stop is reported as RunTimeout, not as an onnxruntime error line
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            options.terminate = True

        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
        try:
            return self._sess.run(None, dict(feeds), options)[0]
        except Exception:
            if fired.is_set():
                raise timed_out() from None
            raise
        finally:
            timer.cancel()


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
    ``run(feeds)`` -> the single output. The model is checked first (check_runnable), and a model the
    runtime refuses is an InputError. A run longer than ``timeout`` seconds raises RunTimeout
    (``_Backend.run_within``); ``timeout=None`` never stops it."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, provider: str = "cpu", *,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.provider = check_provider(provider)
        self.timeout = check_timeout(timeout)
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        check_runnable(model)
        try:
            self._backend = _backend_class(provider)(model.SerializeToString(), provider)
        except MptRefError:
            raise
        except Exception as exc:  # noqa: BLE001 - the runtime refusing a checked model: the model's fault
            raise InputError(f"model: expected a model the {provider} provider loads, got {type(exc).__name__}: "
                             f"{shown(exc)}") from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.timeout is None:
            return self._backend.run(feeds)
        return self._backend.run_within(feeds, self.timeout, self._timed_out)

    def _timed_out(self) -> RunTimeout:
        return RunTimeout(f"model: expected one run on {self.provider} to finish within --timeout {self.timeout:g} "
                          "seconds, got a longer one (stopped)")


def check_timeout(timeout: Any) -> float | None:
    """A time limit in seconds: a finite number > 0, or None for none."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise InputError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def run_model(model: onnx.ModelProto | str | os.PathLike, feeds: Mapping[str, np.ndarray], provider: str = "cpu", *,
              timeout: float | None = DEFAULT_TIMEOUT) -> np.ndarray:
    """Load and run once."""
    return Runner(model, provider, timeout=timeout).run(feeds)
