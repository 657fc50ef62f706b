"""What both checkpoint readers (safetensors, torch zip) share: the size cap and the bfloat16 widening."""

from __future__ import annotations

import numpy as np

MAX_BYTES = 8 << 30  # default cap on one checkpoint file: 8 GiB


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly (bfloat16 is float32's upper half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)
