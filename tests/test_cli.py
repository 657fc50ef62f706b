"""The conventions every ``mpt-ref`` command shares (mpt_ref/cli/__init__.py): --version, exit status
0 pass / 1 verdict FAIL / 2 bad usage or unreadable input / 3 internal error, no traceback unless
--debug, arguments refused before any work or write, a quiet exit on a closed pipe, help on every
option, --json; and what an exported model says about the module it came from."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

import mpt_ref
import mpt_ref.cli as cli
from mpt_ref.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _all_parsers():
    parser = cli.build_parser()
    yield "mpt-ref", parser
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    yield from ((f"mpt-ref {name}", p) for name, p in sub.choices.items())


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mpt-ref {mpt_ref.__version__} (spec {mpt_ref.SPEC_VERSION})"


def test_every_option_has_help_and_the_top_level_help_is_for_users():
    for prog, parser in _all_parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), f"{prog} {action.option_strings or action.dest}: no help text"
    top = cli.build_parser().format_help()
    assert "register(" not in top and "subparsers" not in top and "exit status" in top


@pytest.mark.parametrize("argv", [
    ["demo", "--seed", "-1"],
    ["export", "-o", "{tmp}/x.onnx", "--batch", "0"],
    ["export", "-o", "{tmp}/x.onnx", "--providers", "tpu"],
    ["parity", "{tmp}/junk.onnx"],
    ["parity", "{tmp}/missing.onnx"],
    ["inspect", "{tmp}/missing"],
    ["verify", "--candidate", "{tmp}/missing"],
    ["bench", "--threads", "0"],
    ["export", "-o", "{tmp}/x.onnx", "--config", "{tmp}/junk.onnx"],
    ["verify", "--onnx", "{tmp}/junk.onnx", "--config", "{tmp}/junk.onnx"],
    ["train-demo", "--quick", "--out", "{tmp}/junk.onnx/sub"],
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv):
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf \xff\xff")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _code([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _code(argv):
    """main's status, or argparse's when it refuses an argument itself (type= checks exit 2)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_existing_outputs_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import mpt_ref.bench.run as bench_run
    import mpt_ref.cli.export as export_cli

    def must_not_run(*a, **k):
        raise AssertionError("the command ran before refusing its output")

    monkeypatch.setattr(bench_run, "run", must_not_run)
    monkeypatch.setattr(export_cli, "module_from_args", must_not_run)
    (tmp_path / "bench.json").write_text("keep")
    (tmp_path / "m.onnx").write_text("keep")
    assert main(["bench", "--json", str(tmp_path / "bench.json")]) == 2
    assert main(["export", "-o", str(tmp_path / "m.onnx")]) == 2
    assert (tmp_path / "bench.json").read_text() == "keep" and (tmp_path / "m.onnx").read_text() == "keep"
    assert capsys.readouterr().err.count("expected a new file") == 2


