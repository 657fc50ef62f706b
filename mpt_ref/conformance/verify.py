"""``mpt-ref verify --candidate``: another implementation's outputs and gradients against the vectors.

The candidate directory holds one subdirectory per case, ``<case>/output.safetensors`` (key
``output``) and ``<case>/grads.safetensors`` (PEFT keys). Each case is judged against the float64
reference recomputed from the case's stored parameters and inputs, every entry within its own
rounding-error bound for a port in the case's dtype (spec/tolerances.md; the same model as
``assert_conforms``, ``verify --onnx`` and ONNX parity). Gradients are required unless
``forward_only``. Every tensor must have the case's dtype; a float16 case says which class judged it
(float32 or float16 accumulation, case.json's ``accumulation``) and when the other would pass.

``verify_exec`` runs a port process (spec/conform-protocol.md) on every case instead, twice per case: a
port whose results change from call to call (state kept between calls) is reported as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref.conformance.case_record import Judged, case_setup
from mpt_ref.conformance.vectors import read_case, read_index
from mpt_ref.errors import InputError
from mpt_ref.io.checkpoint import read_tensors
from mpt_ref.io.limits import read_regular_file
from mpt_ref.modules.bounds import TensorCheck, check_tensor, expected
from mpt_ref.kind import Kind


class Verification(NamedTuple):
    checks: list[TensorCheck]
    cases: list[str]         # the cases judged
    forward_only: bool
    module: Kind | None      # the --module filter, if any
    modules: dict[str, str] = {}  # case name -> module kind

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def module_hint(self) -> str:
        """When every case of some module kinds fails or is missing while another kind has passing cases
        (a port of fewer modules run on all of them): say --module."""
        if self.module is not None or self.ok:
            return ""
        failed_cases = {c.case for c in self.checks if not c.ok}
        by_kind: dict[str, list[bool]] = {}
        for name in self.cases:
            by_kind.setdefault(self.modules.get(name, "?"), []).append(name not in failed_cases)
        failing = sorted(k for k, oks in by_kind.items() if not any(oks))
        passing = sorted(k for k, oks in by_kind.items() if any(oks))
        if not (failing and passing):
            return ""
        return (f"every case of {', '.join(failing)} fails or is missing: if your port implements only "
                f"{' and '.join(passing)}, check one module kind per run with --module (e.g. --module {passing[0]})")


def vectors_digest(vectors_dir: str | Path) -> str:
    """sha256 of the vectors' index.json (which lists the sha256 of every file): names the set judged."""
    from mpt_ref.conformance.vectors import MAX_INDEX_BYTES
    from mpt_ref.errors import CheckpointError

    data = read_regular_file(Path(vectors_dir) / "index.json", MAX_INDEX_BYTES, CheckpointError, "vectors index.json")
    return hashlib.sha256(data).hexdigest()


