"""``mpt-ref verify``: gradients required unless --forward-only, --module, one clear error for a missing
or empty candidate directory, --json / --junit-xml reports; --onnx reads the config from the model's
metadata and says when its weights came from the model itself."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import save_file

import mpt_ref
import mpt_ref.cli
import onnx_export
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.verify import selected_cases

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


def candidate(tmp_path: Path, names, grads: bool = True) -> Path:
    """The committed reference outputs (and grads) written as a candidate would."""
    cand = tmp_path / "cand"
    for name in names:
        case = vec.read_case(VECTORS, name)
        (cand / name).mkdir(parents=True)
        save_file(case.tensors["output"], str(cand / name / "output.safetensors"))
        if grads:
            save_file(case.tensors["grads"], str(cand / name / "grads.safetensors"))
    return cand


def verify(*args: str) -> int:
    return mpt_ref.cli.main(["verify", "--vectors", str(VECTORS), *args])


def test_missing_gradients_fail_unless_forward_only(tmp_path, capsys):
    names = selected_cases(VECTORS, "mpt")
    cand = candidate(tmp_path, names, grads=False)
    assert verify("--candidate", str(cand), "--module", "mpt") == 1
    out = capsys.readouterr().out
    assert "missing grads.safetensors" in out and "FAIL" in out.splitlines()[-1]
    assert verify("--candidate", str(cand), "--module", "mpt", "--forward-only") == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("PASS") and "forward only: gradients NOT checked" in last


def test_module_checks_one_kind_alone(tmp_path, capsys):
    names = selected_cases(VECTORS, "lstm_encoder")
    assert names and all(n.startswith("lstm") for n in names)
    cand = candidate(tmp_path, names)
    assert verify("--candidate", str(cand), "--module", "lstm") == 0  # 0.1 alias of lstm_encoder
    assert f"in {len(names)} cases" in capsys.readouterr().out
    assert verify("--candidate", str(cand)) == 1  # every other kind's cases are missing


@pytest.mark.parametrize("make", ["missing", "file", "empty", "unrelated"])
def test_unusable_candidate_directory_is_one_clear_error(tmp_path, capsys, make):
    path = tmp_path / "cand"
    if make == "file":
        path.write_text("x")
    elif make == "empty":
        path.mkdir()
    elif make == "unrelated":
        (path / "not_a_case").mkdir(parents=True)
    assert verify("--candidate", str(path)) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and "--candidate: expected" in err.err


def test_unknown_module_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # refused by argparse (type=kind_arg) before any work: exit 2
        verify("--candidate", str(tmp_path), "--module", "gru")
    assert exc.value.code == 2
    assert "kind: expected one of" in capsys.readouterr().err


def test_json_and_junit_reports(tmp_path):
    names = selected_cases(VECTORS, "mpt")
    cand = candidate(tmp_path, names)
    grads = vec.read_case(VECTORS, names[0]).tensors["grads"]
    grads["embedding.weight"] = grads["embedding.weight"] * 1.001
    save_file(grads, str(cand / names[0] / "grads.safetensors"))
    code = verify("--candidate", str(cand), "--module", "mpt", "--json", str(tmp_path / "r.json"),
                  "--junit-xml", str(tmp_path / "r.xml"))
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and report["verdict"].startswith("FAIL") and report["cases"] == names
    bad = [c for c in report["checks"] if not c["ok"]]
    assert [(c["case"], c["tensor"]) for c in bad] == [(names[0], "grad embedding.weight")]
    assert bad[0]["ratio"] > 1 and bad[0]["bound"] > 0
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) == len(report["checks"]) and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "entries off" in failure.get("message")


# -- --onnx ----------------------------------------------------------------------------------------------


def mpt_export(tmp_path: Path):
    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=3, token_dim=4, num_tasks=2, num_ranks=1)
    module = mpt_ref.MultitaskPromptEmbedding(cfg, seed=2)
    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    return module, onnx_export.export(module)


def test_onnx_config_from_metadata_and_weights_caveat(tmp_path, capsys):
    _, model = mpt_export(tmp_path)
    onnx.save(model, tmp_path / "m.onnx")
    assert mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "m.onnx")]) == 0  # no --config: metadata
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verdict: PASS") and "weights taken from the model itself" in last
    assert mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "m.onnx"), "--checkpoint",
                             str(tmp_path / "w.safetensors")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "verdict: PASS"


def test_onnx_conversion_bug_is_seen_only_with_a_checkpoint(tmp_path, capsys):
    _, model = mpt_export(tmp_path)
    for t in model.graph.initializer:
        if t.name == "prefix_task_rows":  # a converter that swapped the two tasks' rows
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(t)[::-1]), t.name))
    onnx.save(model, tmp_path / "bad.onnx")
    assert mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "bad.onnx")]) == 0
    assert "cannot be seen" in capsys.readouterr().out.splitlines()[-1]  # passes, and says why that means little
    assert mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "bad.onnx"), "--checkpoint",
                             str(tmp_path / "w.safetensors")]) == 1


def test_onnx_without_config_or_metadata_is_a_usage_error(tmp_path, capsys):
    _, model = mpt_export(tmp_path)
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "m.onnx")
    assert mpt_ref.cli.main(["verify", "--onnx", str(tmp_path / "m.onnx")]) == 2
    assert "--config: expected" in capsys.readouterr().err
