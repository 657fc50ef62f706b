"""onnxruntime-genai serving PEFT prompt adapters (``mpt-ref export --format ortgenai``), against PeftModel.

Runs only in the onnxruntime-genai CI step (``pytest -m ortgenai``, its own venv: onnxruntime-genai 0.18.0, torch
2.13.0 for its model builder, peft 0.21.2). The tiny random Llama of tests/_engine_peft.py is built into a decoder
with the model builder (``exclude_embeds=true``); for every adapter type mpt-ref writes the model folder (embedding
graph with the prompt table appended, decoder-pipeline config, prompt ids); the generator is fed
``prompt_ids[k] + ids`` for every request and every MPT task. Greedy tokens and logits are judged against
``PeftModel.generate`` as in the vLLM test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _engine_peft import K, KINDS, NEW_TOKENS, judge, make_setup, peft_reference, print_results
from mpt_ref.cli import main as cli_main

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
og = pytest.importorskip("onnxruntime_genai")

pytestmark = [pytest.mark.ortgenai, pytest.mark.filterwarnings("ignore")]

RESULTS: dict[tuple[str, str], list] = {}
EOS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ortgenai")
    base, adapters, requests = make_setup(root, torch, peft, transformers, tokenizer=True)
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base), "-o", str(root / "decoder"),
                    "-p", "fp32", "-e", "cpu", "--extra_options", "exclude_embeds=true"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folders = {}
    for kind in KINDS:
        out = root / f"served_{kind}"
        assert cli_main(["export", str(adapters[kind][0]), "--format", "ortgenai", "-o", str(out), "--base-weights",
                         str(base / "model.safetensors"), "--decoder", str(root / "decoder")]) == 0
        folders[kind] = out
    return root, adapters, requests, folders


def _generate(model, ids):
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + NEW_TOKENS, min_length=len(ids) + NEW_TOKENS)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array([ids], dtype=np.int64))
    tokens, steps = [], []
    while not gen.is_done():
        gen.generate_next_token()  # runs the pending step, then picks the token from these logits
        logits = np.array(gen.get_output("logits"))[0, -1].astype(np.float64)
        tokens.append(int(gen.get_next_tokens()[0]))
        steps.append(dict(enumerate(logits)))
    return tokens, steps


def test_every_adapter_and_task_generates_pefts_tokens(setup):
    _, adapters, requests, folders = setup
    reference = peft_reference(torch, adapters, requests)
    models = {kind: og.Model(str(folder)) for kind, folder in folders.items()}
    ids_of = {kind: json.loads((folder / "prompt_ids.json").read_text())["prompt_ids"] for kind, folder in folders.items()}
    assert len(ids_of["mpt"]) == K
    got = [_generate(models[kind], ids_of[kind][task] + ids.tolist()) for kind, task, ids in requests]
    # EOS is masked to -inf by min_length in onnxruntime-genai's logits, not in PEFT's raw ones
    judge(RESULTS, "onnxruntime-genai", requests, reference, got, skip=(EOS,))
    # a control: the same requests without their prompt ids are not PEFT's
    unprompted = [_generate(models[kind], ids.tolist())[0] for kind, _, ids in requests]
    same = sum(t == want for t, (want, _) in zip(unprompted, reference))
    assert same <= len(requests) // 4


def test_zz_print_results():
    if os.environ.get("MPT_REF_PRINT_ERRORS"):
        print_results(RESULTS)