def _load_optional(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    return read_tensors(path)  # the hardened reader: regular files only, the safetensors library's checks


def selected_cases(vectors_dir: str | Path, module: str | Kind | None = None) -> list[str]:
    """Case names of the vectors, those of one module kind when ``module`` is given."""
    cases = read_index(vectors_dir)["cases"]
    if module is None:
        return sorted(cases)
    kind = Kind.parse(module)
    names = sorted(n for n, entry in cases.items() if Kind.parse(entry.get("module", "")) == kind) if cases else []
    if not names:
        raise InputError(f"--module: expected a kind with vectors, got {kind.value!r} (no case of that kind)")
    return names


def check_candidate_dir(candidate_dir: str | Path, names: list[str]) -> Path:
    """A candidate directory that exists and holds at least one case subdirectory, or one InputError."""
    path = Path(candidate_dir)
    if not path.is_dir():
        raise InputError(f"--candidate: expected a directory of <case>/output.safetensors, got {str(path)!r} "
                         f"({'not a directory' if path.exists() else 'does not exist'})")
    if not any((path / n).is_dir() for n in names):
        raise InputError(f"--candidate: expected subdirectories named after the cases (e.g. {names[0]}/output."
                         f"safetensors), got none in {str(path)!r}")
    return path


def _missing(tensor: str, where: str, found: Any) -> str:
    keys = sorted(found)
    return f"missing key {tensor!r} in {where} (keys found: {keys[:12]}{' ...' if len(keys) > 12 else ''})"


def _with_class_hint(checks: list[TensorCheck], pc: Judged, ex_other: Any, got: dict) -> list:
    """float16: a numerically failing tensor that the other accumulation class passes says so."""
    out = []
    for c in checks:
        if not c.ok and c.bad and ex_other is not None and c.tensor in got:
            want, bound = ex_other[c.tensor]
            if check_tensor(c.case, c.tensor, got[c.tensor], want, bound).ok:
                c = dataclasses.replace(c, note=(f"judged as {pc.name}; passes as {pc.other().name}: "
                                                 f"if your port accumulates in {pc.other().accumulation}, "
                                                 "judge it with that class"))
        out.append(c)
    return out


def verify_case(vectors_dir: str | Path, name: str, cand: Path, *, forward_only: bool = False) -> list[TensorCheck]:
    case = read_case(vectors_dir, name)
    rec, t = case.record, case.tensors
    kind, pc, inputs, dout, scales = case_setup(rec, t)
    ex = expected(kind, t["params"], inputs, None if forward_only else dout, pc.dtype, dropout_scales=scales,
                  rounding=pc.rounding)
    got_out = _load_optional(cand / "output.safetensors")
    if got_out is not None and "output" not in got_out:
        checks = [TensorCheck.failed(name, "output", _missing("output", "output.safetensors", got_out))]
    else:
        checks = [check_tensor(name, "output", None if got_out is None else got_out.get("output"),
                               ex.output, ex.output_bound, dtype=pc.dtype)]
    got: dict[str, Any] = {"output": None if got_out is None else got_out.get("output")}
    if not forward_only:
        got_grads = _load_optional(cand / "grads.safetensors")
        if got_grads is None:
            return checks + [TensorCheck.failed(name, "grads", "missing grads.safetensors (--forward-only checks "
                                                               "outputs alone)")]
        extra = sorted(set(got_grads) - set(ex.grads))
        if extra:
            checks.append(TensorCheck.failed(name, "grads", f"unexpected keys {extra}"))
        for key in ex.grads:
            if key not in got_grads:
                checks.append(TensorCheck.failed(name, f"grad {key}", _missing(key, "grads.safetensors", got_grads)))
                continue
            checks.append(check_tensor(name, f"grad {key}", got_grads[key], ex.grads[key], ex.grad_bounds[key],
                                       dtype=pc.dtype))
            got[f"grad {key}"] = got_grads[key]
    other = pc.other()
    if other is not None and not all(c.ok for c in checks):
        eo = expected(kind, t["params"], inputs, None if forward_only else dout, pc.dtype, dropout_scales=scales,
                      rounding=other.rounding)
        ex_other = {"output": (eo.output, eo.output_bound),
                    **{f"grad {k}": (eo.grads[k], eo.grad_bounds[k]) for k in eo.grads}}
        checks = _with_class_hint(checks, pc, ex_other, got)
    return checks


def vector_case(vectors_dir: str | Path, name: str) -> tuple[Kind, Any, Any]:
    """A vector case as an engine case and precision class (for running a port process on it)."""
    from mpt_ref.conformance.case_dir import case_from_tensors
    from mpt_ref.testing import engine

    vc = read_case(vectors_dir, name)
    record = dict(vc.record)
    kind, judged, _, _, _ = case_setup(record, vc.tensors)
    _, case = case_from_tensors(record, vc.tensors["params"], vc.tensors["inputs"])
    return kind, engine.precision_class(judged.dtype, judged.accumulation if judged.dtype == np.float16 else None), case


def verify_exec(vectors_dir: str | Path, command: str, *, module: str | Kind | None = None,
                forward_only: bool = False, timeout: float = 30.0, per_case: bool = False,
                progress: Callable[[str], None] | None = None) -> Verification:
    """Run a port process on every vector case (of ``module``), twice per case, and judge it."""
    from mpt_ref.conformance.exec_port import ExecPort
    from mpt_ref.testing import engine

    names = selected_cases(vectors_dir, module)
    index = read_index(vectors_dir)["cases"]
    checks: list[TensorCheck] = []
    ports: dict[Any, ExecPort] = {}
    try:
        for n, name in enumerate(names, 1):
            kind, pc, case = vector_case(vectors_dir, name)
            key = (pc.dtype.name, pc.accumulation)
            if key not in ports:
                ports[key] = ExecPort(command, pc, persistent=not per_case, timeout=timeout)
            checks += engine.run_case(name, kind, case, ports[key], pc, gradients=not forward_only)
            if progress:
                progress(f"[{n}/{len(names)}] {name}")
    finally:
        for port in ports.values():
            port.close()
    modules = {n: str(index[n].get("module", "?")) for n in names}
    return Verification(checks, names, forward_only, None if module is None else Kind.parse(module), modules)


def verify_directory(vectors_dir: str | Path, candidate_dir: str | Path, *, module: str | Kind | None = None,
                     forward_only: bool = False, progress: Callable[[str], None] | None = None) -> Verification:
    """Judge every case (of ``module``) in ``candidate_dir``. A missing case directory or output is a
    failed case; a missing or empty ``candidate_dir`` is an InputError (bad usage, exit 2)."""
    names = selected_cases(vectors_dir, module)
    cand = check_candidate_dir(candidate_dir, names)
    checks: list[TensorCheck] = []
    for n, name in enumerate(names, 1):
        checks += verify_case(vectors_dir, name, cand / name, forward_only=forward_only)
        if progress:
            progress(f"[{n}/{len(names)}] {name}")
    index = read_index(vectors_dir)["cases"]
    modules = {n: str(index[n].get("module", "?")) for n in names}
    return Verification(checks, names, forward_only, None if module is None else Kind.parse(module), modules)
