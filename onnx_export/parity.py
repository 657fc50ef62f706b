"""Parity of an exported model with the float64 reference, per execution provider.

For each input case and provider: one ``TensorCheck`` (mpt_ref.judge.bounds) — max abs error, max
|error| / bound, the worst entry — plus the max ULP distance in the export dtype and the NaN counts.
Every entry the reference says is a number must lie within its own rounding-error bound for a graph
in the export dtype (spec/tolerances.md: the same error model as assert_conforms and verify
--candidate); the graph's parameters count as rounded to the export dtype. NaN must appear exactly
where spec/onnx.md's id policy puts it (``reference.py``).

``run_cases`` is the one provider loop, shared with ``foreign.py`` (verify --onnx).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np
import onnx

from mpt_ref import tolerances
from mpt_ref.errors import InputError, RunTimeout, shown
from mpt_ref.judge.bounds import TensorCheck, check_tensor, expected
from mpt_ref.kind import Kind
from mpt_ref.tolerances import Rounding
from onnx_export._spec import ModuleSpec, module_spec
from onnx_export.exporter import (
    DTYPES,
    INPUT_INDICES,
    INPUT_TASK_IDS,
    metadata,
    module_identity,
    tokens_dim,
)
from onnx_export.reference import VARIANTS, expected_output
from onnx_export.runtimes import DEFAULT_TIMEOUT, SETTINGS, Runner, check_provider, check_runnable, load_model


def ordered_bits(x: np.ndarray) -> np.ndarray:
    """float16/32 -> int64 keys whose differences count representable values (ULPs); ±0 -> 0."""
    itype = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
    bits = np.ascontiguousarray(x).view(itype).astype(np.int64)
    magnitude = bits & np.int64(np.iinfo(itype).max)
    return np.where(bits < 0, -magnitude, magnitude)


def ulp_distance(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got − want| in ULPs of got's dtype, want (float64) rounded to that dtype first."""
    return np.abs(ordered_bits(got) - ordered_bits(want.astype(got.dtype)))


def onnx_rounding(dtype: str, provider: str) -> Rounding:
    """The error model of a graph in ``dtype`` on ``provider`` (mpt_ref.tolerances.ONNX_ROUNDING)."""
    try:
        return tolerances.ONNX_ROUNDING[(dtype, provider)]
    except KeyError:
        raise InputError(f"provider: expected a (dtype, provider) in ONNX_ROUNDING, got {(dtype, provider)}") from None


def expected_with_bound(spec: ModuleSpec, feeds: dict[str, np.ndarray], variant: str, rounding: Rounding
                        ) -> tuple[np.ndarray, np.ndarray]:
    """want (float64, NaN per the id policy) and the per-entry bound (computed on the ids made valid)."""
    want = expected_output(spec, **feeds, variant=variant)
    idx = np.asarray(feeds[INPUT_INDICES])
    inputs = {"indices": np.where((idx >= 0) & (idx < spec.T), idx, 0)}
    if spec.kind.takes_task_ids:
        t = np.broadcast_to(np.asarray(feeds[INPUT_TASK_IDS]).reshape(-1), (idx.shape[0],))
        inputs["task_ids"] = np.where((t >= 0) & (t < spec.K), t, 0)
    bound = expected(spec.kind, spec.params, inputs, None, None, rounding=rounding).output_bound
    return want, bound


def compare(case: str, provider: str, got: np.ndarray, want: np.ndarray, bound: np.ndarray) -> TensorCheck:
    """got (export dtype) vs want (float64, NaN where the policy says) within ``bound`` per entry."""
    c = check_tensor(case, "output", got, want, bound, provider=provider, nan_expected=True)
    if c.note:
        return c
    both = ~np.isnan(want) & np.isfinite(got)
    ulp = int(ulp_distance(got[both], want[both]).max(initial=0))
    return dataclasses.replace(c, extra=(*c.extra, ("max_ulp", ulp)))


def check_output(case: str, module: Any, feeds: dict[str, np.ndarray], got: np.ndarray, *, dtype: str = "float32",
                 provider: str = "cpu", variant: str = "faithful") -> TensorCheck:
    """A graph's output on ``feeds`` (run by the caller) judged as ``run_cases`` judges it: against
    ``module``'s float64 reference (NaN per the id policy), every entry within the error model's bound
    for a ``dtype`` graph on ``provider`` (ONNX_ROUNDING)."""
    spec = module if isinstance(module, ModuleSpec) else module_spec(module)
    want, bound = expected_with_bound(spec, feeds, variant, onnx_rounding(dtype, provider))
    return compare(case, provider, np.asarray(got), want, bound)


