"""The experiment's summary: per replicate numbers -> means with 95 % CIs, paired contrasts, the table,
and a caption whose every claim is computed from the numbers it sits under."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mpt_ref.train.experiment import CHANCE, Settings
from mpt_ref.train.methods import METHODS
from mpt_ref.train.stats import Interval, excludes_zero, mean_ci, signs

HEADLINE = "MPT"
BASELINE = "PT random"


def _iv(values: list[float]) -> dict[str, float]:
    i = mean_ci(values)
    return {"mean": i.mean, "ci95": None if np.isnan(i.ci95) else i.ci95}


def summarize(reps: list[dict[str, Any]], s: Settings) -> dict[str, Any]:
    """The JSON document: chance, results, contrasts, source accuracies, stored parameters, curves."""
    results, contrasts = [], []
    for m in METHODS:
        for k in s.shots:
            acc, zero = [r["accuracy"][m.name][k] for r in reps], [r["zero_shot"][m.name][k] for r in reps]
            z = _iv(zero)
            results.append({"method": m.name, "shots": k, **_iv(acc), "zero_shot": z["mean"],
                            "zero_shot_ci95": z["ci95"], "per_replicate": acc,
                            "lr": [r["lr"][m.name][k] for r in reps], "params": reps[0]["params"][m.name]})
    for m in METHODS:
        if m.name == HEADLINE:
            continue
        for k in s.shots:
            diffs = [r["accuracy"][HEADLINE][k] - r["accuracy"][m.name][k] for r in reps]
            contrasts.append({"a": HEADLINE, "b": m.name, "shots": k, **_iv(diffs), "signs": signs(diffs),
                              "per_replicate": diffs})
    names = list(reps[0]["source_accuracy"])
    curves = {}
    for name in reps[0]["curves"]:
        rows = np.array([r["curves"][name] for r in reps])  # R, points
        every = s.teacher_steps if name.startswith("teachers") else s.multitask_steps
        steps = [int(x) for x in np.linspace(every / rows.shape[1], every, rows.shape[1])]
        curves[name] = {"steps": steps, "mean": rows.mean(axis=0).tolist(),
                        "ci95": [mean_ci(col).ci95 if len(reps) > 1 else None for col in rows.T]}
    settings = dataclasses.asdict(s)
    settings["lr_grids"] = dict(s.lr_grids)
    return {
        "chance": CHANCE,
        "replicates": len(reps),
        "unit": "replicate (each: new base model, new tasks, new source stage); CI = t-interval over replicates",
        "shots_mean": "training examples per class on a target (2 x shots examples in all, balanced)",
        "results": results,
        "contrasts": contrasts,
        "source_accuracy": [{"prompt": n, **_iv([r["source_accuracy"][n] for r in reps])} for n in names],
        "stored_parameters": reps[0]["stored"],
        "methods": [{"method": m.name, "params": reps[0]["params"][m.name], "about": m.about} for m in METHODS],
        "curves": curves,
        "settings": settings,
    }


def _cell(mean: float, ci: float | None, signed: bool = False) -> str:
    f = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return f if ci is None else f"{f} ± {ci:.3f}"


def format_table(doc: dict[str, Any]) -> str:
    shots = sorted({r["shots"] for r in doc["results"]})
    by = {(r["method"], r["shots"]): r for r in doc["results"]}
    width = max(len(m["method"]) for m in doc["methods"])
    head = f"{'method':<{width}}  {'params/task':>11}  {'zero-shot':>9}" + "".join(f"  {f'{k} shots':>14}" for k in shots)
    lines = [f"test accuracy, mean ± 95 % CI over {doc['replicates']} replicate(s); chance {doc['chance']:.3f}; "
             "shots = training examples per class; zero-shot = the init before target training (mean over shots)",
             head, "-" * len(head)]
    for m in doc["methods"]:
        zero = np.mean([by[m["method"], k]["zero_shot"] for k in shots])
        lines.append(f"{m['method']:<{width}}  {m['params']:>11}  {zero:>9.3f}"
                     + "".join(f"  {_cell(by[m['method'], k]['mean'], by[m['method'], k]['ci95']):>14}" for k in shots))
    lines += ["", "paired contrasts a − b (mean ± 95 % CI of the per-replicate difference; signs: + a better)"]
    for c in doc["contrasts"]:
        lines.append(f"  {c['a']} − {c['b']:<{width}}  {c['shots']:>2} shots  {_cell(c['mean'], c['ci95'], True):>16}  "
                     f"{c['signs']}")
    lines += ["", "source-task accuracy (held-out source examples, mean ± 95 % CI over replicates)"]
    for a in doc["source_accuracy"]:
        lines.append(f"  {a['prompt']:<{width + 8}}  {_cell(a['mean'], a['ci95'])}")
    st = doc["stored_parameters"]
    lines += ["", "parameters stored after the source stage: " + ", ".join(f"{k} {v}" for k, v in st.items())]
    return "\n".join(lines)


def markdown_table(doc: dict[str, Any]) -> str:
    """The README's table: method × shots with the zero-shot column, then MPT − each method."""
    shots = sorted({r["shots"] for r in doc["results"]})
    by = {(r["method"], r["shots"]): r for r in doc["results"]}
    lines = ["| method | params/task | zero-shot | " + " | ".join(f"{k} shots" for k in shots) + " |",
             "|---|---|---|" + "---|" * len(shots)]
    for m in doc["methods"]:
        zero = np.mean([by[m["method"], k]["zero_shot"] for k in shots])
        lines.append(f"| {m['method']} | {m['params']} | {zero:.3f} | "
                     + " | ".join(_cell(by[m['method'], k]['mean'], by[m['method'], k]['ci95']) for k in shots) + " |")
    lines += ["", "| MPT − … (paired) | " + " | ".join(f"{k} shots" for k in shots) + " |",
              "|---|" + "---|" * len(shots)]
    for m in doc["methods"]:
        if m["method"] != HEADLINE:
            cs = [_contrast(doc, m["method"], k) for k in shots]
            lines.append(f"| {m['method']} | " + " | ".join(f"{_cell(c['mean'], c['ci95'], True)} {c['signs']}"
                                                              for c in cs) + " |")
    return "\n".join(lines)


