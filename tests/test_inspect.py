"""``mpt-ref inspect``: dtypes as stored (bfloat16 is not shown as the float32 it is read as), an ONNX
model's metadata and signature, and the files and tensors of an adapter whose kind mpt-ref cannot build."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

import mpt_ref
from mpt_ref.cli import main

# torch.save of {"w": a (2, 2) tensor}, written by hand (no torch): the storage type is the dtype as stored
PICKLE = (b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(("
          b"X\x07\x00\x00\x00storagectorch\n%s\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
          b"K\x00K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtRs.")


def _torch_zip(storage_type: bytes, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", PICKLE % storage_type)
        zf.writestr("archive/byteorder", b"little")
        zf.writestr("archive/version", b"3\n")
        zf.writestr("archive/data/0", data)
    return buf.getvalue()


def _bf16(values: np.ndarray) -> bytes:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()


def _safetensors_bf16(path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for key, v in tensors.items():
        raw = _bf16(v)
        header[key] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def _inspect(capsys, path) -> str:
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_bfloat16_tensors_are_shown_as_stored(tmp_path, capsys, fmt):
    """Was: a BF16 tensor listed as float32 (the dtype mpt-ref widens it to)."""
    values = np.array([[1.0, -2.0], [0.5, 3.0]])
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        _safetensors_bf16(path, {"w": values})
        save_file({"v": values.astype(np.float16)}, str(tmp_path / "v.safetensors"))
        assert " float16 " in _inspect(capsys, tmp_path / "v.safetensors")
    else:
        path = tmp_path / "w.bin"
        path.write_bytes(_torch_zip(b"BFloat16Storage", _bf16(values)))
        (tmp_path / "f.bin").write_bytes(_torch_zip(b"FloatStorage", values.astype("<f4").tobytes()))
        assert " float32 " in _inspect(capsys, tmp_path / "f.bin")
    line = next(x for x in _inspect(capsys, path).splitlines() if x.strip().startswith("w "))
    assert "(2, 2)" in line and " bfloat16 " in line and "float32" not in line


def test_an_onnx_file_shows_its_metadata_inputs_and_outputs(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    assert main(["export", "-o", str(model), "--kind", "mpt", "--seed", "3"]) == 0
    capsys.readouterr()
    out = _inspect(capsys, model)
    assert "graph 'mpt_ref_mpt_folded'" in out and "opsets ai.onnx" in out
    assert "  mpt_ref.kind = mpt" in out and "  mpt_ref.init_seed = 3" in out and '"num_virtual_tokens": 10' in out
    inputs = out[out.index("inputs:"):out.index("outputs:")]
    assert "indices                  int64    [batch, 10]" in inputs and "task_ids" in inputs
    assert "prompt_embeddings        float32  [batch, 10, 32]" in out[out.index("outputs:"):]
    assert f"sha256 {hashlib.sha256(model.read_bytes()).hexdigest()}" in out  # was: only this


def test_an_adapter_of_a_kind_mpt_ref_cannot_build_is_still_listed(tmp_path, capsys):
    """Was: a LoRA adapter refused with "peft_type: expected one of [...], got 'LORA'"."""
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "task_type": "CAUSAL_LM"}))
    save_file({"base_model.model.q_proj.lora_A.weight": np.zeros((4, 16), np.float32),
               "base_model.model.q_proj.lora_B.weight": np.zeros((16, 4), np.float32)},
              str(tmp_path / "adapter_model.safetensors"))
    out = _inspect(capsys, tmp_path)
    assert "peft_type 'LORA'" in out and "cannot build this one" in out
    assert "adapter_config.json" in out and "adapter_model.safetensors" in out
    assert "base_model.model.q_proj.lora_A.weight" in out and "(4, 16)" in out


def test_a_prompt_adapter_with_a_bad_config_is_still_an_error(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": -1}))
    assert main(["inspect", str(tmp_path)]) == 2
    assert "num_virtual_tokens" in capsys.readouterr().err


def test_a_prompt_adapter_shows_its_config(tmp_path, capsys):
    config = mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=8)
    mpt_ref.PromptEmbedding(config, seed=0).save_pretrained(tmp_path / "ad")
    out = _inspect(capsys, tmp_path / "ad")
    assert out.startswith("config (PromptTuningConfig):") and "prompt_embeddings" in out and " float32 " in out
