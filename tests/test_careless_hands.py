"""Careless hands: output paths, --force, a full disk, odd API arguments. Each case ends in an
MptRefError subclass (API) or exit 2 with one line on stderr (CLI), never a traceback or lost files."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mpt_ref
import mpt_ref.io.checkpoint
from mpt_ref.cli import main
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES

ROOT = Path(__file__).resolve().parents[1]
PT = mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4)


def cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def test_vectors_force_refuses_a_directory_it_did_not_write(tmp_path, capsys, monkeypatch):
    """Regression: `mpt-ref vectors . --force` deleted everything in the current directory."""
    (tmp_path / "precious.txt").write_text("keep")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    rc, err = cli(capsys, "vectors", ".", "--force")
    assert rc == 2 and "vectors folder written by mpt-ref" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "precious.txt").read_text() == "keep" and (tmp_path / "sub").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt", "sub"]  # no staging left


def test_vectors_force_refuses_a_vectors_folder_with_foreign_entries(tmp_path):
    out = vec.write_vectors(tmp_path / "v", CASES[:1])
    (out / "mine.txt").write_text("x")
    with pytest.raises(mpt_ref.OutputExistsError, match="other entries"):
        vec.write_vectors(out, CASES[:1], force=True)
    assert (out / "mine.txt").exists()
    (out / "mine.txt").unlink()
    vec.write_vectors(out, CASES[:2], force=True)  # its own folder: replaced
    assert sorted(vec.read_index(out)["cases"]) == sorted(c.name for c in CASES[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


KILL_VECTORS = """
import sys
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES
print("ready", flush=True)
while True:
    vec.write_vectors(sys.argv[1], CASES[:3], force=True)