def _contrast(doc: dict[str, Any], b: str, k: int) -> dict[str, Any]:
    return next(c for c in doc["contrasts"] if c["b"] == b and c["shots"] == k)


def _trend(first: float, rest: list[float]) -> str:
    if not rest or any(d * first <= 0 for d in rest):
        return ""
    return ": the gap narrows as target data grows" if abs(rest[-1]) < abs(first) else ": the gap does not narrow"


def caption(doc: dict[str, Any]) -> str:
    """What the numbers show and what they do not, each sentence computed from doc."""
    shots = sorted({r["shots"] for r in doc["results"]})
    k0, R = shots[0], doc["replicates"]
    say = []
    main = _contrast(doc, BASELINE, k0)
    iv = Interval(main["mean"], float("nan") if main["ci95"] is None else main["ci95"], R)
    verdict = ("one replicate: no interval" if main["ci95"] is None else "the 95 % CI excludes 0"
               if excludes_zero(iv) else "the 95 % CI includes 0: no measured difference")
    rest = [_contrast(doc, BASELINE, k)["mean"] for k in shots[1:]]
    say.append(f"MPT − {BASELINE} = {main['mean']:+.3f} at {k0} shots per class ({verdict}; MPT ahead in "
               f"{main['signs'].count('+')} of {R} replicates)"
               + "".join(f", {d:+.3f} at {k} shots" for k, d in zip(shots[1:], rest))
               + _trend(main["mean"], rest) + ".")
    losses, ties = [], []
    for m in doc["methods"]:
        if m["method"] == HEADLINE:
            continue
        for k in shots:
            c = _contrast(doc, m["method"], k)
            civ = Interval(c["mean"], float("nan") if c["ci95"] is None else c["ci95"], R)
            if c["mean"] < 0 and c["ci95"] is not None and excludes_zero(civ):
                losses.append(f"{m['method']} at {k} shots ({c['mean']:+.3f})")
            elif c["mean"] < 0:
                ties.append(f"{m['method']} at {k} shots ({c['mean']:+.3f})")
    if losses:
        say.append("MPT loses, with the CI excluding 0, to: " + "; ".join(losses) + ".")
    if ties:
        say.append("MPT is behind, without a CI excluding 0, to: " + "; ".join(ties) + ".")
    kd = [_contrast(doc, "MPT no distillation", k) for k in shots]
    say.append("Distillation's effect on the target (MPT − MPT no distillation): "
               + ", ".join(_cell(c["mean"], c["ci95"], True) + f" at {c['shots']} shots" for c in kd) + ".")
    src = {a["prompt"]: a["mean"] for a in doc["source_accuracy"]}
    say.append("Neither P* alone (factors 1: where MPT's target adaptation starts) nor PEFT's AVERAGE_SOURCE_TASKS "
               "init (P* ⊙ mean cols × mean rows) is a prompt the source stage trains: on the sources they score "
               f"{src['MPT shared prompt P* alone']:.3f} and {src['MPT AVERAGE_SOURCE_TASKS config']:.3f} against "
               f"{src['MPT']:.3f} for each task's own MPT prompt.")
    zero = {m["method"]: np.mean([r["zero_shot"] for r in doc["results"] if r["method"] == m["method"]])
            for m in doc["methods"]}
    ahead = [n for n in zero if n != HEADLINE and zero[n] > zero[HEADLINE]]
    if ahead:
        say.append(f"Zero-shot, before any target step, MPT's init scores {zero[HEADLINE]:.3f}; ahead of it start "
                   + ", ".join(f"{n} {zero[n]:.3f}" for n in sorted(ahead, key=lambda n: -zero[n]))
                   + f": with {doc['settings']['target_steps']} steps on a few shots, the start matters.")
    say.append("Not shown: anything about large models or real tasks (a frozen random one-layer model, synthetic "
               "token-polarity tasks); intervals are over replicates, which share the generator's design, so "
               "they measure seed-to-seed variation of this setting only.")
    return "\n".join(say)
