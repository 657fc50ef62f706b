"""Means with 95 % confidence intervals over independent replicates (Student's t), and paired contrasts.

The unit is the replicate: each one has its own base model, tasks and source stage, so replicates are
independent draws of the whole experiment; the tasks and draws inside one replicate are not, and are
averaged before the interval is formed.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mpt_ref.errors import InputError

# two-sided 95 % quantiles t_{0.975, df} of Student's t for df = 1 … 30 (standard tables)
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30, else the Cornish–Fisher expansion around z (error < 1e-5)."""
    if df < 1:
        raise InputError(f"df: expected >= 1 degrees of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


class Interval(NamedTuple):
    mean: float
    ci95: float  # half-width: the interval is mean ± ci95 (nan for a single value)
    n: int


def mean_ci(values: Sequence[float]) -> Interval:
    """mean ± t_{0.975, n−1} · s / √n, s the sample standard deviation (n − 1 in the denominator)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"values: expected a non-empty 1-D sequence, got shape {x.shape}")
    if x.size == 1:
        return Interval(float(x[0]), float("nan"), 1)
    return Interval(float(x.mean()), float(t975(x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)), int(x.size))


def signs(diffs: Sequence[float]) -> str:
    """One character per replicate: + (a better), − (b better), 0 (a tie)."""
    return "".join("+" if d > 0 else "-" if d < 0 else "0" for d in diffs)


def excludes_zero(interval: Interval) -> bool:
    return bool(np.isfinite(interval.ci95) and abs(interval.mean) > interval.ci95)
