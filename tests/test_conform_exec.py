"""``mpt-ref conform --exec`` and ``verify --exec``: ports in another language through the protocol of
spec/conform-protocol.md. The C99 port of tests/ports/c (MPT and the MLP encoder) is compiled with the
system ``cc``; its planted bugs must all be caught, each with its shrunk case written as a vectors folder.
A Python port process (tests/ports/py_port.py) plays the failure modes: crash, hang, log lines on stdout,
an error reply, a wrong output key, dropout left on in eval calls.

The no-false-alarm measurement (spec/conform-protocol.md records it) is the same test with more cases:

    MPT_REF_CONFORM_EXAMPLES=2000 python -m pytest -q tests/test_conform_exec.py -k the_c_port_conforms
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from safetensors.numpy import load_file

import mpt_ref.cli
from mpt_ref.modules.config import config_from_dict

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "ports" / "c" / "mpt_port.c"
PY_PORT = HERE / "ports" / "py_port.py"
EXAMPLES = int(os.environ.get("MPT_REF_CONFORM_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def c_port(tmp_path_factory) -> str:
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler: the system `cc` is needed to build tests/ports/c/mpt_port.c")
    exe = tmp_path_factory.mktemp("c_port") / "mpt_port"
    subprocess.run([cc, "-std=c99", "-O2", "-Wall", "-Werror", "-o", str(exe), str(C_SOURCE), "-lm"], check=True)
    return str(exe)


def py_port(mode: str) -> str:
    return f"{sys.executable} {PY_PORT} {mode}"


def conform(*args: str) -> int:
    return mpt_ref.cli.main(["conform", "--quiet", *args])


@pytest.fixture
def env_bug(monkeypatch):
    def set_bug(name: str | None) -> None:
        if name:
            monkeypatch.setenv("MPT_PORT_BUG", name)
        else:
            monkeypatch.delenv("MPT_PORT_BUG", raising=False)
    return set_bug


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("module", ["mpt", "mlp_encoder"])
def test_the_c_port_conforms(c_port, module, dtype, tmp_path, capsys, env_bug):
    env_bug(None)
    report = tmp_path / "report.json"
    assert conform("--exec", c_port, "--module", module, "--dtype", dtype, "--examples", str(EXAMPLES),
                   "--seed", "0", "--json", str(report), "--out", str(tmp_path / "f")) == 0, capsys.readouterr().out
    body = json.loads(report.read_text())
    assert body["verdict"] == "PASS" and body["cases"] >= EXAMPLES and body["mpt_ref_version"]
    assert body["dtype"] == dtype and body["seed"] == 0 and body["module"] == module
    assert not (tmp_path / "f").exists()


# bug -> (module, what the message must say, a check of the shrunk case's config)
C_BUGS = {
    "mpt_d_tail": ("mpt", "output:", lambda cfg: cfg["token_dim"] > 8),       # only past a vector width
    "mpt_task_off": ("mpt", "entries off", lambda cfg: cfg["num_tasks"] >= 2),
    "mpt_overwrite": ("mpt", "grad embedding.weight", lambda cfg: True),
    "mpt_batch_tail": ("mpt", "output:", lambda cfg: True),
    "keep_grads": ("mlp_encoder", "keeps state between calls", lambda cfg: True),
    "wrong_dtype": ("mpt", "dtype float64 != expected float32", lambda cfg: True),
    "mlp_relu_grad": ("mlp_encoder", "grad", lambda cfg: True),
    "mlp_h_tail": ("mlp_encoder", "output:", lambda cfg: (cfg["encoder_hidden_size"] or cfg["token_dim"]) > 4),
    "mlp_bias_once": ("mlp_encoder", "bias", lambda cfg: True),
}


@pytest.mark.parametrize("bug", sorted(C_BUGS))
def test_planted_c_bug_is_caught_shrunk_and_written_as_a_vector(c_port, bug, tmp_path, capsys, env_bug):
    module, says, fits = C_BUGS[bug]
    env_bug(bug)
    out = tmp_path / "failure"
    assert conform("--exec", c_port, "--module", module, "--examples", str(EXAMPLES), "--seed", "0",
                   "--out", str(out), "--json", str(tmp_path / "r.json"), "--junit-xml", str(tmp_path / "r.xml")) == 1
    text = capsys.readouterr().out
    assert says in text and "FAIL" in text.splitlines()[-1] and str(out) in text
    junit = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert int(junit.get("failures")) >= 1 and json.loads((tmp_path / "r.json").read_text())["failure_dir"] == str(out)
    index = json.loads((out / "index.json").read_text())
    (name,) = index["cases"]
    case = out / name
    record = json.loads((case / "case.json").read_text())
    assert fits(record["config"]), record["config"]
    fields = {f.name for f in dataclasses.fields(config_from_dict(record["config"]))}
    assert fields <= set(record["config"])  # every field written, PEFT's defaults too
    bounds = load_file(str(case / "bounds.safetensors"))
    assert set(bounds) == {"output", *load_file(str(case / "params.safetensors"))}
    assert "mpt-ref verify --vectors" in (out / "README.md").read_text()
    # the written case is a vectors folder: verify --exec re-runs it, failing with the bug, passing without
    assert mpt_ref.cli.main(["verify", "--vectors", str(out), "--exec", c_port, "--quiet"]) == 1
    env_bug(None)
    assert mpt_ref.cli.main(["verify", "--vectors", str(out), "--exec", c_port, "--quiet"]) == 0
    capsys.readouterr()


def test_c_port_through_the_golden_vectors_needs_the_module_hint(c_port, capsys, env_bug):
    env_bug(None)
    assert mpt_ref.cli.main(["verify", "--exec", c_port, "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "hint: " in out and "--module mlp_encoder" in out
    assert "implements mpt and mlp_encoder only" in out  # the port's own error message
    assert mpt_ref.cli.main(["verify", "--exec", c_port, "--module", "mpt", "--quiet"]) == 0


@pytest.mark.parametrize("mode, says", [
    ("crash", "crash: the port exited without replying (exit status 7); stderr: ...segfault-ish"),
    ("hang", "no reply within 2 s"),
    ("garbage", "protocol: expected a reply 'ok' or 'error <message>', got 'loading weights...'"),
    ("error", "error: the port reported: no such kernel"),
    ("out_key", "no key 'output' (keys found: ['out'])"),
])
def test_each_port_failure_is_reported_as_what_it_is(mode, says, tmp_path, capsys):
    assert conform("--exec", py_port(mode), "--module", "mpt", "--examples", "3", "--seed", "0", "--no-shrink",
                   "--timeout-per-case", "2", "--out", str(tmp_path / "f")) == 1
    out = capsys.readouterr().out
    assert says in out
    if mode == "hang":  # one timeout ends the run: each further case (drawn, shrunk, re-run) would wait it out
        assert "disagrees after 1 cases" in out


def test_per_case_mode_and_a_correct_python_port(tmp_path, capsys):
    assert conform("--exec", py_port("correct"), "--module", "lstm_encoder", "--examples", "4", "--seed", "1",
                   "--per-case") == 0
    assert conform("--exec", py_port("correct"), "--module", "prompt_embedding", "--dtype", "float64",
                   "--examples", "4", "--seed", "1", "--stats") == 0
    assert "cases/s of generation + judging" in capsys.readouterr().out


def test_a_port_left_in_train_mode_is_caught(tmp_path, capsys):
    """Eval cases with encoder_dropout > 0 and L >= 2 are drawn (the edge case is one): random dropout in
    an eval call changes the result from one call to the next."""
    assert conform("--exec", py_port("train"), "--module", "lstm_encoder", "--examples", "5", "--seed", "0",
                   "--no-shrink", "--out", str(tmp_path / "f")) == 1
    assert "keeps state between calls (e.g. gradients accumulated and never zeroed) or is not deterministic" in \
        capsys.readouterr().out


def test_bad_usage_is_exit_2(tmp_path, capsys):
    assert conform("--exec", "/nonexistent/port", "--module", "mpt", "--examples", "1") == 2
    assert "--exec: cannot start" in capsys.readouterr().err
    assert conform("--exec", py_port("correct"), "--module", "mpt", "--dtype", "bfloat16") == 2
    assert "dtype: expected one of float64, float32, float16, got 'bfloat16'" in capsys.readouterr().err
    assert conform("--exec", "", "--module", "mpt") == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert conform("--exec", py_port("zeros"), "--module", "mpt", "--out", str(tmp_path / "mine")) == 2
    assert "not replaced" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()


def test_case_json_writes_every_config_field(tmp_path):
    from mpt_ref.conformance.case_dir import write_case_dir
    from mpt_ref.modules.config import PromptEncoderConfig
    from mpt_ref.kind import Kind
    from mpt_ref.testing import engine

    (case,) = engine.edge_cases(Kind.LSTM_ENCODER, np.dtype(np.float32), None)
    d = write_case_dir(tmp_path / "c", "c", Kind.LSTM_ENCODER, case, engine.precision_class("float32"), True)
    rec = json.loads((d / "case.json").read_text())
    fields = {f.name for f in dataclasses.fields(PromptEncoderConfig)}
    assert fields <= set(rec["config"])
    assert rec["config"]["encoder_dropout"] == 0.5 and rec["mode"] == "eval" and rec["sizes"]["L"] == 2
    assert rec["sizes"]["H"] == case.config.encoder_hidden_size and rec["outputs"]["output"]["dtype"] == "float32"


def test_verify_exec_reports_state_kept_between_calls(c_port, capsys, env_bug):
    env_bug("keep_grads")
    assert mpt_ref.cli.main(["verify", "--exec", c_port, "--module", "mpt", "--quiet"]) == 1
    assert "keeps state between calls" in capsys.readouterr().out


def test_the_vectors_catch_a_port_left_in_train_mode(capsys):
    """The eval-mode vector with encoder_dropout = 0.5 and L = 3 fails a port that applies dropout there."""
    assert mpt_ref.cli.main(["verify", "--exec", py_port("train"), "--module", "lstm_encoder", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "lstm_eval_dropout" in out and "lstm_train_masks" not in out  # explicit masks: the port follows them


def test_one_path_for_both_reports_is_refused_before_any_case(tmp_path, capsys):
    """As verify: --json P --junit-xml P would silently replace one report with the other."""
    same = str(tmp_path / "report")
    assert conform("--exec", py_port("correct"), "--module", "mpt", "--examples", "1", "--json", same,
                   "--junit-xml", same) == 2
    err = capsys.readouterr().err
    assert "--junit-xml: expected another file than --json's" in err and not (tmp_path / "report").exists()
