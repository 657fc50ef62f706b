"""The one conformance engine behind ``assert_conforms`` (Python callables) and ``mpt-ref conform --exec``
(any executable): drawing cases, running a port on each, judging it, shrinking a failure.

    port(kind, case, gradients) -> PortResult(output, grads)      raises PortFailure(what, message)

A *port* is any callable of that shape: ``callable_port`` wraps Python forward / backward functions,
``mpt_ref.conformance.exec_port`` a process speaking spec/conform-protocol.md. The engine

1. draws cases with hypothesis (``case_strategy``): the fixed ``strategies.edge_examples`` (every size
   just past a common vector / tile width) always first, then sizes around vector widths;
2. runs the port on each case **twice** and compares the two results bit for bit: a port that keeps
   state between calls (gradients never zeroed) or draws random dropout (left in train mode) is reported
   as such, not as a numerical mismatch;
3. judges output and gradients against the float64 reference, every entry within its own error bound
   for the port's precision class (spec/tolerances.md): shape, dtype and keys first, then values;
4. lets hypothesis shrink a failure to a minimal case, returned with its checks (``Failure``).

Precision classes (``precision_class``): float64, float32, and for float16 storage either float32
accumulation (GPU / MLAS half kernels, the default) or float16 accumulation (a framework's own float16
scatter-add and reductions on CPU). A float16 failure that the other class would pass says so.

Shape letters: B batch, T tokens, D token_dim, H hidden, K tasks, R ranks, L layers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import numpy as np
from hypothesis import Phase, given
from hypothesis import seed as hseed
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from mpt_ref.errors import InputError
from mpt_ref.modules.bounds import Expected, TensorCheck, check_tensor, expected
from mpt_ref.kind import Kind
from mpt_ref.testing import strategies as hs
from mpt_ref.tolerances import ACCUMULATION, CONFORMANCE, Rounding

DTYPES = ("float64", "float32", "float16")


# ================================================================================================
# Precision classes
# ================================================================================================


class PrecisionClass(NamedTuple):
    dtype: np.dtype
    accumulation: str       # "float64" | "float32" | "float16"
    rounding: Rounding

    @property
    def name(self) -> str:
        if self.dtype == np.float16:
            return f"float16 storage, {self.accumulation} accumulation"
        return self.dtype.name

    def other(self) -> PrecisionClass | None:
        """The other float16 class (None for float32 / float64)."""
        if self.dtype != np.float16:
            return None
        return precision_class(self.dtype, "float16" if self.accumulation == "float32" else "float32")


def parse_dtype(dtype: Any, option: str = "dtype") -> np.dtype:
    """float64, float32 or float16 (as a name, numpy dtype or type); anything else one InputError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise InputError(f"{option}: expected one of {', '.join(DTYPES)}, got {str(dtype)!r}") from None
    return dt


def precision_class(dtype: Any, accumulation: str | None = None, rounding: Rounding | None = None) -> PrecisionClass:
    """The class a port of ``dtype`` is judged with. accumulation: float16 only, "float32" (default) or
    "float16". rounding: another error model altogether (kept as the class's rounding)."""
    dt = parse_dtype(dtype)
    if dt != np.float16:
        if accumulation not in (None, dt.name):
            raise InputError(f"accumulation: expected None (or {dt.name!r}) for {dt.name}, got {accumulation!r}; "
                             "a separate accumulation precision exists only for float16 storage")
        return PrecisionClass(dt, dt.name, rounding or CONFORMANCE[dt.name])
    acc = accumulation or "float32"
    if acc not in ACCUMULATION:
        raise InputError(f"accumulation: expected one of {sorted(ACCUMULATION)} for float16, got {accumulation!r}")
    return PrecisionClass(dt, acc, rounding or ACCUMULATION[acc])


# ================================================================================================
# Ports
# ================================================================================================


class PortResult(NamedTuple):
    output: Any                    # (B, T, D)
    grads: dict[str, Any] | None   # PEFT key -> gradient; None when gradients were not asked for


