"""``mpt-ref bench``: time the NumPy reference against its peers on the same inputs, in one run.

Each case builds one module (float32, seeded) and two input kinds: PEFT's (every index row
arange(T)) and distinct random index rows. Every peer runs ``repeats`` times after ``warmup`` runs;
a peer whose spread is wide (max − min > 2 × median: another process took the CPU) is timed once
more, and marked noisy if the rerun is as wide. The report shows medians with min–max and, as
"ratio", each peer's time ÷ PEFT-torch's time for the same work (forward vs forward, forward+backward
vs forward+backward; < 1: faster than PEFT). Every row also carries its roofline (roofline.py): the
bytes the operation must move, the copy bandwidth measured in the same run, the lower bound in ms and
the fraction of it each NumPy/ORT time reaches. Peak NumPy memory (bytes allocated during one call,
above what existed before it) comes from tracemalloc in a separate run (tracemalloc slows code down,
so it is never timed), for the forward and for forward+backward, with its ratio to the output's bytes.
The environment (versions, threads, CPU, load before and after) is recorded with the numbers
(environment.py); an estimate of the run's time comes first and progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import tracemalloc
from typing import Any, Callable

import numpy as np

from mpt_ref.bench.environment import environment, load_average, package_version
from mpt_ref.bench.peers import TORCH_EXPORT, Peer, import_torch_peft, numpy_peers, ort_peers, setup, torch_peers
from mpt_ref.bench.roofline import bound, copy_bandwidth, must_move
from mpt_ref.core import parallel
from mpt_ref.modules.config import MultitaskPromptTuningConfig, PromptEncoderConfig
from mpt_ref.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]
    batch: int
    expected_s: float = 1.0  # both row kinds at 7 repeats, measured on the 2-core CI machine (the estimate)


def _mpt(D: int, R: int, T: int = 100, K: int = 8) -> Callable[[], Any]:
    cfg = MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=D, num_tasks=K, num_ranks=R)
    return lambda: MultitaskPromptEmbedding(cfg, seed=0)


def _encoder(kind: str, T: int, D: int, H: int, L: int = 2) -> Callable[[], Any]:
    cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=T, token_dim=D, encoder_hidden_size=H,
                              encoder_reparameterization_type=kind, encoder_num_layers=L)
    return lambda: PromptEncoder(cfg, seed=0).eval()


# seconds per case (both row kinds, 2 + 7 runs of every peer, the tracemalloc runs, set-up and exports)
# on a quiet 2-core machine, from the medians in the README's table: the estimate printed before a run
# and the weights of the time-left figure during it (a busy machine is many times slower: OpenBLAS and
# torch threads wait for cores)
EXPECTED_S = {(768, 1): 3.0, (768, 8): 3.0, (4096, 1): 8.0, (4096, 8): 8.0, "MLP": 4.0, "LSTM": 35.0}
FULL = {
    Kind.MPT: [Case(f"MPT B32 T100 D{D} K8 R{R}", _mpt(D, R), 32, EXPECTED_S.get((D, R), 30.0))
               for D in (768, 4096) for R in (1, 8)],
    Kind.MLP_ENCODER: [Case("MLP B32 T20 D=H=768", _encoder("MLP", 20, 768, 768), 32, EXPECTED_S["MLP"])],
    Kind.LSTM_ENCODER: [Case("LSTM B32 T20 D=H=768 L2", _encoder("LSTM", 20, 768, 768), 32, EXPECTED_S["LSTM"])],
}
QUICK = {
    Kind.MPT: [Case("MPT B4 T8 D16 K3 R2", _mpt(16, 2, T=8, K=3), 4, 0.3)],
    Kind.MLP_ENCODER: [Case("MLP B4 T5 D=H=8", _encoder("MLP", 5, 8, 8), 4, 0.3)],
    Kind.LSTM_ENCODER: [Case("LSTM B4 T5 D=H=8 L2", _encoder("LSTM", 5, 8, 8), 4, 0.3)],
}
MODULES = tuple(FULL)  # the kinds the bench times
SWEEP = [(B, D) for B in (8, 32, 128) for D in (768, 4096)]  # MPT T100 K8 R8, NumPy fwd+bwd
SWEEP_EXPECTED_S, STARTUP_S, PEFT_IMPORT_S = 5.0, 1.0, 5.0  # the sweep; imports: ours; torch + peft (+ transformers)


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


NOISY_SPREAD = 2.0  # a timing is noisy when max - min > NOISY_SPREAD x median


def is_noisy(t: dict[str, float]) -> bool:
    return t["max_ms"] - t["min_ms"] > NOISY_SPREAD * t["median_ms"]


def timed(call: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
    """time_call, timed once more when noisy; ``noisy`` says whether the kept (last) timing still is."""
    t: dict[str, Any] = time_call(call, repeats, warmup)
    reran = is_noisy(t)
    if reran:
        t = time_call(call, repeats, 0)
    return {**t, "reran": reran, "noisy": is_noisy(t)}


def peak_bytes(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run_case(case: Case, *, threads: int, repeats: int, warmup: int, torch_export: bool = True,
             progress: Callable[[str], None], detail: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """Both row kinds of one case (what takes seconds to build is built once for both)."""
    module = case.build()
    built = setup(module, inputs_for(module, case.batch, True)[0], threads, torch_export=torch_export)
    out = []
    for peft_rows in (True, False):
        progress(f"{case.name} [{'peft rows' if peft_rows else 'distinct rows'}]")
        out.append(run_rows(case, module, built, peft_rows=peft_rows, repeats=repeats, warmup=warmup, detail=detail))
    return out


def run_rows(case: Case, module: Any, built: Any, *, peft_rows: bool, repeats: int, warmup: int,
             detail: Callable[[str], None]) -> dict[str, Any]:
    inputs, dout = inputs_for(module, case.batch, peft_rows)
    rows = "peft rows" if peft_rows else "distinct rows"
    peers: list[Peer] = numpy_peers(module, inputs, dout) + torch_peers(built, inputs, dout)
    peers += ort_peers(module, built, inputs, peft_rows)
    results = {}
    for peer in peers:
        detail(f"  {case.name} [{rows}] {peer.name}")
        results[peer.name] = {"skipped": peer.skipped} if peer.call is None else timed(peer.call, repeats, warmup)
    out_bytes = dout.nbytes
    for name in ("numpy fwd", "numpy fwd+bwd"):
        call = next(p.call for p in peers if p.name == name)
        results[name]["peak_bytes"] = peak = peak_bytes(call)
        results[name]["peak_over_output"] = peak / out_bytes
    result = {"case": case.name, "rows": rows, "peers": results, "output_bytes": out_bytes,
              "roofline": roofline(module, inputs, dout.shape, results, repeats, warmup)}
    result["ratios"], result["speed_ups"] = ratios(result), speed_ups(result)
    return result


# which roofline operation each timed peer performs
ROOFLINE_OP = {"numpy fwd": "fwd", "numpy fwd+bwd": "fwd+bwd", "numpy fwd then bwd": "fwd+bwd",
               "peft-torch fwd": "fwd", "peft-torch fwd+bwd": "fwd+bwd", "ort faithful": "fwd",
               "ort folded": "fwd", "ort folded-any": "fwd", TORCH_EXPORT: "fwd"}


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


RATIO = ("ratio = the peer's median time / PEFT-torch's median time for the same work (forward vs forward, "
         "forward+backward vs forward+backward); < 1: faster than PEFT")


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """peer -> its time / PEFT-torch's for the same operation (RATIO), for every timed peer but PEFT's own."""
    p = result["peers"]
    med = lambda k: p.get(k, {}).get("median_ms")  # noqa: E731
    return {name: med(name) / med(f"peft-torch {op}") for name, op in ROOFLINE_OP.items()
            if not name.startswith("peft-torch") and med(name) and med(f"peft-torch {op}")}


def speed_ups(result: dict[str, Any]) -> dict[str, float]:
    """Two comparisons that are not ratios to PEFT: the two calls users write against one forward_backward
    (time / time), and ORT on torch.onnx.export of PEFT's module against our fastest export (how many
    times faster ours is)."""
    p = result["peers"]
    med = lambda k: p.get(k, {}).get("median_ms")  # noqa: E731
    out = {}
    if med("numpy fwd then bwd") and med("numpy fwd+bwd"):
        out["fwd then bwd / fwd+bwd"] = med("numpy fwd then bwd") / med("numpy fwd+bwd")
    ours = [med(k) for k in ("ort faithful", "ort folded", "ort folded-any") if med(k)]
    if ours and med(TORCH_EXPORT):
        out["best export speed-up"] = med(TORCH_EXPORT) / min(ours)
    return out


def plan(modules: list[str], *, quick: bool, sweep: bool) -> list[Case]:
    cases = QUICK if quick else FULL
    return [case for mod in modules for case in cases[Kind.parse(mod)]]


def estimate_s(modules: list[str], *, quick: bool = False, repeats: int = 7, warmup: int = 2,
               sweep: bool = True) -> float:
    """Seconds the run should take on a quiet 2-core machine (EXPECTED_S, scaled by the timed runs asked
    for); a busier machine takes longer, and the progress lines' time left follows the real pace."""
    scale = (repeats + warmup) / (7 + 2)
    cases = plan(modules, quick=quick, sweep=sweep)
    total = sum(c.expected_s for c in cases) * scale
    if sweep and Kind.MPT in [Kind.parse(m) for m in modules] and not quick:
        total += SWEEP_EXPECTED_S * scale
    with_peft = package_version("torch") is not None and package_version("peft") is not None
    return total + STARTUP_S + (PEFT_IMPORT_S if with_peft else 0.0)


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run(modules: list[str], *, quick: bool = False, threads: int = 2, repeats: int = 7, warmup: int = 2,
        sweep: bool = True, progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
        detail: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    numpy_threads = parallel.threads()
    parallel.set_threads(threads)  # the NumPy fast paths' pool too (bit-identical for any count)
    try:
        return _run(modules, quick, threads, repeats, warmup, sweep, progress, detail)
    finally:
        parallel.set_threads(numpy_threads)


def _run(modules: list[str], quick: bool, threads: int, repeats: int, warmup: int, sweep: bool,
         progress: Callable[[str], None], detail: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    progress("importing torch and peft (seconds)" if package_version("peft") else "torch/peft absent: their peers "
             "are skipped")
    import_torch_peft()
    start = time.perf_counter()
    report: dict[str, Any] = {
        "threads": threads, "repeats": repeats, "warmup": warmup, "dtype": "float32", "quick": quick,
        "environment": environment(threads), "ratio": RATIO, "noisy_spread": NOISY_SPREAD,
        "date": time.strftime("%Y-%m-%d"), "results": [], "sweep": [],
    }
    cases = plan(modules, quick=quick, sweep=sweep)
    weights = [c.expected_s for c in cases]
    for i, case in enumerate(cases):
        elapsed = time.perf_counter() - start
        left = "" if i == 0 else f", about {minutes(elapsed * sum(weights[i:]) / sum(weights[:i]))} left"
        tag = f"[{i + 1}/{len(cases)}] {minutes(elapsed)} elapsed{left}:"
        report["results"] += run_case(case, threads=threads, repeats=repeats, warmup=warmup, torch_export=not quick,
                                      progress=lambda m: progress(f"{tag} {m}"), detail=detail)
    if sweep and Kind.MPT in [Kind.parse(m) for m in modules]:
        T, R = (8, 2) if quick else (100, 8)
        report["sweep_case"] = f"MPT T{T} K8 R{R}"
        for B, D in ([(2, 8), (4, 16)] if quick else SWEEP):
            module = _mpt(D, R, T=T)()
            inputs, dout = inputs_for(module, B, peft_rows=False)
            progress(f"sweep MPT B{B} D{D} ({minutes(time.perf_counter() - start)} elapsed)")
            call = numpy_peers(module, inputs, dout)[1].call
            peak = peak_bytes(call)
            report["sweep"].append({"B": B, "D": D, **timed(call, max(3, repeats // 2), 1),
                                    "peak_bytes": peak, "output_bytes": dout.nbytes,
                                    "peak_over_output": peak / dout.nbytes})
    report["environment"]["load_after"] = load_average()
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report
