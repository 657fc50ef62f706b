"""Running an exported model: onnxruntime on a named provider, or onnx.reference.ReferenceEvaluator.

Provider names (keys of the error-model table ``mpt_ref.tolerances.ONNX_ROUNDING``):

    cpu             CPUExecutionProvider
    cuda            CUDAExecutionProvider with use_tf32=0 (strict float32 MatMul)
    cuda-tf32       CUDAExecutionProvider with use_tf32=1 (onnxruntime's default on Ampere and later)
    onnx-reference  onnx.reference.ReferenceEvaluator, the ONNX spec's pure-Python implementation
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any, Mapping

import numpy as np
import onnx

from mpt_ref.errors import InputError, RunTimeout, shown
from mpt_ref.io.limits import MAX_MODEL_BYTES, read_regular_file

DEFAULT_TIMEOUT = 600.0  # seconds one run of a model may take (mpt-ref's models run in milliseconds)
# operator domains a model may use: standard ONNX, ONNX-ML, and onnxruntime's own contrib operators
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")

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


class Runner:
    """One loaded session (onnxruntime) or evaluator; ``run(feeds)`` -> the single output. A run longer
    than ``timeout`` seconds is stopped (onnxruntime's RunOptions.terminate, set from a timer thread) and
    raises RunTimeout; ``timeout=None`` never stops it. The onnx-reference evaluator cannot be stopped: its
    run is left to finish in a daemon thread (a command exits; a long-lived caller keeps that thread busy).
    The model is checked first (check_runnable), and a model the runtime refuses is an InputError."""

    def __init__(self, model: onnx.ModelProto | str | os.PathLike, provider: str = "cpu", *,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.provider = check_provider(provider)
        self.timeout = check_timeout(timeout)
        if not isinstance(model, onnx.ModelProto):
            model = load_model(model)
        check_runnable(model)
        if provider == REFERENCE_EVALUATOR:
            from onnx.reference import ReferenceEvaluator

            try:
                self._ref = ReferenceEvaluator(model)
            except Exception as exc:  # noqa: BLE001 - the evaluator refusing a graph: the model's fault
                raise InputError(f"model: expected a model onnx's ReferenceEvaluator loads, got "
                                 f"{type(exc).__name__}: {shown(exc)}") from None
            self._sess = None
            return
        import onnxruntime as ort

        if provider.startswith("cuda") and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # onnxruntime-gpu finds its CUDA libraries (shared/notes/cuda-ep.md)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        ep, ep_options = ORT_PROVIDERS[provider]
        providers: list[Any] = [(ep, ep_options)] if ep_options else [ep]
        if ep != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # ops the EP lacks fall back, as in deployment
        try:
            self._sess = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime refusing a checked model: the model's fault
            raise InputError(f"model: expected a model onnxruntime loads, got {type(exc).__name__}: "
                             f"{shown(exc)}") from None
        self._ref = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        if self._sess is not None:
            return self._run_session(dict(feeds))
        return self._run_reference(dict(feeds))

    def _run_session(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.timeout is None:
            return self._sess.run(None, feeds)[0]
        import onnxruntime as ort

        options = ort.RunOptions()
        options.log_severity_level = 4  # the stop is reported as RunTimeout, not as an onnxruntime error line
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            options.terminate = True

        timer = threading.Timer(self.timeout, stop)
        timer.daemon = True
        timer.start()
        try:
            return self._sess.run(None, feeds, options)[0]
        except Exception:
            if fired.is_set():
                raise self._timed_out() from None
            raise
        finally:
            timer.cancel()

    def _run_reference(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.timeout is None:
            return np.asarray(self._ref.run(None, feeds)[0])
        result: list[Any] = []

        def work() -> None:  # a daemon thread: the evaluator cannot be interrupted, only abandoned
            try:
                result.append(("ok", self._ref.run(None, feeds)[0]))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                result.append(("error", exc))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(self.timeout)
        if not result:
            raise self._timed_out()
        kind, value = result[0]
        if kind == "error":
            raise value
        return np.asarray(value)

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