class PortFailure(Exception):
    """The port did not produce a result: ``what`` is "error" (it reported one), "crash" (it died),
    "timeout", or "protocol" (it answered something the protocol does not allow)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what}: {message}")
        self.what, self.message = what, message


Port = Callable[[Kind, hs.Case, bool], PortResult]


def as_array(x: Any) -> Any:
    """A port's tensor as a NumPy array: torch tensors (requires_grad or not, any device) are detached
    and copied to the CPU; anything without ``__array__`` is returned as is (judged as not an array)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor; no torch import needed
        x = x.detach().cpu()
        return x.numpy() if hasattr(x, "numpy") else x
    if hasattr(x, "__array__"):
        return np.asarray(x)
    return x


def call_inputs(kind: Kind, case: hs.Case) -> list[Any]:
    """The positional inputs after params (forward) or after dout (backward), before config."""
    idx = case.inputs["indices"].copy()
    if kind.takes_task_ids:
        return [idx, case.inputs["task_ids"].copy()]
    if kind.is_encoder:
        masks = case.inputs.get("dropout_masks")
        return [idx, None if not masks else [m.copy() for m in masks]]
    return [idx]


def callable_port(forward: Callable[..., Any], backward: Callable[..., Any] | None) -> Port:
    """Python functions in assert_conforms' calling convention as a port. Their exceptions propagate
    (a test's traceback shows where the port failed)."""
    def port(kind: Kind, case: hs.Case, gradients: bool) -> PortResult:
        copy = lambda: {k: v.copy() for k, v in case.params.items()}  # noqa: E731
        out = as_array(forward(copy(), *call_inputs(kind, case), case.config))
        if not gradients or backward is None:
            return PortResult(out, None)
        got = backward(copy(), case.dout.copy(), *call_inputs(kind, case), case.config)
        if isinstance(got, dict):
            got = {k: as_array(v) for k, v in got.items()}
        return PortResult(out, got)
    return port


# ================================================================================================
# Cases
# ================================================================================================


def with_eval_dropout(case: hs.Case, p: float) -> hs.Case:
    """An eval-mode encoder case whose config says encoder_dropout = p: the output must not change (a port
    left in train mode drops units between LSTM layers and is caught)."""
    if p == 0 or case.inputs.get("dropout_masks") or not hasattr(case.config, "encoder_dropout"):
        return case
    return case._replace(config=dataclasses.replace(case.config, encoder_dropout=p))


EVAL_DROPOUT = st.sampled_from([0.0, 0.1, 0.5])  # encoder_dropout of eval-mode encoder cases (no effect)


def _lstm_strategy(dtype: Any, limits: hs.SizeLimits, dropout: bool) -> st.SearchStrategy[hs.Case]:
    eval_cases = st.builds(with_eval_dropout, hs.lstm_encoder_cases(dtype=dtype, limits=limits), EVAL_DROPOUT)
    return eval_cases | hs.lstm_encoder_cases(dtype=dtype, limits=limits, dropout=True) if dropout else eval_cases


# the cases drawn per kind: (dtype, limits, dropout) -> strategy; ``dropout``: LSTM train mode too
STRATEGIES: dict[Kind, Callable[[Any, hs.SizeLimits, bool], st.SearchStrategy[hs.Case]]] = {
    Kind.PROMPT_EMBEDDING: lambda dtype, limits, dropout: hs.prompt_embedding_cases(dtype=dtype, limits=limits),
    Kind.MPT: lambda dtype, limits, dropout: hs.mpt_cases(dtype=dtype, limits=limits),
    Kind.MLP_ENCODER: lambda dtype, limits, dropout: st.builds(
        with_eval_dropout, hs.mlp_encoder_cases(dtype=dtype, limits=limits), EVAL_DROPOUT),
    Kind.LSTM_ENCODER: _lstm_strategy,
}


def case_strategy(module: Any, dtype: Any = np.float64, limits: hs.SizeLimits | None = None,
                  dropout: bool = True) -> st.SearchStrategy[hs.Case]:
    """The cases drawn for ``module``: sizes around vector widths; encoders in eval mode with
    encoder_dropout 0 or > 0 (no effect in eval), LSTM also in train mode with explicit keep masks."""
    return STRATEGIES[Kind.parse(module)](dtype, limits or hs.SizeLimits(), dropout)


def edge_cases(kind: Kind, dtype: np.dtype, limits: hs.SizeLimits | None) -> list[hs.Case]:
    """``strategies.edge_examples``, encoders with encoder_dropout = 0.5 in eval mode."""
    return [with_eval_dropout(c, 0.5) if kind.is_encoder else c for c in hs.edge_examples(kind, dtype, limits)]