def run_cases(model: onnx.ModelProto, spec: ModuleSpec, cases: Sequence[tuple[str, dict[str, np.ndarray]]],
              providers: Sequence[str], *, dtype: str, variant: str,
              input_names: dict[str, str] | None = None, timeout: float | None = DEFAULT_TIMEOUT) -> list[TensorCheck]:
    """The one provider loop: every case on every provider, judged by ``compare``. input_names maps our
    feed names (indices, task_ids) to the graph's; a runtime error is a failed check, reported. A run
    longer than ``timeout`` seconds is stopped: RunTimeout."""
    names = input_names or {}
    checks = []
    for provider in providers:
        rounding = onnx_rounding(dtype, provider)
        runner = Runner(model, provider, timeout=timeout)
        for name, feeds in cases:
            want, bound = expected_with_bound(spec, feeds, variant, rounding)
            try:
                got = runner.run({names.get(k, k): np.asarray(v, dtype=np.int64) for k, v in feeds.items()})
            except RunTimeout:
                raise
            except Exception as exc:  # a runtime refusing an input is a parity failure, reported
                checks.append(TensorCheck.failed(name, "output", f"{type(exc).__name__}: {shown(exc)}", provider))
                continue
            checks.append(compare(name, provider, got, want, bound))
    return checks


MAX_CASE_ELEMENTS = 1 << 27  # B x tokens x D of one parity case: 1 GiB of float64 reference output


def check_batch(batch: Any, spec: ModuleSpec, what: str = "batch") -> int:
    """A batch size whose cases (a few more rows, one more token) stay under MAX_CASE_ELEMENTS outputs,
    checked before anything is allocated (a batch of 10**12 is refused, not attempted)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"{what}: expected an integer >= 1, got {batch!r}")
    per_row = (spec.T + 1) * spec.D
    most = max(MAX_CASE_ELEMENTS // per_row - 4, 1)
    if batch > most:
        raise InputError(f"{what}: expected at most {most} rows for this module ({per_row} output elements per "
                         f"row, at most {MAX_CASE_ELEMENTS} per case), got {batch}")
    return batch


def stamped(model: onnx.ModelProto, spec: ModuleSpec) -> tuple[str, str]:
    """(variant, dtype) from an mpt-ref export's metadata, each checked (the kind against ``spec``, the
    dtype against the graph's output) before it steers anything."""
    meta = metadata(model)
    kind = meta.get("kind")
    if kind not in {k.value for k in Kind} or Kind.parse(kind) != spec.kind:
        raise InputError(f"model: expected an export of a {spec.kind.value!r} module (mpt_ref.kind metadata), "
                         f"got {shown(kind, 80)!r}")
    variant, dtype = meta.get("variant"), meta.get("dtype")
    if variant not in VARIANTS:
        raise InputError(f"model: expected mpt_ref.variant metadata, one of {list(VARIANTS)}, got {shown(variant, 80)!r}")
    if dtype not in DTYPES:
        raise InputError(f"model: expected mpt_ref.dtype metadata, one of {list(DTYPES)}, got {shown(dtype, 80)!r}")
    tokens = tokens_dim(spec, variant)
    idx = next((v for v in model.graph.input if v.name == INPUT_INDICES), None)
    dims = [] if idx is None else list(idx.type.tensor_type.shape.dim)
    if len(dims) != 2:
        raise InputError(f"model: expected an input {INPUT_INDICES!r} of rank 2, got "
                         f"{'none' if idx is None else f'rank {len(dims)}'}")
    if dims[1].HasField("dim_value") and dims[1].dim_value != tokens:
        raise InputError(f"model: expected indices with {tokens} tokens (module T={spec.T}, variant {variant}), got "
                         f"a fixed {dims[1].dim_value}")
    out = model.graph.output[0].type.tensor_type.elem_type if model.graph.output else None
    if out != onnx.helper.np_dtype_to_tensor_dtype(DTYPES[dtype]):
        raise InputError(f"model: expected a {dtype} output (its mpt_ref.dtype metadata), got ONNX element type "
                         f"{out}")
    return variant, dtype


