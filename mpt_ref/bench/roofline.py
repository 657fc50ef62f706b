"""The machine's own limit for a benchmark row: bytes the operation must move ÷ streaming bandwidth.

Byte counts (spec/performance.md): an operation must read each of its inputs once and write each of
its outputs once, nothing more:

    forward           ids (indices, task_ids) + every parameter          read;   output (B,T',D) written
    forward+backward  the forward's bytes + dout (B,T',D) read + every parameter gradient written

The bandwidth is measured in the same run, on the same sizes: ``np.copyto`` of an output-sized float
array into a preallocated one (reads and writes output bytes: 2× output bytes moved). The bound is
bytes ÷ bandwidth; the fraction reached is bound ÷ measured time (1.0 = at the limit). For the
encoders the arithmetic dominates, so their memory bound is far below what any implementation reaches;
the column is still the same definition.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def must_move(module: Any, inputs: dict[str, np.ndarray], out_shape: tuple[int, ...]) -> dict[str, int]:
    """Bytes a forward and a forward+backward must move, per the definition above."""
    itemsize = np.dtype(module.dtype).itemsize
    out = int(np.prod(out_shape)) * itemsize
    params = sum(v.nbytes for v in module._params.values())
    ids = sum(v.nbytes for v in inputs.values())
    forward = ids + params + out
    return {"fwd": forward, "fwd+bwd": forward + out + params}


def copy_bandwidth(nbytes: int, timer: Callable[[Callable[[], Any]], dict[str, float]]) -> dict[str, float]:
    """Streaming bandwidth of a copy of ``nbytes`` (float32), timed by ``timer``: bytes moved per second."""
    n = max(1, nbytes // 4)
    src = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    dst = np.empty_like(src)
    t = timer(lambda: np.copyto(dst, src))
    return {"copy_ms": t["median_ms"], "bandwidth_gb_s": 2 * src.nbytes / (t["median_ms"] * 1e-3) / 1e9}


def bound(bytes_moved: dict[str, int], bandwidth_gb_s: float) -> dict[str, float]:
    """Lower bound in ms of each operation."""
    return {k: v / (bandwidth_gb_s * 1e9) * 1e3 for k, v in bytes_moved.items()}
