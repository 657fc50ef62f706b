"""Serving without torch: the prompt-prepend graph, the whole-model composition with a hand-built base
graph, the TensorRT-LLM prompt table and its lookup, the Triton model repository (spec/serving.md).

Expected values come from the modules' float64 reference and W indexed by hand, never from the graphs; the
prompt part of every graph is judged with the error model (per-entry bounds of a float32 / float16 graph,
tolerances.ONNX_ROUNDING), the word rows must be W's rows bit for bit."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _toy_base import masked_matmul_base
from onnx import TensorProto
from safetensors.numpy import save_file

from mpt_ref import (
    MultitaskPromptEmbedding,
    MultitaskPromptTuningConfig,
    PromptEmbedding,
    PromptEncoder,
    PromptEncoderConfig,
    PromptTuningConfig,
)
from mpt_ref.cli import main as cli_main
from mpt_ref.errors import (
    CheckpointError,
    IndexRangeError,
    InputError,
    OutputExistsError,
)
from mpt_ref.serve.prompt_table import (
    prompt_input_ids,
    prompt_table,
    trtllm_lookup,
    write_prompt_table,
)
from mpt_ref.serve.triton import model_signature, triton_config, write_triton_repository
from mpt_ref.serve.whole_model import compose_model, read_word_embeddings
from mpt_ref.judge.bounds import check_tensor
from mpt_ref.judge.error_bound import Bounded, ErrorAlgebra
from mpt_ref.tolerances import ONNX_ROUNDING
from onnx_export._spec import module_spec
from onnx_export.parity import check_output, expected_with_bound
from onnx_export.prepend import build_prepend_model

N, D, K, V = 3, 4, 3, 11


def modules(task_type="CAUSAL_LM"):
    common = {"num_virtual_tokens": N, "token_dim": D, "task_type": task_type}
    return {
        "prompt_embedding": PromptEmbedding(PromptTuningConfig(**common), seed=0),
        "mpt": MultitaskPromptEmbedding(MultitaskPromptTuningConfig(num_tasks=K, num_ranks=2, **common), seed=1),
        "mlp": PromptEncoder(PromptEncoderConfig(encoder_hidden_size=5, **common), seed=2),
        "lstm": PromptEncoder(PromptEncoderConfig(encoder_hidden_size=5, encoder_reparameterization_type="LSTM",
                                                  encoder_num_layers=2, **common), seed=3),
    }


def prompt_feeds(module, tasks):
    """The module graph's feeds for PEFT's rows: indices arange(T) per request (and task_ids, MPT)."""
    feeds = {"indices": np.tile(np.arange(module.total_virtual_tokens), (len(tasks), 1))}
    if isinstance(module, MultitaskPromptEmbedding):
        feeds["task_ids"] = np.asarray(tasks)
    return feeds


def assert_prompt_conforms(label, module, tasks, got, dtype="float32", variant="faithful"):
    """got (B, T, D): the prompt rows a graph gave for PEFT's rows, judged against the module's float64
    reference within the error model's per-entry bound of a ``dtype`` graph on CPU (as parity judges)."""
    __tracebackhide__ = True
    check = check_output(label, module, prompt_feeds(module, tasks), got, dtype=dtype, variant=variant)
    assert check.ok, check.describe()


def assert_prepended(label, module, tasks, embeds, words, dtype="float32", prompt_rows=None, variant="faithful"):
    """inputs_embeds = [prompt, W[ids]]: the prompt within its bounds, the word rows W's rows exactly."""
    __tracebackhide__ = True
    T = prompt_rows or module.total_virtual_tokens
    if prompt_rows is None:
        assert_prompt_conforms(label, module, tasks, embeds[:, :T], dtype, variant)
    else:  # seq2seq encoder side: the first N of the module's T rows
        want, bound = expected_with_bound(module_spec(module), prompt_feeds(module, tasks), variant,
                                          ONNX_ROUNDING[(dtype, "cpu")])
        check = check_tensor(label, "output", embeds[:, :T], want[:, :T], bound[:, :T])
        assert check.ok, check.describe()
    np.testing.assert_array_equal(embeds[:, T:], words.astype(embeds.dtype))


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


