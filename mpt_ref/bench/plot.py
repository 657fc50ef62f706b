"""``mpt-ref bench --plot PATH.png``: per case, each peer's ratio to PEFT-torch and the fraction of the
roofline it reaches, as two bar charts in one PNG. Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpt_ref.errors import InputError

INSTALL = "pip install 'mpt-ref[plot]'"


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or InputError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(f"--plot: expected matplotlib installed, got none ({INSTALL})") from None
    return plt


def _bars(ax: Any, labels: list[str], series: dict[str, list[float | None]], title: str, ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i, v in enumerate(values) if v]
        ax.bar(xs, [v for v in values if v], width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if any(any(v) for v in series.values()):
        ax.legend(fontsize=6, ncol=4)
    else:
        ax.text(0.5, 0.5, "nothing to draw (no PEFT-torch timings: torch/peft not installed)", transform=ax.transAxes,
                ha="center", fontsize=9)


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    plt = require_matplotlib()
    results = report["results"]
    labels = [f"{r['case']}\n{r['rows']}" for r in results]
    peers = [name for name in dict.fromkeys(n for r in results for n in r["ratios"])]
    ratio = {n: [r["ratios"].get(n) for r in results] for n in peers}
    roof_peers = [name for name in dict.fromkeys(n for r in results for n in r["roofline"]["fraction"])]
    roof = {n: [r["roofline"]["fraction"].get(n) for r in results] for n in roof_peers}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 1.1 * len(results)), 9), constrained_layout=True)
    env = report["environment"]
    _bars(top, labels, ratio, f"time / PEFT-torch's for the same work (< 1: faster than PEFT); {env['cpu_model']}, "
          f"{report['threads']} threads", "ratio (log; 1 = PEFT-torch)")
    _bars(bottom, labels, roof, "fraction of the memory roofline reached (bound / time; 1 = at the limit)",
          "fraction (log; 1 = the roofline)")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
