"""Serving exports, right or refused, checked, and written whole (spec/serving.md), without torch:

* refusals before any write: an adapter with ``task_type`` null, with a trained head (SEQ_CLS / TOKEN_CLS /
  QUESTION_ANS) or other ``modules_to_save`` keys, a base graph with a fixed sequence axis;
* the checks have teeth: a tampered model, table or word-embedding row fails, and a failing set replaces
  nothing;
* sets (prompt table + sidecar, Triton repository) under SIGKILL, a file-size quota and a full disk: the
  old set or the new one, never a mixture, and the retry is not refused as existing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from _kill import kill_writers
from _toy_base import masked_matmul_base
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file, save_file

from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig, PromptEmbedding, PromptTuningConfig
from mpt_ref.cli import main as cli_main
from mpt_ref.errors import ConfigError, InputError, OutputExistsError
from mpt_ref.io import atomic
from mpt_ref.io.staged import StagedSet
from mpt_ref.serve.model_check import check_whole_model
from mpt_ref.serve.prompt_table import check_prompt_table, write_prompt_table
from mpt_ref.serve.servable import check_servable
from mpt_ref.serve.triton import write_triton_repository
from mpt_ref.serve.whole_model import compose_model
from onnx_export import export

N, D, K, V = 3, 4, 3, 11
ROOT = Path(__file__).resolve().parents[1]
W = np.random.default_rng(5).normal(size=(V, D)).astype(np.float32)
U = np.random.default_rng(6).normal(size=(D, 7)).astype(np.float32)


def mpt(seed=1, n=N):
    return MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=D,
                                                                num_tasks=K, num_ranks=2), seed=seed)


def base_graph(seq="seq", batch="batch"):
    """logits = (inputs_embeds * mask) @ U, with the given batch / sequence dims."""
    return masked_matmul_base(U, batch=batch, seq=seq)


def files(tmp_path, base=None):
    """(adapter dir, base.onnx, weights) for export-model."""
    adapter = tmp_path / "adapter"
    mpt().save_pretrained(adapter)
    onnx.save(base if base is not None else base_graph(), str(tmp_path / "base.onnx"))
    save_file({"model.embed_tokens.weight": W}, str(tmp_path / "w.safetensors"))
    return adapter, tmp_path / "base.onnx", tmp_path / "w.safetensors"


def edit_adapter(adapter: Path, task_type="keep", extra=None):
    config = json.loads((adapter / "adapter_config.json").read_text())
    if task_type != "keep":
        config["task_type"] = task_type
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    if extra:
        tensors = load_file(str(adapter / "adapter_model.safetensors"))
        save_file({**tensors, **extra}, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})


def every_export(tmp_path, adapter, base_onnx, weights):
    """argv of every export of ``adapter`` and the path each would write."""
    return [
        (["export", str(adapter), "-o", str(tmp_path / "p.onnx")], tmp_path / "p.onnx"),
        (["export", str(adapter), "--format", "prompt-table", "-o", str(tmp_path / "table")], tmp_path / "table"),
        (["export", str(adapter), "--format", "triton", "-o", str(tmp_path / "repo")], tmp_path / "repo"),
        (["export-model", str(adapter), "--base-onnx", str(base_onnx), "--base-weights", str(weights), "-o",
          str(tmp_path / "m.onnx"), "--triton", str(tmp_path / "repo2")], tmp_path / "m.onnx"),
    ]


# --- right or refused -----------------------------------------------------------------------------------

@pytest.mark.parametrize("task_type,extra,match", [
    (None, None, "task_type"),
    ("SEQ_CLS", {"base_model.score.weight": np.ones((2, D), np.float32)}, "base_model.score.weight"),
    ("TOKEN_CLS", {"base_model.classifier.weight": np.ones((2, D), np.float32)}, "base_model.classifier.weight"),
    ("QUESTION_ANS", {"base_model.qa_outputs.weight": np.ones((2, D), np.float32)}, "base_model.qa_outputs.weight"),
    ("SEQ_CLS", None, "score"),  # a head task type without its keys: PEFT itself could not load it
    ("CAUSAL_LM", {"base_model.lm_head.weight": np.ones((V, D), np.float32)}, "lm_head"),
])
def test_exports_refuse_adapters_peft_does_not_serve_as_a_bare_prompt(tmp_path, capsys, task_type, extra, match):
    adapter, base_onnx, weights = files(tmp_path)
    edit_adapter(adapter, task_type, extra)
    for argv, written in every_export(tmp_path, adapter, base_onnx, weights):
        capsys.readouterr()
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err
        assert not written.exists(), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base.onnx", "w.safetensors"]


def test_check_servable_names_the_reason_for_a_module_without_task_type():
    module = PromptEmbedding(PromptTuningConfig(num_virtual_tokens=N, token_dim=D), seed=0)
    with pytest.raises(ConfigError, match="ignores the prompt"):
        check_servable(module)
    check_servable(mpt())  # a CAUSAL_LM module: served


@pytest.mark.parametrize("dims", [("seq", 2), (5, "batch"), (5, 2)])
def test_export_model_refuses_a_base_graph_with_a_fixed_sequence_axis(tmp_path, capsys, dims):
    """Before: a base exported without dynamic axes was accepted and failed at every call."""
    seq, batch = dims
    adapter, base_onnx, weights = files(tmp_path, base_graph(seq=seq, batch=batch))
    out = tmp_path / "m.onnx"
    rc = cli_main(["export-model", str(adapter), "--base-onnx", str(base_onnx), "--base-weights", str(weights),
                   "-o", str(out)])
    if seq == "seq":  # a fixed batch alone is fine: the check runs with that batch
        assert rc == 0 and "verdict: PASS" in capsys.readouterr().out
        return
    assert rc == 2 and "sequence axis" in capsys.readouterr().err and not out.exists()


def _reshape_fixed_base():
    """Declared dynamic, but a Reshape inside bakes in 5 positions (as a traced export does)."""
    model = base_graph()
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array([-1, 5, 7], dtype=np.int64), "fixed"))
    g.node[-1].output[0] = "raw"
    g.node.append(helper.make_node("Reshape", ["raw", "fixed"], ["logits"]))
    return model


def test_export_model_fails_its_check_and_writes_nothing_for_a_base_with_baked_shapes(tmp_path, capsys):
    adapter, base_onnx, weights = files(tmp_path, _reshape_fixed_base())
    out = tmp_path / "m.onnx"
    rc = cli_main(["export-model", str(adapter), "--base-onnx", str(base_onnx), "--base-weights", str(weights),
                   "-o", str(out), "--triton", str(tmp_path / "repo")])
    text = capsys.readouterr().out
    assert rc == 1 and "verdict: FAIL" in text and "not written" in text
    assert not out.exists() and not (tmp_path / "repo").exists()


def _composed(module):
    return compose_model(module, base_graph(), W)


def _check(model, module, w=W):
    return check_whole_model(model, base_graph(), module, w, variant="folded", dtype="float32",
                             mask_elem=TensorProto.INT64, n_prompt=N)


def test_the_whole_model_check_passes_a_right_model_and_fails_tampered_ones():
    module = mpt()
    model = _composed(module)
    report = _check(model, module)
    assert report.ok and "verdict: PASS" in report.format()
    # a prompt table off by a relative 1e-5 (far beyond one float32 rounding, far below what logits show)
    tampered = onnx.ModelProto()
    tampered.CopyFrom(model)
    for init in tampered.graph.initializer:
        if init.name not in ("word_embeddings.weight",) and not init.name.startswith(("base/", "prepend/")):
            a = numpy_helper.to_array(init)
            if a.dtype == np.float32 and a.ndim >= 2:
                init.CopyFrom(numpy_helper.from_array(a * np.float32(1 + 1e-5), init.name))
    bad = _check(tampered, module)
    assert not bad.ok
    assert {c.tensor for c in bad.comparisons if not c.ok} == {"inputs_embeds[:, :N] (prompt)"}
    # base weights other than the model's (one column off by 1e-3)
    w = W.copy()
    w[:, 0] += 1e-3
    bad = _check(model, module, w)
    assert {c.tensor for c in bad.comparisons if not c.ok} == {"inputs_embeds[:, N:] (W[ids])"}
    # the checked module is another one than the model's
    assert not _check(model, mpt(seed=9)).ok


def test_the_prompt_table_check_fails_a_tampered_file(tmp_path):
    module = mpt()
    report, directory = write_prompt_table(module, tmp_path / "t")
    assert report.ok
    table = np.load(directory / "prompt_table.npy")
    table[0, 0, 0] = np.nextafter(table[0, 0, 0], np.float32(np.inf))  # one ulp
    np.save(directory / "prompt_table.npy", table)
    bad = check_prompt_table(module, directory)
    assert not bad.ok and any("rounded once" in p for p in bad.problems) and any("sha256" in p for p in bad.problems)


def test_a_failing_check_replaces_nothing(tmp_path):
    good = export(mpt(), variant="folded")
    write_triton_repository(good, tmp_path, "m")
    before = {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}

    class Fail:
        ok = False

    report, _, _ = write_triton_repository(export(mpt(seed=2), variant="folded"), tmp_path, "m", overwrite=True,
                                           check=lambda m: Fail())
    assert not report.ok
    assert {p: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging directory left


def test_staged_set_refuses_to_replace_a_directory_with_other_files(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        write_prompt_table(mpt(), target, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "t"):  # the target or a parent is a file
        with pytest.raises(OutputExistsError, match="existing file"):
            write_prompt_table(mpt(), target, overwrite=True)
    assert (tmp_path / "file").read_text() == "x"
    with pytest.raises(InputError, match="rel"):
        with StagedSet(tmp_path / "u", names=("a",)) as stage:
            stage.write("../b", b"x")
    assert not (tmp_path / "u").exists() and not (tmp_path / "b").exists()


# --- whole or not at all: SIGKILL, a file-size quota, a full disk --------------------------------------

WRITER = """
from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig
from mpt_ref.serve.prompt_table import write_prompt_table
from mpt_ref.serve.triton import write_triton_repository
from onnx_export import export
def make(n, seed):
    return MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n,
                                    token_dim=4, num_tasks=3, num_ranks=2), seed=seed)