W = np.random.default_rng(5).normal(size=(V, D)).astype(np.float32)
IDS = np.array([[1, 2, 3, 4, 0], [5, 6, 7, 10, 9]])
MASK = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
TASKS = np.array([2, 0])


@pytest.mark.parametrize("kind", ["prompt_embedding", "mpt", "mlp", "lstm"])
@pytest.mark.parametrize("variant", ["faithful", "folded"])
def test_prepend_graph_is_pefts_concat(kind, variant):
    module = modules()[kind]
    model = build_prepend_model(module, W, variant=variant)
    feeds = {"input_ids": IDS, "attention_mask": MASK}
    if kind == "mpt":
        feeds["task_ids"] = TASKS
    embeds, mask = run(model, feeds)
    assert embeds.shape == (2, N + 5, D) and embeds.dtype == np.float32
    assert_prepended(f"{kind} {variant} inputs_embeds", module, TASKS, embeds, W[IDS], variant=variant)  # B,N+S,D
    np.testing.assert_array_equal(mask, np.concatenate([np.ones((2, N), dtype=np.int64), MASK], axis=1))
    assert mask.dtype == np.int64
    # composed from the exported prompt graph: its PEFT-named initializers are there, unprefixed
    names = {i.name for i in model.graph.initializer}
    assert "word_embeddings.weight" in names and ("embedding.weight" in names or "prompt_table" in names
                                                  or "task_prompt_table" in names)


def test_prepend_graph_id_policy():
    module = modules()["mpt"]
    model = build_prepend_model(module, W)
    ids = np.array([[1, -1, 3], [5, V, 7], [1, 2, 3]])
    embeds, _ = run(model, {"input_ids": ids, "attention_mask": np.ones_like(ids), "task_ids": np.array([0, 1, K])})
    nan = np.isnan(embeds).all(axis=2)  # B,N+S
    want = np.zeros((3, N + 3), dtype=bool)
    want[0, N + 1] = want[1, N + 1] = True  # the invalid token ids' rows only
    want[2, :N] = True  # the invalid task id: its row's prompt
    np.testing.assert_array_equal(nan, want)
    assert not np.isnan(embeds[~want]).any()


@pytest.mark.parametrize("mask_shape", [(2, 4), (2, 1), (1, 5), (5, 2)])
def test_prepend_graph_refuses_a_mask_of_another_shape(mask_shape):
    model = build_prepend_model(modules()["prompt_embedding"], W)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own failure type
        run(model, {"input_ids": IDS, "attention_mask": np.ones(mask_shape, dtype=np.int64)})


def test_prepend_graph_float16_and_bool_mask():
    module = modules()["prompt_embedding"]
    model = build_prepend_model(module, W, dtype="float16", mask_dtype=TensorProto.BOOL)
    embeds, mask = run(model, {"input_ids": IDS, "attention_mask": MASK.astype(bool)})
    assert embeds.dtype == np.float16 and mask.dtype == bool
    assert_prepended("float16 inputs_embeds", module, TASKS, embeds, W[IDS], dtype="float16")
    np.testing.assert_array_equal(mask[:, :N], True)


@pytest.mark.parametrize("kind", ["prompt_embedding", "mpt"])
def test_prepend_graph_seq2seq_encoder_side(kind):
    """SEQ_2_SEQ_LM: T = 2N rows; PEFT feeds the encoder prompt[:, :N] and N ones."""
    module = modules("SEQ_2_SEQ_LM")[kind]
    assert module.total_virtual_tokens == 2 * N
    feeds = {"input_ids": IDS, "attention_mask": MASK}
    if kind == "mpt":
        feeds["task_ids"] = TASKS
    embeds, mask = run(build_prepend_model(module, W), feeds)
    assert embeds.shape == (2, N + 5, D)
    assert_prepended("seq2seq encoder inputs_embeds", module, TASKS, embeds, W[IDS], prompt_rows=N)
    assert mask.shape == (2, N + 5)


