"""Finite-difference gradient checks of a module's backward. Used by the tests and ``mpt-ref demo``.

The scalar is L = sum(forward(params) * dout) (llm.c's "fake loss"), so backward(dout) must equal dL/dθ.
Central differences in float64:

    per entry    dL/dθ_i ≈ (L(θ + h e_i) - L(θ - h e_i)) / 2h              2 forwards per entry: small cases
    directional  <dL/dθ, v> ≈ (L(θ + h v) - L(θ - h v)) / 2h                2 forwards per direction: any size

The directional check (a JVP by differences against the VJP of backward) perturbs every entry of one key
at once along a random direction v, so its cost does not grow with the key's size; a wrong entry anywhere in
the key moves <dL/dθ, v> by (error) * v_i, with v_i ~ N(0, 1).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from mpt_ref._types import Array, Params
from mpt_ref.tolerances import Tol


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


class DirectionalReport(NamedTuple):
    key: str
    directions: int       # random directions tried (each perturbs every entry of the key)
    max_abs_err: float    # max |<analytic, v> - numeric slope| over those directions
    max_abs_slope: float  # max |numeric slope| (scale for the rtol part)
    magnitude: float      # sum |forward * dout| at θ: the size of L's terms, which sets the rounding of L

    def ok(self, tol: Tol) -> bool:
        """``tol``: a ``tolerances.Tol`` whose atol is per unit of ``magnitude`` (L's rounding over 2h)."""
        return self.max_abs_err <= tol.atol * self.magnitude + tol.rtol * self.max_abs_slope


def directional_gradcheck(
    forward: Callable[[Params], Array],
    backward: Callable[[Array, Params], Params],
    params: Params,
    dout: Array,
    *,
    directions: int = 2,
    h: float = 1e-6,
    rng: np.random.Generator | None = None,
    kinks: Callable[[Params], Array] | None = None,
    max_draws: int = 50,
) -> list[DirectionalReport]:
    """Compare ``<backward(dout, params)[key], v>`` with the central difference of L along v, for
    ``directions`` Gaussian directions v per key (each key alone, so one key's error cannot hide behind
    another's gradient). float64 only, as ``gradcheck``.

    ``kinks(params)``: the inputs of every non-smooth point (e.g. each ReLU's pre-activation). A direction
    whose step θ ± h v flips the sign of any of them is drawn again (at most ``max_draws`` times): across a
    kink the central difference averages two slopes and measures neither."""
    for key, value in params.items():
        if value.dtype != np.float64:
            raise TypeError(f"directional_gradcheck: params[{key!r}] must be float64, got {value.dtype}")
    if directions < 1:
        raise ValueError(f"directional_gradcheck: directions must be >= 1, got {directions}")
    rng = rng or np.random.default_rng(0)
    analytic = backward(dout, params)
    magnitude = float(np.sum(np.abs(forward(params) * dout)))

    def loss(p: Params) -> float:
        return float(np.sum(forward(p) * dout))

    reports = []
    for key, value in params.items():
        errs, slopes = [], []
        for _ in range(directions):
            for _draw in range(max_draws):
                v = rng.standard_normal(value.shape)                  # same shape as the key
                up, down = {**params, key: value + h * v}, {**params, key: value - h * v}
                if kinks is None or np.array_equal(kinks(up) > 0, kinks(down) > 0):
                    break
            else:
                raise ValueError(f"directional_gradcheck: {max_draws} directions for {key!r} all cross a kink; "
                                 "move the inputs away from the kinks or lower h")
            slope = (loss(up) - loss(down)) / (2 * h)
            errs.append(abs(float(np.sum(analytic[key] * v)) - slope))
            slopes.append(abs(slope))
        reports.append(DirectionalReport(key, directions, max(errs), max(slopes), magnitude))
    return reports
