"""The exported graphs on the other runtimes (spec/onnx.md, runtimes): every module x variant x dtype, the
golden ONNX directories and whole models right on OpenVINO (f32 precision), onnxruntime's OpenVINO EP
and tract; the bad-id statement per runtime; the caller-side id check; ``--runtime`` on the CLI.

MPT_REF_RUNTIME_MATRIX=DIR reuses DIR/<provider>.json written by ``runtime_matrix.py --json`` (CI measures
once, prints the tables, then checks them here). The runtime tests carry the ``runtimes`` marker and skip when the runtime's package is absent (the core
CI job has none of them; .ci/run's runtimes step installs them). Graphs run in worker processes
(tests/runtime_matrix.py), so a runtime that aborts fails a test instead of killing pytest."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mpt_ref.cli import main
from mpt_ref.errors import IndexRangeError
from mpt_ref.serve.ids import INT32_MAX, INT32_MIN, checked_ids
from onnx_export.runtimes import available_providers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_matrix as rm  # noqa: E402

OTHER = ("openvino", "openvino-ep", "tract")


def _needs(provider: str):
    return pytest.mark.skipif(provider not in available_providers(),
                              reason=f"{provider} not installed here (.ci/run's runtimes step installs it)")


def _providers():
    return [pytest.param(p, marks=[pytest.mark.runtimes, _needs(p)]) for p in OTHER]


@pytest.fixture(scope="module")
def measured(request):
    """provider -> the matrix results of every graph (measured once per provider; onnxruntime's CPU EP, in
    the core job, on the quick set: one config per module, every sixth golden graph)."""
    cache: dict[str, list] = {}
    saved = os.environ.get("MPT_REF_RUNTIME_MATRIX")  # CI: the --json files of runtime_matrix.py's run

    def get(provider: str) -> list:
        path = Path(saved or ".") / f"{provider}.json"
        if provider not in cache and saved and path.is_file():
            cache[provider] = json.loads(path.read_text())
        if provider not in cache:
            cache[provider] = rm.measure(provider, rm.graph_names(quick=provider == "cpu"))
        return cache[provider]

    return get


@pytest.mark.parametrize("provider", _providers())
def test_every_graph_is_right(provider, measured):
    """modules x variants x dtypes x 2 configs, the golden ONNX files, 2 whole models: right, judged by the
    error model at B = 1, 3, 17 with PEFT rows, a length-1 task broadcast, random rows and invalid ids."""
    results = measured(provider)
    golden = sorted((rm.ROOT / "spec" / "vectors").glob("*/onnx/test_*"))  # every golden ONNX model shipped
    # 4 modules x 3 variants x 2 dtypes x 2 configs, each golden model, 2 whole models: none silently dropped
    assert len(results) == len(rm.graph_names()) == 4 * 3 * 2 * 2 + len(golden) + 2 and len(golden) >= 30
    bad = [f"{r['graph']}: {r['verdict']}: {r['reason']}" for r in results if r["verdict"] != "right"]
    assert not bad, "\n".join(bad)


def as_int32(value: int) -> int:
    """What a runtime that narrows int64 to int32 uses: the value modulo 2^32, as a signed int32."""
    return (value + 2 ** 31) % 2 ** 32 - 2 ** 31


def stated_outcomes(provider: str, label: str, limit: int) -> set[str]:
    """spec/onnx.md's bad-id statement: NaN for every id outside [0, limit) on onnxruntime's CPU EP, the
    reference and tract; on OpenVINO (runtime and EP) for every id whose int32 narrowing is outside it. An id
    narrowed into range is a valid id to the graph: its output is that id's (finite, or NaN in a folded graph
    whose row is then not arange(T))."""
    value = rm.bad_value(label, limit)
    if provider in ("openvino", "openvino-ep") and 0 <= as_int32(value) < limit:
        return {"held", "wrong"}
    return {"held"}


@pytest.mark.parametrize("provider", [pytest.param("cpu"), *_providers()])
def test_bad_ids_are_what_spec_states(provider, measured):
    results = measured(provider)
    seen = 0
    for r in results:
        name = r["graph"]
        if not r.get("bad_ids"):
            continue
        _, module, _, _ = rm.build_graph(name)
        for key, outcome in r["bad_ids"].items():
            which, label = key.split("/")
            limit = {"indices": module.total_virtual_tokens, "input_ids": rm.V_WORDS,
                     "task_ids": getattr(module, "num_tasks", 0)}[which]
            assert outcome in stated_outcomes(provider, label, limit), (name, key, outcome)
            seen += 1
    assert seen > 100


# --- the caller-side check (no runtime needed) ------------------------------------------------------------

@given(ids=st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=1, max_size=6), limit=st.integers(1, 9))
@example(ids=[2 ** 32 + 1], limit=3)  # reads row 1 on OpenVINO
@example(ids=[2 ** 31], limit=3)
@example(ids=[-1], limit=3)
def test_checked_ids_passes_exactly_the_ids_in_range(ids, limit):
    arr = np.array(ids, dtype=np.int64)
    if ((arr >= 0) & (arr < limit)).all():
        out = checked_ids("indices", arr, limit=limit)
        assert out.dtype == np.int64 and np.array_equal(out, arr)
    else:
        with pytest.raises(IndexRangeError, match=r"indices: expected ids in \[0, "):
            checked_ids("indices", arr, limit=limit)


@given(ids=st.lists(st.integers(-(2 ** 63), 2 ** 63 - 1), min_size=1, max_size=6))
@example(ids=[INT32_MIN, INT32_MAX])
@example(ids=[INT32_MAX + 1])
def test_checked_ids_without_a_limit_passes_exactly_int32(ids):
    arr = np.array(ids, dtype=np.int64)
    if ((arr >= INT32_MIN) & (arr <= INT32_MAX)).all():
        assert np.array_equal(checked_ids("task_ids", arr), arr)
    else:
        with pytest.raises(IndexRangeError, match="outside int32"):
            checked_ids("task_ids", arr)


def test_checked_ids_refuses_uint64_beyond_int64_as_itself():
    with pytest.raises(IndexRangeError, match="18446744073709551615"):
        checked_ids("indices", np.array([2 ** 64 - 1], dtype=np.uint64), limit=3)


# --- the CLI ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folded_mpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "mpt.onnx"
    assert main(["export", "--kind", "mpt", "--variant", "folded", "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize("runtime", ["onnxruntime", "reference", "openvino", "tract"])
def test_cli_parity_runtime(runtime, folded_mpt, capsys):
    capsys.readouterr()
    code = main(["parity", str(folded_mpt), "--kind", "mpt", "--runtime", runtime])
    out, err = capsys.readouterr()
    if runtime in ("openvino", "tract") and importlib.util.find_spec(runtime) is None:
        assert code == 2 and f"pip install 'mpt-ref[{runtime}]'" in err and len(err.strip().splitlines()) == 1
        return
    assert code == 0, out + err
    verdict = out.strip().splitlines()[-1]
    assert verdict.startswith("verdict: PASS")
    if runtime == "openvino":
        assert "INFERENCE_PRECISION_HINT=f32" in verdict


def test_cli_runtime_refuses_providers_of_another_runtime(folded_mpt, capsys):
    assert main(["parity", str(folded_mpt), "--kind", "mpt", "--runtime", "reference", "--providers", "cuda"]) == 2
    assert "--providers: expected only with --runtime onnxruntime" in capsys.readouterr().err
