"""The prompt encoder's inter-layer dropout policy: when dropout applies, sampling keep masks, and
validating given masks into the multipliers the LSTM stack applies (spec/lstm.md).

Dropout exists only in LSTM mode with encoder_dropout p > 0 and L > 1 (between layers, inverted:
kept values scaled by 1/(1−p)), and applies only in train mode. Masks are L−1 boolean keep masks
(B, T', 2H).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from mpt_ref import _checks
from mpt_ref._types import Array
from mpt_ref.errors import InputError, InputTypeError


@dataclasses.dataclass(frozen=True)
class DropoutPolicy:
    p: float              # encoder_dropout (0 when the architecture has none)
    num_layers: int       # L
    hidden: int           # H
    dtype: np.dtype       # the module dtype of the multipliers
    no_dropout_reason: str  # "" when the architecture has dropout, else why not (for error messages)

    @property
    def has_dropout(self) -> bool:
        """Whether the architecture has inter-layer dropout, in either mode."""
        return not self.no_dropout_reason

    def sample_masks(self, rng: np.random.Generator, batch_size: int, tokens: int) -> list[np.ndarray]:
        """L−1 boolean keep masks (B, T', 2H), each entry kept with probability 1 − p; [] without dropout."""
        if not self.has_dropout:
            return []
        B = _checks.positive_int("batch_size", batch_size, minimum=0)
        Tp = _checks.positive_int("tokens", tokens, minimum=0)
        shape = (B, Tp, 2 * self.hidden)
        return [rng.random(shape) >= self.p for _ in range(self.num_layers - 1)]

    def scales(self, masks: Any, shape: tuple[int, int], *, training: bool, draw: bool,
               rng: np.random.Generator) -> list[Array] | None:
        """Validated masks -> multipliers {0, 1/(1−p)} (B, T', 2H) in the module dtype; None when no
        dropout applies. Omitted masks are drawn from ``rng`` only when ``draw`` (a forward)."""
        if not (training and self.has_dropout):
            if masks is not None and len(masks) > 0:
                reason = self.no_dropout_reason or "eval mode"
                raise InputError(f"dropout_masks: expected None, because no dropout applies ({reason}), "
                                 f"got {len(masks)} mask(s)")
            return None
        L, H = self.num_layers, self.hidden
        if masks is None:
            if not draw:
                raise InputError(
                    f"dropout_masks: expected the {L - 1} keep mask(s) forward used (train mode, encoder_dropout="
                    f"{self.p}, L={L}), got None; draw them with sample_dropout_masks() and pass the same "
                    "masks to forward and backward"
                )
            masks = self.sample_masks(rng, *shape)
        if isinstance(masks, np.ndarray) or not isinstance(masks, Sequence) or len(masks) != L - 1:
            raise InputError(f"dropout_masks: expected a list of L-1={L - 1} boolean arrays, got {_checks._describe(masks)}")
        scale = np.asarray(1 / (1 - self.p), dtype=self.dtype)
        scales = []
        for k, mask in enumerate(masks):
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise InputTypeError(f"dropout_masks[{k}]: expected a bool keep mask, got {_checks._describe(mask)}")
            if mask.shape != shape + (2 * H,):
                raise InputError(f"dropout_masks[{k}]: expected shape {shape + (2 * H,)} (B, T', 2H), got {mask.shape}")
            scales.append(mask * scale)  # B,T',2H  0 or 1/(1-p), module dtype
        return scales