mods = [make(3, 1), make(6, 2)]
models = [export(m, variant="folded") for m in mods]
def write(i, what, target):
    if what == "table":
        write_prompt_table(mods[i % 2], target, overwrite=True)
    else:
        write_triton_repository(models[i % 2], target, "m", overwrite=True)
"""


def _table_set_is_whole(directory: Path) -> int:
    """T of the set in ``directory``; fails unless table and sidecar belong together."""
    assert sorted(p.name for p in directory.iterdir()) == ["prompt_table.json", "prompt_table.npy"]
    data = (directory / "prompt_table.npy").read_bytes()
    meta = json.loads((directory / "prompt_table.json").read_text())
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    return int(meta["shape"][1])


def _triton_set_is_whole(root: Path) -> int:
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["1", "1/model.onnx", "config.pbtxt"]
    model = onnx.load(str(root / "1" / "model.onnx"))
    T = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert f"dims: [ {T}, {D} ]" in (root / "config.pbtxt").read_text()
    return T


@pytest.mark.parametrize("what", ["table", "triton"])
def test_sets_are_whole_under_sigkill(tmp_path, what):
    """Before: 19 of 30 aimed kills left old and new files side by side. Now the old set or the new one."""
    target = tmp_path / ("t" if what == "table" else "repo")
    rng = random.Random(0)
    seen = set()

    def check() -> None:
        if (target / "m" if what == "triton" else target).exists():
            seen.add(_table_set_is_whole(target) if what == "table" else _triton_set_is_whole(target / "m"))

    kill_writers(WRITER, "write(i, sys.argv[1], sys.argv[2])", [what, str(target)], kills=10,
                 delay=lambda: rng.uniform(0.0, 0.15), after_kill=check)
    assert seen == {3, 6}, seen  # killed writers completed sets of both sizes, each checked whole
    for stray in (tmp_path if what == "table" else target).glob(".*.mpt-ref-tmp"):
        assert stray.is_dir()  # at most the staging directory of a killed write
    if what == "table":
        write_prompt_table(mpt(), target, overwrite=True)  # a normal write sweeps what the killed ones left
        assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    else:
        write_triton_repository(export(mpt(), variant="folded"), target, "m", overwrite=True)
        assert sorted(p.name for p in target.iterdir()) == ["m"]


QUOTA = """
import resource, signal, sys
from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig
from mpt_ref.serve.prompt_table import write_prompt_table
from mpt_ref.serve.triton import write_triton_repository
from onnx_export import export
m = MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=40, token_dim=4,
                             num_tasks=3, num_ranks=2), seed=5)
