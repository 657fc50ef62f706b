"""``mpt-ref bench``: time the NumPy reference against its peers on the same inputs, in one run.

Each case builds one module (float32, seeded) and two input kinds: PEFT's (every index row
arange(T)) and distinct random index rows. Every peer runs ``repeats`` times after ``warmup`` runs;
the table shows medians with min–max and ratios against PEFT-torch (time of the peer / time of
PEFT-torch for the same work: < 1 is faster). Every row also carries its roofline (roofline.py): the
bytes the operation must move, the copy bandwidth measured in the same run, the lower bound in ms and
the fraction of it each NumPy/ORT time reaches. Peak NumPy memory (bytes allocated during one call,
above what existed before it) comes from tracemalloc in a separate run (tracemalloc slows code down,
so it is never timed), for the forward and for forward+backward, with its ratio to the output's bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from mpt_ref._version import __version__
from mpt_ref.bench.peers import Peer, numpy_peers, ort_peers, torch_peers
from mpt_ref.bench.roofline import bound, copy_bandwidth, must_move
from mpt_ref.core import parallel
from mpt_ref.modules.config import MultitaskPromptTuningConfig, PromptEncoderConfig
from mpt_ref.modules.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]
    batch: int


def _mpt(D: int, R: int, T: int = 100, K: int = 8) -> Callable[[], Any]:
    cfg = MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=D, num_tasks=K, num_ranks=R)
    return lambda: MultitaskPromptEmbedding(cfg, seed=0)


def _encoder(kind: str, T: int, D: int, H: int, L: int = 2) -> Callable[[], Any]:
    cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=D, encoder_hidden_size=H,
                              encoder_reparameterization_type=kind, encoder_num_layers=L)
    return lambda: PromptEncoder(cfg, seed=0).eval()


FULL = {
    Kind.MPT: [Case(f"MPT B32 T100 D{D} K8 R{R}", _mpt(D, R), 32) for D in (768, 4096) for R in (1, 8)],
    Kind.MLP_ENCODER: [Case("MLP B32 T20 D=H=768", _encoder("MLP", 20, 768, 768), 32)],
    Kind.LSTM_ENCODER: [Case("LSTM B32 T20 D=H=768 L2", _encoder("LSTM", 20, 768, 768), 32)],
}
QUICK = {
    Kind.MPT: [Case("MPT B4 T8 D16 K3 R2", _mpt(16, 2, T=8, K=3), 4)],
    Kind.MLP_ENCODER: [Case("MLP B4 T5 D=H=8", _encoder("MLP", 5, 8, 8), 4)],
    Kind.LSTM_ENCODER: [Case("LSTM B4 T5 D=H=8 L2", _encoder("LSTM", 5, 8, 8), 4)],
}
MODULES = tuple(FULL)  # the kinds the bench times
SWEEP = [(B, D) for B in (8, 32, 128) for D in (768, 4096)]  # MPT T100 K8 R8, NumPy fwd+bwd


def inputs_for(module: Any, batch: int, peft_rows: bool, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    T, D = module.total_virtual_tokens, module.token_dim
    indices = np.tile(np.arange(T), (batch, 1)) if peft_rows else rng.integers(0, T, size=(batch, T))
    inputs = {"indices": indices.astype(np.int64)}
    if isinstance(module, MultitaskPromptEmbedding):
        inputs["task_ids"] = rng.integers(0, module.num_tasks, size=batch).astype(np.int64)
    return inputs, rng.standard_normal((batch, T, D)).astype(np.float32)


def time_call(call: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"median_ms": float(np.median(ms)), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def peak_bytes(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_case(case: Case, *, peft_rows: bool, threads: int, repeats: int, warmup: int,
             progress: Callable[[str], None]) -> dict[str, Any]:
    module = case.build()
    inputs, dout = inputs_for(module, case.batch, peft_rows)
    rows = "peft rows" if peft_rows else "distinct rows"
    peers: list[Peer] = numpy_peers(module, inputs, dout) + torch_peers(module, inputs, dout, threads)
    peers += ort_peers(module, inputs, threads, peft_rows)
    results = {}
    for peer in peers:
        progress(f"  {case.name} [{rows}] {peer.name}")
        results[peer.name] = {"skipped": peer.skipped} if peer.call is None else time_call(peer.call, repeats, warmup)
    out_bytes = dout.nbytes
    for name in ("numpy fwd", "numpy fwd+bwd"):
        call = next(p.call for p in peers if p.name == name)
        results[name]["peak_bytes"] = peak = peak_bytes(call)
        results[name]["peak_over_output"] = peak / out_bytes
    return {"case": case.name, "rows": rows, "peers": results, "output_bytes": out_bytes,
            "roofline": roofline(module, inputs, dout.shape, results, repeats, warmup)}


# which roofline operation each timed peer performs
ROOFLINE_OP = {"numpy fwd": "fwd", "numpy fwd+bwd": "fwd+bwd", "numpy fwd then bwd": "fwd+bwd",
               "peft-torch fwd": "fwd", "peft-torch fwd+bwd": "fwd+bwd", "ort faithful": "fwd",
               "ort folded": "fwd", "ort folded-any": "fwd", "ort torch.onnx.export(PEFT)": "fwd"}


def roofline(module: Any, inputs: dict[str, np.ndarray], out_shape: tuple[int, ...], results: dict[str, Any],
             repeats: int, warmup: int) -> dict[str, Any]:
    """bytes, bandwidth (a copy of the output's size, timed now), bound_ms and the fraction per peer."""
    moved = must_move(module, inputs, out_shape)
    bw = copy_bandwidth(int(np.prod(out_shape)) * np.dtype(module.dtype).itemsize,
                        lambda call: time_call(call, repeats, warmup))
    lower = bound(moved, bw["bandwidth_gb_s"])
    fraction = {name: lower[op] / results[name]["median_ms"] for name, op in ROOFLINE_OP.items()
                if "median_ms" in results.get(name, {})}
    return {"bytes": moved, **bw, "bound_ms": lower, "fraction": fraction}


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """numpy / peft-torch for fwd and fwd+bwd; best ORT export / ORT on torch.onnx.export."""
    p = result["peers"]
    med = lambda k: p.get(k, {}).get("median_ms")  # noqa: E731
    out = {}
    for what in ("fwd", "fwd+bwd"):
        if med(f"numpy {what}") and med(f"peft-torch {what}"):
            out[f"numpy/torch {what}"] = med(f"numpy {what}") / med(f"peft-torch {what}")
    if med("numpy fwd then bwd") and med("numpy fwd+bwd"):
        out["numpy fwd then bwd / fwd+bwd"] = med("numpy fwd then bwd") / med("numpy fwd+bwd")
    ours = [med(k) for k in ("ort faithful", "ort folded", "ort folded-any") if med(k)]
    if ours and med("ort torch.onnx.export(PEFT)"):
        out["best ort export / ort torch export"] = min(ours) / med("ort torch.onnx.export(PEFT)")
    return out


def run(modules: list[str], *, quick: bool = False, threads: int = 2, repeats: int = 7, warmup: int = 2,
        sweep: bool = True, progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict[str, Any]:
    cases = QUICK if quick else FULL
    numpy_threads = parallel.threads()
    parallel.set_threads(threads)  # the NumPy fast paths' pool too (bit-identical for any count)
    try:
        return _run(modules, cases, quick, threads, repeats, warmup, sweep, progress)
    finally:
        parallel.set_threads(numpy_threads)


def _run(modules: list[str], cases: dict[Kind, list[Case]], quick: bool, threads: int, repeats: int, warmup: int,
         sweep: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    report: dict[str, Any] = {
        "mpt_ref_version": __version__, "threads": threads, "repeats": repeats, "dtype": "float32",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                   f"{platform.python_version()}, numpy {np.__version__}",
        "date": time.strftime("%Y-%m-%d"), "results": [], "sweep": [],
    }
    for mod in modules:
        for case in cases[Kind.parse(mod)]:
            for peft_rows in (True, False):
                result = run_case(case, peft_rows=peft_rows, threads=threads, repeats=repeats, warmup=warmup,
                                  progress=progress)
                result["ratios"] = ratios(result)
                report["results"].append(result)
    if sweep and Kind.MPT in modules:
        for B, D in ([(2, 8), (4, 16)] if quick else SWEEP):
            module = _mpt(D, 2 if quick else 8, T=8 if quick else 100)()
            inputs, dout = inputs_for(module, B, peft_rows=False)
            progress(f"  sweep MPT B{B} D{D}")
            call = numpy_peers(module, inputs, dout)[1].call
            peak = peak_bytes(call)
            report["sweep"].append({"B": B, "D": D, **time_call(call, max(3, repeats // 2), 1),
                                    "peak_bytes": peak, "output_bytes": dout.nbytes,
                                    "peak_over_output": peak / dout.nbytes})
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"mpt-ref bench: {report['machine']}, {report['threads']} threads, float32, median of "
             f"{report['repeats']} (min-max) ms, {report['date']}"]
    for r in report["results"]:
        lines.append(f"{r['case']}  [{r['rows']}]")
        for name, t in r["peers"].items():
            if "skipped" in t:
                lines.append(f"  {name:<30} skipped: {t['skipped']}")
            else:
                lines.append(f"  {name:<30} {t['median_ms']:>9.2f}  ({t['min_ms']:.2f}-{t['max_ms']:.2f})")
        for k, v in r["ratios"].items():
            lines.append(f"  ratio {k:<38} {v:>6.2f}x")
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
        lines.append("scaling (MPT T100 K8 R8, distinct rows, NumPy fwd+bwd): B, D -> median ms, peak MiB")
        for s in report["sweep"]:
            lines.append(f"  B={s['B']:<4} D={s['D']:<5} {s['median_ms']:>9.2f} ms  {s['peak_bytes'] / 2**20:>8.1f} MiB"
                         f"  ({s['peak_over_output']:.2f}x the output)")
    return "\n".join(lines)


def _ms(t: dict[str, Any] | None) -> str:
    return f"{t['median_ms']:.1f}" if t and "median_ms" in t else "–"


def markdown_table(report: dict[str, Any]) -> str:
    """The README's Performance table from a report (fwd+bwd for NumPy and PEFT-torch, fwd for ORT)."""
    head = ("| case | rows | NumPy fwd+bwd | roofline fwd+bwd (fraction) | fwd then bwd | PEFT-torch fwd+bwd | ratio "
            "| ORT faithful | ORT folded | ORT folded-any | ORT torch.onnx.export | best export speed-up | peak / output |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["results"]:
        p, roof, ratio = r["peers"], r["roofline"], r["ratios"]
        fb = p["numpy fwd+bwd"]
        speedup = ratio.get("best ort export / ort torch export")
        lines.append(
            f"| {r['case']} | {r['rows']} | {_ms(fb)} | {roof['bound_ms']['fwd+bwd']:.1f} "
            f"({roof['fraction'].get('numpy fwd+bwd', 0):.2f}) | {_ms(p.get('numpy fwd then bwd'))} "
            f"| {_ms(p.get('peft-torch fwd+bwd'))} | "
            + (f"{ratio['numpy/torch fwd+bwd']:.2f}" if "numpy/torch fwd+bwd" in ratio else "–")
            + f" | {_ms(p.get('ort faithful'))} | {_ms(p.get('ort folded'))} | {_ms(p.get('ort folded-any'))} "
            f"| {_ms(p.get('ort torch.onnx.export(PEFT)'))} | "
            + (f"{1 / speedup:.1f}x" if speedup else "–")
            + f" | {fb['peak_over_output']:.2f} |"
        )
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True)
