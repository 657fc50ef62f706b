"""Seeded families of related binary classification tasks over a small vocabulary.

A task gives every token a polarity in {−1, 0, +1}; a sequence's label is 1 when its summed polarity
(over unmasked positions) is positive and 0 when negative; sequences summing to 0 are never drawn.
``sample`` returns exactly n/2 examples of each class, so chance accuracy is exactly 0.5.

Families (``FAMILIES``):

- ``lexicon``: tasks share a lexicon of 6 positive and 6 negative tokens, each kept by a task with
  probability 0.8, and add 3 + 3 "domain" tokens drawn from a pool of 16 with a polarity of their own
  per task (so tasks agree on the lexicon and partly conflict on the domain tokens).
- ``unrelated``: each task draws its own 3 + 3 polar tokens from the whole vocabulary; tasks share
  nothing beyond chance overlaps (a control: transfer has nothing to carry).

Token 0 is padding (polarity 0, always masked).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from mpt_ref.errors import ConfigError

FAMILIES = ("lexicon", "unrelated")
PAD = 0


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    vocab: int = 64
    min_length: int = 6
    max_length: int = 12
    lexicon: int = 6       # shared tokens per class
    keep: float = 0.8      # probability that a task keeps each lexicon token
    pool: int = 16         # domain-token pool
    domain: int = 3        # domain tokens per class and task


class Task(NamedTuple):
    name: str
    polarity: np.ndarray  # V, int64 in {-1, 0, +1}


def make_family(kind: str, names: list[str], spec: FamilySpec, seed: int) -> list[Task]:
    """One task per name, all from one seeded draw of the family ``kind``."""
    if kind not in FAMILIES:
        raise ConfigError(f"family: expected one of {', '.join(FAMILIES)}, got {kind!r}")
    need = 2 * spec.lexicon + spec.pool if kind == "lexicon" else 2 * spec.domain
    if spec.vocab - 1 < need:
        raise ConfigError(f"vocab: expected at least {need + 1} tokens for the {kind} family, got {spec.vocab}")
    rng = np.random.default_rng(seed)
    ids = 1 + rng.permutation(spec.vocab - 1)  # every token but padding, shuffled
    pos, neg = ids[:spec.lexicon], ids[spec.lexicon:2 * spec.lexicon]
    pool = ids[2 * spec.lexicon:2 * spec.lexicon + spec.pool]
    tasks = []
    for name in names:
        polarity = np.zeros(spec.vocab, dtype=np.int64)
        if kind == "lexicon":
            keep = lambda group: group[rng.random(len(group)) < spec.keep] if len(group) else group  # noqa: E731
            kept_pos, kept_neg = keep(pos), keep(neg)
            polarity[kept_pos if len(kept_pos) else pos[:1]] = 1  # a task keeps at least one of each class
            polarity[kept_neg if len(kept_neg) else neg[:1]] = -1
            domain = rng.choice(pool, size=2 * spec.domain, replace=False)
        else:
            domain = rng.choice(ids, size=2 * spec.domain, replace=False)
        polarity[domain[:spec.domain]], polarity[domain[spec.domain:]] = 1, -1
        tasks.append(Task(name, polarity))
    return tasks


def sample(task: Task, n: int, spec: FamilySpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids (n, L), mask (n, L), labels (n,)) with exactly n/2 of each class, shuffled;
    L = max_length, lengths uniform in [min_length, max_length], padding masked."""
    if n < 2 or n % 2:
        raise ConfigError(f"n: expected an even number >= 2 (n/2 examples per class), got {n}")
    half, L = n // 2, spec.max_length
    kept: dict[int, list[np.ndarray]] = {0: [], 1: []}
    counts = [0, 0]
    while min(counts) < half:
        m = 4 * n
        lengths = rng.integers(spec.min_length, L + 1, size=m)
        mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int64)  # m,L
        ids = rng.integers(1, spec.vocab, size=(m, L)) * mask  # padding is token 0
        score = task.polarity[ids].sum(axis=1)  # padding has polarity 0
        for label, rows in ((1, score > 0), (0, score < 0)):
            take = np.flatnonzero(rows)[:half - counts[label]]
            kept[label].append(ids[take])
            counts[label] += len(take)
    ids = np.concatenate(kept[0] + kept[1])
    labels = np.repeat([0, 1], half)
    order = rng.permutation(n)
    ids, labels = ids[order], labels[order]
    return ids, (ids != PAD).astype(np.float64), labels
