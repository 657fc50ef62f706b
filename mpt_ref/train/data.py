"""Seeded synthetic multitask classification: each task labels a token sequence by which of two
task-specific token groups occurs more often. Tasks share tokens with their neighbours, so some
held-out tasks are close to a source task and others are not (similarity = shared key tokens)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Task(NamedTuple):
    name: str
    positive: np.ndarray  # token ids voting for class 1
    negative: np.ndarray  # token ids voting for class 0


def make_tasks(vocab: int, num_source: int, num_target: int, group: int, seed: int) -> tuple[list[Task], list[Task]]:
    """Source tasks use disjoint-ish token groups; target task j reuses source task j's groups with
    j·group/2 tokens swapped for fresh ones (target 0 is closest to a source task)."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(vocab)
    sources = [Task(f"source{t}", ids[2 * t * group:(2 * t + 1) * group], ids[(2 * t + 1) * group:(2 * t + 2) * group])
               for t in range(num_source)]
    targets = []
    for j in range(num_target):
        base = sources[j % num_source]
        swap = min(group, j * group // 2)
        fresh = rng.choice(ids[2 * num_source * group:], size=2 * swap, replace=False)
        targets.append(Task(f"target{j}", np.concatenate([base.positive[swap:], fresh[:swap]]),
                            np.concatenate([base.negative[swap:], fresh[swap:]])))
    return sources, targets


def sample(task: Task, n: int, length: int, vocab: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids (n, L), mask (n, L), labels (n,)); ties are resampled away by adding a key token."""
    ids = rng.integers(0, vocab, size=(n, length))
    lengths = rng.integers(length // 2, length + 1, size=n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(float)
    votes = lambda group: (np.isin(ids, group) * mask).sum(axis=1)  # noqa: E731
    diff = votes(task.positive) - votes(task.negative)
    ties = diff == 0
    ids[ties, 0] = rng.choice(task.positive, size=int(ties.sum()))  # break ties toward class 1
    labels = (votes(task.positive) > votes(task.negative)).astype(np.int64)
    return ids, mask, labels