def parity_cases(spec: ModuleSpec, variant: str, *, batch: int = 3, seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The inputs checked: PEFT's (arange rows), a length-1 task broadcast (MPT), random in-range
    indices (with T+1 tokens where the graph allows any count), and invalid ids (the NaN policy)."""
    check_batch(batch, spec)
    rng = np.random.default_rng(seed)
    T, K = spec.T, spec.K
    mpt = spec.kind.takes_task_ids
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
    comparisons: list[TensorCheck]
    weights: str = ""  # where the reference's weights came from, when that limits what can be seen
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. the model names another module

    @property
    def ok(self) -> bool:
        return bool(self.comparisons) and all(c.ok for c in self.comparisons)

    def max_errors(self) -> dict[str, dict[str, float]]:
        """provider -> {max_abs, max_ratio, max_ulp} over all cases."""
        out: dict[str, dict[str, float]] = {}
        for c in self.comparisons:
            m = out.setdefault(c.provider, {"max_abs": 0.0, "max_ratio": 0.0, "max_ulp": 0})
            if np.isfinite(c.max_abs):
                m["max_abs"] = max(m["max_abs"], c.max_abs)
            if np.isfinite(c.ratio):
                m["max_ratio"] = max(m["max_ratio"], c.ratio)
            m["max_ulp"] = max(m["max_ulp"], dict(c.extra).get("max_ulp", 0))
        return out

    def verdict_line(self) -> str:
        line = f"verdict: {'PASS' if self.ok else 'FAIL'}"
        settings = [SETTINGS[p] for p in dict.fromkeys(c.provider for c in self.comparisons) if p in SETTINGS]
        return line + "".join(f" ({note})" for note in [*settings, self.weights] if note)

    def format(self) -> str:
        head = f"parity: {self.module} variant={self.variant} dtype={self.dtype} vs float64 reference"
        cols = f"{'case':<30} {'provider':<15} {'max abs':>9} {'/bound':>7} {'max ulp':>8} {'NaN exp/bad':>11}  verdict"
        lines = [head, cols]
        for c in self.comparisons:
            extra = dict(c.extra)
            verdict = "OK" if c.ok else f"FAIL: {c.describe()}"
            nan = f"{extra.get('nan_expected', 0)}/{extra.get('nan_mismatch', 0)}"
            lines.append(f"{c.case:<30} {c.provider:<15} {c.max_abs:>9.2e} {c.ratio:>7.2g} "
                         f"{extra.get('max_ulp', 0):>8d} {nan:>11}  {verdict}")
        for p in sorted({c.provider for c in self.comparisons}):
            lines.append(f"  tolerance {p}: per-entry error bound, {onnx_rounding(self.dtype, p).reason} (spec/tolerances.md)")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.verdict_line())
        return "\n".join(lines)


def config_differences(model_config: str, here_config: str, here: str = "here") -> list[str]:
    """The fields of two config JSON texts that differ, as ``field: model 8, here 10`` (names only
    those: a config is ~1,000 characters)."""
    try:
        ours, theirs = json.loads(model_config), json.loads(here_config)
    except ValueError:
        return [f"config: model {shown(model_config, 200)}, {here} {shown(here_config, 200)}"]
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return [f"config: model {shown(model_config, 200)}, {here} {shown(here_config, 200)}"]
    value = lambda d, k: shown(json.dumps(d[k]), 80) if k in d else "(absent)"  # noqa: E731
    return [f"{k}: model {value(ours, k)}, {here} {value(theirs, k)}"
            for k in sorted(set(ours) | set(theirs), key=str) if ours.get(k, ...) != theirs.get(k, ...)]


def metadata_mismatches(meta: dict[str, str], module: Any, spec: ModuleSpec, here: str = "here") -> list[str]:
    """Where the model's metadata names another module than the one checked against (models without
    the metadata, e.g. from older exports, are not judged). ``here`` names where the module came from."""
    identity = module_identity(module, spec)
    notes = []
    fields = config_differences(meta["config"], identity["config"], here) if "config" in meta else []
    if fields:  # (the same fields written another way are the same config)
        notes.append(f"the model was exported from another config ({'; '.join(fields)}); give the adapter or "
                     "--config it was exported from, or neither: parity then reads the model's own config")
    if "params_sha256" in meta and meta["params_sha256"] != identity["params_sha256"]:
        seeds = (meta.get("init_seed"), identity["init_seed"])
        hint = (f"; the model says init seed {shown(seeds[0], 40)}, the module here was built with {seeds[1]}: pass "
                f"--seed {shown(seeds[0], 40)}" if seeds[0] not in (None, "none") and seeds[0] != seeds[1]
                else "; pass the --checkpoint (or adapter) it was exported from")
        notes.append("the model's weights (mpt_ref.params_sha256) differ from the module rebuilt here, so "
                     "parity compares two different modules" + hint)
    return notes


def check_parity(
    model: onnx.ModelProto | str | os.PathLike,
    module: Any,
    *,
    providers: Sequence[str] = ("cpu",),
    batch: int = 3,
    seed: int = 0,
    here: str = "here",
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ParityReport:
    """Run an exported ``model`` (ModelProto or path) on each provider for the cases of
    ``parity_cases`` and compare with ``module``'s float64 reference. Unavailable providers raise
    InputError; a runtime error inside a session is reported as a failed comparison; a run longer than
    ``timeout`` seconds is stopped (RunTimeout)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    check_runnable(model)
    meta = metadata(model)
    spec = module_spec(module)
    notes = metadata_mismatches(meta, module, spec, here)
    try:
        variant, dtype = stamped(model, spec)
    except InputError as exc:  # a model that cannot take this module's inputs: say which fields differ
        if not notes:
            raise
        raise InputError(f"{exc}; {notes[0]}") from None
    cases = parity_cases(spec, variant, batch=batch, seed=seed)
    for provider in providers:
        check_provider(provider)
    comparisons = run_cases(model, spec, cases, providers, dtype=dtype, variant=variant, timeout=timeout)
    return ParityReport(spec.module_name, variant, dtype, comparisons, notes=notes)
