"""Hostile ONNX models for ``mpt-ref verify --onnx`` and ``mpt-ref parity``: nothing a model says opens a
file or sizes an allocation before it is checked, no run outlives ``--timeout``, and every bad model is
exit 2 with one line naming what is wrong (exit 3 is for mpt-ref's own bugs)."""

from __future__ import annotations

import json
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

import mpt_ref
import onnx_export
from mpt_ref.cli import main
from onnx_export.exporter import META_PREFIX

MPT = mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, token_dim=4, num_tasks=2,
                                          num_ranks=1)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    return rc, captured.out, captured.err


def bad_input(capsys, *argv: str) -> str:
    """Exit 2 with one bounded line on stderr; returns the line."""
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (rc, out[-500:], err[-500:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 1000, err[:2000]
    return lines[0]


def exported(kind: str = "mpt") -> onnx.ModelProto:
    """An mpt-ref export of ``--kind``'s default module at seed 0 (what ``parity M --kind`` rebuilds) or,
    for "small", of a small MPT module (``verify --onnx`` rebuilds it from the model's metadata)."""
    if kind == "small":
        return onnx_export.export(mpt_ref.MultitaskPromptEmbedding(MPT, seed=0))
    from mpt_ref.interop.build import build_module

    return onnx_export.export(build_module(None, None, kind, 0))


def set_meta(model: onnx.ModelProto, key: str, value: str | None) -> onnx.ModelProto:
    props = [p for p in model.metadata_props if p.key != META_PREFIX + key]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if value is not None:
        model.metadata_props.add(key=META_PREFIX + key, value=value)
    return model


def save(model: onnx.ModelProto, path: Path) -> str:
    path.write_bytes(model.SerializeToString())
    return str(path)


# -- models onnxruntime or the checks must refuse -------------------------------------------------------

def external_data(m: onnx.ModelProto) -> None:
    t = m.graph.initializer[0]
    t.data_location = TP.EXTERNAL
    t.ClearField("raw_data")
    del t.float_data[:]
    t.external_data.add(key="location", value="weights.bin")


def custom_domain(m: onnx.ModelProto) -> None:
    m.opset_import.add(domain="com.example.evil", version=1)
    last = m.graph.node[-1]
    last.input[0], mid = "evil_out", last.input[0]
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Evil", [mid], ["evil_out"], domain="com.example.evil"))


def opset_99(m: onnx.ModelProto) -> None:
    m.opset_import[0].version = 99


def ir_99(m: onnx.ModelProto) -> None:
    m.ir_version = 99


def no_output(m: onnx.ModelProto) -> None:
    del m.graph.output[:]


def wrong_token_count(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7


def int64_output(m: onnx.ModelProto) -> None:
    last = m.graph.node[-1]
    last.input[0], mid = "cast_out", last.input[0]
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Cast", [mid], ["cast_out"], to=TP.INT64))
    m.graph.output[0].type.tensor_type.elem_type = TP.INT64
    del m.graph.value_info[:]


def fixed_batch_10_12(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**12


HOSTILE = {
    "external data": (external_data, "external file"),
    "custom domain": (custom_domain, "custom domain"),
    "opset 99": (opset_99, "opset"),
    "IR version 99": (ir_99, "IR version"),
    "no output": (no_output, "output"),
    "int64 output": (int64_output, "output"),
    "fixed token count that does not match": (wrong_token_count, "tokens"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["verify", "parity"])
def test_hostile_models_exit_2_with_one_line(tmp_path, capsys, name, command):
    """Before: 'internal error, please report it' (exit 3) for each of these."""
    mutate, words = HOSTILE[name]
    model = exported("small" if command == "verify" else "mpt")
    mutate(model)
    path = save(model, tmp_path / "m.onnx")
    argv = ["verify", "--onnx", path] if command == "verify" else ["parity", path, "--kind", "mpt"]
    assert words in bad_input(capsys, *argv)


def test_an_external_data_file_beside_the_model_is_never_read(tmp_path, capsys, monkeypatch):
    """Before: the location was resolved against the current directory. Now no path a model names is read."""
    model = exported("small")
    external_data(model)
    (tmp_path / "weights.bin").write_bytes(np.zeros(64, np.float32).tobytes())
    path = save(model, tmp_path / "m.onnx")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "weights.bin").write_bytes(b"\0" * 256)
    monkeypatch.chdir(elsewhere)
    assert "weights.bin" in bad_input(capsys, "verify", "--onnx", path)


def test_a_fixed_token_count_that_does_not_match_is_named(tmp_path, capsys):
    model = exported("small")
    wrong_token_count(model)
    assert "T=3 tokens" in bad_input(capsys, "verify", "--onnx", save(model, tmp_path / "m.onnx"))


def test_a_declared_batch_of_10_12_never_sizes_an_allocation(tmp_path, capsys):
    """Before: 7.28 TiB requested, exit 3."""
    model = exported("small")
    fixed_batch_10_12(model)
    path = save(model, tmp_path / "m.onnx")
    tracemalloc.start()
    line = bad_input(capsys, "verify", "--onnx", path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "fixed batch" in line and peak < 64 << 20


# -- the stamped config is untrusted text ---------------------------------------------------------------

def stamped(config: dict) -> onnx.ModelProto:
    return set_meta(exported("small"), "config", json.dumps(config))


class Opened:
    """Every path Python opens while recording (the audit hook sees os.open, open, io.open). Audit hooks
    cannot be removed: the one hook stays installed and records only between start() and stop()."""

    paths: list[str] = []
    installed = recording = False

    @classmethod
    def start(cls) -> None:
        if not cls.installed:
            def hook(event: str, args: tuple) -> None:
                if cls.recording and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
                    cls.paths.append(str(args[0]))

            sys.addaudithook(hook)
            cls.installed = True
        cls.paths.clear()
        cls.recording = True

    @classmethod
    def stop(cls) -> list[str]:
        cls.recording = False
        return list(cls.paths)


@pytest.mark.parametrize("field", ["prompt_tuning_init_state_dict_path", "tokenizer_name_or_path"])
def test_a_path_in_the_metadata_is_never_opened(tmp_path, capsys, field):
    """Before: a 1 KB model made verify --onnx open any local file its config metadata named (and print
    that file's tensor names)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    mpt_ref.io.checkpoint.write_safetensors(secret / "source.safetensors", {"SECRET_TENSOR": np.zeros(2, np.float32)})
    (secret / "tokenizer.json").write_text('{"model": "SECRET_TENSOR"}')
    config = {**MPT.to_dict(), "prompt_tuning_init": "EXACT_SOURCE_TASK" if "state" in field else "TEXT",
              field: str(secret / "source.safetensors" if "state" in field else secret), "num_tasks": 1,
              "prompt_tuning_init_text": "hello"}
    module = mpt_ref.MultitaskPromptEmbedding(mpt_ref.MultitaskPromptTuningConfig(
        **{**MPT.to_dict(), "num_tasks": 1}), seed=0)
    model = set_meta(onnx_export.export(module), "config", json.dumps(config))
    path = save(model, tmp_path / "m.onnx")
    Opened.start()
    try:
        rc, out, err = cli(capsys, "verify", "--onnx", path)
    finally:
        opened = [p for p in Opened.stop() if str(secret) in p]
    assert rc == 0 and "SECRET_TENSOR" not in out + err and not opened, (rc, err, opened)


@pytest.mark.parametrize("config, words", [
    ({"num_virtual_tokens": 30000, "token_dim": 30000}, "expected shape"),  # under the caps: 7.2 GiB of float64
    ({"num_virtual_tokens": 46000, "token_dim": 46000}, "parameter elements in all"),
    ({"num_virtual_tokens": 3, "token_dim": 4, "num_tasks": 10**7, "num_ranks": 10**7}, "at most"),
    ({"num_virtual_tokens": 2**40, "token_dim": 4}, "num_virtual_tokens: expected at most"),
])
def test_sizes_in_the_metadata_are_checked_before_any_allocation(tmp_path, capsys, config, words):
    """Before: a 46000 x 46000 table (15.8 GiB) was allocated before any check. Now over the whole-model cap;
    a 30000 x 30000 one, under it, is compared with the model's (3, 4) initializer first."""
    model = stamped({**MPT.to_dict(), **config})
    path = save(model, tmp_path / "m.onnx")
    tracemalloc.start()
    line = bad_input(capsys, "verify", "--onnx", path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert words in line and peak < 64 << 20, (line, peak)


def test_encoder_num_layers_is_capped(tmp_path, capsys):
    """Before: encoder_num_layers=200000 filled 4 GiB before any check."""
    enc = mpt_ref.PromptEncoder(mpt_ref.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=2, token_dim=3,
                                                             encoder_hidden_size=2,
                                                             encoder_reparameterization_type="LSTM"), seed=0).eval()
    model = onnx_export.export(enc)
    set_meta(model, "config", json.dumps({**enc.config.to_dict(), "encoder_num_layers": 200000}))
    assert "encoder_num_layers: expected at most 1024" in bad_input(capsys, "verify", "--onnx",
                                                                       save(model, tmp_path / "m.onnx"))


def test_a_4_mib_metadata_config_is_not_printed(tmp_path, capsys):
    model = stamped({**MPT.to_dict(), "base_model_name_or_path": "x" * (4 << 20)})
    bad_input(capsys, "verify", "--onnx", save(model, tmp_path / "m.onnx"))  # bounded, one line


def test_a_long_metadata_config_is_cut_in_parity_notes(tmp_path, capsys):
    model = set_meta(exported("mpt"), "config", json.dumps({"x": "y" * 100_000}))
    rc, out, err = cli(capsys, "parity", save(model, tmp_path / "m.onnx"), "--kind", "mpt")
    assert rc == 0 and len(out + err) < 20_000 and "…" in err  # notes go to stderr


@pytest.mark.parametrize("key, value", [("variant", None), ("variant", "sideways" * 10**5), ("dtype", None),
                                        ("kind", "k" * 10**5)])
def test_parity_on_bad_stamped_metadata(tmp_path, capsys, key, value):
    """Before: a model with mpt_ref.kind but no variant raised KeyError (exit 3)."""
    model = set_meta(exported("mpt"), key, value)
    assert f"mpt_ref.{key}" in bad_input(capsys, "parity", save(model, tmp_path / "m.onnx"), "--kind", "mpt")


def test_parity_config_and_checkpoint_shapes_are_compared_before_building(tmp_path, capsys):
    """Before: export/parity --config C --checkpoint W allocated C's module (15.8 GiB) before comparing."""
    big = mpt_ref.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=30000, token_dim=30000)
    big.save_pretrained(tmp_path)
    mpt_ref.io.checkpoint.write_safetensors(tmp_path / "w.safetensors", {"embedding.weight": np.zeros((3, 4), np.float32)})
    tracemalloc.start()
    line = bad_input(capsys, "export", "-o", str(tmp_path / "m.onnx"), "--config", str(tmp_path),
                     "--checkpoint", str(tmp_path / "w.safetensors"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "expected shape (30000, 30000)" in line and peak < 64 << 20
    assert not (tmp_path / "m.onnx").exists()


# -- time limits ----------------------------------------------------------------------------------------

def endless_loop(m: onnx.ModelProto, trips: int = 10**12) -> onnx.ModelProto:
    """The model's output plus the result of a Loop of ``trips`` trips."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["x_in", "one"], ["x_out"])],
        "body", [helper.make_tensor_value_info("i", TP.INT64, []), helper.make_tensor_value_info("cond_in", TP.BOOL, []),
                 helper.make_tensor_value_info("x_in", TP.FLOAT, [1])],
        [helper.make_tensor_value_info("cond_out", TP.BOOL, []), helper.make_tensor_value_info("x_out", TP.FLOAT, [1])],
        [helper.make_tensor("one", TP.FLOAT, [1], [1.0])])
    m.graph.initializer.extend([helper.make_tensor("loop_trips", TP.INT64, [], [trips]),
                                helper.make_tensor("loop_cond", TP.BOOL, [], [True]),
                                helper.make_tensor("loop_x0", TP.FLOAT, [1], [0.0])])
    last = m.graph.node[-1]
    last.input[0], mid = "with_loop", last.input[0]
    m.graph.node.insert(len(m.graph.node) - 1,
                        helper.make_node("Loop", ["loop_trips", "loop_cond", "loop_x0"], ["loop_out"], body=body))
    m.graph.node.insert(len(m.graph.node) - 1, helper.make_node("Add", [mid, "loop_out"], ["with_loop"]))
    del m.graph.value_info[:]
    return m


@pytest.mark.parametrize("command", ["verify", "parity"])
@pytest.mark.parametrize("provider", ["cpu", "onnx-reference"])
def test_a_loop_of_10_12_trips_stops_at_the_timeout(tmp_path, capsys, command, provider):
    """Before: verify --onnx and parity hung on it."""
    model = endless_loop(exported("small" if command == "verify" else "mpt"))
    path = save(model, tmp_path / "m.onnx")
    argv = (["verify", "--onnx", path] if command == "verify" else ["parity", path, "--kind", "mpt"])
    before = {t.ident for t in threading.enumerate()}
    start = time.monotonic()
    line = bad_input(capsys, *argv, "--providers", provider, "--timeout", "0.25")
    assert "--timeout 0.25 seconds" in line and time.monotonic() - start < 60
    # and the stopped run is gone: an abandoned evaluator thread kept a core and the GIL busy for good
    assert not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]


def test_a_short_loop_finishes_within_the_timeout(tmp_path, capsys):
    model = endless_loop(exported("small"), trips=3)
    rc, out, err = cli(capsys, "verify", "--onnx", save(model, tmp_path / "m.onnx"), "--timeout", "30")
    assert rc == 1 and "FAIL" in out  # it runs to the end: its output is off by 3, a FAIL verdict


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "abc"])
def test_timeout_values_are_checked(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--onnx", "m.onnx", "--timeout", value])
    assert exit_.value.code == 2 and "--timeout" in capsys.readouterr().err


def test_export_batch_10_12_is_refused_before_writing(tmp_path, capsys):
    """Before: MemoryError (exit 3) after writing the model."""
    assert "--batch" in bad_input(capsys, "export", "--kind", "mpt", "-o", str(tmp_path / "m.onnx"), "--batch", str(10**12))
    assert not (tmp_path / "m.onnx").exists()


# -- random hostile models: whatever a model says, the answer is a verdict or one line, never exit 3 -----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ELEM_TYPES = [TP.FLOAT, TP.FLOAT16, TP.DOUBLE, TP.INT64, TP.INT32, TP.BOOL, TP.STRING, 0, 999]
DIMS = st.one_of(st.integers(-5, 10), st.sampled_from([2**31, 10**12, 2**63 - 1]))


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, object]]:
    return draw(st.lists(st.one_of(
        st.tuples(st.just("ir_version"), st.integers(-1, 200)),
        st.tuples(st.just("opset"), st.integers(-1, 200)),
        st.tuples(st.just("input elem"), st.sampled_from(ELEM_TYPES)),
        st.tuples(st.just("output elem"), st.sampled_from(ELEM_TYPES)),
        st.tuples(st.just("input dim"), st.tuples(st.integers(0, 1), DIMS)),
        st.tuples(st.just("initializer dim"), DIMS),
        st.tuples(st.just("metadata"), st.tuples(st.sampled_from(["config", "variant", "dtype", "kind"]),
                                                 st.sampled_from(["", "{}", "[]", "null", '{"peft_type": 1}',
                                                                  '{"num_virtual_tokens": 1e400}', "x" * 5000]))),
        st.tuples(st.just("drop node"), st.integers(0, 50)),
    ), min_size=1, max_size=3))


def mutate(model: onnx.ModelProto, changes: list[tuple[str, object]]) -> None:
    for what, value in changes:
        if what == "ir_version":
            model.ir_version = value
        elif what == "opset":
            model.opset_import[0].version = value
        elif what == "input elem":
            model.graph.input[0].type.tensor_type.elem_type = value
        elif what == "output elem":
            model.graph.output[0].type.tensor_type.elem_type = value
        elif what == "input dim":
            axis, size = value
            dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
            dim.dim_value = max(size, 0) if size >= 0 else 0
        elif what == "initializer dim":
            model.graph.initializer[0].dims[0] = max(value, 0)
        elif what == "metadata":
            set_meta(model, *value)
        elif what == "drop node" and model.graph.node:
            del model.graph.node[value % len(model.graph.node)]


@pytest.mark.parametrize("command", ["verify", "parity"])
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=mutations())
def test_random_hostile_models_never_end_in_an_internal_error(tmp_path, capsys, command, changes):
    model = exported("small" if command == "verify" else "mpt")
    mutate(model, changes)
    path = save(model, tmp_path / "m.onnx")
    argv = ["verify", "--onnx", path] if command == "verify" else ["parity", path, "--kind", "mpt"]
    rc = main([*argv, "--timeout", "20"])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2) and "internal error" not in err and "Traceback" not in err, (rc, err[-800:])
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and len(err) < 2500, err[:3000]
