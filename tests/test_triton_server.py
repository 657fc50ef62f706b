"""A real Triton server serving the repositories mpt-ref writes (``--triton-backend python``).

Runs only in the Triton CI step (``pytest -m triton_server``, its own venv with nvidia-pytriton 0.7.0, whose wheel
bundles a tritonserver 2.51 binary with the python backend only). mpt-ref writes two repositories, the MPT
prompt graph (``export --format triton``) and the whole model of an MPT adapter in front of a hand-built base
graph (``export-model --triton``), both with ``--triton-backend python``; the server is started on 127.0.0.1 with
them, and requests go over HTTP (KServe v2 JSON):

* every output equals onnxruntime running the same model.onnx (bit for bit: the same runtime on the same file),
  and the prompt graph's output is within the error-model bound of the float64 reference;
* a mixed-task batch (tasks [2, 0, 1] in one request) equals the three single requests;
* an invalid task id gives NaN rows (the id policy), served, not a crash.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _toy_base import masked_matmul_base
from safetensors.numpy import save_file

from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig
from mpt_ref import tolerances as tol
from mpt_ref.cli import main as cli_main
from mpt_ref.modules.bounds import check_tensor
from mpt_ref.testing.assertions import assert_close
from onnx_export._spec import module_spec
from onnx_export.parity import expected_with_bound, onnx_rounding

pytriton = pytest.importorskip("pytriton")

pytestmark = [pytest.mark.triton_server]

N, D, K, V = 4, 8, 3, 13


def _server_binary() -> Path:
    root = Path(pytriton.__file__).parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        pytest.skip(f"no tritonserver binary in {root}")
    return binary


def _base_graph():
    return masked_matmul_base(np.random.default_rng(6).normal(size=(D, 7)).astype(np.float32))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = _server_binary()
    root = tmp_path_factory.mktemp("triton")
    module = MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N,
                                                                  token_dim=D, num_tasks=K, num_ranks=2), seed=3)
    module.save_pretrained(root / "adapter")
    onnx.save(_base_graph(), str(root / "base.onnx"))
    save_file({"model.embed_tokens.weight": np.random.default_rng(5).normal(size=(V, D)).astype(np.float32)},
              str(root / "w.safetensors"))
    repo = root / "repo"
    assert cli_main(["export", str(root / "adapter"), "--variant", "folded", "--format", "triton", "-o", str(repo),
                     "--name", "prompt", "--triton-backend", "python"]) == 0
    assert cli_main(["export-model", str(root / "adapter"), "--base-onnx", str(root / "base.onnx"), "--base-weights",
                     str(root / "w.safetensors"), "-o", str(root / "model.onnx"), "--triton", str(repo), "--name",
                     "whole", "--triton-backend", "python"]) == 0
    # the python backend looks for its stub beside libtriton_python.so; pytriton ships one stub per Python
    # version: a backend directory of links with this interpreter's stub, leaving the installed package alone
    server_root = binary.parent.parent
    backends = root / "backends" / "python"
    backends.mkdir(parents=True)
    for entry in (server_root / "backends" / "python").iterdir():
        (backends / entry.name).symlink_to(entry)
    stub = server_root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    (backends / "triton_python_backend_stub").symlink_to(stub / "triton_python_backend_stub")
    port = _free_port()
    # the stub's embedded Python finds this venv (numpy, onnxruntime) through the python first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([str(binary), f"--model-repository={repo}", "--http-address=127.0.0.1",
                             f"--http-port={port}", "--allow-grpc=false", "--allow-metrics=false",
                             f"--backend-directory={root / 'backends'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    pytest.fail(f"tritonserver not ready: {proc.stdout.read()[-3000:]}")
                time.sleep(1)
        yield f"http://127.0.0.1:{port}", repo, module
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _infer(url: str, name: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    body = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "INT64", "data": v.reshape(-1).tolist()}
                       for k, v in feeds.items()], "outputs": [{"name": output}]}
    req = urllib.request.Request(f"{url}/v2/models/{name}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        out = json.loads(resp.read())["outputs"][0]
    data = [np.nan if v is None else v for v in out["data"]]
    return np.asarray(data, dtype=np.float32).reshape(out["shape"])


def _ort(repo: Path, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {k: (v.reshape(-1) if k == "task_ids" else v) for k, v in feeds.items()})[0]


def test_the_prompt_graph_served_equals_onnxruntime_and_the_reference(server):
    url, repo, module = server
    spec = module_spec(module)
    idx = np.tile(np.arange(N, dtype=np.int64), (3, 1))
    tasks = np.array([[2], [0], [1]], dtype=np.int64)
    got = _infer(url, "prompt", {"indices": idx, "task_ids": tasks}, "prompt_embeddings")
    np.testing.assert_array_equal(got, _ort(repo, "prompt", {"indices": idx, "task_ids": tasks}))
    want, bound = expected_with_bound(spec, {"indices": idx, "task_ids": tasks.reshape(-1)}, "folded",
                                      onnx_rounding("float32", "cpu"))
    assert check_tensor("triton", "prompt_embeddings", got, want, bound).ok
    singles = [_infer(url, "prompt", {"indices": idx[:1], "task_ids": tasks[b:b + 1]}, "prompt_embeddings")[0]
               for b in range(3)]
    np.testing.assert_array_equal(got, np.stack(singles))  # a mixed-task batch equals single requests


def test_the_whole_model_served_equals_onnxruntime_and_mixed_batches_equal_singles(server):
    url, repo, _ = server
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(3, 5)).astype(np.int64)
    mask = np.ones((3, 5), dtype=np.int64)
    mask[0, :2] = 0
    tasks = np.array([[2], [0], [1]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "task_ids": tasks}
    got = _infer(url, "whole", feeds, "logits")
    assert got.shape == (3, N + 5, 7)
    np.testing.assert_array_equal(got, _ort(repo, "whole", feeds))
    for b in range(3):
        single = _infer(url, "whole", {k: v[b:b + 1] for k, v in feeds.items()}, "logits")[0]
        assert_close(f"row {b} alone", single, got[b], tol.SERVED_ALONE_VS_BATCHED_F32.scaled(float(np.abs(got).max())))
    bad = _infer(url, "whole", {**feeds, "task_ids": np.array([[0], [K], [1]], dtype=np.int64)}, "logits")
    assert np.isnan(bad[1, :N]).all() and np.isfinite(bad[0]).all() and np.isfinite(bad[2]).all()


def test_a_malformed_request_is_an_error_response_not_a_crash(server):
    url, _, _ = server
    with pytest.raises(urllib.error.HTTPError):
        _infer(url, "whole", {"input_ids": np.zeros((1, 3), np.int64), "attention_mask": np.ones((1, 4), np.int64),
                              "task_ids": np.zeros((1, 1), np.int64)}, "logits")
    assert urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5).status == 200  # the server survives
