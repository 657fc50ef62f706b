"""Every fenced block of README.md, run as written, in order, in one temporary directory.

The info string after the opening fence classifies each block, and every block must have one of these
(any other fails the test, so no block is silently ignored):

    bash, python                   run here as written (python blocks twice: an example must survive a
                                   second run); a python block that defines test_* functions, as a pytest
                                   file would, has them called
    bash optional, python optional need an optional engine or extra (a GPU, a serving runtime, an extra's
                                   package): skipped here, run by the CI step of that engine
    bash install                   installs the package into a venv from a clone (minutes): skipped here;
                                   tests/test_install.py (-m install) runs the same commands from the
                                   built wheel and sdist in fresh venvs
    text                           not code (a layout drawing)

The directory holds what the README's placeholders name: an adapter at ``path/to/peft_adapter`` and
``ADAPTER``, and a toy base model ``base.onnx`` + ``model.safetensors`` (inputs_embeds, attention_mask ->
logits). ``mpt-ref`` runs this checkout (``python -m mpt_ref``).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", flags=re.S | re.M)
RUN, SKIP = {"bash", "python"}, {
    "bash optional": "needs an optional engine or extra: run by its own CI step",
    "python optional": "needs an optional engine or extra: run by its own CI step",
    "bash install": "installs into a venv from a clone (minutes): tests/test_install.py -m install runs these "
                    "commands from the built wheel and sdist",
    "text": "not code",
}
TIMEOUT = 600


def readme_blocks() -> list[tuple[str, str]]:
    return [(info.strip(), body) for info, body in BLOCK.findall((ROOT / "README.md").read_text())]


def test_every_block_is_classified():
    blocks = readme_blocks()
    assert blocks
    unknown = [(n, info) for n, (info, _) in enumerate(blocks) if info not in RUN | set(SKIP)]
    assert not unknown, f"README blocks with an info string this test does not know: {unknown} ({sorted(RUN | set(SKIP))})"
    assert sum(info in RUN for info, _ in blocks) >= 6  # the README's runnable examples are most of them


def _fixtures(work: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    import mpt_ref

    config = mpt_ref.MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=8,
                                                 num_tasks=2, num_ranks=1)
    for where in ("path/to/peft_adapter", "ADAPTER"):
        mpt_ref.MultitaskPromptEmbedding(config, seed=0).save_pretrained(work / where)
    D = config.token_dim
    x = helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", D])
    m = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 5])
    U = numpy_helper.from_array(np.ones((D, 5), np.float32), "U")
    graph = helper.make_graph([helper.make_node("MatMul", ["inputs_embeds", "U"], ["logits"])], "toy_base",
                              [x, m], [y], initializer=[U])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10),
              str(work / "base.onnx"))
    save_file({"model.embed_tokens.weight": np.ones((11, D), np.float32)}, str(work / "model.safetensors"))


def _env(work: Path) -> dict[str, str]:
    shim = work / ".bin"
    shim.mkdir()
    script = shim / "mpt-ref"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mpt_ref "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    python = shim / "python"  # as in the README's activated venv: `python` is the one with mpt-ref
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ)
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


CALL_TESTS = "\nfor _name, _f in list(globals().items()):\n    if _name.startswith('test_') and callable(_f):\n        _f()\n"


def test_readme_blocks_run_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _fixtures(work)
    env = _env(work)
    ran = 0
    for n, (info, body) in enumerate(readme_blocks()):
        if info in SKIP:
            continue
        if info == "bash":
            runs = [["bash", "-euo", "pipefail", "-c", body]]
        else:
            path = work / f".block{n}.py"
            path.write_text(body + CALL_TESTS)
            runs = [[sys.executable, str(path)]] * 2  # run twice: an example must be re-runnable as written
        for cmd in runs:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 0, (f"README block {n} ({info}) exited {proc.returncode}:\n{body}\n"
                                          f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran >= 6


def test_the_skip_reasons_are_stated():
    for info, reason in SKIP.items():
        assert reason, info
    blocks = readme_blocks()
    skipped = [info for info, _ in blocks if info in SKIP]
    print(f"{len(blocks)} README blocks: {len(blocks) - len(skipped)} run, {len(skipped)} skipped ({skipped})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
