"""A real install: build the sdist from a copy of the tree, the wheel from that sdist (as `python -m build`
does), install each into a fresh venv outside the tree and run the README's commands from another
directory. Marked ``install`` (deselected by default in pyproject.toml; .ci/run runs ``-m install``).

Also, in the default run: what a plain install promises about optional packages and file modes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TIMEOUT = 240  # seconds per command: a stuck command fails the test instead of hanging CI

# every `mpt-ref <command>` the README shows is run below (test_readme_commands_are_all_covered)
COVERED = {"demo", "verify", "vectors", "export", "parity", "inspect", "train-demo", "bench", "export-model",
           "conform"}


def _run(cmd: list[str], cwd: Path, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _copy_tree(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", ".c[0-9]")
    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """sdist from a clean copy of the tree, wheel from the unpacked sdist (no network, no isolation)."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.fail(f"the install tests build with this environment's setuptools, expected >= 77 (pyproject.toml "
                    f"build-system), got {setuptools.__version__}: pip install 'setuptools>=77'")
    tmp = tmp_path_factory.mktemp("dists")
    src = _copy_tree(tmp / "src")
    out = tmp / "dist"
    out.mkdir()
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_sdist(sys.argv[1]))")
    sdist = out / _run([sys.executable, "-c", code, str(out)], cwd=src).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp / "unpacked")
    unpacked = next((tmp / "unpacked").iterdir())
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
          str(unpacked)], cwd=tmp)
    wheel = next(out.glob("*.whl"))
    return {"sdist": sdist, "wheel": wheel, "unpacked": unpacked}


def _fresh_venv(where: Path) -> Path:
    """A venv outside the tree whose dependencies come from this interpreter's site-packages (a .pth,
    so no network is needed and the install is quick); mpt-ref itself only from the artifact."""
    venv.EnvBuilder(with_pip=False).create(where)
    py = where / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=where).stdout.strip())
    import hypothesis
    import onnx
    import onnxruntime
    import safetensors

    deps = sorted({str(Path(m.__file__).resolve().parents[1]) for m in (np, onnx, onnxruntime, safetensors, hypothesis)})
    (site / "_mpt_ref_test_deps.pth").write_text("\n".join(deps) + "\n")
    return py


def _install(py: Path, target: Path) -> None:
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
          "--no-build-isolation", str(target)],
         cwd=py.parents[2])


def test_wheel_carries_vectors_license_and_metadata(dists):
    names = zipfile.ZipFile(dists["wheel"]).namelist()
    vectors = sorted(p.relative_to(ROOT / "spec" / "vectors").as_posix()
                     for p in (ROOT / "spec" / "vectors").rglob("*") if p.is_file())
    assert sorted(n for n in names if n.startswith("mpt_ref/conformance/golden/")) == \
        sorted(f"mpt_ref/conformance/golden/{v}" for v in vectors)
    meta = zipfile.ZipFile(dists["wheel"]).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert any(n.endswith("licenses/LICENSE") for n in names) and "License-Expression: Apache-2.0" in meta
    assert "Requires-Python: >=3.10" in meta and "Project-URL:" in meta and "Classifier: Programming Language" in meta
    for extra in ("testing", "text", "peft"):
        assert f"Provides-Extra: {extra}" in meta
    assert 'torch==2.13.0; extra == "peft"' in meta and 'tokenizers>=' in meta and 'hypothesis>=' in meta


def test_sdist_carries_spec_vectors_tests_and_license(dists):
    names = tarfile.open(dists["sdist"]).getnames()
    top = names[0].split("/")[0]
    for must in ("LICENSE", "README.md", "spec/vectors/index.json", "spec/vectors/mpt_k3_r2/grads.safetensors",
                 "tests/test_vectors.py", "tests/conftest.py", "mpt_ref/conformance/golden/index.json",
                 ".ci/floor-constraints.txt"):
        assert f"{top}/{must}" in names, must


def test_readme_commands_are_all_covered():
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S))
    shown = set(re.findall(r"mpt-ref ([a-z][a-z-]*)", bash))
    shown |= set(re.findall(r"`mpt-ref ([a-z][a-z-]*)", README))
    assert shown and shown <= COVERED, f"README shows commands the install test does not run: {shown - COVERED}"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.install
