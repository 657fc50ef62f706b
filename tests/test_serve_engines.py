"""The engine-facing pieces without the engines (spec/serving.md): vLLM's prompt_embeds and payload, the
onnxruntime-genai embedding graph and model folder (with a hand-built decoder standing in for the model
builder's). Expected values are written by hand from the id rule and the table, never read from the graphs."""

from __future__ import annotations

import base64
import io
import json
import pickletools
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig
from mpt_ref.cli import main as cli_main
from mpt_ref.errors import IndexRangeError, InputError, OutputExistsError
from mpt_ref.serve.ortgenai import embedding_model, prompt_ids, write_ortgenai
from mpt_ref.serve.prompt_table import prompt_table
from mpt_ref.serve.vllm import completion_request, request_embeds, tensor_bytes
from safetensors.numpy import save_file

N, D, K, V = 3, 4, 3, 11
W = np.random.default_rng(5).normal(size=(V, D)).astype(np.float32)


def mpt(seed=1):
    return MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N, token_dim=D,
                                                                num_tasks=K, num_ranks=2), seed=seed)


# --- vLLM -------------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(task=st.integers(0, K - 1), ids=st.lists(st.integers(0, V - 1), min_size=0, max_size=6))
def test_request_embeds_are_the_tasks_prompt_then_w(task, ids):
    table = prompt_table(mpt())
    got = request_embeds(table, W, ids, task)
    assert got.shape == (N + len(ids), D) and got.dtype == np.float32
    np.testing.assert_array_equal(got[:N], table[task])
    for j, i in enumerate(ids):
        np.testing.assert_array_equal(got[N + j], W[i])


def test_request_embeds_refusals():
    table = prompt_table(mpt())
    with pytest.raises(IndexRangeError, match="task"):
        request_embeds(table, W, [1], K)
    with pytest.raises(IndexRangeError, match="input_ids"):
        request_embeds(table, W, [V], 0)
    with pytest.raises(InputError, match="num_virtual_tokens"):
        request_embeds(table, W, [1], 0, num_virtual_tokens=N + 1)
    with pytest.raises(InputError, match="one D"):
        request_embeds(table, W[:, :2], [1], 0)


