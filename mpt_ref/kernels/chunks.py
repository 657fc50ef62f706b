"""How the fast paths cut their work into cache-sized pieces: batch chunks and id-group chunks.

Shape letters: B batch, T' positions per row, N = B·T' positions in all, D row width.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mpt_ref._types import IntArray

CHUNK_ELEMENTS = 1 << 18  # elements of one chunk's temporaries (1 MiB in float32): cache-sized


def batch_chunks(B: int, row_elements: int) -> Iterator[slice]:
    """Consecutive slices of the batch, each ~CHUNK_ELEMENTS elements of rows (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, B, step):
        yield slice(start, min(B, start + step))


def row_chunks(rows: IntArray, row_elements: int) -> Iterator[IntArray]:
    """``rows`` (batch row numbers) cut into consecutive pieces of ~CHUNK_ELEMENTS elements."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, rows.shape[0], step):
        yield rows[start:start + step]



def id_chunks(indices: IntArray, row_elements: int) -> Iterator[tuple[IntArray, list[tuple[int, int, int]]]]:
    """The positions of ``indices`` grouped by id (a stable integer sort, no pass over any (N, D)
    array), cut into chunks of whole id groups of ~CHUNK_ELEMENTS elements of rows (an id with more
    positions than that is a chunk of its own)."""
    flat = indices.reshape(-1)  # N
    order = np.argsort(flat, kind="stable")  # N
    ids, starts = np.unique(flat[order], return_index=True)
    ends = np.append(starts[1:], flat.size)
    cap = max(1, CHUNK_ELEMENTS // max(1, row_elements))  # positions per chunk
    chunk_start, groups = 0, []
    for j, start, end in zip(ids.tolist(), starts.tolist(), ends.tolist()):
        if groups and end - chunk_start > cap:
            yield order[chunk_start:start], groups
            chunk_start, groups = start, []
        groups.append((j, start - chunk_start, end - chunk_start))
    if groups:
        yield order[chunk_start:], groups
