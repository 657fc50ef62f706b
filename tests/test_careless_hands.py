"""Careless hands: output paths, --force, a full disk, odd API arguments. Each case ends in an
MptRefError subclass (API) or exit 2 with one line on stderr (CLI), never a traceback or lost files."""

from __future__ import annotations

import errno
import json
import os
import random
import time
from pathlib import Path

import warnings

import numpy as np
import pytest
from _kill import kill_writers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from mpt_ref.conformance import vectors as vec
from mpt_ref.conformance.cases import CASES
"""


def test_a_kill_during_vectors_force_never_leaves_a_partial_folder(tmp_path):
    """Regression: a kill during --force left a partial vectors folder under the final name (21/40)."""
    out = tmp_path / "v"
    vec.write_vectors(out, CASES[:3])
    rng = random.Random(0)

    def check() -> None:
        index = vec.read_index(out)
        assert sorted(index["cases"]) == sorted(c.name for c in CASES[:3])
        for name in index["cases"]:  # every file of every case present and matching its checksum
            vec.read_case(out, name)
            for fname in index["cases"][name]["files"]:
                assert (out / name / fname).is_file()

    # one write takes ~20 ms once warm: 12 kills over two write periods reach every step of it
    kill_writers(KILL_VECTORS, "vec.write_vectors(sys.argv[1], CASES[:3], force=True)", [str(out)], kills=12,
                 delay=lambda: rng.uniform(0.0, 0.04), after_kill=check)
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


# -- untrusted configs, odd API arguments, outputs that must not be replaced --------------------------

def adapter_with_config(tmp_path: Path, text: str) -> Path:
    d = tmp_path / "adapter"
    mpt_ref.PromptEmbedding(PT, seed=0).save_pretrained(d)
    (d / "adapter_config.json").write_text(text)
    return d


def test_a_5001_digit_integer_in_adapter_config_is_a_config_error(tmp_path, capsys):
    """Before: a bare ValueError from json (Python's int digit limit); export exited 3."""
    d = adapter_with_config(tmp_path, '{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": ' + "9" * 5001 + "}")
    with pytest.raises(mpt_ref.ConfigError, match="adapter_config.json: expected JSON"):
        mpt_ref.load_peft_adapter(d)
    rc, err = cli(capsys, "export", str(d), "-o", str(tmp_path / "m.onnx"))
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_a_lone_surrogate_in_the_config_is_refused_at_load(tmp_path):
    """Before: base_model_name_or_path "\\ud800" loaded, then save_pretrained raised UnicodeEncodeError."""
    d = adapter_with_config(tmp_path, json.dumps({**PT.to_dict(), "base_model_name_or_path": "\ud800"}))
    with pytest.raises(mpt_ref.ConfigError, match="base_model_name_or_path: expected valid Unicode"):
        mpt_ref.load_peft_adapter(d)
    with pytest.raises(mpt_ref.ConfigError, match="lone surrogate"):
        mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=4, modules_to_save=["ok", "\udfff"])


@pytest.mark.parametrize("field, value", [("num_virtual_tokens", 1 << 25), ("token_dim", 1 << 25),
                                          ("num_layers", 1 << 30), ("num_attention_heads", 1 << 30)])
def test_every_size_field_is_capped(field, value):
    with pytest.raises(mpt_ref.ConfigError, match=f"{field}: expected at most"):
        mpt_ref.PromptTuningConfig(**{"num_virtual_tokens": 3, "token_dim": 4, field: value})


def test_the_whole_model_is_capped_not_only_each_parameter():
    """Before: each parameter could hold 2**31 elements, so a model at the caps asked for 16 GiB and more."""
    from mpt_ref.modules.config import MAX_MODEL_ELEMENTS

    with pytest.raises(mpt_ref.ConfigError, match="parameter elements in all"):  # 3 parameters of 2**30 each
        mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=1 << 15, token_dim=1 << 15, num_tasks=1, num_ranks=1 << 15)
    with pytest.raises(mpt_ref.ConfigError, match="encoder_num_layers: expected at most 1024"):
        mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=2, encoder_num_layers=200000,
                                    encoder_reparameterization_type="LSTM")
    with pytest.raises(mpt_ref.ConfigError, match="parameter elements in all"):  # 600 layers of 4 x 512 x 1024 x 2
        mpt_ref.PromptEncoderConfig(num_virtual_tokens=2, token_dim=512, encoder_num_layers=600,
                                    encoder_reparameterization_type="LSTM")
    assert MAX_MODEL_ELEMENTS == 1 << 30