@pytest.mark.parametrize("bad", [np.zeros((V, D + 1)), np.zeros(D), np.zeros((V, D), dtype=np.int64),
                                 np.full((V, D), np.nan)])
def test_prepend_graph_refuses_bad_word_embeddings(bad):
    with pytest.raises(InputError, match="word_embeddings"):
        build_prepend_model(modules()["prompt_embedding"], bad)


# --- whole model, with a base graph built by hand: logits = (inputs_embeds * mask) @ U -------------------

U = np.random.default_rng(6).normal(size=(D, 7)).astype(np.float32)


def base_graph(*, opset=17, names=("inputs_embeds", "attention_mask"), dim=D):
    return masked_matmul_base(U, dim=dim, names=names, opset=opset)


@pytest.mark.parametrize("opset", [17, 21])
def test_compose_model_gives_base_of_peft_inputs(opset):
    module = modules()["mpt"]
    model = compose_model(module, base_graph(opset=opset), W)
    (logits,) = run(model, {"input_ids": IDS, "attention_mask": MASK, "task_ids": TASKS})
    # the error model through the toy base: the prompt rows' bounds, then (embeds * mask) @ U in float32
    rounding = ONNX_ROUNDING[("float32", "cpu")]
    prompt, bound = expected_with_bound(module_spec(module), prompt_feeds(module, TASKS), "folded", rounding)
    alg = ErrorAlgebra(rounding)
    words = alg.exact(W[IDS])  # rows of a float32 table: exact
    embeds = Bounded(np.concatenate([prompt, words.v], axis=1), np.concatenate([bound, words.e], axis=1),
                     np.concatenate([bound, words.s], axis=1))  # s = e: the worst case stands for both
    mask = alg.exact(np.concatenate([np.ones((2, N)), MASK], axis=1)[..., None])
    want = alg.matmul(alg.mul(embeds, mask), alg.exact(U))
    check = check_tensor("toy logits", "logits", logits, want.v, want.bound(alg.lam))
    assert check.ok, check.describe()
    assert [o.version for o in model.opset_import if o.domain == ""] == [opset]


@pytest.mark.parametrize("base,match", [
    (lambda: base_graph(names=("embeds", "attention_mask")), "expected inputs"),
    (lambda: base_graph(dim=D + 1), "token_dim"),
])
def test_compose_model_refuses_a_mismatched_base(base, match):
    with pytest.raises(InputError, match=match):
        compose_model(modules()["prompt_embedding"], base(), W)


def _weights(tmp_path, tensors):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    return path


def test_read_word_embeddings_finds_usual_keys(tmp_path):
    path = _weights(tmp_path, {"transformer.wte.weight": W, "transformer.h.0.attn.c_attn.weight": U,
                               "lm_head.weight": W})
    key, w = read_word_embeddings(path)
    assert key == "transformer.wte.weight"
    np.testing.assert_array_equal(w, W)
    assert read_word_embeddings(path, "lm_head.weight")[0] == "lm_head.weight"
    with pytest.raises(CheckpointError, match="nope"):
        read_word_embeddings(path, "nope")
    two = _weights(tmp_path / "2", {"model.embed_tokens.weight": W, "shared.weight": W + 1})
    with pytest.raises(CheckpointError, match="--embedding-key"):
        read_word_embeddings(two)
    none = _weights(tmp_path / "3", {"encoder.w": W})
    with pytest.raises(CheckpointError, match="--embedding-key"):
        read_word_embeddings(none)


