"""Finite-difference gradient check of a module's backward. Used by the tests and ``mpt-ref demo``.

The scalar is L = sum(forward(params) * dout) (llm.c's "fake loss"), so backward(dout) must equal dL/dθ.
Central differences in float64: dL/dθ_i ≈ (L(θ + h e_i) - L(θ - h e_i)) / 2h.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from mpt_ref._types import Array, Params


class GradReport(NamedTuple):
    key: str
    checked: int          # entries perturbed
    max_abs_err: float    # max |analytic - numeric| over those entries
    max_abs_grad: float   # max |numeric| (scale for the error)

    def ok(self, rtol: float, atol: float) -> bool:
        return self.max_abs_err <= atol + rtol * self.max_abs_grad


def numeric_gradients(
    loss: Callable[[Params], float],
    params: Params,
    *,
    h: float = 1e-6,
    max_entries: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, tuple[np.ndarray, Array]]:
    """{key: (flat entry indices, numeric gradient at them)}; all entries unless ``max_entries``."""
    rng = rng or np.random.default_rng(0)
    out = {}
    for key, value in params.items():
        flat = np.arange(value.size)
        if max_entries is not None and value.size > max_entries:
            flat = np.sort(rng.choice(value.size, size=max_entries, replace=False))
        grads = np.empty(flat.size, dtype=np.float64)
        probe = {**params, key: value.copy()}  # one private copy of the probed array, the others shared
        for n, i in enumerate(flat):
            probe[key].flat[i] = value.flat[i] + h
            up = loss(probe)
            probe[key].flat[i] = value.flat[i] - h
            grads[n] = (up - loss(probe)) / (2 * h)
            probe[key].flat[i] = value.flat[i]
        out[key] = (flat, grads)
    return out


def gradcheck(
    forward: Callable[[Params], Array],
    backward: Callable[[Array, Params], Params],
    params: Params,
    dout: Array,
    **kwargs,
) -> list[GradReport]:
    """Compare ``backward(dout, params)`` with central differences of sum(forward(params) * dout).

    params and dout must be float64 (finite differences in float32 are meaningless).
    """
    for key, value in params.items():
        if value.dtype != np.float64:
            raise TypeError(f"gradcheck: params[{key!r}] must be float64, got {value.dtype}")
    analytic = backward(dout, params)
    numeric = numeric_gradients(lambda p: float(np.sum(forward(p) * dout)), params, **kwargs)
    reports = []
    for key, (flat, num) in numeric.items():
        ana = analytic[key].reshape(-1)[flat]
        err = float(np.max(np.abs(ana - num), initial=0.0))
        reports.append(GradReport(key, flat.size, err, float(np.max(np.abs(num), initial=0.0))))
    return reports