def test_a_hostile_tokenizer_json_is_a_config_error(tmp_path):
    """Before: the tokenizers library's bare Exception escaped."""
    pytest.importorskip("tokenizers")
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}, "added_tokens": 7}')
    config = mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=4, prompt_tuning_init="TEXT",
                                        prompt_tuning_init_text="hi", tokenizer_name_or_path=str(tmp_path))
    with pytest.raises(mpt_ref.ConfigError, match="tokenizer.json the tokenizers library reads"):
        mpt_ref.PromptEmbedding(config, word_embeddings=np.zeros((5, 4)))


def test_sample_vocab_over_an_empty_vocabulary_is_an_input_error():
    """Before: ValueError: high <= 0 from NumPy."""
    config = mpt_ref.PromptTuningConfig(num_virtual_tokens=3, token_dim=4, prompt_tuning_init="SAMPLE_VOCAB")
    with pytest.raises(mpt_ref.InputError, match="V >= 1 rows"):
        mpt_ref.PromptEmbedding(config, word_embeddings=np.zeros((0, 4)))


@pytest.mark.parametrize("path", [None, 3, b"x"])
def test_load_peft_adapter_of_not_a_path(path):
    """Before: load_peft_adapter(None) raised TypeError."""
    with pytest.raises(mpt_ref.CheckpointError, match="path: expected a PEFT adapter directory"):
        mpt_ref.load_peft_adapter(path)


def test_forward_on_a_broadcast_view_of_2_33_rows_is_refused_without_copying():
    """Before: MemoryError (a 24 GiB mask of the view)."""
    module = mpt_ref.PromptEmbedding(PT, seed=0)
    view = np.broadcast_to(np.arange(3, dtype=np.int64), (2**33, 3))
    with pytest.raises(mpt_ref.InputError, match="indices: expected at most"):
        module(view)


def test_save_pretrained_with_a_300_character_name_is_a_write_error(tmp_path):
    """Before: a plain OSError (File name too long)."""
    with pytest.raises(mpt_ref.WriteError, match="expected a writable location"):
        mpt_ref.PromptEmbedding(PT, seed=0).save_pretrained(tmp_path / ("a" * 300))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC])
def test_save_pretrained_on_a_read_only_or_full_filesystem_is_a_write_error(tmp_path, monkeypatch, err):
    """Before: a plain OSError. Now a WriteError (still an OSError) naming the path; the old files intact."""
    from mpt_ref.io import atomic

    module = mpt_ref.PromptEmbedding(PT, seed=0)
    module.save_pretrained(tmp_path / "a")
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    def refuse(*args, **kwargs):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", refuse) if err == errno.EROFS else \
        monkeypatch.setattr(atomic.os, "fsync", refuse)
    with pytest.raises(mpt_ref.WriteError, match=os.strerror(err)) as info:
        mpt_ref.PromptEmbedding(PT, seed=1).save_pretrained(tmp_path / "a", overwrite=True)
    assert isinstance(info.value, OSError) and info.value.errno == err
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_json_and_junit_xml_on_one_path_are_refused_up_front(tmp_path, capsys):
    """Before: the JUnit report silently replaced the JSON one."""
    report = str(tmp_path / "r")
    rc, err = cli(capsys, "verify", "--candidate", str(tmp_path), "--json", report, "--junit-xml", report)
    assert rc == 2 and "--junit-xml: expected another file" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo", "link-to-device", "dangling-link"])
def test_report_paths_no_force_can_replace_are_refused_before_the_run(tmp_path, capsys, kind):
    """Before: with --force a --json folder or FIFO was refused only after the whole run, and
    --json /dev/stdout --force (as root) replaced the /dev/stdout symlink with a regular file."""
    target = tmp_path / "report.json"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "link-to-device":
        target.symlink_to(os.devnull)
    else:
        target.symlink_to(tmp_path / "nowhere")
    cand = tmp_path / "cand" / "pt_basic"
    cand.mkdir(parents=True)
    start = time.monotonic()
    rc, err = cli(capsys, "verify", "--candidate", str(cand.parent), "--json", str(target), "--force")
    assert rc == 2 and "--json" in err and ("expected a regular file" in err or "expected a file path" in err), err
    assert "[" not in err  # refused before the first case ran (progress lines look like "[1/40] ...")
    assert time.monotonic() - start < 30
    assert target.is_symlink() == kind.endswith("link") or (kind == "link-to-device" and target.is_symlink())


def test_json_through_a_symlink_to_a_regular_file_keeps_the_link(tmp_path, capsys):
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    rc, err = cli(capsys, "parity", str(tmp_path / "missing.onnx"), "--json", str(link), "--force")
    assert rc == 2  # the model is missing; nothing written
    from mpt_ref.io.atomic import atomic_write_bytes

    atomic_write_bytes(link, b"new", overwrite=True)
    assert link.is_symlink() and real.read_text() == "new"