def test_internal_errors_exit_3_and_debug_shows_the_traceback(monkeypatch, capsys):
    import mpt_ref.cli.inspect as inspect_cli

    def boom(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(inspect_cli, "describe", boom)
    assert main(["inspect", "x"]) == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug" in err and "--debug" in err and "Traceback" not in err
    assert main(["--debug", "inspect", "x"]) == 3
    assert "Traceback" in capsys.readouterr().err
    assert main(["inspect", "x", "--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_a_closed_pipe_exits_quietly(tmp_path):
    """`mpt-ref ... | head`: the reader goes away; no BrokenPipeError traceback."""
    (tmp_path / "pt_basic").mkdir()  # a candidate with one (empty) case: a long FAIL table to write
    proc = subprocess.Popen([sys.executable, "-m", "mpt_ref", "verify", "--candidate", str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == cli.EXIT_PIPE
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_verify_json_to_stdout_and_exit_1_on_a_failed_verdict(tmp_path, capsys):
    (tmp_path / "pt_basic").mkdir()  # one case present but empty: a failed verdict, not a usage error
    assert main(["verify", "--candidate", str(tmp_path), "--json", "-"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["verdict"] == "FAIL" and all(c["note"].startswith("missing") for c in report["checks"] if not c["ok"])
    assert "tensors conform" in err  # the table moved to stderr


def test_parity_json_and_the_model_names_its_module(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    assert main(["export", "-o", str(model), "--kind", "mlp", "--seed", "7"]) == 0
    m = onnx.load(str(model))
    meta = {p.key: p.value for p in m.metadata_props}
    assert m.producer_version == mpt_ref.__version__ and meta["mpt_ref.init_seed"] == "7"
    assert json.loads(meta["mpt_ref.config"])["encoder_reparameterization_type"] == "MLP"
    assert len(meta["mpt_ref.params_sha256"]) == 64
    assert all(v.doc_string for v in list(m.graph.input) + list(m.graph.output))
    capsys.readouterr()

    assert main(["parity", str(model), "--kind", "mlp", "--seed", "7", "--json", str(tmp_path / "p.json")]) == 0
    assert "note:" not in "".join(capsys.readouterr())
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["verdict"] == "PASS" and saved["report"]["notes"] == []
    # rebuilt with another seed: a FAIL that says why
    assert main(["parity", str(model), "--kind", "mlp", "--seed", "0"]) == 1
    out, err = capsys.readouterr()
    assert "note:" not in out and "note: the model's weights" in err and "pass --seed 7" in err
    assert main(["parity", str(model), "--kind", "mlp", "--seed", "7", "--json", str(tmp_path / "p.json")]) == 2


def test_testing_without_hypothesis_names_the_extra():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "try:\n    import mpt_ref.testing\nexcept ModuleNotFoundError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert "pip install 'mpt-ref[testing]'" in out


HEAVY = ("onnx", "onnxruntime", "hypothesis", "numpy", "safetensors", "torch")


@pytest.mark.parametrize("code", [
    "import mpt_ref",
    "from mpt_ref.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass",
    "from mpt_ref.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
])
def test_import_version_and_help_load_no_heavy_package(code):
    """A fast start: `import mpt_ref`, `mpt-ref --version` and `--help` import none of the heavy packages
    (onnx alone takes seconds on a slow disk); they are imported where used."""
    probe = code + "\nimport sys\nprint(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv", [["verify", "--quiet"], ["verify", "--quiet", "--module", "mpt", "--forward-only"]])
def test_commands_without_a_model_load_no_onnx(argv):
    """`verify --candidate` (here: the golden vectors against themselves) judges safetensors files: it needs
    neither onnx nor onnxruntime (their import was 0.45 s of its 0.78 s, ml_dtypes' extension alone 0.42 s)."""
    probe = (f"import sys\nfrom mpt_ref.cli import main\nrc = main({argv!r} + ['--candidate', "
             "str(__import__('mpt_ref.conformance.location', fromlist=['x']).default_vectors_dir())])\n"
             "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def test_lazy_public_names_and_the_0_1_import_paths():
    code = ("import sys, mpt_ref\nassert 'numpy' not in sys.modules\n"
            "from mpt_ref import PromptEncoder\nimport mpt_ref.config as old, mpt_ref.modules.config as new\n"
            "from mpt_ref.mpt import mpt_forward\nfrom mpt_ref.core.mpt import mpt_forward as f\n"
            "assert old is new and mpt_forward is f and old.__spec__.name == 'mpt_ref.modules.config'\n"
            "assert PromptEncoder.__module__ == 'mpt_ref.modules.prompt_encoder'\n"
            "assert set(mpt_ref.__all__) <= set(dir(mpt_ref))\n"
            "try:\n    mpt_ref.nothing\nexcept AttributeError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused module 'mpt_ref' has no attribute 'nothing'" in out.stdout
    assert all(getattr(mpt_ref, name) is not None for name in mpt_ref.__all__)


def test_the_help_only_entries_match_each_command_s_own_help():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(cli.COMMANDS)
    for action in sub._choices_actions:
        assert action.help == cli.COMMANDS[action.dest][1], action.dest


# -- parity reads the model's own metadata, names the fields that differ, refuses whole models ----------------


def _adapter(path, T, seed=5):
    config = mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=16,
                                                 num_tasks=3, num_ranks=2)
    mpt_ref.MultitaskPromptEmbedding(config, seed=seed).save_pretrained(path)
    return str(path)


def test_parity_reads_the_config_and_seed_the_model_names(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    assert main(["export", "-o", model, "--kind", "lstm", "--seed", "7"]) == 0
    capsys.readouterr()
    assert main(["parity", model]) == 0  # no --kind, no --seed: the model's mpt_ref.config and init seed
    out, err = capsys.readouterr()
    assert "note:" not in out + err and out.rstrip().endswith("verdict: PASS")


def test_parity_of_an_adapter_export_without_the_adapter(tmp_path, capsys):
    """Was 4 x FAIL: parity rebuilt the built-in default (T=10) instead of reading the model's config."""
    ad = _adapter(tmp_path / "ad", 8)
    faithful, folded = str(tmp_path / "f.onnx"), str(tmp_path / "fo.onnx")
    assert main(["export", ad, "-o", faithful, "--variant", "faithful"]) == 0
    assert main(["export", ad, "-o", folded]) == 0
    capsys.readouterr()
    assert main(["parity", faithful]) == 0  # weights under PEFT keys in the graph: checked, and the verdict says so
    assert "verdict: PASS (weights taken from the model itself" in capsys.readouterr().out
    assert main(["parity", folded]) == 2  # a folded graph holds the table, not the factors: ask for the adapter
    err = capsys.readouterr().err
    assert "expected the adapter or --checkpoint it was exported from" in err and err.count("\n") == 1
    assert main(["parity", folded, ad]) == 0


def test_parity_names_only_the_config_fields_that_differ(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    assert main(["export", _adapter(tmp_path / "ad8", 8), "-o", model]) == 0
    capsys.readouterr()
    # the model's fixed 8 tokens cannot take the adapter's 10: refused (exit 2), naming the field that differs
    assert main(["parity", model, _adapter(tmp_path / "ad10", 10)]) == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "the model was exported from another config" in line]
    assert len(lines) == 1 and "(num_virtual_tokens: model 8, adapter 10)" in lines[0]
    assert "peft_type" not in lines[0] and len(lines[0]) < 400
    assert out == ""


def test_parity_refuses_a_whole_model_and_names_the_command_that_checks_its_prompt(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    import numpy as np

    D = 16
    x = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", D])
    m = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 5])
    U = numpy_helper.from_array(np.ones((D, 5), np.float32), "U")
    graph = helper.make_graph([helper.make_node("MatMul", ["inputs_embeds", "U"], ["logits"])], "toy", [x, m], [y],
                              initializer=[U])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
              str(tmp_path / "base.onnx"))
    save_file({"model.embed_tokens.weight": np.ones((11, D), np.float32)}, str(tmp_path / "base.safetensors"))
    whole = str(tmp_path / "whole.onnx")
    assert main(["export-model", _adapter(tmp_path / "ad", 4), "--base-onnx", str(tmp_path / "base.onnx"),
                 "--base-weights", str(tmp_path / "base.safetensors"), "-o", whole]) == 0
    capsys.readouterr()
    assert main(["parity", whole]) == 2  # was exit 1: "Required inputs (['input_ids', 'attention_mask']) are missing"
    err = capsys.readouterr().err
    assert "written by mpt-ref export-model" in err and "mpt-ref export ADAPTER_DIR -o prompt.onnx" in err
    assert "Traceback" not in err and err.count("\n") == 1


# -- conventions: options that do not apply, '-' for stdout, usage of the subcommand, -q / -v ------------------


@pytest.mark.parametrize("argv, option", [
    (["export", "{ad}", "-o", "{tmp}/x.onnx", "--kind", "lstm"], "--kind"),
    (["export", "{ad}", "-o", "{tmp}/x.onnx", "--seed", "3"], "--seed"),
    (["export", "-o", "{tmp}/x.onnx", "--full-encoder"], "--full-encoder"),
    (["export", "-o", "{tmp}/x.onnx", "--config", "{ad}", "--kind", "mlp"], "--kind"),
    (["export", "{ad}", "-o", "{tmp}/t.npy", "--format", "prompt-table", "--variant", "folded"], "--variant"),
    (["export", "{ad}", "-o", "{tmp}/t.npy", "--format", "prompt-table", "--max-batch-size", "4"], "--max-batch-size"),
    (["export", "{ad}", "-o", "{tmp}/x.onnx", "--vocab-size", "50"], "--vocab-size"),
    (["export", "{ad}", "-o", "{tmp}/x.onnx", "--name", "m"], "--name"),
    (["export", "{ad}", "-o", "-", "--format", "triton"], "--output"),
    (["verify", "--onnx", "{tmp}/x.onnx", "--module", "mpt"], "--module"),
    (["verify", "--candidate", "{tmp}", "--checkpoint", "w.safetensors"], "--checkpoint"),
    (["vectors", "-"], "OUT_DIR"),
    (["bench", "--plot", "-"], "--plot"),
])
def test_options_that_do_not_apply_are_refused_naming_the_option(tmp_path, capsys, argv, option):
    ad = _adapter(tmp_path / "ad", 4)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _code([a.replace("{tmp}", str(tmp_path)).replace("{ad}", ad) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {option}: expected" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_export_to_stdout_and_into_an_existing_directory(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mpt_ref", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    timeout=300)
    proc = run("export", "-o", "-", "--kind", "mlp")
    assert proc.returncode == 0
    model = onnx.load_from_string(proc.stdout)  # stdout holds the model alone; the report is on stderr
    assert model.graph.name == "mpt_ref_mlp_encoder_folded" and b"verdict: PASS" in proc.stderr
    assert not (ROOT / "-").exists()
    proc = run("export", "-o", str(tmp_path), "--kind", "mlp")  # was: "use --force", which then failed too
    err = proc.stderr.decode()
    assert proc.returncode == 2 and f"name a file in it, e.g. {tmp_path / 'prompt.onnx'}" in err and "--force" not in err


def test_an_unknown_option_prints_the_subcommand_s_usage(capsys):
    assert _code(["export", "-o", "x.onnx", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: mpt-ref export ") and "unrecognized arguments: --bogus" in err


def test_quiet_hides_notes_and_verbose_adds_the_time(tmp_path, capsys):
    model = str(tmp_path / "m.onnx")
    assert main(["export", "-o", model, "--kind", "mlp", "--seed", "7"]) == 0
    capsys.readouterr()
    assert main(["parity", model, "--kind", "mlp", "--seed", "0"]) == 1
    assert "note: the model's weights" in capsys.readouterr().err
    assert main(["-q", "parity", model, "--kind", "mlp", "--seed", "0"]) == 1
    out, err = capsys.readouterr()
    assert "note:" not in err and "verdict: FAIL" in out
    assert main(["parity", model, "-v"]) == 0
    assert "mpt-ref parity: exit 0 after " in capsys.readouterr().err


def test_the_triton_name_default_in_help_is_what_is_written(tmp_path, capsys):
    ad = _adapter(tmp_path / "ad", 4)
    assert main(["export", ad, "--format", "triton", "-o", str(tmp_path / "repo")]) == 0
    written = [p.name for p in (tmp_path / "repo").iterdir()]
    export = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["export"]
    help_text = next(a.help for a in export._actions if a.dest == "name")
    assert written == ["prompt_mpt_folded"] and "prompt_<kind>_<variant>, e.g. prompt_mpt_folded" in help_text


def test_from_pretrained_works_without_importing_the_interop_layer_first(tmp_path):
    """`import mpt_ref` no longer imports mpt_ref.interop (which registers load_peft_adapter for
    Cls.from_pretrained): the README's first example failed with "expected mpt_ref.interop.adapter to be
    imported" until modules/base.py got a stand-in that imports it on first use."""
    code = ("import sys\nfrom mpt_ref.modules.multitask import MultitaskPromptEmbedding as M\n"
            "from mpt_ref.modules.config import MultitaskPromptTuningConfig as C\n"
            "assert 'mpt_ref.interop.adapter' not in sys.modules\n"
            "m = M(C(task_type='CAUSAL_LM', num_virtual_tokens=3, token_dim=4, num_tasks=2), seed=0)\n"
            f"m.save_pretrained({str(tmp_path / 'a')!r})\n"
            f"print(type(M.from_pretrained({str(tmp_path / 'a')!r})).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MultitaskPromptEmbedding"
