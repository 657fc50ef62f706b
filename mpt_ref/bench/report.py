"""The bench's report as text, as the README's Markdown table, and as JSON (run.py makes the report)."""

from __future__ import annotations

import json
from typing import Any

from mpt_ref.bench.environment import describe
from mpt_ref.bench.run import RATIO


def _time(t: dict[str, Any]) -> str:
    mark = "  NOISY (spread > 2x median after a rerun)" if t.get("noisy") else "  (rerun: the first was noisy)" if t.get("reran") else ""
    return f"{t['median_ms']:>9.2f}  ({t['min_ms']:.2f}-{t['max_ms']:.2f}){mark}"


def format_table(report: dict[str, Any]) -> str:
    head = "quick run (tiny sizes, a smoke test: not comparable with a full run), " if report.get("quick") else ""
    lines = [f"mpt-ref bench: {head}float32, median of {report['repeats']} runs (min-max) in ms, {report['date']}",
             *describe(report["environment"]), RATIO]
    for r in report["results"]:
        lines.append(f"{r['case']}  [{r['rows']}]")
        for name, t in r["peers"].items():
            if "skipped" in t:
                lines.append(f"  {name:<30} skipped: {t['skipped']}")
            else:
                ratio = r["ratios"].get(name)
                lines.append(f"  {name:<30} {_time(t)}" + (f"   ratio {ratio:.2f}" if ratio is not None else ""))
        for k, v in r["speed_ups"].items():
            lines.append(f"  {k:<40} {v:>6.2f}x")
        roof = r["roofline"]
        lines.append(f"  roofline: {roof['bytes']['fwd+bwd'] / 1e6:.1f} MB fwd+bwd, {roof['bytes']['fwd'] / 1e6:.1f} MB fwd "
                     f"at {roof['bandwidth_gb_s']:.1f} GB/s (copy {roof['copy_ms']:.2f} ms) -> bound "
                     f"{roof['bound_ms']['fwd+bwd']:.2f} / {roof['bound_ms']['fwd']:.2f} ms")
        for name, f in roof["fraction"].items():
            lines.append(f"    fraction of the bound reached by {name:<28} {f:>6.2f}")
        for name in ("numpy fwd", "numpy fwd+bwd"):
            t = r["peers"][name]
            lines.append(f"  peak memory {name:<16} {t['peak_bytes'] / 2**20:>8.1f} MiB  ({t['peak_over_output']:.2f}x the output)")
    if report["sweep"]:
        lines.append(f"scaling ({report['sweep_case']}, distinct rows, NumPy fwd+bwd): B, D -> median ms (min-max), "
                     "peak MiB")
        for s in report["sweep"]:
            lines.append(f"  B={s['B']:<4} D={s['D']:<5} {_time(s)}  {s['peak_bytes'] / 2**20:>8.1f} MiB"
                         f"  ({s['peak_over_output']:.2f}x the output)")
    noisy = sum(bool(t.get("noisy")) for r in report["results"] for t in r["peers"].values())
    lines.append(f"{noisy} noisy timing(s) (max - min > 2 x median after one rerun)" if noisy else
                 "no noisy timing (every spread within 2 x median, after at most one rerun)")
    if "seconds" in report:
        lines.append(f"took {report['seconds']:.0f} s")
    return "\n".join(lines)


def _ms(t: dict[str, Any] | None) -> str:
    """median (min–max) in ms; † marks a timing still noisy after its rerun."""
    if not t or "median_ms" not in t:
        return "–"
    return f"{t['median_ms']:.1f} ({t['min_ms']:.1f}–{t['max_ms']:.1f})" + ("†" if t.get("noisy") else "")


def markdown_table(report: dict[str, Any]) -> str:
    """The README's Performance table from a report: median (min–max) ms, fwd+bwd for NumPy and PEFT-torch,
    fwd for ORT; ratio = NumPy fwd+bwd / PEFT-torch fwd+bwd."""
    head = ("| case | rows | NumPy fwd+bwd | roofline fwd+bwd (fraction) | fwd then bwd | PEFT-torch fwd+bwd | ratio "
            "| ORT faithful | ORT folded | ORT folded-any | ORT torch.onnx.export | best export speed-up | peak / output |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        p, roof, ratio, fast = r["peers"], r["roofline"], r["ratios"], r["speed_ups"]
        fb = p["numpy fwd+bwd"]
        lines.append(
            f"| {r['case']} | {r['rows']} | {_ms(fb)} | {roof['bound_ms']['fwd+bwd']:.1f} "
            f"({roof['fraction'].get('numpy fwd+bwd', 0):.2f}) | {_ms(p.get('numpy fwd then bwd'))} "
            f"| {_ms(p.get('peft-torch fwd+bwd'))} | "
            + (f"{ratio['numpy fwd+bwd']:.2f}" if "numpy fwd+bwd" in ratio else "–")
            + f" | {_ms(p.get('ort faithful'))} | {_ms(p.get('ort folded'))} | {_ms(p.get('ort folded-any'))} "
            f"| {_ms(p.get('ort torch.onnx.export(PEFT)'))} | "
            + (f"{fast['best export speed-up']:.1f}x" if "best export speed-up" in fast else "–")
            + f" | {fb['peak_over_output']:.2f} |"
        )
    if any(t.get("noisy") for r in report["results"] for t in r["peers"].values()):
        lines.append("\n† noisy: max − min > 2 × median after one rerun (another process took the CPU)")
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
