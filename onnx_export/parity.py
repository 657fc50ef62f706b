"""Parity of an exported model with the float64 reference, per execution provider.

For each input case and provider: the output's max abs error, max relative error, max ULP distance
(in the export dtype, against the reference rounded to that dtype), the tolerance used and a
verdict. NaN must appear exactly where spec/onnx.md's id policy puts it (``reference.py``).

A case passes when every entry the reference says is a number satisfies

    |got − want| <= atol · s + rtol · |want|,   s = max(max |want| over the case, tiny),

with (rtol, atol) = ``mpt_ref.tolerances.ONNX_PARITY[(dtype, provider)]``. atol is relative to the
prompt's own scale s because prompts differ in scale by orders of magnitude (a fresh MPT prompt is
~4e-4·√R, an encoder's ~1), while the rounding error of a sum is proportional to its terms, not to
its (possibly cancelled) result. ``tiny`` is the export dtype's smallest normal number (6.1e-5 for
float16): a prompt smaller than that has no relative precision left in the dtype (its entries are
subnormal or flush to zero), so its error is judged against that floor instead.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import onnx

from mpt_ref import tolerances
from mpt_ref.errors import InputError
from mpt_ref.modules.kind import Kind
from mpt_ref.tolerances import Tol
from onnx_export._spec import ModuleSpec, module_spec
from onnx_export.exporter import (
    INPUT_INDICES,
    INPUT_TASK_IDS,
    metadata,
    module_identity,
    tokens_dim,
)
from onnx_export.reference import expected_output
from onnx_export.runtimes import Runner, check_provider


def ordered_bits(x: np.ndarray) -> np.ndarray:
    """float16/32 -> int64 keys whose differences count representable values (ULPs); ±0 -> 0."""
    itype = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
    bits = np.ascontiguousarray(x).view(itype).astype(np.int64)
    magnitude = bits & np.int64(np.iinfo(itype).max)
    return np.where(bits < 0, -magnitude, magnitude)


def ulp_distance(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got − want| in ULPs of got's dtype, want (float64) rounded to that dtype first."""
    return np.abs(ordered_bits(got) - ordered_bits(want.astype(got.dtype)))


@dataclasses.dataclass(frozen=True)
class Comparison:
    case: str
    provider: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float       # over entries whose |want| is a normal number of the export dtype
    max_ulp: int
    scale: float         # s = max |want|
    nan_expected: int    # entries the policy makes NaN
    nan_mismatch: int    # entries NaN in exactly one of got / want (or inf in got)
    tol: Tol
    ok: bool
    error: str = ""      # a runtime error instead of an output


def compare(case: str, provider: str, got: np.ndarray, want: np.ndarray, tol: Tol) -> Comparison:
    """got (export dtype) vs want (float64, NaN where the policy says) under ``tol`` (module doc)."""
    if got.shape != want.shape:
        return Comparison(case, provider, tuple(got.shape), np.inf, np.inf, 0, 0.0, 0, 0, tol, False,
                          f"shape {got.shape} != expected {want.shape}")
    nan_want = np.isnan(want)
    mismatch = int(np.count_nonzero(nan_want != np.isnan(got)) + np.count_nonzero(np.isinf(got)))
    both = ~nan_want & np.isfinite(got)
    g, w = got[both].astype(np.float64), want[both]
    tiny = float(np.finfo(got.dtype).tiny)  # smallest normal number: below it no relative precision
    scale = max(float(np.max(np.abs(w), initial=0.0)), tiny)
    err = np.abs(g - w)
    normal = np.abs(w) >= np.finfo(got.dtype).tiny  # below it the dtype itself has no relative precision
    rel = err[normal] / np.abs(w[normal])
    ok = mismatch == 0 and bool(np.all(err <= tol.atol * scale + tol.rtol * np.abs(w)))
    return Comparison(
        case, provider, tuple(got.shape),
        max_abs=float(err.max(initial=0.0)), max_rel=float(rel.max(initial=0.0)),
        max_ulp=int(ulp_distance(got[both], w).max(initial=0)), scale=scale,
        nan_expected=int(nan_want.sum()), nan_mismatch=mismatch, tol=tol, ok=ok,
    )


