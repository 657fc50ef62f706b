"""One conformance case as a directory a port in any language reads (spec/conform-protocol.md).

    <case>/case.json            format, name, module, dtype, accumulation, mode (eval | train), gradients,
                                config (EVERY field of the PEFT config, defaults included), sizes
                                (B, T, D, H, L, K, R, dropout_p, num_dropout_masks), outputs (the dtype,
                                shape and keys the port must write)
    <case>/params.safetensors   parameters under PEFT keys, in the case's dtype
    <case>/inputs.safetensors   indices (B, T) int64; task_ids (B,) or (1,) int64 (MPT); grad_output
                                (B, T, D) in the case's dtype; dropout_mask_<k> (B, T, 2H) bool, k < L − 1
                                (LSTM train mode only: True = kept, kept values × 1/(1 − p))

The port writes ``output.safetensors`` (key ``output``) and, when ``gradients`` is true,
``grads.safetensors`` (PEFT keys) into the same directory. The golden vectors' case directories hold
the same case.json fields and files (plus the expected results), so a port reads both alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from mpt_ref.conformance.case_record import MASK_PREFIX, PROTOCOL, dropout_masks, protocol_fields
from mpt_ref.errors import CheckpointError
from mpt_ref.io.checkpoint import read_safetensors
from mpt_ref.modules.config import config_from_dict
from mpt_ref.kind import Kind
from mpt_ref.testing.engine import PortFailure, PortResult, PrecisionClass
from mpt_ref.testing.strategies import Case

FORMAT = PROTOCOL


def case_record(name: str, kind: Kind, case: Case, pc: PrecisionClass, gradients: bool) -> dict[str, Any]:
    masks = case.inputs.get("dropout_masks") or []
    fields = protocol_fields(kind, case.config, case.params, case.inputs["indices"].shape, len(masks), pc.dtype.name,
                             pc.accumulation, gradients)
    return {"format": FORMAT, "name": name, **{k: v for k, v in fields.items() if k != "protocol"}}


def case_tensors(kind: Kind, case: Case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(params, inputs) as the files hold them."""
    inputs = {"indices": np.asarray(case.inputs["indices"], dtype=np.int64)}
    if kind.takes_task_ids:
        inputs["task_ids"] = np.asarray(case.inputs["task_ids"], dtype=np.int64).reshape(-1)
    inputs["grad_output"] = case.dout
    for k, m in enumerate(case.inputs.get("dropout_masks") or []):
        inputs[f"{MASK_PREFIX}{k}"] = np.asarray(m, dtype=bool)
    params = {k: np.ascontiguousarray(v) for k, v in case.params.items()}
    return params, {k: np.ascontiguousarray(v) for k, v in inputs.items()}


def case_files(name: str, kind: Kind, case: Case, pc: PrecisionClass, gradients: bool) -> dict[str, bytes]:
    params, inputs = case_tensors(kind, case)
    meta = {"format": FORMAT}
    return {"case.json": json.dumps(case_record(name, kind, case, pc, gradients), indent=2, sort_keys=True).encode()
            + b"\n",
            "params.safetensors": save(params, metadata=meta), "inputs.safetensors": save(inputs, metadata=meta)}


def write_case_dir(path: Path, name: str, kind: Kind, case: Case, pc: PrecisionClass, gradients: bool) -> Path:
    """A fresh protocol case directory (``path`` must not hold a previous port's outputs)."""
    path.mkdir(parents=True, exist_ok=False)
    for fname, data in case_files(name, kind, case, pc, gradients).items():
        (path / fname).write_bytes(data)
    return path


def read_results(path: Path, gradients: bool) -> PortResult:
    """What the port wrote into ``path``; a missing or unreadable file, or no ``output`` key, is a
    protocol failure naming what was found."""
    out_file = path / "output.safetensors"
    if not out_file.exists():
        raise PortFailure("protocol", f"replied ok but wrote no output.safetensors in {path}")
    try:
        out = read_safetensors(out_file)[0]
    except CheckpointError as exc:
        raise PortFailure("protocol", f"output.safetensors unreadable: {exc}") from None
    if "output" not in out:
        raise PortFailure("protocol", f"output.safetensors has no key 'output' (keys found: {sorted(out)[:12]})")
    if not gradients:
        return PortResult(out["output"], None)
    grads_file = path / "grads.safetensors"
    if not grads_file.exists():
        raise PortFailure("protocol", f"replied ok but wrote no grads.safetensors in {path} (case.json asks for "
                                      "gradients; conform --forward-only checks outputs alone)")
    try:
        grads = read_safetensors(grads_file)[0]
    except CheckpointError as exc:
        raise PortFailure("protocol", f"grads.safetensors unreadable: {exc}") from None
    return PortResult(out["output"], grads)


def case_from_tensors(record: dict[str, Any], params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]
                      ) -> tuple[Kind, Case]:
    """A case back from a case.json record and its tensors (a replayed failure, a golden vector)."""
    kind = Kind.parse(record["module"])
    cfg = config_from_dict(record["config"])
    ins: dict[str, Any] = {"indices": inputs["indices"]}
    if "task_ids" in inputs:
        ins["task_ids"] = inputs["task_ids"]
    masks = dropout_masks(inputs)
    if masks:
        ins["dropout_masks"] = masks
    return kind, Case(cfg, dict(params), ins, inputs["grad_output"])
