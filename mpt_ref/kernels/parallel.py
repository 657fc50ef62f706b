"""A small deterministic thread pool for the NumPy fast paths (NumPy releases the GIL in its kernels).

Only work whose items write disjoint outputs and whose per-item arithmetic does not depend on how
items are spread over threads goes through ``for_each``: the MPT forward's batch chunks (disjoint
output rows) and the scatter-add's id groups (one output row per id, summed in position order). So
results are bit-identical for any thread count (tests/test_mpt.py checks 1, 2 and 3 threads).

Off by default (1 thread: a plain loop, no pool). ``set_threads(n)`` or the environment variable
MPT_REF_THREADS turn it on; ``mpt-ref bench --threads N`` uses N here as for torch and onnxruntime.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from mpt_ref.errors import InputError

Item = TypeVar("Item")
_state: dict[str, object] = {"threads": 1, "pool": None}


def set_threads(n: int) -> None:
    """Threads used by ``for_each`` (1 = no pool)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"threads: expected an integer >= 1, got {n!r}")
    pool = _state["pool"]
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=True)
    _state["threads"], _state["pool"] = n, (ThreadPoolExecutor(n, thread_name_prefix="mpt_ref") if n > 1 else None)


def threads() -> int:
    return int(_state["threads"])  # type: ignore[call-overload]


def for_each(fn: Callable[[Item], None], items: Iterable[Item]) -> None:
    """fn(item) for every item; items must write disjoint outputs. Exceptions propagate."""
    pool = _state["pool"]
    if not isinstance(pool, ThreadPoolExecutor):
        for item in items:
            fn(item)
        return
    for future in [pool.submit(fn, item) for item in items]:
        future.result()


_env = os.environ.get("MPT_REF_THREADS", "").strip()
if _env:
    try:
        set_threads(int(_env))
    except ValueError:
        raise InputError(f"MPT_REF_THREADS: expected an integer >= 1, got {_env!r}") from None
