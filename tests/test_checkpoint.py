"""Checkpoint I/O: the hardened safetensors reader, torch .bin without torch, atomic writes."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save

import mpt_ref
from mpt_ref.io.checkpoint import parse_safetensors, read_tensors, write_safetensors
from mpt_ref.io.torch_pickle import read_torch_checkpoint

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]


@st.composite
def tensor_dicts(draw):
    keys = draw(st.lists(st.text("abc._0123", min_size=1, max_size=8), min_size=1, max_size=4, unique=True))
    return {k: draw(hnp.arrays(draw(st.sampled_from(DTYPES)), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
            for k in keys}


@given(tensor_dicts())
def test_reader_agrees_with_the_safetensors_library(tensors):
    data = save(tensors, metadata={"format": "pt"})
    got, meta = parse_safetensors(data)
    assert meta == {"format": "pt"} and set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)


def header_file(header: dict, body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + body


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "header too small"),
        ((10**12).to_bytes(8, "little") + b"{}", "header too large"),
        ((4).to_bytes(8, "little") + b"\xff\xfe{}", "UTF-8"),
        (header_file([]), "invalid JSON"),
        (header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), "not fully covered"),
        (header_file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "invalid shape"),
        (header_file({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8), "unsupported dtype"),
        (header_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "invalid JSON"),
        (header_file({"a": {"dtype": "F32", "shape": [2**39, 2**39], "data_offsets": [0, 8]}}, b"\0" * 8), "overflow"),
        (header_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "invalid offset"),
        (header_file({"__metadata__": {"x": 1}}), "invalid JSON"),
        # regression: the old hand-written parser accepted these, the safetensors library refuses them
        (header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "not fully covered"),
        (header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "invalid offset"),
    ],
)
def test_broken_safetensors_raise_checkpoint_error(data, match):
    with pytest.raises(mpt_ref.CheckpointError, match=match):
        parse_safetensors(data)


def test_acceptance_is_the_safetensors_librarys():
    """An extra field in a tensor entry: the library ignores it, so does mpt-ref (the old parser refused)."""
    data = header_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}}, b"\0\0\x80?")
    np.testing.assert_array_equal(parse_safetensors(data)[0]["a"], np.ones(1, np.float32))


def test_bfloat16_is_widened_exactly(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80], dtype="<u2")  # 1.0, -2.0, inf
    data = header_file({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, bits.tobytes())
    np.testing.assert_array_equal(parse_safetensors(data)[0]["a"], np.array([1.0, -2.0, np.inf], np.float32))


def test_size_cap_and_missing_file(tmp_path):
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"a": np.zeros(100, np.float32)})
    with pytest.raises(mpt_ref.CheckpointError, match="at most 64 bytes"):
        read_tensors(path, max_bytes=64)
    with pytest.raises(mpt_ref.CheckpointError, match="missing path"):
        read_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(mpt_ref.CheckpointError, match="suffix"):
        read_tensors(tmp_path / "a.npz")


def test_write_is_atomic_and_refuses_overwrite(tmp_path):
    path = tmp_path / "a.safetensors"
    write_safetensors(path, {"a": np.ones(2, np.float32)})
    with pytest.raises(mpt_ref.OutputExistsError):
        write_safetensors(path, {"a": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(read_tensors(path)["a"], np.ones(2, np.float32))
    with pytest.raises(mpt_ref.CheckpointError, match="dtype"):
        write_safetensors(tmp_path / "b.safetensors", {"a": np.zeros(2, np.complex64)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]  # nothing partial left


# -- torch .bin without torch ------------------------------------------------------------------------

@pytest.mark.peft
def test_torch_saved_checkpoints_read_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.randn(4, 6, dtype=torch.float64)
    sd = {
        "prompt_embeddings": torch.randn(3, 4),
        "prefix_task_cols": torch.randn(2, 3, 2).transpose(1, 2),   # non-contiguous strides
        "view": base[1:, 2:5],                                        # storage offset
        "bf16": torch.randn(5, dtype=torch.bfloat16),
        "half": torch.randn(2, 2, dtype=torch.float16),
        "ids": torch.arange(6),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.ones(2)),
    }
    torch.save(sd, tmp_path / "adapter_model.bin")
    got = read_torch_checkpoint(tmp_path / "adapter_model.bin")
    assert set(got) == set(sd)
    for k, v in sd.items():
        want = v.detach().float().numpy() if v.dtype == torch.bfloat16 else v.detach().numpy()
        assert got[k].dtype == want.dtype, k
        np.testing.assert_array_equal(got[k], want)


def test_non_zip_and_legacy_pickles_are_refused(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"\x80\x02}q\x00.")  # a bare (legacy-format) pickle
    with pytest.raises(mpt_ref.CheckpointError, match="zip checkpoint"):
        read_torch_checkpoint(tmp_path / "a.bin")
    with zipfile.ZipFile(tmp_path / "b.bin", "w") as zf:
        zf.writestr("x/other.txt", b"hi")
    with pytest.raises(mpt_ref.CheckpointError, match="data.pkl"):
        read_torch_checkpoint(tmp_path / "b.bin")