def parity_cases(spec: ModuleSpec, variant: str, *, batch: int = 3, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The inputs checked: PEFT's (arange rows), a length-1 task broadcast (MPT), random in-range
    indices (with T+1 tokens where the graph allows any count), and invalid ids (the NaN policy)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch: expected an integer >= 1, got {batch!r}")
    rng = np.random.default_rng(seed)
    T, K = spec.T, spec.K
    mpt = spec.kind == Kind.MPT
    arange = lambda b: np.tile(np.arange(T, dtype=np.int64), (b, 1))  # noqa: E731
    tasks = lambda b: np.arange(b, dtype=np.int64) % max(K, 1)  # noqa: E731  (unused unless MPT)
    with_tasks = lambda idx, t: {INPUT_INDICES: idx, **({INPUT_TASK_IDS: t} if mpt else {})}  # noqa: E731

    cases = [(f"peft rows, B={batch}", with_tasks(arange(batch), tasks(batch)))]
    if mpt:
        cases.append((f"task_ids length 1, B={batch}", with_tasks(arange(batch), np.array([K - 1]))))
    tokens = T if isinstance(tokens_dim(spec, variant), int) else T + 1
    cases.append((f"random indices ({tokens} tokens)", with_tasks(rng.integers(0, T, (batch, tokens)), tasks(batch))))
    b = max(batch, 2) + 2  # rows 0, 1: bad task ids (MPT); rows b-2, b-1: bad indices
    idx, t = arange(b), tasks(b)
    idx[-2, 0], idx[-1, -1] = -1, T
    t[0], t[1] = -1, K
    cases.append((f"invalid ids, B={b}", with_tasks(idx, t)))
    return cases


@dataclasses.dataclass
class ParityReport:
    module: str
    variant: str
    dtype: str
    comparisons: list[Comparison]
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. the model names another module

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def max_errors(self) -> dict[str, dict[str, float]]:
        """provider -> {max_abs, max_rel, max_ulp} over all cases."""
        out: dict[str, dict[str, float]] = {}
        for c in self.comparisons:
            m = out.setdefault(c.provider, {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0})
            m["max_abs"], m["max_rel"] = max(m["max_abs"], c.max_abs), max(m["max_rel"], c.max_rel)
            m["max_ulp"] = max(m["max_ulp"], c.max_ulp)
        return out

    def format(self) -> str:
        head = f"parity: {self.module} variant={self.variant} dtype={self.dtype} vs float64 reference"
        cols = f"{'case':<30} {'provider':<15} {'max abs':>9} {'max rel':>9} {'max ulp':>8} {'NaN exp/bad':>11}  tolerance (rtol, atol·s)  verdict"
        lines = [head, cols]
        for c in self.comparisons:
            verdict = "OK" if c.ok else f"FAIL{': ' + c.error if c.error else ''}"
            lines.append(
                f"{c.case:<30} {c.provider:<15} {c.max_abs:>9.2e} {c.max_rel:>9.2e} {c.max_ulp:>8d} "
                f"{f'{c.nan_expected}/{c.nan_mismatch}':>11}  ({c.tol.rtol:g}, {c.tol.atol:g}·{c.scale:.2g})  {verdict}"
            )
        reasons = {(c.provider, c.tol.reason) for c in self.comparisons}
        lines += [f"  tolerance {p}: {r}" for p, r in sorted(reasons)]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"verdict: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)


def metadata_mismatches(meta: dict[str, str], module: Any, spec: ModuleSpec) -> list[str]:
    """Where the model's metadata names another module than the one checked against (models without
    the metadata, e.g. from older exports, are not judged)."""
    here = module_identity(module, spec)
    notes = []
    if "config" in meta and meta["config"] != here["config"]:
        notes.append(f"the model was exported from another config than the one rebuilt here: model "
                     f"{meta['config']}, here {here['config']}; pass the model's --config")
    if "params_sha256" in meta and meta["params_sha256"] != here["params_sha256"]:
        seeds = (meta.get("init_seed"), here["init_seed"])
        hint = (f"; the model says init seed {seeds[0]}, the module here was built with {seeds[1]}: pass --seed "
                f"{seeds[0]}" if seeds[0] not in (None, "none") and seeds[0] != seeds[1]
                else "; pass the --checkpoint (or adapter) it was exported from")
        notes.append("the model's weights (mpt_ref.params_sha256) differ from the module rebuilt here, so "
                     "parity compares two different modules" + hint)
    return notes


def tolerance(dtype: str, provider: str) -> Tol:
    try:
        return tolerances.ONNX_PARITY[(dtype, provider)]
    except KeyError:
        raise InputError(f"tolerance: expected a (dtype, provider) in ONNX_PARITY, got {(dtype, provider)}") from None


def check_parity(
    model: onnx.ModelProto | str | os.PathLike,
    module: Any,
    *,
    providers: Sequence[str] = ("cpu",),
    batch: int = 3,
    seed: int = 0,
) -> ParityReport:
    """Run an exported ``model`` (ModelProto or path) on each provider for the cases of
    ``parity_cases`` and compare with ``module``'s float64 reference. Unavailable providers raise
    InputError; a runtime error inside a session is reported as a failed comparison."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model)
    meta = metadata(model)
    spec = module_spec(module)
    if meta.get("kind") is None or Kind.parse(meta["kind"]) != spec.kind:
        raise InputError(f"model: expected an export of a {spec.kind.value!r} module (mpt_ref.kind metadata), "
                         f"got {meta.get('kind')!r}")
    variant, dtype = meta["variant"], meta["dtype"]
    cases = parity_cases(spec, variant, batch=batch, seed=seed)
    comparisons = []
    for provider in providers:
        check_provider(provider)
        tol = tolerance(dtype, provider)
        runner = Runner(model, provider)
        for name, feeds in cases:
            want = expected_output(spec, **feeds, variant=variant)
            try:
                got = runner.run(feeds)
            except Exception as exc:  # a runtime refusing an input is a parity failure, reported
                comparisons.append(Comparison(name, provider, (), np.inf, np.inf, 0, 0.0, 0, 0, tol, False,
                                              f"{type(exc).__name__}: {str(exc)[:200]}"))
                continue
            comparisons.append(compare(name, provider, got, want, tol))
    return ParityReport(spec.module_name, variant, dtype, comparisons, metadata_mismatches(meta, module, spec))