def test_export_to_an_unavailable_provider_writes_nothing(tmp_path, capsys):
    """Before: export --providers cuda wrote the model, then refused the provider."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    rc, err = cli(capsys, "export", "--kind", "mpt", "-o", str(tmp_path / "m.onnx"), "--providers", "cuda")
    assert rc == 2 and "onnxruntime-gpu" in err and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["fifo", "dangling-link"])
def test_inspect_names_a_weights_file_it_cannot_read(tmp_path, capsys, kind):
    """Before: inspect silently skipped a weights file that is not a regular file (exit 0)."""
    d = tmp_path / "a"
    mpt_ref.PromptEmbedding(PT, seed=0).save_pretrained(d)
    weights = d / "adapter_model.safetensors"
    weights.unlink()
    os.mkfifo(weights) if kind == "fifo" else weights.symlink_to(tmp_path / "nowhere")
    rc, err = cli(capsys, "inspect", str(d))
    assert rc == 2 and "adapter_model.safetensors" in err


def test_inspect_names_a_refused_pickle_checkpoint(tmp_path, capsys):
    """Before: a .bin refused inside its pickle (a forbidden global) was reported without the file's name."""
    import io as _io
    import zipfile

    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00idq\x85R.")
        zf.writestr("archive/version", b"3\n")
    (tmp_path / "adapter_model.bin").write_bytes(buf.getvalue())
    rc, err = cli(capsys, "inspect", str(tmp_path / "adapter_model.bin"))
    assert rc == 2 and "adapter_model.bin: pickle: expected only tensor-rebuilding globals" in err, err


def test_a_p_tuning_adapter_of_a_large_model_loads_as_its_table():
    """The whole-module cap counts what is allocated: an LSTM encoder of a 70B-size model (2 x 10**9
    elements) is over it, its saved inference-mode config (the prompt table only) is not."""
    big = dict(num_virtual_tokens=20, token_dim=8192, encoder_reparameterization_type="LSTM")
    mpt_ref.PromptEncoderConfig(inference_mode=True, **big)
    with pytest.raises(mpt_ref.ConfigError, match="parameter elements in all"):
        mpt_ref.PromptEncoderConfig(inference_mode=False, **big)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["\ud800", "MLP", "LSTM", "TEXT", "RANDOM", "SAMPLE_VOCAB", "EXACT_SOURCE_TASK", "CAUSAL_LM"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
FIELDS = sorted({f.name for cls in (mpt_ref.MultitaskPromptTuningConfig, mpt_ref.PromptEncoderConfig)
                 for f in __import__("dataclasses").fields(cls)})


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(peft_type=st.sampled_from(["PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING"]),
       fields=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4))
def test_random_adapter_configs_load_or_raise_mpt_ref_errors(tmp_path, peft_type, fields):
    """Whatever adapter_config.json holds: a module of the file's table, or one MptRefError (never a bare
    ValueError, TypeError, MemoryError or UnicodeEncodeError)."""
    config = {"peft_type": peft_type, "task_type": "CAUSAL_LM", "num_virtual_tokens": 3, "token_dim": 4, **fields}
    d = tmp_path / "adapter"
    d.mkdir(exist_ok=True)
    (d / "adapter_config.json").write_text(json.dumps(config))
    mpt_ref.io.checkpoint.write_safetensors(d / "adapter_model.safetensors", {
        "prompt_embeddings": np.ones((3, 4), np.float32), "prefix_task_cols": np.ones((1, 3, 1), np.float32),
        "prefix_task_rows": np.ones((1, 1, 4), np.float32)}, overwrite=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = mpt_ref.load_peft_adapter(d)
        except mpt_ref.MptRefError:
            return
    assert module.state_dict()["embedding.weight"].shape == (3, 4)
    try:  # what loads saves again, or says why not (a task_type is required to save)
        module.save_pretrained(tmp_path / "again", overwrite=True)
    except mpt_ref.MptRefError:
        pass


@pytest.mark.parametrize("value", ["abc", "0", "-3", "99999999999"])
def test_a_bad_MPT_REF_THREADS_is_one_line_from_the_first_call_not_a_failed_import(value):
    """Before: the variable was read at import, so `import mpt_ref` (and every command) died with a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MPT_REF_THREADS": value}
    code = ("import numpy as np, mpt_ref\n"
            "from mpt_ref import MultitaskPromptEmbedding, MultitaskPromptTuningConfig\n"
            "m = MultitaskPromptEmbedding(MultitaskPromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=2,"
            " token_dim=3, num_tasks=2), seed=0)\n"
            "try:\n    m.forward(np.tile(np.arange(2), (2, 1)), np.array([0, 1]))\n"
            "except mpt_ref.InputError as exc:\n    print('refused:', exc)\n")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("refused: MPT_REF_THREADS: expected an integer"), run
    cli = subprocess.run([sys.executable, "-m", "mpt_ref", "demo"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 2 and "MPT_REF_THREADS" in cli.stderr and "Traceback" not in cli.stderr, cli
