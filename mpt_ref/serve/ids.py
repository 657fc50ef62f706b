"""Checking ids on the caller's side before a runtime narrows them (spec/onnx.md, runtimes).

The exported graphs send every id outside its range to a NaN row, but a graph can only see the value
it is given: OpenVINO (its runtime and onnxruntime's OpenVINO EP) converts int64 inputs to int32
before the graph runs, so an id is used modulo 2^32 there (2^32 + 1 reads row 1). The NaN policy holds
on OpenVINO for ids in [-2^31, 2^31) only. ``checked_ids`` is the pre-check a server runs before it
feeds such a runtime: it refuses, with an IndexRangeError naming the argument, every id outside
[0, limit) (when ``limit`` is given) or outside int32, and returns the ids as int64, unchanged.

    from mpt_ref.serve.ids import checked_ids
    feeds = {"indices": checked_ids("indices", indices, limit=T),
             "task_ids": checked_ids("task_ids", task_ids, limit=num_tasks)}
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpt_ref import _checks
from mpt_ref.errors import IndexRangeError

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


def checked_ids(name: str, ids: Any, *, limit: int | None = None) -> np.ndarray:
    """``ids`` (any integer array) as int64, refused unless every id is in [0, limit) (``limit`` given)
    or, without a limit, in int32's range [-2^31, 2^31) (then an out-of-range id still gets the graph's
    NaN row on every runtime, OpenVINO included)."""
    arr = np.asarray(ids)
    arr = _checks.int_array(name, arr, ndim=arr.ndim if arr.ndim else 1)
    lo, hi = (0, limit) if limit is not None else (INT32_MIN, INT32_MAX + 1)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not
                              0 < limit <= INT32_MAX + 1):
        raise IndexRangeError(f"limit: expected an integer in [1, 2^31], got {limit!r}")
    if arr.size:
        bad = (arr < lo) | (arr >= hi) if arr.dtype.kind == "i" else arr >= hi
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            value = int(arr[where])
            narrowed = not INT32_MIN <= value <= INT32_MAX
            raise IndexRangeError(f"{name}: expected ids in [{lo}, {hi}), got {value} at {where}" + (
                " (outside int32: a runtime that narrows int64 to int32, e.g. OpenVINO, would use it modulo 2^32)"
                if narrowed else ""))
    return arr.astype(np.int64)
