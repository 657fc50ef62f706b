"""``mpt-ref verify --candidate``: another implementation's outputs and gradients against the vectors.

The candidate directory holds one subdirectory per case, ``<case>/output.safetensors`` (key
``output``) and ``<case>/grads.safetensors`` (PEFT keys). Each case is judged against the float64
reference recomputed from the case's stored parameters and inputs, every entry within its own
rounding-error bound for a port in the case's dtype (spec/tolerances.md; the same model as
``assert_conforms``, ``verify --onnx`` and ONNX parity). Gradients are required unless
``forward_only``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from mpt_ref.conformance.vectors import read_case, read_index
from mpt_ref.errors import InputError
from mpt_ref.io.checkpoint import read_tensors
from mpt_ref.modules.bounds import TensorCheck, check_tensor, expected
from mpt_ref.modules.kind import Kind


class Verification(NamedTuple):
    checks: list[TensorCheck]
    cases: list[str]         # the cases judged
    forward_only: bool
    module: Kind | None      # the --module filter, if any

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)


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


def verify_case(vectors_dir: str | Path, name: str, cand: Path, *, forward_only: bool = False) -> list[TensorCheck]:
    case = read_case(vectors_dir, name)
    rec, t = case.record, case.tensors
    dout = t["inputs"]["grad_output"]
    inputs = {k: v for k, v in t["inputs"].items() if k != "grad_output"}
    ex = expected(rec["module"], t["params"], inputs, None if forward_only else dout, rec["dtype"])
    got_out = _load_optional(cand / "output.safetensors")
    checks = [check_tensor(name, "output", None if got_out is None else got_out.get("output"),
                           ex.output, ex.output_bound)]
    if forward_only:
        return checks
    got_grads = _load_optional(cand / "grads.safetensors")
    if got_grads is None:
        return checks + [TensorCheck.failed(name, "grads", "missing grads.safetensors (--forward-only checks "
                                                           "outputs alone)")]
    extra = sorted(set(got_grads) - set(ex.grads))
    if extra:
        checks.append(TensorCheck.failed(name, "grads", f"unexpected keys {extra}"))
    for key in ex.grads:
        checks.append(check_tensor(name, f"grad {key}", got_grads.get(key), ex.grads[key], ex.grad_bounds[key]))
    return checks


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
    return Verification(checks, names, forward_only, None if module is None else Kind.parse(module))
