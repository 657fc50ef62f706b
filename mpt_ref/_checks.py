"""Validation at public boundaries. The functional core trusts its arguments; the classes call these.

Every message reads ``<argument>: expected <what>, got <what>``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from mpt_ref.errors import (
    ConfigError,
    IndexRangeError,
    InputError,
    InputTypeError,
    shown,
)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"ndarray of shape {x.shape} and dtype {x.dtype}"
    return shown(f"{type(x).__name__} {x!r}")


def float_dtype(name: str, dtype: Any) -> np.dtype:
    """A module dtype: float32 or float64 (the reference computes in the parameters' dtype)."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise InputTypeError(f"{name}: expected float32 or float64, got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise InputTypeError(f"{name}: expected float32 or float64, got {dt}")
    return dt


# upper bounds for sizes that allocate their product: a batch of 10**12 prompts is a typo, not a request
MAX_SIZES = {"batch_size": 1 << 24}


def positive_int(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """A config integer >= ``minimum`` (and <= ``maximum``, or MAX_SIZES[name]); bools and integral floats
    are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {_describe(value)}")
    if value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value}")
    maximum = MAX_SIZES.get(name) if maximum is None else maximum
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: expected an integer <= {maximum}, got {value}")
    return int(value)


def seed(value: Any) -> int | None:
    """A seed for ``numpy.random.default_rng``: None or an integer >= 0 (bools refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ConfigError(f"seed: expected None or an integer >= 0, got {_describe(value)}")
    return int(value)


def int_array(name: str, x: Any, *, ndim: int) -> np.ndarray:
    """Integer ids with ``ndim`` dimensions, in their own integer dtype (``in_range`` checks the values
    before the cast to int64, so uint64 2**64-1 is reported as itself, not as -1). Bool, float,
    timedelta/datetime and ragged inputs are refused, as in torch."""
    if x is None:
        raise InputError(f"{name}: expected an integer array, got None")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{name}: expected a rectangular integer array, got {type(x).__name__} that NumPy "
                         f"cannot convert ({shown(exc, 120)})") from None
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iu":
        raise InputTypeError(f"{name}: expected an integer dtype, got {_describe(arr)}")
    if arr.ndim != ndim:
        raise InputError(f"{name}: expected {ndim}-D, got {_describe(arr)}")
    if arr.size > MAX_IDS:  # e.g. a np.broadcast_to view of 2**33 rows: no copy, no mask of its size
        raise InputError(f"{name}: expected at most {MAX_IDS} ids in one call (the output has D values per id), "
                         f"got shape {arr.shape}")
    return arr


MAX_IDS = 1 << 28  # ids in one call: the output is ids x D floats, 2 GiB of float64 at D = 1


def in_range(name: str, ids: np.ndarray, upper: int, what: str) -> np.ndarray:
    """Refuse ids outside [0, upper): negatives are never wrapped."""
    if ids.size:
        bad = np.flatnonzero((ids < 0) | (ids >= upper))
        if bad.size:
            pos = np.unravel_index(bad[0], ids.shape)
            raise IndexRangeError(
                f"{name}: expected integers in [0, {upper}) ({what}={upper}), "
                f"got {ids[pos]} at position {tuple(int(p) for p in pos)}"
            )
    return ids


def indices(x: Any, num_rows: int, *, tokens: int | None = None) -> np.ndarray:
    """Prompt-token indices (B, T') in [0, num_rows); T' must equal ``tokens`` when given."""
    ids = int_array("indices", x, ndim=2)
    if tokens is not None and ids.shape[1] != tokens:
        raise InputError(
            f"indices: expected shape (B, T) with T={tokens} (total virtual tokens), got shape {ids.shape}"
        )
    return in_range("indices", ids, num_rows, "total virtual tokens").astype(np.int64, copy=False)


def task_ids(x: Any, batch: int, num_tasks: int | None) -> np.ndarray:
    """Task ids of length B, or 1 (one task for the whole batch), each in [0, K); ``num_tasks=None``
    leaves the range to the caller (the ONNX oracle turns out-of-range ids into NaN rows)."""
    if x is None:
        raise InputError("task_ids: expected an integer array of length B or 1, got None (task_ids cannot be None)")
    ids = int_array("task_ids", x, ndim=1)
    if ids.shape[0] not in (batch, 1):
        raise InputError(f"task_ids: expected length B={batch} or 1, got length {ids.shape[0]}")
    return (ids if num_tasks is None else in_range("task_ids", ids, num_tasks, "num_tasks")).astype(np.int64, copy=False)


def float_array(name: str, x: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A floating array of exactly ``shape`` and ``dtype`` (no silent up/down-casting of gradients)."""
    if x is None:
        raise InputError(f"{name}: expected a {dtype} array of shape {shape}, got None")
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputTypeError(f"{name}: expected dtype {dtype}, got {_describe(arr)}")
    if arr.dtype != dtype:
        raise InputTypeError(f"{name}: expected dtype {dtype} (the module's dtype), got {arr.dtype}")
    if arr.shape != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)}, got shape {arr.shape}")
    return arr
