"""``mpt-ref verify --onnx``: ONNX models made by anyone, checked against the reference."""

from __future__ import annotations

import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import save_file

import mpt_ref
import mpt_ref.cli
import onnx_export
from onnx_export.foreign import verify_onnx


def save_config(module, path):
    module.config.save_pretrained(path)
    return path


@pytest.mark.parametrize("variant", ["faithful", "folded"])
def test_our_mpt_exports_pass(tmp_path, variant):
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_tasks=3, num_ranks=2)
    module = mpt_ref.MultitaskPromptEmbedding(cfg, seed=1)
    onnx_export.export(module, tmp_path / "m.onnx", variant=variant)
    save_config(module, tmp_path)
    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    checkpoint = None if variant == "faithful" else tmp_path / "w.safetensors"  # folded has no PEFT-named factors
    report = verify_onnx(tmp_path / "m.onnx", tmp_path, checkpoint)
    assert report.ok, report.format()
    assert len(report.comparisons) == 4  # arange and random rows, at B=3 and B=1


def test_tampered_model_fails_with_exit_code_1(tmp_path, capsys):
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_tasks=2, num_ranks=1)
    module = mpt_ref.MultitaskPromptEmbedding(cfg, seed=2)
    model = onnx_export.export(module)
    save_config(module, tmp_path)
    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    for t in model.graph.initializer:
        if t.name == "prefix_task_rows":  # a port that transposed nothing but swapped the two tasks
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[::-1].copy(), t.name))
    onnx.save(model, tmp_path / "bad.onnx")
    code = mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "bad.onnx"), "--config", str(tmp_path),
                             "--checkpoint", str(tmp_path / "w.safetensors")])
    assert code == 1 and "FAIL" in capsys.readouterr().out


def test_missing_weights_are_explained(tmp_path):
    enc = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=3,
                                                             encoder_reparameterization_type="LSTM"), seed=0).eval()
    onnx_export.export(enc, tmp_path / "m.onnx")
    save_config(enc, tmp_path)
    with pytest.raises(mpt_ref.CheckpointError, match="--checkpoint"):
        verify_onnx(tmp_path / "m.onnx", tmp_path)


# -- torch.onnx.export of PEFT's modules -----------------------------------------------------------------

@pytest.mark.peft
@pytest.mark.parametrize("kind", ["mpt", "MLP", "LSTM"])
def test_torch_onnx_export_of_peft_modules_passes(tmp_path, kind):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from peft.tuners.multitask_prompt_tuning.model import MultitaskPromptEmbedding
    from peft.tuners.p_tuning.model import PromptEncoder

    torch.manual_seed(0)
    B, N, D = 2, 4, 6
    idx = torch.arange(N).repeat(B, 1)
    if kind == "mpt":
        cfg = peft.MultitaskPromptTuningConfig(num_virtual_tokens=N, token_dim=D, num_tasks=3, num_ranks=2,
                                               num_transformer_submodules=1, task_type="CAUSAL_LM")
        module, args, names = MultitaskPromptEmbedding(cfg, torch.nn.Embedding(1, 1)), (idx, torch.tensor([0, 2])), ["ids", "tasks"]
    else:
        cfg = peft.PromptEncoderConfig(num_virtual_tokens=N, token_dim=D, encoder_hidden_size=5, num_transformer_submodules=1,
                                       encoder_reparameterization_type=kind, encoder_num_layers=2, task_type="CAUSAL_LM")
        module, args, names = PromptEncoder(cfg), (idx,), ["ids"]
    module.eval()
    cfg.save_pretrained(str(tmp_path))
    save_file({k: v.detach().numpy() for k, v in module.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.onnx.export(module, args, str(tmp_path / "m.onnx"), input_names=names, output_names=["out"],
                      dynamic_axes={n: {0: "b"} for n in names + ["out"]}, dynamo=False)
    checkpoint = None if kind == "mpt" else tmp_path / "w.safetensors"  # torch renames converted LSTM/Gemm weights
    report = verify_onnx(tmp_path / "m.onnx", tmp_path, checkpoint)
    assert report.ok, report.format()
