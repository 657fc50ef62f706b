"""The exporter's contract: pinned versions, graph interface, initializer names, checks, atomic
writes, errors, the graph shapes that keep onnxruntime working, the CLI and the demo hook."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import mpt_ref
from mpt_ref import tolerances as tol
from mpt_ref.cli import main as cli_main
from mpt_ref.cli.demo import DEMO_EXPORTS, export_and_check
from mpt_ref.errors import InputError, OutputExistsError
from mpt_ref.testing.assertions import assert_close
from onnx_export import IR_VERSION, OPSET, _layout, export, metadata
from onnx_export.parity import check_output
from onnx_export.runtimes import run_model

KINDS = ("prompt_embedding", "mpt", "mlp_encoder", "lstm_encoder")
VARIANTS = ("faithful", "folded", "folded-any")
DTYPES = ("float32", "float16")


def make_module(kind, *, N=3, D=4, S=1, seed=0, **kw):
    task = mpt_ref.TaskType.SEQ_2_SEQ_LM if S == 2 else mpt_ref.TaskType.CAUSAL_LM
    common = dict(task_type=task, num_virtual_tokens=N, token_dim=D)
    if kind == "prompt_embedding":
        return mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(**common), seed=seed)
    if kind == "mpt":
        config = mpt_ref.MultitaskPromptTuningConfig(**common, num_tasks=kw.get("K", 3), num_ranks=kw.get("R", 2))
        return mpt_ref.MultitaskPromptEmbedding(config, seed=seed)
    config = mpt_ref.PromptEncoderConfig(**common, encoder_hidden_size=kw.get("H", 5),
                                         encoder_reparameterization_type=kind.split("_")[0].upper(),
                                         encoder_num_layers=kw.get("L", 2), encoder_dropout=kw.get("p", 0.0))
    return mpt_ref.PromptEncoder(config, seed=seed)


def inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def min_ir_for_opset(opset):
    """The lowest IR version of an onnx release whose default-domain opset reaches ``opset``."""
    return min(ir for _, ir, ai_onnx, *_ in helper.VERSION_TABLE if ai_onnx >= opset)


def test_pinned_versions_load_in_onnxruntime_1_31_and_1_32():
    assert OPSET == 21 and IR_VERSION == min_ir_for_opset(OPSET) == 10
    assert IR_VERSION <= 13  # onnxruntime 1.31 reads IR <= 13
    model = export(make_module("mpt"))
    assert model.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_interface_checker_and_shape_inference(kind, variant, dtype):
    module = make_module(kind)
    model = export(module, variant=variant, dtype=dtype)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(ins) == (["indices", "task_ids"] if kind == "mpt" else ["indices"])
    assert all(t.elem_type == onnx.TensorProto.INT64 for t in ins.values())
    dims = lambda t: [d.dim_param or d.dim_value for d in t.shape.dim]  # noqa: E731
    fixed_tokens = kind == "mpt" or (kind == "lstm_encoder" and variant == "folded")
    tokens = 3 if fixed_tokens else "tokens"
    assert dims(ins["indices"]) == ["batch", tokens]
    if kind == "mpt":
        assert dims(ins["task_ids"]) == ["task_batch"]
    (out,) = model.graph.output
    assert out.name == "prompt_embeddings" and out.type.tensor_type.elem_type == elem
    assert dims(out.type.tensor_type) == ["batch", tokens, 4]
    assert all(t.data_type == elem for t in model.graph.initializer if t.data_type != onnx.TensorProto.INT64)
    meta = metadata(model)
    assert (meta["kind"], meta["variant"], meta["dtype"]) == (kind, variant, dtype)
    assert json.loads(meta["config"])["token_dim"] == 4
    # no contrib ops, no layout=1, no Transpose feeding a MatMul (onnxruntime 1.32 CPU float16 crash)
    assert {n.domain for n in model.graph.node} == {""}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        assert all(a.name != "layout" or a.i == 0 for a in n.attribute)
        if n.op_type == "MatMul":
            assert producers.get(n.input[0]) != "Transpose"


def test_faithful_initializers_are_the_peft_tensors_under_their_keys():
    for kind in ("prompt_embedding", "mpt", "mlp_encoder"):
        module = make_module(kind)
        got = inits(export(module))
        for key, value in module.state_dict().items():
            np.testing.assert_array_equal(got[key], value.astype(np.float32), err_msg=key)


def test_faithful_lstm_uses_the_documented_derived_names():
    module = make_module("lstm_encoder", L=2)
    sd, got = module.state_dict(), inits(export(module))
    assert not any(k.startswith("lstm_head.weight") or k.startswith("lstm_head.bias") for k in got)
    for k in range(2):
        p = lambda n, s="": sd[f"lstm_head.{n}_l{k}{s}"]  # noqa: E731
        np.testing.assert_array_equal(got[f"lstm_head.W_l{k}"], _layout.lstm_w(p("weight_ih"), p("weight_ih", "_reverse")))
        np.testing.assert_array_equal(got[f"lstm_head.R_l{k}"], _layout.lstm_r(p("weight_hh"), p("weight_hh", "_reverse")))
        np.testing.assert_array_equal(got[f"lstm_head.B_l{k}"], _layout.lstm_b(
            p("bias_ih"), p("bias_hh"), p("bias_ih", "_reverse"), p("bias_hh", "_reverse")))
    assert sum(n.op_type == "LSTM" for n in export(module).graph.node) == 2
    for name in ("embedding.weight", "mlp_head.0.weight", "mlp_head.2.bias"):
        np.testing.assert_array_equal(got[name], sd[name])


@pytest.mark.parametrize("kind", KINDS)
def test_folded_tables(kind):
    module = make_module(kind)
    model = export(module, variant="folded")
    got = inits(model)
    T = module.total_virtual_tokens
    if kind == "prompt_embedding":
        table = got["embedding.weight"]
        np.testing.assert_array_equal(table, module.state_dict()["embedding.weight"])
    elif kind == "mpt":
        want = module.forward(np.tile(np.arange(T), (3, 1)), np.arange(3))  # K,T,D from the class
        table = got["task_prompt_table"]
        assert_close("task_prompt_table", table, want, tol.REORDER_F32)
    else:
        table = got["prompt_table"]
        assert_close("prompt_table", table, module.eval().prompt_table(), tol.REORDER_F32)
    # a folded graph computes nothing at run time: what it returns are its stored table's rows, bit for bit
    feeds = {"indices": np.tile(np.arange(T), (3, 1))}
    if kind == "mpt":
        feeds["task_ids"] = np.array([2, 0, 1])
    out = run_model(model, feeds)
    want_rows = table[feeds["task_ids"]] if kind == "mpt" else table[feeds["indices"]]
    np.testing.assert_array_equal(out, want_rows)


def test_train_mode_encoder_with_dropout_exports_eval_semantics():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = make_module("lstm_encoder", L=2, p=0.5)
    assert module.training
    idx = np.tile(np.arange(3), (2, 1))
    got = run_model(export(module), {"indices": idx})
    check = check_output("train-mode export", module.eval(), {"indices": idx}, got)  # eval: the reference without dropout
    assert check.ok, check.describe()


def test_inference_mode_encoder_exports_a_lookup():
    config = mpt_ref.PromptEncoderConfig(num_virtual_tokens=3, token_dim=4, inference_mode=True)
    module = mpt_ref.PromptEncoder(config, seed=0)
    model = export(module)
    assert metadata(model)["kind"] == "prompt_embedding"
    idx = np.array([[2, 0, 1]])
    np.testing.assert_array_equal(run_model(model, {"indices": idx}), module.forward(idx))


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sub" / "m.onnx"
    model = export(make_module("mpt"), path)
    assert onnx.load(path) == model
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        export(make_module("mpt", seed=1), path)
    assert path.read_bytes() == before
    export(make_module("mpt", seed=1), path, overwrite=True)
    assert path.read_bytes() != before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no temp files left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variant="fused"), "variant: expected one of"),
        (dict(dtype="float64"), "dtype: expected one of"),
        (dict(dtype="bfloat16"), "dtype: expected one of"),
        (dict(opset=20), "opset: expected 21"),
        (dict(opset=True), "opset: expected 21"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        export(make_module("prompt_embedding"), **kwargs)


def test_refuses_other_modules(tmp_path):
    with pytest.raises(InputError, match="module: expected an mpt_ref PromptEmbedding"):
        export({"embedding.weight": np.zeros((2, 2))})
    assert not list(tmp_path.iterdir())


# -- CLI and demo -----------------------------------------------------------------------------------


def test_cli_export_writes_reports_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "-o", str(out), "--kind", "lstm_encoder", "--variant", "folded", "--dtype", "float16"]) == 0
    text = capsys.readouterr().out
    assert "verdict: PASS" in text and "max ulp" in text and "tolerance cpu" in text
    assert cli_main(["export", "-o", str(out), "--kind", "lstm_encoder"]) == 2
    assert "expected a new file" in capsys.readouterr().err
    assert cli_main(["export", "-o", str(out), "--kind", "lstm_encoder", "--force", "--providers", "cpu,onnx-reference"]) == 0


def test_cli_parity_fails_with_exit_1_on_other_weights(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "-o", str(out), "--kind", "mpt", "--seed", "3"]) == 0
    assert cli_main(["parity", str(out), "--kind", "mpt", "--seed", "3"]) == 0
    assert cli_main(["parity", str(out), "--kind", "mpt", "--seed", "4"]) == 1
    assert "verdict: FAIL" in capsys.readouterr().out
    assert cli_main(["parity", str(out), "--kind", "mlp_encoder"]) == 2
    assert cli_main(["parity", str(tmp_path / "missing.onnx")]) == 2
    assert cli_main(["parity", str(out), "--providers", "tpu"]) == 2


def test_cli_config_and_checkpoint(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.numpy")
    module = make_module("mlp_encoder", N=4, D=6, H=3, seed=7)
    module.config.save_pretrained(tmp_path)
    ckpt = tmp_path / "w.safetensors"
    safetensors.save_file(module.state_dict(), str(ckpt))
    out = tmp_path / "m.onnx"
    assert cli_main(["export", "-o", str(out), "--config", str(tmp_path), "--checkpoint", str(ckpt)]) == 0
    # the config on disk says inference_mode=true (as PEFT writes it), the checkpoint has the heads
    assert metadata(onnx.load(out))["kind"] == "mlp_encoder"
    idx = np.tile(np.arange(4), (2, 1))
    check = check_output("exported from files", module, {"indices": idx}, run_model(out, {"indices": idx}))
    assert check.ok, check.describe()
    # a PEFT adapter file: only prompt_embeddings (the encoder output) -> the lookup of that table
    safetensors.save_file({"prompt_embeddings": module.prompt_table()}, str(tmp_path / "adapter_model.safetensors"))
    out2 = tmp_path / "m2.onnx"
    assert cli_main(["export", "-o", str(out2), "--config", str(tmp_path), "--checkpoint",
                     str(tmp_path / "adapter_model.safetensors")]) == 0
    assert metadata(onnx.load(out2))["kind"] == "prompt_embedding"
    assert_close("adapter table", run_model(out2, {"indices": idx}), module.forward(idx), tol.REORDER_F32)
    assert cli_main(["export", "-o", str(tmp_path / "x.onnx"), "--config", str(tmp_path),
                     "--checkpoint", str(tmp_path / "w.bin")]) == 2  # .bin is read (without torch); this one is missing
    assert "missing path" in capsys.readouterr().err


def test_demo_hook(capsys):
    assert export_and_check(make_module("mpt"))
    text = capsys.readouterr().out
    assert "ONNX parity: PASS" in text
    for variant, dtype in DEMO_EXPORTS:  # one verdict line per export and provider
        assert any(variant in line and dtype in line and line.rstrip().endswith("OK") for line in text.splitlines())


def test_opset_doc_lists_every_operator_version_used():
    import re

    from onnx import defs

    from onnx_export import opset

    documented = set(re.findall(r"\b([A-Z][A-Za-z]+)-(\d+)\b", opset.__doc__))
    def ops(graph):  # the nodes of a graph and of its If branches
        for n in graph.node:
            yield n.op_type
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from ops(a.g)

    used = set()
    for kind in KINDS:
        for variant in VARIANTS:
            used |= set(ops(export(make_module(kind), variant=variant).graph))
    assert documented == {(op, str(defs.get_schema(op, OPSET).since_version)) for op in used}