def test_cli_export_model(tmp_path):
    adapter = tmp_path / "adapter"
    modules()["mpt"].save_pretrained(adapter)
    onnx.save(base_graph(), str(tmp_path / "base.onnx"))
    weights = _weights(tmp_path, {"model.embed_tokens.weight": W})
    out = tmp_path / "model.onnx"
    args = ["export-model", str(adapter), "--base-onnx", str(tmp_path / "base.onnx"), "--base-weights", str(weights),
            "-o", str(out)]
    assert cli_main(args) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "task_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    before = out.read_bytes()
    assert cli_main(args) == 2  # refuses to overwrite
    assert out.read_bytes() == before
    assert cli_main([*args, "--force", "--triton", str(tmp_path / "repo"), "--name", "m"]) == 0
    assert (tmp_path / "repo" / "m" / "config.pbtxt").is_file()
    bad = ["export-model", str(adapter), "--base-onnx", str(tmp_path / "missing.onnx"), "--base-weights",
           str(weights), "-o", str(tmp_path / "x.onnx")]
    assert cli_main(bad) == 2 and not (tmp_path / "x.onnx").exists()


# --- TensorRT-LLM prompt table ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["prompt_embedding", "mpt", "mlp", "lstm"])
def test_prompt_table_rows_are_the_prompts(kind):
    module = modules()[kind]
    table = prompt_table(module)
    tasks = list(range(K)) if kind == "mpt" else [0]
    assert table.shape == (len(tasks), N, D) and table.dtype == np.float32
    assert_prompt_conforms(f"{kind} table", module, tasks, table)  # float64, rounded once to float32


def test_trtllm_lookup_by_hand():
    table = np.arange(2 * 3 * 2, dtype=np.float64).reshape(6, 2)  # K=2 tasks, T=3, D=2
    w = -np.arange(5 * 2, dtype=np.float64).reshape(5, 2)  # V=5
    ids = np.array([[5, 6, 7, 0, 4], [5, 6, 7, 3, 3]])
    got = trtllm_lookup(ids, np.array([1, 0]), table, w, task_vocab_size=3)
    np.testing.assert_array_equal(got[0], [table[3], table[4], table[5], w[0], w[4]])
    np.testing.assert_array_equal(got[1], [table[0], table[1], table[2], w[3], w[3]])
    np.testing.assert_array_equal(prompt_input_ids([[0, 4]], 5, 3), [[5, 6, 7, 0, 4]])
    with pytest.raises(IndexRangeError, match="input_ids"):
        trtllm_lookup([[8]], [0], table, w, task_vocab_size=3)  # id V + T: the next task's row in TensorRT-LLM
    with pytest.raises(IndexRangeError, match="tasks"):
        trtllm_lookup([[5]], [2], table, w, task_vocab_size=3)
    with pytest.raises(InputError, match="tasks"):
        trtllm_lookup([[5]], [0, 1], table, w, task_vocab_size=3)


def test_write_prompt_table_and_sidecar(tmp_path):
    module = modules()["mpt"]
    report, directory = write_prompt_table(module, tmp_path / "table", dtype="float16", vocab_size=V)
    assert report.ok and report.max_abs <= report.bound
    table = np.load(directory / "prompt_table.npy")
    meta = json.loads((directory / "prompt_table.json").read_text())
    assert sorted(p.name for p in directory.iterdir()) == ["prompt_table.json", "prompt_table.npy"]
    assert table.shape == (K, N, D) and table.dtype == np.float16
    assert meta["shape"] == [K, N, D] and meta["prompt_table_shape"] == [K * N, D]
    assert meta["task_ids"] == [0, 1, 2] and meta["dtype"] == "float16" and meta["task_vocab_size"] == N
    assert meta["prompt_input_ids"] == [V, V + 1, V + 2]
    import hashlib
    assert meta["sha256"] == hashlib.sha256((directory / "prompt_table.npy").read_bytes()).hexdigest()
    with pytest.raises(OutputExistsError):
        write_prompt_table(module, tmp_path / "table")
    with pytest.raises(InputError, match="directory"):
        write_prompt_table(module, tmp_path / "table.npy")


