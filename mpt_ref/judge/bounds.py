"""The one conformance judgment: a candidate's tensor against the float64 reference, within the
per-element error bound of mpt_ref/judge/error_bound.py (spec/tolerances.md).

``expected(kind, params, inputs, dout, dtype)`` -> the float64 reference output and gradients of a case
and, for each, the bound a correct port in ``dtype`` stays within. ``check_tensor`` turns (got, want,
bound) into a ``TensorCheck``, the single report row used by assert_conforms, ``verify --candidate``,
``verify --onnx`` and ONNX parity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from mpt_ref._types import Array, Params
from mpt_ref.core.ops import OPS
from mpt_ref.errors import ConfigError
from mpt_ref.judge import error_bound as eb
from mpt_ref.kind import Kind
from mpt_ref.tolerances import CONFORMANCE, Rounding


class Expected(NamedTuple):
    output: Array                 # float64 reference
    output_bound: Array           # per element, same shape
    grads: dict[str, Array]       # float64 reference gradients (PEFT keys, PEFT order)
    grad_bounds: dict[str, Array]
    rounding: Rounding


def rounding_for(dtype: Any) -> Rounding:
    """The candidate class judged for ``dtype`` ("float64", "float32", or "float16" = float16 storage
    with float32 accumulation), the float64 reference's own rounding included."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in CONFORMANCE:
        raise ConfigError(f"dtype: expected one of {sorted(CONFORMANCE)}, got {name!r}")
    return CONFORMANCE[name]


def expected(kind: Any, params: Mapping[str, Array], inputs: Mapping[str, Array], dout: Array | None, dtype: Any, *,
             dropout_scales: Sequence[Array] | None = None, rounding: Rounding | None = None) -> Expected:
    """Reference and bounds for one case. inputs: "indices" (B, T') and, for MPT, "task_ids".
    dout None: forward only (gradients empty). dropout_scales: L−1 arrays (B, T', 2H) of 0 or 1/(1−p)."""
    kind = Kind.parse(kind)
    r = rounding or rounding_for(dtype)
    alg = eb.ErrorAlgebra(r)
    p64 = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    idx = np.asarray(inputs["indices"])
    B, Tp = idx.shape
    D = p64["embedding.weight"].shape[1]
    d = np.zeros((B, Tp, D)) if dout is None else np.asarray(dout, dtype=np.float64)
    scales = None if not dropout_scales else [np.asarray(s, dtype=np.float64) for s in dropout_scales]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing worst case is replaced by lam·s
        out, bo, grads, bg = _run(kind, alg, p64, idx, d, inputs, scales)
    if dout is None:
        grads, bg = {}, {}
    return Expected(out, bo.bound(r.lam), grads, {k: bg[k].bound(r.lam) for k in grads}, r)


def _run(kind: Kind, alg: eb.ErrorAlgebra, p64: Params, idx: Array, d: Array, inputs: Mapping[str, Array],
         scales: Sequence[Array] | None) -> tuple:
    tasks = np.asarray(inputs["task_ids"]) if "task_ids" in inputs else None  # read by MPT only
    out, cache = OPS[kind].forward(p64, idx, tasks, scales)
    bo, bg = eb.BOUNDS[kind](alg, p64, idx, tasks, d, scales)
    return out, bo, OPS[kind].backward(d, cache), bg


# ================================================================================================
# The report row.
# ================================================================================================


