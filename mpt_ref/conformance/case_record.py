"""The case.json record of a conformance case, shared by the protocol's case directories
(spec/conform-protocol.md), the golden vectors and a port's shrunk failure: every config field explicit,
every size a port needs, and what it must write. Needs nothing but the arrays (no hypothesis)."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from mpt_ref.errors import InputError
from mpt_ref.kind import Kind
from mpt_ref.tolerances import ACCUMULATION, CONFORMANCE, Rounding

PROTOCOL = "mpt-ref-conform/1"
MASK_PREFIX = "dropout_mask_"  # inputs.safetensors: dropout_mask_0 .. dropout_mask_{L-2}, LSTM train mode


def sizes(kind: Kind, config: Any, indices_shape: Sequence[int], num_masks: int) -> dict[str, Any]:
    """Every size a port needs, none to be guessed from shapes or PEFT's defaults."""
    B, T = indices_shape
    D = config.token_dim
    out: dict[str, Any] = {"B": int(B), "T": int(T), "D": int(D), "total_virtual_tokens": config.total_virtual_tokens}
    if kind == Kind.MPT:
        out.update(K=config.num_tasks, R=config.num_ranks)
    if kind.is_encoder:
        out["H"] = config.encoder_hidden_size if config.encoder_hidden_size is not None else D
        out["L"] = config.encoder_num_layers if kind == Kind.LSTM_ENCODER else 0
        out["dropout_p"] = config.encoder_dropout
        out["num_dropout_masks"] = num_masks
    return out


def protocol_fields(kind: Kind, config: Any, params: Mapping[str, np.ndarray], indices_shape: Sequence[int],
                    num_masks: int, dtype: str, accumulation: str, gradients: bool) -> dict[str, Any]:
    """module, dtype, accumulation, mode, gradients, config (every field), sizes, outputs."""
    out_shape = [*indices_shape, config.token_dim]
    return {
        "protocol": PROTOCOL, "module": kind.value, "dtype": dtype, "accumulation": accumulation,
        "mode": "train" if num_masks else "eval", "gradients": gradients, "config": config.to_dict(),
        "sizes": sizes(kind, config, indices_shape, num_masks),
        "outputs": {"output": {"dtype": dtype, "shape": out_shape},
                    "grads": {k: {"dtype": dtype, "shape": list(v.shape)} for k, v in params.items()}
                    if gradients else {}},
    }


def dropout_masks(inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The keep masks stored in an inputs file, in layer order."""
    return [inputs[f"{MASK_PREFIX}{k}"] for k in range(sum(k.startswith(MASK_PREFIX) for k in inputs))]


class Judged(NamedTuple):
    """How a vector case is judged: its dtype and precision class (float16: by accumulation)."""

    dtype: np.dtype
    accumulation: str
    rounding: Rounding

    @property
    def name(self) -> str:
        return f"float16 storage, {self.accumulation} accumulation" if self.dtype == np.float16 else self.dtype.name

    def other(self) -> Judged | None:
        if self.dtype != np.float16:
            return None
        acc = "float16" if self.accumulation == "float32" else "float32"
        return Judged(self.dtype, acc, ACCUMULATION[acc])


def judged_as(record: dict) -> Judged:
    dt = str(record.get("dtype"))
    if dt not in CONFORMANCE:
        raise InputError(f"case {record.get('name')!r}: dtype: expected one of {sorted(CONFORMANCE)}, got {dt!r}")
    if dt != "float16":
        return Judged(np.dtype(dt), dt, CONFORMANCE[dt])
    acc = str(record.get("accumulation") or "float32")
    if acc not in ACCUMULATION:
        raise InputError(f"case {record.get('name')!r}: accumulation: expected one of {sorted(ACCUMULATION)}, got {acc!r}")
    return Judged(np.dtype(dt), acc, ACCUMULATION[acc])


def case_setup(record: dict, tensors: dict) -> tuple[Kind, Judged, dict, Any, list | None]:
    """(kind, precision class, inputs, dout, dropout scales) of a vector case."""
    kind = Kind.parse(record["module"])
    pc = judged_as(record)
    ins = tensors["inputs"]
    inputs = {k: v for k, v in ins.items() if k in ("indices", "task_ids")}
    masks = dropout_masks(ins)
    p = float(record.get("config", {}).get("encoder_dropout", 0.0) or 0.0)
    scales = [m.astype(np.float64) / (1 - p) for m in masks] if masks else None
    return kind, pc, inputs, ins["grad_output"], scales
