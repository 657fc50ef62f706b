"""A port's minimal failing case written as a ready, one-case vectors folder.

    <dir>/index.json, README.md       the vectors format (``mpt-ref verify --vectors <dir>`` reads it)
    <dir>/<case>/case.json            the protocol's case record (every config field explicit) plus the
                                      vectors' fields (tolerance: a legacy hint, never a judgment;
                                      spec_version, description)
    <dir>/<case>/params.safetensors, inputs.safetensors   as a protocol case directory
    <dir>/<case>/output.safetensors   the float64 reference output (key "output")
    <dir>/<case>/grads.safetensors    the float64 reference gradients (PEFT keys)
    <dir>/<case>/bounds.safetensors   the per-entry error bound of each: "output" and PEFT keys
    <dir>/<case>/port_output.safetensors, port_grads.safetensors   what the port returned, when it did

A porter copies the folder into their own suite: every entry must satisfy |got − want| <= bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from mpt_ref._version import SPEC_VERSION, __version__
from mpt_ref.conformance.case_dir import case_files
from mpt_ref.conformance.vectors import FORMAT as VECTORS_FORMAT
from mpt_ref.io.atomic import atomic_write_directory
from mpt_ref.modules.bounds import TensorCheck
from mpt_ref.kind import Kind
from mpt_ref.testing.engine import PortResult, PrecisionClass, case_expected
from mpt_ref.testing.strategies import Case
from mpt_ref.tolerances import VECTORS_LEGACY_HINT


def _tensors(x: Any) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v) for k, v in x.items() if isinstance(v, np.ndarray) and v.dtype.kind in "fiub"}


def failure_files(name: str, kind: Kind, case: Case, pc: PrecisionClass, gradients: bool, checks: list[TensorCheck],
                  message: str, rerun: str, got: PortResult | None = None) -> dict[str, bytes]:
    """Every file of the one-case folder (relative paths)."""
    files = case_files(name, kind, case, pc, gradients)
    record = json.loads(files["case.json"])
    tol = VECTORS_LEGACY_HINT[pc.dtype.name]
    record.update(spec_version=SPEC_VERSION, mpt_ref_version=__version__, reference_dtype="float64",
                  description=f"minimal failing case found by mpt-ref conform ({pc.name})",
                  tolerance={"rtol": tol.rtol, "atol": tol.atol, "reason": tol.reason},
                  failed=[c.describe() for c in checks if not c.ok])
    files["case.json"] = json.dumps(record, indent=2, sort_keys=True).encode() + b"\n"
    ex = case_expected(kind, case, pc.dtype, pc.rounding, gradients)
    meta = {"format": VECTORS_FORMAT}
    files["output.safetensors"] = save({"output": ex.output}, metadata=meta)
    files["grads.safetensors"] = save({k: np.ascontiguousarray(v) for k, v in ex.grads.items()}, metadata=meta)
    files["bounds.safetensors"] = save({"output": np.ascontiguousarray(ex.output_bound),
                                        **{k: np.ascontiguousarray(v) for k, v in ex.grad_bounds.items()}}, metadata=meta)
    if got is not None and isinstance(got.output, np.ndarray) and got.output.dtype.kind in "fiub":
        files["port_output.safetensors"] = save({"output": np.ascontiguousarray(got.output)}, metadata=meta)
    if got is not None and isinstance(got.grads, dict) and _tensors(got.grads):
        files["port_grads.safetensors"] = save(_tensors(got.grads), metadata=meta)
    out = {f"{name}/{k}": v for k, v in files.items()}
    index = {"format": VECTORS_FORMAT, "spec_version": SPEC_VERSION,
             "cases": {name: {"path": name, "module": kind.value,
                              "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}}}}
    out["index.json"] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    out["README.md"] = README.format(name=name, message=message, rerun=rerun, module=kind.value).encode()
    return out


README = """# A minimal failing case of a {module} port

Found and shrunk by `mpt-ref conform`. What failed:

```
{message}
```

`{name}/` is a protocol case directory (spec/conform-protocol.md: case.json with every config field,
params.safetensors, inputs.safetensors) and a golden-vectors case: output.safetensors and
grads.safetensors hold the float64 reference, bounds.safetensors the error bound of every entry
(|got − want| <= bound for a correct port of this precision), port_*.safetensors what the port returned.

Re-run the port on it:

    {rerun}

Add the folder to your own test suite as a regression case.
"""


def rerun_command(vectors_dir: str | Path, command: str, module: str, pc: PrecisionClass, forward_only: bool) -> str:
    parts = ["mpt-ref", "verify", "--vectors", os.fspath(vectors_dir), "--exec", command]
    if forward_only:
        parts.append("--forward-only")
    return " ".join(shlex.quote(p) for p in parts)


def write_failure_vector(out_dir: str | Path, **kw: Any) -> Path:
    """Write (replacing a previous failure folder there) and return the folder."""
    out_dir = Path(os.path.abspath(out_dir))
    return atomic_write_directory(out_dir, failure_files(**kw), check_existing=_only_failure_folder)


def check_failure_dir(path: str | Path) -> None:
    """Refuse (before any work) an --out that is neither new, empty, a directory, nor a failure folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        from mpt_ref.errors import OutputExistsError

        raise OutputExistsError(f"--out: expected a directory, got an existing file: {path}")
    if path.is_dir():
        _only_failure_folder(path)


def _only_failure_folder(path: Path) -> None:
    """Replace only a folder this module wrote (index.json + README.md + one case), or an empty one."""
    from mpt_ref.errors import OutputExistsError

    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    dirs = [e for e in entries if (path / e).is_dir()]
    if set(entries) - set(dirs) != {"index.json", "README.md"} or len(dirs) != 1:
        raise OutputExistsError(f"{path}: expected a new directory or a failure folder mpt-ref conform wrote, got "
                                f"a directory holding {entries[:5]} (not replaced; choose another --out)")