def test_cli_export_prompt_table(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    modules()["prompt_embedding"].save_pretrained(adapter)
    out = tmp_path / "t"
    assert cli_main(["export", str(adapter), "--format", "prompt-table", "-o", str(out)]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "prompt_table.npy")[0],
                                  modules()["prompt_embedding"].state_dict()["embedding.weight"])
    assert json.loads((out / "prompt_table.json").read_text())["num_tasks"] == 1
    assert cli_main(["export", str(adapter), "--format", "prompt-table", "-o", str(out)]) == 2


# --- Triton -----------------------------------------------------------------------------------------------

def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient without its grpc extra raises RuntimeError
        pytest.skip("tritonclient[grpc] not installed (the optional 'serve' extra)")
    return model_config_pb2


ONNX_TO_TRITON = {TensorProto.INT64: "TYPE_INT64", TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16",
                  TensorProto.BOOL: "TYPE_BOOL"}


@pytest.mark.parametrize("which", ["prepend", "whole", "prompt"])
def test_triton_config_parses_and_matches_the_graph(which):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    module = modules()["mpt"]
    if which == "prepend":
        model = build_prepend_model(module, W)
    elif which == "whole":
        model = compose_model(module, base_graph(), W)
    else:
        from onnx_export import export
        model = export(module, variant="folded")
    config = text_format.Parse(triton_config(model, "m", max_batch_size=4), pb2.ModelConfig())
    assert config.name == "m" and config.backend == "onnxruntime" and config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    for entries, values in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [e.name for e in entries] == [v.name for v in values]
        for e, v in zip(entries, values):
            assert pb2.DataType.Name(e.data_type) == ONNX_TO_TRITON[v.type.tensor_type.elem_type]
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            assert dims[0] == -1  # the batch axis, left out of Triton's dims
            if len(dims) == 1:
                assert list(e.dims) == [1] and e.HasField("reshape") and list(e.reshape.shape) == []
            else:
                assert list(e.dims) == dims[1:]


def test_triton_signature_without_batching_and_refusals(tmp_path):
    model = build_prepend_model(modules()["prompt_embedding"], W)
    inputs, outputs = model_signature(model, max_batch_size=0)
    assert inputs[0]["dims"] == [-1, -1] and outputs[0]["dims"] == [-1, -1, D]
    static = compose_model(modules()["prompt_embedding"], base_graph(), W)
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(InputError, match="batch axis"):
        triton_config(static, "m")
    with pytest.raises(InputError, match="name"):
        triton_config(model, "a b")
    _, _, path = write_triton_repository(model, tmp_path, "m")
    assert path == tmp_path / "m" / "1" / "model.onnx" and onnx.load(str(path)).graph.name == model.graph.name
    with pytest.raises(OutputExistsError):
        write_triton_repository(model, tmp_path, "m")


def test_cli_export_triton(tmp_path):
    assert cli_main(["export", "--kind", "mpt", "--variant", "folded", "--format", "triton", "-o", str(tmp_path),
                     "--name", "mpt"]) == 0
    text = (tmp_path / "mpt" / "config.pbtxt").read_text()
    assert 'name: "mpt"' in text and 'backend: "onnxruntime"' in text and "dynamic_batching" in text
    assert cli_main(["export", "--kind", "mpt", "--format", "triton", "-o", str(tmp_path), "--name", "mpt"]) == 2


def test_triton_python_backend_repository(tmp_path):
    """--triton-backend python: the same model.onnx and config, backend "python", and a model.py that compiles."""
    import py_compile

    model = build_prepend_model(modules()["mpt"], W)
    report, config, path = write_triton_repository(model, tmp_path, "m", backend="python")
    assert report is None and 'backend: "python"' in config.read_text()
    script = tmp_path / "m" / "1" / "model.py"
    py_compile.compile(str(script), doraise=True)
    assert "TritonPythonModel" in script.read_text() and path.read_bytes() == model.SerializeToString()
    with pytest.raises(InputError, match="backend"):
        triton_config(model, "m", backend="tensorrt")
    assert cli_main(["export", "--kind", "mpt", "--format", "prompt-table", "-o", str(tmp_path / "t"),
                     "--triton-backend", "python"]) == 2