model = export(m, variant="folded")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a quota then fails write() with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))
try:
    if sys.argv[1] == "table":
        write_prompt_table(m, sys.argv[2], overwrite=True)
    else:
        write_triton_repository(model, sys.argv[2], "m", overwrite=True)
except OSError as exc:
    print("errno", exc.errno)
"""


@pytest.mark.parametrize("what", ["table", "triton"])
@pytest.mark.parametrize("old", [True, False])
def test_sets_under_a_file_size_quota_keep_the_old_set_and_allow_the_retry(tmp_path, what, old):
    """Before: under a quota the new table.npy landed beside the old table.json."""
    target = tmp_path / ("t" if what == "table" else "repo")
    small = mpt(n=2)
    if old:
        (write_prompt_table(small, target) if what == "table"
         else write_triton_repository(export(small, variant="folded"), target, "m"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", QUOTA, what, str(target)], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    assert proc.stdout.strip() == f"errno {errno.EFBIG}", proc.stderr
    if old:
        T = _table_set_is_whole(target) if what == "table" else _triton_set_is_whole(target / "m")
        assert T == 2
    else:
        assert not target.exists() or not any(target.iterdir())
    assert not list(tmp_path.rglob(".*.mpt-ref-tmp"))  # the exception path removed its staging directory
    big = mpt(n=40)
    if what == "table":  # the retry (without the quota) is not refused as existing when nothing was there
        write_prompt_table(big, target, overwrite=old)
        assert _table_set_is_whole(target) == 40
    else:
        write_triton_repository(export(big, variant="folded"), target, "m", overwrite=old)
        assert _triton_set_is_whole(target / "m") == 40


@pytest.mark.parametrize("what", ["table", "triton", "export-model", "ortgenai"])
def test_a_full_disk_keeps_the_old_set_and_allows_the_retry(tmp_path, monkeypatch, capsys, what):
    """Before: on a full disk the Triton export left model.onnx without config.pbtxt, and the retry was
    refused as existing."""
    from test_serve_engines import fake_decoder

    adapter, base_onnx, weights = files(tmp_path)
    decoder = fake_decoder(tmp_path / "dec", vocab=V, hidden=D)
    argv = {"table": ["export", str(adapter), "--format", "prompt-table", "-o", str(tmp_path / "out")],
            "triton": ["export", str(adapter), "--format", "triton", "-o", str(tmp_path / "out"), "--name", "m"],
            "export-model": ["export-model", str(adapter), "--base-onnx", str(base_onnx), "--base-weights",
                             str(weights), "-o", str(tmp_path / "m.onnx"), "--triton", str(tmp_path / "out"),
                             "--name", "m"],
            "ortgenai": ["export", str(adapter), "--format", "ortgenai", "-o", str(tmp_path / "out"), "--base-weights",
                         str(weights), "--decoder", str(decoder)]}[what]
    calls = {"n": 0}
    real = os.fsync

    def full_after_first(fd):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(atomic.os, "fsync", full_after_first)
    assert cli_main(argv) == 2
    assert "No space left" in capsys.readouterr().err
    monkeypatch.setattr(atomic.os, "fsync", real)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not list(tmp_path.rglob(".*.mpt-ref-tmp"))
    assert cli_main(argv) == 0  # the retry is not refused as existing
    capsys.readouterr()


def test_the_whole_model_check_of_a_float16_base_with_a_bool_mask(tmp_path, capsys):
    base = masked_matmul_base(U.astype(np.float16), float_type=TensorProto.FLOAT16, mask_type=TensorProto.BOOL,
                              name="toy_fp16")
    adapter, base_onnx, weights = files(tmp_path, base)
    assert cli_main(["export-model", str(adapter), "--base-onnx", str(base_onnx), "--base-weights", str(weights),
                     "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "dtype=float16" in out and "verdict: PASS" in out


NAMES = ("a.npy", "b.json", "1/model.onnx")
_sets = st.dictionaries(st.sampled_from(NAMES), st.binary(max_size=40), min_size=1)


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(_sets, st.sampled_from(["commit", "discard", "raise"])), min_size=1, max_size=6))
def test_a_staged_set_is_the_last_committed_set_whatever_happens_between(tmp_path_factory, steps):
    """Any sequence of staged writes that commit, are discarded (a failed check) or raise midway leaves the target
    holding exactly the last committed set (or nothing), and no staging directory behind."""
    root = tmp_path_factory.mktemp("staged")
    target, last = root / "set", None
    for files, action in steps:
        try:
            with StagedSet(target, names=NAMES, overwrite=True) as stage:
                for k, (rel, data) in enumerate(files.items()):
                    if action == "raise" and k == len(files) - 1:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    stage.write(rel, data)
                if action == "commit":
                    stage.commit()
                    last = files
        except OSError:
            pass
        on_disk = ({str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
                   if target.exists() else None)
        assert on_disk == last
        assert sorted(p.name for p in root.iterdir()) == ([] if last is None else ["set"])