"""


def test_a_kill_during_vectors_force_never_leaves_a_partial_folder(tmp_path):
    """Regression: a kill during --force left a partial vectors folder under the final name (21/40)."""
    out = tmp_path / "v"
    vec.write_vectors(out, CASES[:3])
    for delay in (0.05, 0.2, 0.5, 1.0, 1.5):
        proc = subprocess.Popen([sys.executable, "-c", KILL_VECTORS, str(out)], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        index = vec.read_index(out)
        assert sorted(index["cases"]) == sorted(c.name for c in CASES[:3])
        for name in index["cases"]:  # every file of every case present and matching its checksum
            vec.read_case(out, name)
            for fname in index["cases"][name]["files"]:
                assert (out / name / fname).is_file()
    vec.write_vectors(out, CASES[:3], force=True)  # sweeps the staging directories of the killed runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_train_demo_out_does_not_overwrite_silently(tmp_path, capsys):
    (tmp_path / "mpt_source.safetensors").write_bytes(b"mine")
    rc, err = cli(capsys, "train-demo", "--quick", "--out", str(tmp_path))
    assert rc == 2 and "--force" in err
    assert (tmp_path / "mpt_source.safetensors").read_bytes() == b"mine"


@pytest.mark.parametrize("case", ["under-a-file", "a-directory", "too-long", "a-device"])
def test_bad_output_paths_exit_2_with_one_line(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    target = {"under-a-file": tmp_path / "file" / "x.onnx", "a-directory": tmp_path,
              "too-long": tmp_path / ("a" * 300 + ".onnx"), "a-device": Path("/dev/null")}[case]
    rc, err = cli(capsys, "export", "--kind", "mpt", "-o", str(target), "--force")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert Path("/dev/null").is_char_device()


def test_read_only_output_directory_exits_2(tmp_path, capsys, monkeypatch):
    from mpt_ref.io import atomic

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)  # what a read-only directory does (root ignores 0555)
    rc, err = cli(capsys, "export", "--kind", "mpt", "-o", str(tmp_path / "x.onnx"))
    assert rc == 2 and "Permission denied" in err


def test_a_full_disk_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from mpt_ref.io import atomic

    module = mpt_ref.PromptEmbedding(PT, seed=0)
    module.save_pretrained(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        mpt_ref.PromptEmbedding(PT, seed=1).save_pretrained(tmp_path / "a", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before  # the old adapter, whole
    rc, err = cli(capsys, "export", "--kind", "mpt", "-o", str(tmp_path / "x.onnx"))
    assert rc == 2 and "No space left" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temporaries


def test_nul_in_a_path_is_an_error_not_a_traceback(tmp_path, capsys):
    rc, _ = cli(capsys, "inspect", str(tmp_path) + "/a\0b")
    assert rc == 2


def test_bench_counts_must_be_positive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--repeats", "0"])
    assert info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("bad, error", [
    ([[0, 1], [2]], mpt_ref.InputError),                                      # ragged list
    (np.array([[0, 1]], dtype="m8[s]"), mpt_ref.InputTypeError),             # timedelta ids
    (np.array([[0, 1]], dtype="M8[s]"), mpt_ref.InputTypeError),             # datetime ids
    (np.array([[2**64 - 1, 0]], dtype=np.uint64), mpt_ref.IndexRangeError),  # reported as itself, not -1
])
def test_odd_ids_raise_the_right_class(bad, error):
    module = mpt_ref.PromptEmbedding(PT, seed=0)
    with pytest.raises(error) as info:
        module(bad)
    if bad is not None and getattr(bad, "dtype", None) == np.uint64:
        assert "18446744073709551615" in str(info.value)


def test_uint_ids_in_range_still_work():
    module = mpt_ref.PromptEmbedding(PT, seed=0)
    np.testing.assert_array_equal(module(np.array([[2, 0]], np.uint8)), module(np.array([[2, 0]])))


@pytest.mark.parametrize("seed", [-1, "a", 1.5, True])
def test_bad_seeds_raise_config_error(seed):
    with pytest.raises(mpt_ref.ConfigError, match="seed"):
        mpt_ref.PromptEmbedding(PT, seed=seed)


def test_huge_batch_sizes_are_refused_before_allocating():
    module = mpt_ref.PromptEmbedding(PT, seed=0)
    with pytest.raises(mpt_ref.ConfigError, match="batch_size"):
        module.get_prompt(10**12)
    mpt = mpt_ref.MultitaskPromptEmbedding(mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4), seed=0)
    with pytest.raises(mpt_ref.ConfigError, match="batch_size"):
        mpt.get_prompt(10**12, [0])


def test_nul_and_bad_paths_in_the_api_are_mpt_ref_or_os_errors(tmp_path):
    with pytest.raises((mpt_ref.MptRefError, ValueError)):
        mpt_ref.load_peft_adapter(str(tmp_path) + "/a\0b")


def test_vectors_force_on_a_directory_with_a_fifo_index_does_not_hang(tmp_path):
    import os

    out = tmp_path / "v"
    out.mkdir()
    os.mkfifo(out / "index.json")
    with pytest.raises(mpt_ref.OutputExistsError, match="vectors folder written by mpt-ref"):
        vec.write_vectors(out, CASES[:1], force=True)
    assert (out / "index.json").exists()


def test_api_paths_and_values_raise_mpt_ref_errors(tmp_path):
    module = mpt_ref.PromptEmbedding(PT, seed=0)
    with pytest.raises(mpt_ref.InputError, match="NUL"):
        module.save_pretrained(str(tmp_path) + "/a\0b")
    with pytest.raises(mpt_ref.InputError, match="NUL"):
        mpt_ref.io.checkpoint.write_safetensors(str(tmp_path) + "/a\0b.safetensors", {"a": np.ones(1, np.float32)})
    with pytest.raises(mpt_ref.CheckpointError, match="NUL"):
        mpt_ref.io.checkpoint.read_tensors(str(tmp_path) + "/a\0b.safetensors")
    with pytest.raises(mpt_ref.OutputExistsError, match="directory"):
        mpt_ref.io.checkpoint.write_safetensors(tmp_path, {"a": np.ones(1, np.float32)}, overwrite=True)
    with pytest.raises(mpt_ref.CheckpointError, match="cannot convert"):
        module.load_state_dict({"embedding.weight": [[0.0, 1.0], [2.0]]})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_fifo_inputs_of_verify_and_parity_are_refused_not_read(tmp_path, capsys):
    """A FIFO (or device) given as a model or a candidate file is refused before a byte is read: the
    readers of verify --onnx, parity and verify --candidate used plain reads that would block for ever."""
    import os

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    for argv in (["parity", str(fifo)], ["verify", "--onnx", str(fifo)]):
        assert main(argv) == 2
        assert "FIFO" in capsys.readouterr().err
    cand = tmp_path / "cand" / "pt_basic"
    cand.mkdir(parents=True)
    os.mkfifo(cand / "output.safetensors")
    assert main(["verify", "--candidate", str(tmp_path / "cand"), "--module", "prompt_embedding"]) == 2
    assert "FIFO" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["[1]", "[" * 100_000, '{"format": "mpt-ref-vectors/2"}', "\xff"])
def test_a_malformed_vectors_index_is_one_checkpoint_error(tmp_path, text, capsys):
    """read_index let a JSON list (AttributeError) or deep nesting (RecursionError) escape; it is now the
    one reader of index.json, also for vectors --force's check."""
    (tmp_path / "index.json").write_bytes(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff")
    with pytest.raises(mpt_ref.CheckpointError, match="index.json: expected"):
        vec.read_index(tmp_path)
    cand = tmp_path / "cand" / "pt_basic"
    cand.mkdir(parents=True)
    assert main(["verify", "--vectors", str(tmp_path), "--candidate", str(cand.parent)]) == 2
    assert "Traceback" not in capsys.readouterr().err
