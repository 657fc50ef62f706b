"""Empty batches never reach an onnxruntime kernel that aborts the process, and float16 exports
refuse parameters beyond float16's range instead of producing inf. Each module runs in a process of its
own (forked from one helper process that imports onnxruntime once), so a SIGABRT fails that module's test
instead of killing pytest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mpt_ref
from onnx_export.exporter import export

ROOT = Path(__file__).resolve().parents[1]

KINDS = ["pt", "mpt", "mlp-1", "lstm-1", "lstm-2", "lstm-3"]
RUN_EMPTY = r"""
import json, os, sys
import numpy as np, onnxruntime as ort, mpt_ref
from onnx_export.exporter import export


def run(kind):
    if kind == "mpt":
        m = mpt_ref.MultitaskPromptEmbedding(mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4,
                                              num_tasks=2, num_ranks=2), seed=0)
    elif kind == "pt":
        m = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=4), seed=0)
    else:
        enc, layers = kind.split("-")
        m = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=3, token_dim=4, encoder_hidden_size=5,
            encoder_num_layers=int(layers), encoder_reparameterization_type=enc.upper()), seed=0).eval()
    results = []
    for variant in ("faithful", "folded"):
        for dtype in ("float32", "float16"):
            model = export(m, variant=variant, dtype=dtype)
            fixed_t = model.graph.input[0].type.tensor_type.shape.dim[1].HasField("dim_value")
            s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            for b, t in ((0, 3), (0, 0), (2, 0), (2, 3)):
                feed = {"indices": np.zeros((b, t), np.int64)}
                if kind == "mpt":
                    feed["task_ids"] = np.zeros((b,), np.int64)
                try:
                    out = s.run(None, feed)[0]
                    results.append([variant, dtype, b, t, fixed_t, list(out.shape), None])
                except Exception as exc:
                    results.append([variant, dtype, b, t, fixed_t, None, type(exc).__name__])
    return results


for kind in sys.argv[1:]:
    pid = os.fork()  # an abort kills this kind's child only
    if pid == 0:
        print(json.dumps({"kind": kind, "results": run(kind)}), flush=True)
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    print(json.dumps({"kind": kind, "status": status}), flush=True)
"""


@pytest.fixture(scope="module")
def empty_runs() -> dict[str, dict]:
    """{kind: {"status": wait status of its process, "results": [...] when it got that far}}."""
    proc = subprocess.run([sys.executable, "-c", RUN_EMPTY, *KINDS], capture_output=True, text=True, cwd=ROOT,
                          check=False, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    runs: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            runs.setdefault(record.pop("kind"), {}).update(record)
    return runs


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batches_never_abort_onnxruntime(kind, empty_runs):
    """Regression: indices of shape (0, T) aborted the whole process (SIGABRT) for the faithful LSTM."""
    run = empty_runs[kind]
    assert run["status"] == 0 and "results" in run, f"{kind}: its process ended with wait status {run['status']}"
    for variant, dtype, b, t, fixed_t, shape, error in run["results"]:
        if fixed_t and t != 3:  # a graph with a fixed token axis refuses T' != T: a clean error, no abort
            assert error is not None, (variant, dtype, b, t)
        else:
            assert shape == [b, t, 4], (variant, dtype, b, t, error)


def _big(module, key, value):
    params = module._params
    params[key] = params[key].copy()
    params[key].flat[0] = value
    return module


@pytest.mark.parametrize("variant", ["faithful", "folded"])
def test_float16_export_refuses_values_beyond_its_range(variant):
    """Regression: float16 export of parameters > 65504 gave inf outputs silently."""
    m = _big(mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=4), seed=0,
                                     dtype=np.float32), "embedding.weight", 70000.0)
    with pytest.raises(mpt_ref.InputError, match="float16"):
        export(m, variant=variant, dtype="float16")
    export(m, variant=variant, dtype="float32")  # float32 holds it
    with pytest.raises(mpt_ref.InputError, match="finite"):
        export(_big(m, "embedding.weight", np.inf), variant=variant, dtype="float32")
