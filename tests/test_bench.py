"""``mpt-ref bench`` runs on tiny sizes and reports well-formed results (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

import mpt_ref.cli


@pytest.mark.parametrize("module", ["mpt", "mlp_encoder", "lstm_encoder"])
def test_bench_quick_runs_and_writes_json(tmp_path, capsys, module):
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--only", module, "--repeats", "1", "--no-sweep", "--json", str(out)]
    assert mpt_ref.cli.main(args) == 0
    report = json.loads(out.read_text())
    assert [r["rows"] for r in report["results"]] == ["peft rows", "distinct rows"]
    for r in report["results"]:
        peers = r["peers"]
        assert {"numpy fwd", "numpy fwd+bwd", "peft-torch fwd", "ort faithful", "ort folded"} <= set(peers)
        for name, t in peers.items():
            assert ("skipped" in t) != ("median_ms" in t), name  # timed, or skipped with a reason
            if "median_ms" in t:
                assert 0 <= t["min_ms"] <= t["median_ms"] <= t["max_ms"]
    assert "numpy fwd+bwd" in capsys.readouterr().out
    assert mpt_ref.cli.main(args) == 2  # refuses to overwrite the JSON without --force


def test_bench_sweep_reports_memory(tmp_path):
    from mpt_ref.bench.run import run

    report = run(["mpt"], quick=True, repeats=1, progress=lambda m: None)
    assert [(s["B"], s["D"]) for s in report["sweep"]] == [(2, 8), (4, 16)]
    assert all(s["peak_bytes"] > 0 for s in report["sweep"])
