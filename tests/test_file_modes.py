"""Files mpt-ref writes follow the user's umask (0644 files, 0755 directories under the usual 022), so a
model exported for a server running as another user can be opened; atomic writes must not leave them
0600/0700 (mkstemp's modes)."""

from __future__ import annotations

import os
import stat

import pytest

import mpt_ref
import onnx_export
from mpt_ref.cli import main
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def _assert_modes(root, umask):
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert _mode(p) == want, f"{p}: mode {oct(_mode(p))}, expected {oct(want)} (umask {oct(umask)})"


def test_exported_onnx_follows_the_umask(tmp_path, umask_022):
    module = mpt_ref.MultitaskPromptEmbedding(mpt_ref.MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=3, num_tasks=2, num_ranks=1), seed=0)
    onnx_export.export(module, tmp_path / "m.onnx")
    _assert_modes(tmp_path / "m.onnx", umask_022)
    onnx_export.export(module, tmp_path / "m.onnx", overwrite=True)  # replacing keeps it readable too
    _assert_modes(tmp_path / "m.onnx", umask_022)


def test_adapter_directory_follows_the_umask(tmp_path, umask_022):
    cfg = mpt_ref.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=3, encoder_hidden_size=2)
    mpt_ref.PromptEncoder(cfg, seed=0).save_pretrained(tmp_path / "adapter")
    _assert_modes(tmp_path / "adapter", umask_022)


def test_vectors_and_cli_outputs_follow_the_umask(tmp_path, umask_022):
    vec.write_vectors(tmp_path / "vectors", CASES[:2])
    _assert_modes(tmp_path / "vectors", umask_022)
    (tmp_path / "pt_basic").mkdir()  # one case present but empty: a failed verdict
    assert main(["verify", "--candidate", str(tmp_path), "--json", str(tmp_path / "v.json")]) == 1
    _assert_modes(tmp_path / "v.json", umask_022)


def test_a_stricter_umask_is_honoured(tmp_path):
    old = os.umask(0o077)
    try:
        onnx_export.export(mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=3), seed=0), tmp_path / "m.onnx")
    finally:
        os.umask(old)
    _assert_modes(tmp_path / "m.onnx", 0o077)
