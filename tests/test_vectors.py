"""The committed conformance vectors: integrity, reproducibility, the verifier, the error contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import mpt_ref
import mpt_ref.cli
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES, build_case_module
from mpt_ref.conformance.verify import verify_directory
from mpt_ref.conformance.case_record import case_setup
from mpt_ref.judge.bounds import check_tensor, expected

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "spec" / "vectors"
NAMES = sorted(c.name for c in CASES)
ONNX_NAMES = sorted(c.name for c in CASES if vec.has_onnx_layout(c))  # float32 / float64 eval-mode cases


def test_index_lists_every_case_with_matching_hashes():
    index = vec.read_index(VECTORS)
    assert sorted(index["cases"]) == NAMES and index["spec_version"] == mpt_ref.SPEC_VERSION
    for name in NAMES:
        vec.read_case(VECTORS, name)  # raises on a sha256 mismatch


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The vectors regenerated once in this process (two tests read them)."""
    return vec.write_vectors(tmp_path_factory.mktemp("regenerated") / "v", CASES)


def test_regeneration_is_bit_identical_to_the_committed_files(regenerated):
    """Every file of every case, regenerated here, has the sha256 that index.json recorded where the
    vectors were made: the outputs and gradients come from conformance/exact.py (exact sums, decimal
    sigmoid/tanh), so neither the BLAS nor NumPy's SIMD kernels enter them."""
    fresh, committed = vec.read_index(regenerated), vec.read_index(VECTORS)
    for name in NAMES:
        assert fresh["cases"][name]["files"] == committed["cases"][name]["files"], name