def test_wheel_install_runs_the_readme_from_another_directory(dists, tmp_path):
    py = _fresh_venv(tmp_path / "venv")
    _install(py, dists["wheel"])
    bin_ = py.parent
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    mpt = [str(bin_ / "mpt-ref")]
    # mpt_ref is the wheel's, not the tree's
    where = _run([str(py), "-c", "import mpt_ref; print(mpt_ref.__file__)"], cwd=work, env=env).stdout
    assert str(tmp_path / "venv") in where and str(ROOT) not in where
    version = _run([str(py), "-c", "import mpt_ref; print(mpt_ref.__version__)"], cwd=work, env=env).stdout.strip()
    assert _run(mpt + ["--version"], cwd=work, env=env).stdout.startswith(f"mpt-ref {version} ")

    _run(mpt + ["demo"], cwd=work, env=env)
    # the README's Python blocks; placeholders (adapter path, a port) filled with real ones
    blocks = _python_blocks()
    assert blocks
    for n, block in enumerate(blocks):
        code = block.replace("path/to/peft_adapter", str(work / "made_adapter"))
        if "def test_my_port_conforms" in code:  # the port example (mpt_ref's own core stands in for a port)
            code += "\ntest_my_port_conforms()\n"
        if "load_peft_adapter" in code:  # needs an adapter directory first
            code = ("import mpt_ref\n"
                    "mpt_ref.PromptTuningConfig(task_type='CAUSAL_LM', num_virtual_tokens=4, token_dim=8)\n"
                    "m = mpt_ref.PromptEmbedding(mpt_ref.PromptTuningConfig(task_type='CAUSAL_LM', "
                    "num_virtual_tokens=4, token_dim=8), seed=0)\n"
                    f"m.save_pretrained({str(work / 'made_adapter')!r})\n") + code
        (work / f"block{n}.py").write_text(code)
        _run([str(py), f"block{n}.py"], cwd=work, env=env)

    # conformance: the installed vectors are found without --vectors; a candidate made of their own
    # outputs passes
    _run(mpt + ["vectors", "OUT_DIR"], cwd=work, env=env)
    cand = work / "YOUR_DIR"
    for case in (work / "OUT_DIR").iterdir():
        if case.is_dir():
            (cand / case.name).mkdir(parents=True)
            for f in ("output.safetensors", "grads.safetensors"):
                shutil.copy(case / f, cand / case.name / f)
    assert "FAILED" not in _run(mpt + ["verify", "--candidate", str(cand)], cwd=work, env=env).stdout
    (work / "EMPTY").mkdir()  # no case at all: bad usage (exit 2); a case without outputs: a failed verdict (1)
    assert _run(mpt + ["verify", "--candidate", "EMPTY"], cwd=work, env=env, ok=False).returncode == 2
    (work / "PARTIAL" / "pt_basic").mkdir(parents=True)
    assert _run(mpt + ["verify", "--candidate", "PARTIAL"], cwd=work, env=env, ok=False).returncode == 1
    # a port process through spec/conform-protocol.md (the tests' Python port: mpt-ref's own core)
    port = f"{shlex.quote(str(py))} {shlex.quote(str(ROOT / 'tests' / 'ports' / 'py_port.py'))} correct"
    _run(mpt + ["conform", "--exec", port, "--module", "mpt", "--examples", "3", "--seed", "0"], cwd=work, env=env)
    _run(mpt + ["verify", "--exec", port, "--module", "mpt", "--quiet"], cwd=work, env=env)

    _run(mpt + ["export", "-o", "mpt.onnx", "--variant", "folded"], cwd=work, env=env)
    _run(mpt + ["parity", "mpt.onnx", "--providers", "cpu"], cwd=work, env=env)
    _run(mpt + ["export", "-o", "faithful.onnx", "--variant", "faithful"], cwd=work, env=env)
    (work / "cfg").mkdir()
    (work / "cfg" / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "MULTITASK_PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 10, "token_dim": 32,
         "num_tasks": 3, "num_ranks": 2}))
    _run(mpt + ["verify", "--onnx", "faithful.onnx", "--config", "cfg/adapter_config.json"], cwd=work, env=env)
    _run(mpt + ["inspect", "made_adapter"], cwd=work, env=env)
    _run(mpt + ["export", "made_adapter", "-o", "prompt.onnx", "--variant", "folded"], cwd=work, env=env)
    # the Deploy section: a toy base graph (inputs_embeds, attention_mask -> logits) and its word embeddings
    (work / "make_base.py").write_text(textwrap.dedent("""
        import numpy as np, onnx
        from onnx import TensorProto, helper, numpy_helper
        from safetensors.numpy import save_file
        D = 8
        x = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", D])
        m = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 5])
        U = numpy_helper.from_array(np.ones((D, 5), np.float32), "U")
        nodes = [helper.make_node("MatMul", ["inputs_embeds", "U"], ["logits"])]
        graph = helper.make_graph(nodes, "toy_base", [x, m], [y], initializer=[U])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), "base.onnx")
        save_file({"model.embed_tokens.weight": np.ones((11, D), np.float32)}, "base.safetensors")
    """))
    _run([str(py), "make_base.py"], cwd=work, env=env)
    _run(mpt + ["export-model", "made_adapter", "--base-onnx", "base.onnx", "--base-weights", "base.safetensors",
                "-o", "model.onnx"], cwd=work, env=env)
    _run(mpt + ["export", "made_adapter", "--format", "prompt-table", "-o", "table"], cwd=work, env=env)
    _run(mpt + ["export", "made_adapter", "--format", "triton", "-o", "triton_repo"], cwd=work, env=env)
    _run(mpt + ["train-demo", "--quick"], cwd=work, env=env)
    _run(mpt + ["bench", "--quick", "--only", "mpt", "--no-sweep", "--repeats", "1"], cwd=work, env=env)

    for f in ("mpt.onnx", "prompt.onnx", "made_adapter/adapter_config.json", "OUT_DIR/index.json"):
        assert (work / f).stat().st_size > 0, f  # file modes: tests/test_file_modes.py


@pytest.mark.install
def test_sdist_install_passes_the_vector_tests_from_another_directory(dists, tmp_path):
    """The issue's failing case: tests/test_vectors.py run from the unpacked sdist against the installed
    package (the `pytest` script does not put the current directory on sys.path)."""
    py = _fresh_venv(tmp_path / "venv")
    _install(py, dists["sdist"])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # -I: neither the current directory nor PYTHONPATH on sys.path, so mpt_ref is the installed one
    code = ("import sys, pytest, mpt_ref; assert 'unpacked' not in mpt_ref.__file__, mpt_ref.__file__; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_vectors.py']))")
    proc = _run([str(py), "-I", "-c", code], cwd=dists["unpacked"], env=env)
    assert " passed" in proc.stdout and "failed" not in proc.stdout
