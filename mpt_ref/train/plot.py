"""The experiment's picture (optional ``plot`` extra: matplotlib): test accuracy against shots per class
for every method with 95 % CI bands and the chance line, and the source stage's learning curves."""

from __future__ import annotations

import io
from typing import Any

from mpt_ref.errors import InputError

INSTALL = "pip install 'mpt-ref[plot]'"

# the methods drawn prominently; the rest are drawn thin
PROMINENT = ("MPT", "PT random", "PT multitask prompt", "PT best teacher", "MPT AVERAGE_SOURCE_TASKS")


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or an InputError saying how to get it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError(f"--plot: expected matplotlib (the optional 'plot' extra: {INSTALL}), got it missing") from exc
    return plt


def png_bytes(doc: dict[str, Any]) -> bytes:
    """The two-panel figure of ``report.summarize``'s document as PNG bytes."""
    plt = require_matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.35, 1]})
    shots = sorted({r["shots"] for r in doc["results"]})
    cmap = plt.get_cmap("tab20")
    for i, m in enumerate(doc["methods"]):
        rows = sorted((r for r in doc["results"] if r["method"] == m["method"]), key=lambda r: r["shots"])
        mean = [r["mean"] for r in rows]
        ci = [r["ci95"] or 0.0 for r in rows]
        strong = m["method"] in PROMINENT
        color = "black" if m["method"] == "MPT" else cmap(i % 20)
        left.plot(shots, mean, marker="o", ms=3, lw=2.2 if strong else 0.9, alpha=1 if strong else 0.65,
                  color=color, label=m["method"])
        if strong:
            left.fill_between(shots, [a - c for a, c in zip(mean, ci)], [a + c for a, c in zip(mean, ci)],
                              color=color, alpha=0.15, lw=0)
    left.axhline(doc["chance"], color="grey", ls=":", lw=1, label=f"chance {doc['chance']:.2f}")
    left.set_xscale("log", base=2)
    left.set_xticks(shots, [str(k) for k in shots])
    left.set_xlabel("target training examples per class (shots)")
    left.set_ylabel("test accuracy (mean, 95 % CI band over replicates)")
    left.set_title(f"Few-shot target adaptation ({doc['replicates']} replicate{'s' if doc['replicates'] != 1 else ''})")
    left.legend(fontsize=6.5, ncol=2, loc="lower right")
    for name, curve in doc["curves"].items():
        right.plot(curve["steps"], curve["mean"], marker=".", label=name)
        if all(c is not None for c in curve["ci95"]):
            right.fill_between(curve["steps"], [a - c for a, c in zip(curve["mean"], curve["ci95"])],
                               [a + c for a, c in zip(curve["mean"], curve["ci95"])], alpha=0.15, lw=0)
    right.axhline(doc["chance"], color="grey", ls=":", lw=1)
    right.set_xlabel("source-stage step (teachers: steps per task)")
    right.set_ylabel("held-out source accuracy")
    right.set_title("Source stage learning curves")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