def dropout_scales(case: hs.Case) -> list[np.ndarray] | None:
    """The masks as the reference applies them: 0 or 1/(1 − p)."""
    masks = case.inputs.get("dropout_masks")
    if not masks:
        return None
    p = case.config.encoder_dropout
    return [m.astype(np.float64) / (1 - p) for m in masks]


def case_expected(kind: Kind, case: hs.Case, dtype: Any, rounding: Rounding | None = None,
                  gradients: bool = True) -> Expected:
    """The reference and error bounds of one case (modules.bounds.expected)."""
    return expected(kind, case.params, case.inputs, case.dout if gradients else None, dtype,
                    dropout_scales=dropout_scales(case), rounding=rounding)


# ================================================================================================
# Judging
# ================================================================================================


def nearest_input_first(keys: list[str]) -> list[str]:
    """embedding first, then the LSTM by layer, then the head by layer, then MPT's factors."""
    def rank(key: str) -> tuple[int, str]:
        if key == "embedding.weight":
            return (0, "")
        if key.startswith("lstm_head."):
            layer = key.rsplit("_l", 1)[1].split("_")[0]
            return (1 + int(layer), key)
        if key.startswith("mlp_head."):
            return (100 + int(key.split(".")[1]), key)
        return (200, key)
    return sorted(keys, key=rank)


def judge(name: str, result: PortResult, ex: Expected, dtype: np.dtype, gradients: bool) -> list[TensorCheck]:
    """Every TensorCheck of one result: output first, then gradients nearest the input first."""
    checks = [check_tensor(name, "output", result.output, ex.output, ex.output_bound, dtype=dtype)]
    if not gradients:
        return checks
    got = result.grads
    if not isinstance(got, dict):
        what = "nothing" if got is None else type(got).__name__
        return checks + [TensorCheck.failed(name, "gradients", f"got {what}, expected a dict of PEFT keys")]
    extra = sorted(set(got) - set(ex.grads))
    if extra:
        checks.append(TensorCheck.failed(name, "gradients", f"unexpected keys {extra} (not parameters)"))
    for key in nearest_input_first(list(ex.grads)):
        if key not in got:
            found = sorted(got)
            checks.append(TensorCheck.failed(name, f"grad {key}", f"missing (keys found: {found[:12]}"
                                             + (" ..." if len(found) > 12 else "") + ")"))
            continue
        checks.append(check_tensor(name, f"grad {key}", got[key], ex.grads[key], ex.grad_bounds[key], dtype=dtype))
    return checks


def _same(a: Any, b: Any) -> bool:
    try:
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    except (TypeError, ValueError):
        return a is b


def repeat_check(name: str, first: PortResult, second: PortResult) -> TensorCheck | None:
    """None when two calls on one case gave the same bits; else one failed check saying what changed."""
    changed = [] if _same(first.output, second.output) else ["output"]
    g1, g2 = first.grads or {}, second.grads or {}
    changed += [f"grad {k}" for k in nearest_input_first(sorted(set(g1) | set(g2)))
                if k not in g1 or k not in g2 or not _same(g1[k], g2[k])]
    if not changed:
        return None
    return TensorCheck.failed(name, REPEAT_CHECK, (
        f"a second call on the same case changed {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}: "
        "the port keeps state between calls (e.g. gradients accumulated and never zeroed) or is not "
        "deterministic (e.g. left in train mode: dropout in an eval call)"))


# the tensor names of the checks that record a PortFailure on a case's first call, and its second call
# (a PortFailure or a changed result); a PortFailure's note starts with its ``what`` ("timeout", "crash", ...)
PORT_CHECK, REPEAT_CHECK = "port", "repeat"


def port_failed(checks: list[TensorCheck]) -> bool:
    """Whether the port gave no result at all (crash, timeout, protocol): calling it again only repeats that."""
    return any(c.tensor == PORT_CHECK and not c.ok for c in checks)


def timed_out(checks: list[TensorCheck]) -> bool:
    """Whether a call of the port ran out of its time: each further case would wait that long again."""
    return any(c.tensor in (PORT_CHECK, REPEAT_CHECK) and not c.ok and c.note.startswith("timeout") for c in checks)


