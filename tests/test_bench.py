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
        assert "numpy fwd then bwd" in peers
        roof = r["roofline"]
        assert r["output_bytes"] > 0 and roof["bytes"]["fwd+bwd"] > roof["bytes"]["fwd"] + r["output_bytes"]
        assert roof["bandwidth_gb_s"] > 0 and roof["bound_ms"]["fwd"] > 0
        assert set(roof["fraction"]) >= {"numpy fwd", "numpy fwd+bwd"}
        for name in ("numpy fwd", "numpy fwd+bwd"):
            assert peers[name]["peak_bytes"] > 0
            assert peers[name]["peak_over_output"] == peers[name]["peak_bytes"] / r["output_bytes"]
    assert "numpy fwd+bwd" in capsys.readouterr().out
    assert mpt_ref.cli.main(args) == 2  # refuses to overwrite the JSON without --force


def test_bench_sweep_reports_memory(tmp_path):
    from mpt_ref.bench.run import run

    report = run(["mpt"], quick=True, repeats=1, progress=lambda m: None)
    assert [(s["B"], s["D"]) for s in report["sweep"]] == [(2, 8), (4, 16)]
    assert all(s["peak_bytes"] > 0 for s in report["sweep"])


def test_roofline_bytes_are_inputs_read_once_and_outputs_written_once():
    import numpy as np

    from mpt_ref.bench.roofline import bound, must_move

    cfg = mpt_ref.MultitaskPromptTuningConfig(num_virtual_tokens=8, token_dim=16, num_tasks=3, num_ranks=2)
    module = mpt_ref.MultitaskPromptEmbedding(cfg, seed=0)  # float32
    inputs = {"indices": np.zeros((4, 8), np.int64), "task_ids": np.zeros(4, np.int64)}
    params = (3 * 8 * 2 + 3 * 2 * 16 + 8 * 16) * 4  # C, R, E in float32
    ids, out = (4 * 8 + 4) * 8, 4 * 8 * 16 * 4
    assert must_move(module, inputs, (4, 8, 16)) == {"fwd": ids + params + out, "fwd+bwd": ids + 2 * params + 2 * out}
    assert bound({"fwd": 2_000_000}, 1.0) == {"fwd": 2.0}  # 2 MB at 1 GB/s: 2 ms
