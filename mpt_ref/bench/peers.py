"""The implementations a benchmark case runs, each a callable timed by run.py, or a reason it is skipped.

Peers: the NumPy reference (forward; forward+backward; forward then backward, the two calls users
write), PEFT on torch CPU (forward under no_grad; forward+backward through autograd), onnxruntime CPU
on our faithful, folded and folded-any exports (spec/onnx.md), and onnxruntime
on ``torch.onnx.export`` of PEFT's module. All share one thread count.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref.modules.kind import Kind

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


def torch_peers(module: Any, inputs: dict[str, np.ndarray], dout: np.ndarray, threads: int) -> list[Peer]:
    try:
        import peft  # noqa: F401
        import torch
    except ImportError as exc:
        reason = f"torch/peft not importable ({exc.name})"
        return [Peer("peft-torch fwd", None, reason), Peer("peft-torch fwd+bwd", None, reason)]
    torch.set_num_threads(threads)
    theirs = _peft_module(module, torch)
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


def ort_peers(module: Any, inputs: dict[str, np.ndarray], threads: int, peft_rows: bool) -> list[Peer]:
    import onnx_export

    peers = []
    for variant in ("faithful", "folded", "folded-any"):
        name = f"ort {variant}"
        if variant == "folded" and not peft_rows and Kind.of(module) in (Kind.LSTM_ENCODER, Kind.MPT):
            peers.append(Peer(name, None, "the folded graph answers PEFT's arange rows only (folded-any: any rows)"))
            continue
        if variant == "folded-any" and Kind.of(module) != Kind.MPT:
            peers.append(Peer(name, None, "folded-any is the folded (MLP) or faithful (LSTM) graph here"))
            continue
        sess = _ort_session(onnx_export.export(module, variant=variant).SerializeToString(), threads)
        peers.append(Peer(name, lambda s=sess: s.run(None, inputs)))
    peers.append(_torch_export_peer(module, inputs, threads))
    return peers


def _torch_export_peer(module: Any, inputs: dict[str, np.ndarray], threads: int) -> Peer:
    name = "ort torch.onnx.export(PEFT)"
    try:
        import torch
    except ImportError:
        return Peer(name, None, "torch not importable")
    theirs = _peft_module(module, torch)
    names = list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "peft.onnx"
        try:
            torch.onnx.export(theirs, args, str(path), input_names=names, output_names=["out"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["out"]}, dynamo=False)
        except Exception as exc:  # an exporter failure is a result to report, not a crash
            return Peer(name, None, f"torch.onnx.export failed: {type(exc).__name__}")
        sess = _ort_session(path.read_bytes(), threads)
    return Peer(name, lambda: sess.run(None, inputs))