def run_case(name: str, kind: Kind, case: hs.Case, port: Port, pc: PrecisionClass, *, gradients: bool = True,
             repeat: bool = True, ex: Expected | None = None) -> list[TensorCheck]:
    """Run ``port`` on one case (twice when ``repeat``) and judge it."""
    ex = ex or case_expected(kind, case, pc.dtype, pc.rounding, gradients)
    try:
        first = port(kind, case, gradients)
    except PortFailure as f:
        return [TensorCheck.failed(name, PORT_CHECK, f"{f.what}: {f.message}")]
    checks = judge(name, first, ex, pc.dtype, gradients)
    if repeat:
        try:
            second = port(kind, case, gradients)
        except PortFailure as f:
            return [TensorCheck.failed(name, REPEAT_CHECK, f"{f.what} on the second call of the same case: {f.message}")]
        changed = repeat_check(name, first, second)
        if changed is not None:
            checks.insert(0, changed)
    return checks


def other_class_hint(kind: Kind, case: hs.Case, port_checks: list[TensorCheck], result_of: Callable[[], Any],
                     pc: PrecisionClass, gradients: bool) -> str:
    """For a float16 failure judged by one class: a line naming the other class when it passes."""
    other = pc.other()
    if other is None or any(c.note for c in port_checks if not c.ok):  # shape / dtype / keys: not precision
        return ""
    try:
        result = result_of()
    except PortFailure:
        return ""
    ex = case_expected(kind, case, pc.dtype, other.rounding, gradients)
    if all(c.ok for c in judge("case", result, ex, pc.dtype, gradients)):
        option = f"accumulation={other.accumulation!r} (conform: --accumulation {other.accumulation})"
        return (f"the errors fit {other.name}: this case passes that class. If your port accumulates in "
                f"{other.accumulation} (e.g. a framework's own float16 scatter-add and reductions on CPU), "
                f"judge it with {option}.")
    return ""


# ================================================================================================
# Exploring: hypothesis drives, shrinks, and reports the minimal failing case
# ================================================================================================


class Failure(AssertionError):
    """A case the port fails: the case (after shrinking, the minimal one) and its checks."""

    def __init__(self, name: str, case: hs.Case, checks: list[TensorCheck]) -> None:
        super().__init__(f"{name}: {sum(not c.ok for c in checks)} tensor(s) fail")
        self.name, self.case, self.checks = name, case, checks


@dataclasses.dataclass
class Stats:
    cases: int = 0        # cases run (shrinking included)
    port_s: float = 0.0   # seconds inside the port
    judge_s: float = 0.0  # seconds computing the reference, bounds and checks
    wall_s: float = 0.0   # everything, case generation included

    @property
    def generation_s(self) -> float:
        return max(self.wall_s - self.port_s - self.judge_s, 0.0)

    def line(self) -> str:
        rate = self.cases / self.wall_s if self.wall_s else float("nan")
        own = self.cases / (self.wall_s - self.port_s) if self.wall_s > self.port_s else float("nan")
        return (f"{self.cases} cases in {self.wall_s:.2f} s: {rate:.1f} cases/s overall, {own:.1f} cases/s of "
                f"generation + judging (generation {self.generation_s:.2f} s, judging {self.judge_s:.2f} s, "
                f"port {self.port_s:.2f} s)")


class Outcome(NamedTuple):
    failure: Failure | None
    reproduction: str      # hypothesis' own report of the failing example (empty on a pass)
    stats: Stats
    flaky: bool = False    # hypothesis could not reproduce the failure: the port's results vary


