"""``mpt-ref bench`` runs on tiny sizes and reports well-formed results (no timing is asserted): the
estimate and progress on stderr, the environment, one meaning of "ratio", noisy timings rerun and
marked, the spread in --markdown, --plot (or one line naming the extra)."""

from __future__ import annotations

import json
import sys

import pytest

import mpt_ref.cli
from mpt_ref.bench import run as bench_run


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
    out, err = capsys.readouterr()
    assert "numpy fwd+bwd" in out and "ratio = the peer's median time / PEFT-torch's" in out
    assert err.startswith("mpt-ref bench: about ") and "[1/1] " in err and "[1/1]" not in out  # progress: stderr
    env = report["environment"]
    assert {"mpt_ref", "numpy", "onnxruntime", "torch", "peft", "threads", "cpu_model", "load_before",
            "load_after", "cpus", "python"} <= set(env)
    assert env["mpt_ref"] == mpt_ref.__version__ and env["threads"] == 2 and env["numpy"]
    assert "versions: mpt-ref " in out and "load average (1/5/15 min): before" in out
    assert report["ratio"] == bench_run.RATIO and report["quick"] and report["repeats"] == 1
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


def _result(**medians):
    return {"peers": {k: {"median_ms": v, "min_ms": v, "max_ms": v} for k, v in medians.items()}}


def test_ratio_has_one_meaning_the_peer_over_peft_for_the_same_work():
    r = _result(**{"numpy fwd": 2.0, "numpy fwd+bwd": 6.0, "numpy fwd then bwd": 9.0, "peft-torch fwd": 4.0,
                   "peft-torch fwd+bwd": 3.0, "ort folded": 1.0, "ort torch.onnx.export(PEFT)": 5.0})
    assert bench_run.ratios(r) == {"numpy fwd": 0.5, "numpy fwd+bwd": 2.0, "numpy fwd then bwd": 3.0,
                                   "ort folded": 0.25, "ort torch.onnx.export(PEFT)": 1.25}
    assert bench_run.speed_ups(r) == {"fwd then bwd / fwd+bwd": 1.5, "best export speed-up": 5.0}
    assert bench_run.ratios(_result(**{"numpy fwd": 2.0})) == {}  # no PEFT timing: no ratio


def test_a_noisy_timing_is_rerun_once_then_marked(monkeypatch):
    calm, wild = {"median_ms": 1.0, "min_ms": 0.9, "max_ms": 1.2}, {"median_ms": 1.8, "min_ms": 1.4, "max_ms": 34.5}
    for first, second, noisy, calls in ((calm, None, False, 1), (wild, calm, False, 2), (wild, wild, True, 2)):
        seen = []
        monkeypatch.setattr(bench_run, "time_call", lambda *a: seen.append(a) or (first if len(seen) == 1 else second))
        t = bench_run.timed(lambda: None, 5, 2)
        assert (t["noisy"], t["reran"], len(seen)) == (noisy, calls == 2, calls)
        assert t["median_ms"] == (second or first)["median_ms"]  # the rerun is what is kept


def test_markdown_keeps_the_spread_and_marks_noisy_cells():
    from mpt_ref.bench.report import markdown_table

    report = bench_run.run(["mpt"], quick=True, repeats=2, warmup=0, sweep=False, progress=lambda m: None)
    cell = report["results"][0]["peers"]["numpy fwd+bwd"]
    cell.update(noisy=True, min_ms=0.01, max_ms=99.0)
    table = markdown_table(report)
    assert f"{cell['median_ms']:.1f} (0.0–99.0)†" in table and "† noisy: max − min > 2 × median" in table


def test_the_estimate_counts_the_cases_asked_for():
    quick = bench_run.estimate_s(["mpt"], quick=True, repeats=3, sweep=False)
    full = bench_run.estimate_s(list(bench_run.MODULES), repeats=7)
    assert 0 < quick < 30 and full > 5 * quick  # a smoke run of seconds; the full run minutes
    assert bench_run.estimate_s(["mpt"], repeats=14, sweep=False) > bench_run.estimate_s(["mpt"], repeats=7, sweep=False)


def test_plot_without_matplotlib_is_one_line_naming_the_extra_before_any_run(tmp_path, monkeypatch, capsys):
    import mpt_ref.bench.run

    def must_not_run(*a, **k):
        raise AssertionError("the bench ran before refusing --plot")

    monkeypatch.setattr(mpt_ref.bench.run, "run", must_not_run)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert mpt_ref.cli.main(["bench", "--quick", "--plot", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mpt-ref[plot]'" in err and not (tmp_path / "b.png").exists()


def test_plot_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "b.png"
    assert mpt_ref.cli.main(["bench", "--quick", "--only", "mlp", "--repeats", "1", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
