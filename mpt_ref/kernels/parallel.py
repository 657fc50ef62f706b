"""A small deterministic thread pool for the NumPy fast paths (NumPy releases the GIL in its kernels).

Only work whose items write disjoint outputs and whose per-item arithmetic does not depend on how
items are spread over threads goes through ``for_each``: the MPT forward's batch chunks (disjoint
output rows) and the scatter-add's id groups (one output row per id, summed in position order). So
results are bit-identical for any thread count (tests/test_mpt.py checks 1, 2 and 3 threads).

Off by default (1 thread: a plain loop, no pool). ``set_threads(n)`` or the environment variable
MPT_REF_THREADS turn it on; ``mpt-ref bench --threads N`` uses N here as for torch and onnxruntime.
The variable is read on first use, not at import: a bad value is an InputError from the first call
that runs the pool (one line, exit 2 from the CLI), never a failed ``import mpt_ref``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from mpt_ref.errors import InputError

Item = TypeVar("Item")
MAX_THREADS = 1024  # far past any core count; a typo such as 10**9 is refused rather than tried
_state: dict[str, object] = {"threads": None, "pool": None}  # threads None: MPT_REF_THREADS not read yet


def set_threads(n: int) -> None:
    """Threads used by ``for_each`` (1 = no pool)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_THREADS:
        raise InputError(f"threads: expected an integer in [1, {MAX_THREADS}], got {n!r}")
    pool = _state["pool"]
    if isinstance(pool, ThreadPoolExecutor):
        pool.shutdown(wait=True)
    _state["threads"], _state["pool"] = n, (ThreadPoolExecutor(n, thread_name_prefix="mpt_ref") if n > 1 else None)


def _from_environment() -> None:
    text = os.environ.get("MPT_REF_THREADS", "").strip()
    if not text:
        set_threads(1)
        return
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise InputError(f"MPT_REF_THREADS: expected an integer in [1, {MAX_THREADS}], got {text[:40]!r}")
    set_threads(n)


def threads() -> int:
    if _state["threads"] is None:
        _from_environment()
    return int(_state["threads"])  # type: ignore[call-overload]


def for_each(fn: Callable[[Item], None], items: Iterable[Item]) -> None:
    """fn(item) for every item; items must write disjoint outputs. Exceptions propagate."""
    if _state["threads"] is None:
        _from_environment()
    pool = _state["pool"]
    if not isinstance(pool, ThreadPoolExecutor):
        for item in items:
            fn(item)
        return
    for future in [pool.submit(fn, item) for item in items]:
        future.result()