@dataclasses.dataclass(frozen=True)
class TensorCheck:
    """One tensor of one case judged: ok, or why not. ``ratio`` = max |got − want| / bound (<= 1 passes)."""

    case: str
    tensor: str
    ok: bool
    note: str = ""                 # why it failed without numbers: missing, shape, dtype, runtime error
    bad: int = 0                   # entries outside their bound (NaN / inf count as outside)
    size: int = 0
    max_abs: float = float("nan")  # max |got − want|
    ratio: float = float("nan")    # max |got − want| / bound
    worst: tuple[int, ...] = ()    # the entry with the largest ratio
    got: float = float("nan")
    want: float = float("nan")
    bound: float = float("nan")
    provider: str = ""             # ONNX runs: the execution provider
    extra: tuple[tuple[str, Any], ...] = ()  # e.g. (("max_ulp", 3), ("nan_expected", 4))

    @classmethod
    def failed(cls, case: str, tensor: str, note: str, provider: str = "") -> TensorCheck:
        return cls(case, tensor, False, note, provider=provider)

    def describe(self) -> str:
        """One line for a failure message."""
        if self.ok:
            return f"{self.tensor}: ok (max |diff| {self.max_abs:.3g}, {self.ratio:.2g} of the bound)"
        if self.note and not self.bad:
            return f"{self.tensor}: {self.note}"
        return (f"{self.tensor}: {self.bad}/{self.size} entries off; worst at {self.worst}: got {self.got!r}, "
                f"expected {self.want!r}, |diff| {abs(self.got - self.want):.3g} > bound {self.bound:.3g}"
                + (f" ({self.note})" if self.note else ""))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["worst"] = list(self.worst)
        d["extra"] = dict(self.extra)
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def check_tensor(case: str, tensor: str, got: Any, want: Array, bound: Array, *, dtype: Any = None,
                 provider: str = "", nan_expected: bool = False) -> TensorCheck:
    """got vs want (float64) elementwise within ``bound``. dtype: the dtype got must have (None: any
    float). nan_expected: NaN in want marks entries that must be NaN in got (the ONNX id policy)."""
    if got is None:
        return TensorCheck.failed(case, tensor, "missing", provider)
    got = np.asarray(got)
    if got.shape != want.shape:
        return TensorCheck.failed(case, tensor, f"shape {got.shape} != expected {want.shape}", provider)
    if dtype is not None and got.dtype != np.dtype(dtype):
        return TensorCheck.failed(case, tensor, f"dtype {got.dtype} != expected {np.dtype(dtype)}", provider)
    if got.dtype.kind != "f":
        return TensorCheck.failed(case, tensor, f"dtype {got.dtype}: expected a float array", provider)
    g = got.astype(np.float64)
    w = np.asarray(want, dtype=np.float64)
    bnd = np.broadcast_to(np.asarray(bound, dtype=np.float64), w.shape)
    extra: list[tuple[str, Any]] = []
    if nan_expected:
        nan_w = np.isnan(w)
        mismatch = (nan_w != np.isnan(g)) | np.isinf(g)
        extra += [("nan_expected", int(nan_w.sum())), ("nan_mismatch", int(mismatch.sum()))]
        w = np.where(nan_w, 0.0, w)
        g = np.where(nan_w & np.isnan(g), 0.0, g)
    else:
        mismatch = np.zeros(w.shape, dtype=bool)
    err = np.abs(g - w)
    bad = ~(err <= bnd) | mismatch  # NaN in got counts as bad
    size = int(w.size)
    if size == 0:
        return TensorCheck(case, tensor, True, size=0, max_abs=0.0, ratio=0.0, provider=provider, extra=tuple(extra))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(bad, np.inf, 0.0) if not np.any(np.isfinite(err)) else np.where(
            err == 0, 0.0, err / bnd)
    ratio = np.where(np.isnan(ratio) | mismatch, np.inf, ratio)
    i = np.unravel_index(int(np.argmax(ratio)), w.shape)
    finite_err = err[np.isfinite(err)]
    return TensorCheck(
        case, tensor, not bad.any(), bad=int(bad.sum()), size=size,
        max_abs=float(finite_err.max()) if finite_err.size else float("inf"),
        ratio=float(ratio.max()), worst=tuple(int(k) for k in i), got=float(g[i]), want=float(w[i]),
        bound=float(bnd[i]), provider=provider, extra=tuple(extra),
    )