def explore(kind: Any, port: Port, pc: PrecisionClass, *, settings: hsettings | None = None,
            limits: hs.SizeLimits | None = None, dropout: bool = True, seed: int | None = None,
            max_examples: int | None = None, shrink: bool | None = None, gradients: bool = True,
            repeat: bool = True, on_case: Callable[[str, list[TensorCheck]], None] | None = None) -> Outcome:
    """Run ``port`` on the edge cases, then on drawn cases until ``max_examples`` or a failure; a failure
    is shrunk (unless ``shrink`` is False) and returned as the minimal failing case."""
    kind = Kind.parse(kind)
    base = settings if settings is not None else hsettings()
    # no explain phase: after shrinking, hypothesis would re-run the port on variations of the minimal case
    # only to annotate its own report (which parts could vary); the failure message here names the case
    # itself. It was 60 % of a shrunk failure's port calls (1.9 of 3.1 s for the C port's keep_grads bug).
    phases = [p for p in base.phases if p != Phase.explain]
    if shrink is not None:
        phases = [p for p in phases if p != Phase.shrink] + ([Phase.shrink] if shrink else [])
    overrides: dict[str, Any] = {"deadline": None, "phases": phases}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    stats = Stats()
    timed_port = _timed(port, stats)

    def check(case: hs.Case) -> None:
        __tracebackhide__ = True
        stats.cases += 1
        name = f"case {stats.cases}"
        t0, p0 = time.perf_counter(), stats.port_s
        checks = run_case(name, kind, case, timed_port, pc, gradients=gradients, repeat=repeat)
        stats.judge_s += time.perf_counter() - t0 - (stats.port_s - p0)
        if on_case is not None:
            on_case(name, checks)
        if not all(c.ok for c in checks):
            raise Failure(name, case, checks)

    start = time.perf_counter()
    edge_failure = None
    for n, case in enumerate(edge_cases(kind, pc.dtype, limits), 1):  # always run first, whatever is drawn
        try:
            check(case)
        except Failure as f:
            edge_failure = edge_failure or (f, f"the fixed edge case {n} (strategies.edge_examples) fails")
            if timed_out(f.checks):  # a hung port: every further case, drawn or shrunk, costs the timeout again
                stats.wall_s = time.perf_counter() - start
                return Outcome(*edge_failure, stats)
    test = given(case_strategy(kind, pc.dtype, limits, dropout))(check)
    test = hsettings(base, **overrides)(test)
    if seed is not None:
        test = hseed(seed)(test)
    try:
        test()  # after a failing edge case too: hypothesis finds and shrinks a smaller failing case
    except Failure as f:
        stats.wall_s = time.perf_counter() - start
        return Outcome(f, _reproduction(f), stats)
    except Flaky as exc:  # a failure hypothesis could not reproduce: the port's results vary between calls
        stats.wall_s = time.perf_counter() - start
        inner = _first_failure(exc)
        if inner is None:
            raise
        return Outcome(inner, _reproduction(exc), stats, flaky=True)
    stats.wall_s = time.perf_counter() - start
    if edge_failure is not None:
        return Outcome(edge_failure[0], edge_failure[1], stats)
    return Outcome(None, "", stats)


def _timed(port: Port, stats: Stats) -> Port:
    def run(kind: Kind, case: hs.Case, gradients: bool) -> PortResult:
        t0 = time.perf_counter()
        try:
            return port(kind, case, gradients)
        finally:
            stats.port_s += time.perf_counter() - t0
    return run


def _first_failure(exc: BaseException) -> Failure | None:
    if isinstance(exc, Failure):
        return exc
    for inner in getattr(exc, "exceptions", ()) or ():
        found = _first_failure(inner)
        if found is not None:
            return found
    return _first_failure(exc.__cause__) if exc.__cause__ is not None else None


def _reproduction(exc: BaseException) -> str:
    """hypothesis' notes on the failing example (Falsifying example: ..., @reproduce_failure(...))."""
    notes = list(getattr(exc, "__notes__", []) or [])
    return "\n".join(n for n in notes if n.strip())


def failure_message(kind: Kind, pc: PrecisionClass, failure: Failure, hint: str = "", flaky: bool = False) -> str:
    """The short message: what failed, by how much, the class that judged, the minimal case."""
    failed = [c for c in failure.checks if not c.ok]
    head = (f"{kind.value} port disagrees with mpt-ref in {len(failed)} tensor(s) of the minimal failing case "
            f"(judged as {pc.name}: {pc.rounding.reason.split(';')[0]}; spec/tolerances.md), nearest the input "
            "first:")
    lines = [head] + [f"  {c.describe()}" for c in failed]
    if flaky:
        lines.append("  hypothesis could not reproduce the failure: the port's results change from call to call "
                     "(state kept between calls, or randomness)")
    if hint:
        lines.append(f"  hint: {hint}")
    lines.append("minimal case:\n  " + failure.case.summary().replace("\n", "\n  "))
    return "\n".join(lines)
