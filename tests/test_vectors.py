"""The committed conformance vectors: integrity, reproducibility, the verifier, the error contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import mpt_ref
import mpt_ref.cli
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.verify import verify_directory
from mpt_ref.conformance.cases import CASES
from mpt_ref.conformance.errors import ERROR_CASES, check_error_case
from mpt_ref.testing.assertions import assert_close

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"
NAMES = sorted(c.name for c in CASES)


def test_index_lists_every_case_with_matching_hashes():
    index = vec.read_index(VECTORS)
    assert sorted(index["cases"]) == NAMES and index["spec_version"] == mpt_ref.SPEC_VERSION
    for name in NAMES:
        vec.read_case(VECTORS, name)  # raises on a sha256 mismatch


@pytest.mark.parametrize("name", NAMES)
def test_committed_vector_matches_a_fresh_reference_run(name, tmp_path):
    """Regenerate the case and compare with its own tolerance (bit-identical on the machine that
    generated it; another BLAS may differ by a few ulp)."""
    spec = next(c for c in CASES if c.name == name)
    committed = vec.read_case(VECTORS, name)
    vec.write_vectors(tmp_path / "v", [spec])
    fresh = vec.read_case(tmp_path / "v", name)
    assert fresh.record == committed.record
    for group in vec.TENSOR_FILES:
        assert set(fresh.tensors[group]) == set(committed.tensors[group]), group  # safetensors keeps no order
        for key, want in committed.tensors[group].items():
            got = fresh.tensors[group][key]
            assert got.dtype == want.dtype, (group, key)
            if np.issubdtype(want.dtype, np.integer):
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(f"{name} {group}/{key}", got, want, committed.tol)


def test_regeneration_is_bit_identical(tmp_path):
    vec.write_vectors(tmp_path / "a", CASES)
    vec.write_vectors(tmp_path / "b", CASES)
    assert vec.read_index(tmp_path / "a") == vec.read_index(tmp_path / "b")


def test_grads_mirror_params_and_dtypes_are_the_cases():
    for name in NAMES:
        case = vec.read_case(VECTORS, name)
        params, grads = case.tensors["params"], case.tensors["grads"]
        assert set(grads) == set(params)
        assert all(g.shape == params[k].shape and g.dtype == np.dtype(case.record["dtype"]) for k, g in grads.items())


def test_write_refuses_existing_and_leaves_no_partial_output(tmp_path):
    out = tmp_path / "v"
    out.mkdir()
    with pytest.raises(mpt_ref.OutputExistsError):
        vec.write_vectors(out, CASES[:1])
    bad = CASES[0].__class__("broken", "mpt", {"peft_type": "MULTITASK_PROMPT_TUNING", "num_virtual_tokens": 0},
                              "invalid config")
    with pytest.raises(mpt_ref.ConfigError):
        vec.write_vectors(tmp_path / "w", [CASES[0], bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no staging directory left behind


def reference_candidate(tmp_path: Path, names=NAMES) -> Path:
    cand = tmp_path / "candidate"
    for name in names:
        case = vec.read_case(VECTORS, name)
        (cand / name).mkdir(parents=True)
        save_file(case.tensors["output"], str(cand / name / "output.safetensors"))
        save_file(case.tensors["grads"], str(cand / name / "grads.safetensors"))
    return cand


def test_verifier_passes_the_reference_and_flags_tampering(tmp_path):
    cand = reference_candidate(tmp_path)
    assert all(c.ok for c in verify_directory(VECTORS, cand).checks)
    name = "lstm_l2"
    grads = vec.read_case(VECTORS, name).tensors["grads"]
    grads["lstm_head.bias_hh_l1_reverse"] = grads["lstm_head.bias_hh_l1_reverse"] * (1 + 1e-8)
    save_file(grads, str(cand / name / "grads.safetensors"))
    (cand / "pt_basic" / "output.safetensors").unlink()
    failed = {(c.case, c.tensor, c.note) for c in verify_directory(VECTORS, cand).checks if not c.ok}
    assert failed == {(name, "grad lstm_head.bias_hh_l1_reverse", ""), ("pt_basic", "output", "missing")}


def test_verify_cli_exit_codes(tmp_path, capsys):
    cand = reference_candidate(tmp_path, ["mpt_k3_r2"])
    assert mpt_ref.cli.main(["verify", "--vectors", str(VECTORS), "--candidate", str(cand)]) == 1  # others missing
    out = capsys.readouterr().out
    assert "mpt_k3_r2" in out and "FAILED" in out
    sub = tmp_path / "sub"
    shutil.copytree(VECTORS, sub)
    index = json.loads((sub / "index.json").read_text())
    index["cases"] = {"mpt_k3_r2": index["cases"]["mpt_k3_r2"]}
    (sub / "index.json").write_text(json.dumps(index))
    assert mpt_ref.cli.main(["verify", "--vectors", str(sub), "--candidate", str(cand)]) == 0


def test_corrupted_vector_file_is_detected(tmp_path):
    copy = tmp_path / "v"
    shutil.copytree(VECTORS, copy)
    path = copy / "mpt_k3_r2" / "output.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(mpt_ref.CheckpointError, match="sha256"):
        vec.read_case(copy, "mpt_k3_r2")


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["name"] for c in ERROR_CASES])
def test_error_contract_entries_hold_for_the_reference(case):
    exc = check_error_case(case)
    assert type(exc).__name__ == case["error"], exc
    assert isinstance(exc, getattr(__import__("builtins"), case["builtin"]))


def test_committed_error_contract_is_current():
    on_disk = json.loads((VECTORS / "errors.json").read_text())
    assert on_disk["cases"] == json.loads(json.dumps(list(ERROR_CASES)))


@pytest.mark.parametrize("name", NAMES)
def test_onnx_backend_layout_runs_in_onnxruntime(name):
    """model.onnx + test_data_set_0 as an ONNX backend runner would use them."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from mpt_ref.tolerances import ONNX_PARITY

    case_dir = VECTORS / name / "onnx"
    vec.read_case(VECTORS, name)  # hashes, including the onnx files
    model = onnx.load(str(case_dir / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    data = case_dir / "test_data_set_0"
    feeds = {}
    for path in sorted(data.glob("input_*.pb")):
        t = onnx.TensorProto()
        t.ParseFromString(path.read_bytes())
        feeds[t.name] = numpy_helper.to_array(t)
    out = onnx.TensorProto()
    out.ParseFromString((data / "output_0.pb").read_bytes())
    want = numpy_helper.to_array(out)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    tol = ONNX_PARITY[("float32", "cpu")]
    scale = float(np.abs(want).max()) or 1.0
    assert_close(name, got, want, tol._replace(atol=tol.atol * scale))  # atol relative to the prompt scale
