"""The implementations a benchmark case runs, each a callable timed by run.py, or a reason it is skipped.

Peers: the NumPy reference (forward; forward+backward; forward then backward, the two calls users
write), PEFT on torch CPU (forward under no_grad; forward+backward through autograd), onnxruntime CPU
on our faithful, folded and folded-any exports (spec/onnx.md), and onnxruntime
on ``torch.onnx.export`` of PEFT's module. All share one thread count. What takes seconds to build
(PEFT's module, the exports, the sessions) is built once per case, for both row kinds (``setup``).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref.kind import Kind

Call = Callable[[], Any]


class Peer(NamedTuple):
    name: str
    call: Call | None
    skipped: str = ""


def numpy_peers(module: Any, inputs: dict[str, np.ndarray], dout: np.ndarray) -> list[Peer]:
    def two_calls() -> Any:  # what users write (README): forward, then the stateless backward
        return module.forward(**inputs), module.backward(dout, **inputs)

    return [
        Peer("numpy fwd", lambda: module.forward(**inputs)),
        Peer("numpy fwd+bwd", lambda: module.forward_backward(dout, **inputs)),  # one forward, as in training
        Peer("numpy fwd then bwd", two_calls),
    ]


def _peft_module(module: Any, torch: Any) -> Any:
    import peft
    from peft.tuners.multitask_prompt_tuning.model import MultitaskPromptEmbedding
    from peft.tuners.p_tuning.model import PromptEncoder

    import mpt_ref

    d = {k: v for k, v in module.config.to_dict().items() if v is not None}
    config = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[d["peft_type"]](**d)
    if isinstance(module, mpt_ref.MultitaskPromptEmbedding):
        theirs = MultitaskPromptEmbedding(config, torch.nn.Embedding(1, 1))
    else:
        theirs = PromptEncoder(config)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})
    return theirs.eval()


def import_torch_peft() -> tuple[Any, str]:
    """torch (with peft importable), or None and the reason. Seconds on first call (peft imports
    transformers), so run.py calls it before its clock starts."""
    try:
        import peft  # noqa: F401
        import torch
    except ImportError as exc:
        return None, f"torch/peft not importable ({exc.name})"
    return torch, ""


class Setup(NamedTuple):
    """What a case builds once for both row kinds: PEFT's module on torch, the ORT sessions (or the
    reason each is absent)."""
    torch: Any
    theirs: Any
    torch_reason: str
    sessions: dict[str, Any]  # peer name -> an onnxruntime session, or a str: the reason it is skipped


def setup(module: Any, inputs: dict[str, np.ndarray], threads: int, *, torch_export: bool = True) -> Setup:
    """Build PEFT's module, our ONNX exports and torch.onnx.export's, each once per case."""
    import onnx_export

    torch, reason = import_torch_peft()
    theirs = None
    if torch is not None:
        torch.set_num_threads(threads)
        theirs = _peft_module(module, torch)
    sessions: dict[str, Any] = {}
    for variant in ("faithful", "folded", "folded-any"):
        if variant == "folded-any" and Kind.of(module) != Kind.MPT:
            sessions[f"ort {variant}"] = "folded-any is the folded (MLP) or faithful (LSTM) graph here"
            continue
        sessions[f"ort {variant}"] = _ort_session(onnx_export.export(module, variant=variant).SerializeToString(), threads)
    sessions[TORCH_EXPORT] = (_torch_export_session(theirs, torch, inputs, threads) if torch_export
                              else "skipped by --quick (torch.onnx.export takes seconds)")
    if theirs is None:
        sessions[TORCH_EXPORT] = "torch not importable"
    return Setup(torch, theirs, reason, sessions)


def torch_peers(s: Setup, inputs: dict[str, np.ndarray], dout: np.ndarray) -> list[Peer]:
    if s.theirs is None:
        return [Peer("peft-torch fwd", None, s.torch_reason), Peer("peft-torch fwd+bwd", None, s.torch_reason)]
    torch, theirs = s.torch, s.theirs
    args = [torch.from_numpy(inputs["indices"])] + ([torch.from_numpy(inputs["task_ids"])] if "task_ids" in inputs else [])
    g = torch.from_numpy(dout)

    def forward() -> Any:
        with torch.no_grad():
            return theirs(*args)

    def forward_backward() -> Any:
        theirs.zero_grad(set_to_none=True)
        theirs(*args).backward(g)

    return [Peer("peft-torch fwd", forward), Peer("peft-torch fwd+bwd", forward_backward)]


def _ort_session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_peers(module: Any, s: Setup, inputs: dict[str, np.ndarray], peft_rows: bool) -> list[Peer]:
    peers = []
    for name, session in s.sessions.items():
        if name == "ort folded" and not peft_rows and Kind.of(module) in (Kind.LSTM_ENCODER, Kind.MPT):
            peers.append(Peer(name, None, "the folded graph answers PEFT's arange rows only (folded-any: any rows)"))
        elif isinstance(session, str):
            peers.append(Peer(name, None, session))
        else:
            peers.append(Peer(name, lambda sess=session: sess.run(None, inputs)))
    return peers


TORCH_EXPORT = "ort torch.onnx.export(PEFT)"


def _torch_export_session(theirs: Any, torch: Any, inputs: dict[str, np.ndarray], threads: int) -> Any:
    """An ORT session on torch.onnx.export of PEFT's module, or the reason there is none."""
    if theirs is None:
        return "torch not importable"
    names = list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "peft.onnx"
        try:
            torch.onnx.export(theirs, args, str(path), input_names=names, output_names=["out"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["out"]}, dynamo=False)
        except Exception as exc:  # an exporter failure is a result to report, not a crash
            return f"torch.onnx.export failed: {type(exc).__name__}"
        return _ort_session(path.read_bytes(), threads)