def test_regeneration_does_not_depend_on_the_blas_kernels(tmp_path):
    """Another OpenBLAS kernel set and one thread (different summation order and FMA use in the module's
    matmuls: 20 of 23 cases' NumPy outputs/gradients change bits here) give the same vector files."""
    env = {**os.environ, "OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = ("import sys; from mpt_ref.conformance import vectors as v; from mpt_ref.conformance.cases import CASES; "
            "v.write_vectors(sys.argv[1], CASES)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "v")], cwd=ROOT, env=env, check=True, timeout=300)
    assert vec.read_index(tmp_path / "v")["cases"] == vec.read_index(VECTORS)["cases"]


@pytest.mark.parametrize("name", NAMES)
def test_the_numpy_modules_conform_to_the_committed_vectors(name):
    """The classes' own (BLAS) forward and backward agree with the exact vectors within each entry's bound
    (bounds.safetensors, the criterion a port without mpt-ref uses)."""
    spec = next(c for c in CASES if c.name == name)
    committed = vec.read_case(VECTORS, name)
    module = build_case_module(spec)  # float16 cases: a float32 module holding the float16 values
    stored = committed.tensors["inputs"]
    inputs = {k: v for k, v in stored.items() if k in ("indices", "task_ids")}
    masks = [stored[f"dropout_mask_{k}"] for k in range(sum(k.startswith("dropout_mask_") for k in stored))]
    if masks:
        inputs["dropout_masks"] = masks
    for key, want in committed.tensors["params"].items():
        np.testing.assert_array_equal(module.state_dict()[key], want)
    dout = stored["grad_output"].astype(module.state_dict()["embedding.weight"].dtype)
    out = module.forward(**inputs)
    grads = module.backward(dout, **inputs)
    cast = (lambda x: x.astype(np.float16)) if spec.dtype == "float16" else (lambda x: x)
    bounds = committed.tensors["bounds"]
    assert cast(out).dtype == committed.tensors["output"]["output"].dtype
    check = check_tensor(name, "output", cast(out), committed.tensors["output"]["output"].astype(np.float64),
                         bounds["output"])
    assert check.ok, check.describe()
    for key, want in committed.tensors["grads"].items():
        assert cast(grads[key]).dtype == want.dtype
        check = check_tensor(name, f"grad {key}", cast(grads[key]), want.astype(np.float64), bounds[key])
        assert check.ok, check.describe()


def test_onnx_backend_test_loader_and_runner_load_the_cases_as_they_are():
    """onnx.backend.test: load_model_tests(data_dir=<case>, kind="onnx") finds onnx/test_<case>/, and the
    backend runner runs every case in onnxruntime with the case's data.json tolerances."""
    import unittest

    import onnxruntime.backend as ort_backend
    from onnx.backend.test.loader import load_model_tests
    from onnx.backend.test.runner import Runner

    runner = Runner(ort_backend, __name__)
    loaded = []
    for name in ONNX_NAMES:
        tests = load_model_tests(data_dir=str(VECTORS / name), kind="onnx")
        assert [t.name for t in tests] == [f"test_{name}"]
        loaded += tests
        for t in tests:
            runner._add_model_test(t, "onnx")  # the runner's own hook for on-disk model tests (as onnxruntime uses it)
    suite = unittest.TestSuite()
    for cls in runner.test_cases.values():
        for test in unittest.defaultTestLoader.loadTestsFromTestCase(cls):
            if test.id().endswith("_cpu") and any(f".test_{n}_cpu" in test.id() for n in ONNX_NAMES):
                suite.addTest(test)
    with open(os.devnull, "w") as sink:
        result = unittest.TextTestRunner(stream=sink, verbosity=0).run(suite)
    assert result.testsRun == len(ONNX_NAMES) and not result.skipped and result.wasSuccessful(), \
        (result.failures + result.errors)[:2]


def test_regeneration_is_bit_identical(tmp_path, regenerated):
    """A second regeneration in the same process writes the same files (no state carried between runs)."""
    vec.write_vectors(tmp_path / "b", CASES)
    assert vec.read_index(regenerated) == vec.read_index(tmp_path / "b")


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
    key = "lstm_head.bias_hh_l1_reverse"  # the published bounds catch it as well, without mpt-ref's code
    stored = vec.read_case(VECTORS, name).tensors
    assert not check_tensor(name, key, grads[key], stored["grads"][key], stored["bounds"][key]).ok


def test_bounds_file_is_the_error_model_around_the_stored_values():
    """bounds.safetensors = verify's per-entry bound + the stored value's own rounding (u of its dtype times
    |stored|), rounded up by less than 2^-11 (the bound's last bits differ between BLAS builds)."""
    for name in NAMES:
        case = vec.read_case(VECTORS, name)
        t, written = case.tensors, case.tensors["bounds"]
        assert set(written) == {"output", *t["grads"]}, name
        kind, pc, inputs, dout, scales = case_setup(case.record, t)
        ex = expected(kind, t["params"], inputs, dout, pc.dtype, dropout_scales=scales, rounding=pc.rounding)
        stored = {"output": t["output"]["output"], **t["grads"]}
        u = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11}[case.record["dtype"]]
        for key, bound in {"output": ex.output_bound, **ex.grad_bounds}.items():
            need = bound + u * np.abs(stored[key].astype(np.float64))
            assert written[key].dtype == np.float64 and written[key].shape == stored[key].shape, (name, key)
            assert np.all(need * (1 - 1e-12) <= written[key]), (name, key)
            assert np.all(written[key] <= need * (1 + 2.0 ** -11)), (name, key)


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


@pytest.mark.parametrize("name", ONNX_NAMES)
def test_onnx_backend_layout_runs_in_onnxruntime(name):
    """model.onnx + test_data_set_0 as an ONNX backend runner would use them: the graph's output judged
    against the case's float64 reference within the error model's per-entry bound of a float32 graph on
    CPU, output_0.pb the stored output rounded to float32, data.json's atol the largest such bound."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from onnx_export._spec import module_spec
    from onnx_export.parity import check_output, expected_with_bound, onnx_rounding

    case_dir = VECTORS / name / "onnx" / f"test_{name}"
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
    stored = vec.read_case(VECTORS, name).tensors["output"]["output"]
    np.testing.assert_array_equal(want, stored.astype(np.float32))
    module = build_case_module(next(c for c in CASES if c.name == name))
    check = check_output(name, module, feeds, got)
    assert check.ok, check.describe()
    data_json = json.loads((case_dir / "data.json").read_text())
    assert data_json["rtol"] == 0.0 and np.abs(got - want).max() <= data_json["atol"]
    _, bound = expected_with_bound(module_spec(module), feeds, "faithful", onnx_rounding("float32", "cpu"))
    need = (bound + 2.0 ** -24 * np.abs(want)).max()  # the largest bound, around the float32 output_0.pb
    assert need * (1 - 1e-12) <= data_json["atol"] <= need * (1 + 2.0 ** -11)
