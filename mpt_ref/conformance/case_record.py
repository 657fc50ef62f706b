"""The case.json record of a conformance case, shared by the protocol's case directories
(spec/conform-protocol.md), the golden vectors and a port's shrunk failure: every config field explicit,
every size a port needs, and what it must write. Needs nothing but the arrays (no hypothesis)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mpt_ref.kind import Kind

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