def test_tensor_bytes_is_a_torch_zip_of_the_array():
    """The layout torch.save writes (the PEFT job loads it with torch.load(weights_only=True))."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    zf = zipfile.ZipFile(io.BytesIO(tensor_bytes(a)))
    assert sorted(zf.namelist()) == ["archive/byteorder", "archive/data.pkl", "archive/data/0", "archive/version"]
    assert np.array_equal(np.frombuffer(zf.read("archive/data/0"), "<f4").reshape(3, 4), a)
    ops = [op.name for op, _, _ in pickletools.genops(zf.read("archive/data.pkl"))]
    assert ops[0] == "PROTO" and ops[-1] == "STOP" and "BINPERSID" in ops
    body = completion_request(a, model="m", max_tokens=4)
    assert base64.b64decode(body["prompt_embeds"]) == tensor_bytes(a) and body["temperature"] == 0.0
    with pytest.raises(InputError, match="dtype"):
        tensor_bytes(a.astype(np.int64))


# --- onnxruntime-genai --------------------------------------------------------------------------------------

def test_embedding_graph_follows_the_id_rule():
    table = prompt_table(mpt())  # K,N,D
    sess = ort.InferenceSession(embedding_model(table, W).SerializeToString(), providers=["CPUExecutionProvider"])
    assert prompt_ids(V, N, 2) == [V + 2 * N, V + 2 * N + 1, V + 2 * N + 2]
    ids = np.array([[V + 1 * N + 0, V + 1 * N + 2, 4, 0], [V + 2 * N + 1, 10, V - 1, V + 0]])
    got = sess.run(None, {"input_ids": ids})[0]
    want = np.stack([[table[1, 0], table[1, 2], W[4], W[0]], [table[2, 1], W[10], W[10], table[0, 0]]])
    np.testing.assert_array_equal(got, want)
    bad = sess.run(None, {"input_ids": np.array([[V + K * N, -1, 3]])})[0]
    assert np.isnan(bad[0, :2]).all() and np.array_equal(bad[0, 2], W[3])


def fake_decoder(directory, *, vocab=V, hidden=D, takes="inputs_embeds"):
    """A folder shaped like the model builder's: genai_config.json + model.onnx (inputs_embeds -> logits)."""
    directory.mkdir(parents=True)
    x = helper.make_tensor_value_info(takes, TensorProto.FLOAT if takes == "inputs_embeds" else TensorProto.INT64,
                                      ["batch", "seq", hidden] if takes == "inputs_embeds" else ["batch", "seq"])
    m = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])
    node = helper.make_node("MatMul", [takes, "U"], ["logits"]) if takes == "inputs_embeds" else helper.make_node(
        "Identity", [takes], ["logits"])
    u = numpy_helper.from_array(np.ones((hidden, vocab), np.float32), "U")
    onnx.save(helper.make_model(helper.make_graph([node], "dec", [x, m], [y], initializer=[u]),
                                opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(directory / "model.onnx"))
    config = {"model": {"type": "llama", "vocab_size": vocab, "decoder": {
        "filename": "model.onnx", "hidden_size": hidden, "inputs": {takes: takes, "attention_mask": "attention_mask"},
        "outputs": {"logits": "logits"}}}}
    (directory / "genai_config.json").write_text(json.dumps(config))
    (directory / "tokenizer.json").write_text("{}")
    return directory


def test_write_ortgenai_writes_a_checked_pipeline_folder(tmp_path):
    dec = fake_decoder(tmp_path / "dec")
    report, out = write_ortgenai(mpt(), W, dec, tmp_path / "served")
    assert report.ok and "verdict: PASS" in report.format()
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.onnx", "genai_config.json", "model.onnx",
                                                     "prompt_ids.json", "tokenizer.json"]
    assert (out / "model.onnx").stat().st_ino == (dec / "model.onnx").stat().st_ino  # linked, not copied
    config = json.loads((out / "genai_config.json").read_text())["model"]
    assert config["type"] == "decoder-pipeline" and "filename" not in config["decoder"]
    stages = config["decoder"]["pipeline"]
    assert [list(s) for s in stages] == [["embeddings"], ["decoder"]]
    assert stages[0]["embeddings"]["outputs"] == ["inputs_embeds"] and stages[1]["decoder"]["filename"] == "model.onnx"
    assert config["decoder"]["inputs"]["input_ids"] == "input_ids" and "inputs_embeds" not in config["decoder"]["inputs"]
    ids = json.loads((out / "prompt_ids.json").read_text())
    assert ids["prompt_ids"] == [[V + k * N + j for j in range(N)] for k in range(K)]
    with pytest.raises(OutputExistsError):
        write_ortgenai(mpt(), W, dec, out)
    assert write_ortgenai(mpt(seed=2), W, dec, out, overwrite=True)[0].ok


@pytest.mark.parametrize("kwargs,match", [({"takes": "input_ids"}, "exclude_embeds"), ({"vocab": V + 1}, "vocab_size"),
                                          ({"hidden": D + 1}, "hidden_size")])
def test_write_ortgenai_refuses_a_decoder_it_cannot_feed(tmp_path, kwargs, match):
    dec = fake_decoder(tmp_path / "dec", **kwargs)
    with pytest.raises(InputError, match=match):
        write_ortgenai(mpt(), W, dec, tmp_path / "served")
    assert not (tmp_path / "served").exists()


def test_cli_export_ortgenai(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    mpt().save_pretrained(adapter)
    save_file({"model.embed_tokens.weight": W}, str(tmp_path / "w.safetensors"))
    dec = fake_decoder(tmp_path / "dec")
    argv = ["export", str(adapter), "--format", "ortgenai", "-o", str(tmp_path / "out"), "--base-weights",
            str(tmp_path / "w.safetensors"), "--decoder", str(dec)]
    assert cli_main(argv) == 0 and "verdict: PASS" in capsys.readouterr().out
    assert cli_main(argv) == 2  # existing
    assert cli_main(argv[:-2]) == 2 and "--decoder" in capsys.readouterr().err
    assert cli_main(["export", str(adapter), "--format", "prompt-table", "-o", str(tmp_path / "t"), "--decoder",
                     str(dec)]) == 2
    assert not (tmp_path / "t").exists()


def test_write_ortgenai_refuses_a_seq2seq_adapter(tmp_path):
    module = MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N,
                                                                  token_dim=D, num_tasks=K, num_ranks=2), seed=1)
    with pytest.raises(InputError, match="SEQ_2_SEQ_LM"):
        write_ortgenai(module, W, fake_decoder(tmp_path / "dec"), tmp_path / "served")
    assert not (tmp_path / "served").exists()
