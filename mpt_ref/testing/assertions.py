"""Assertion helpers that report the label, max abs/rel error, where it is, and the tolerance used."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from mpt_ref.tolerances import Tol

__tracebackhide__ = True


def assert_close(label: str, got: np.ndarray, want: np.ndarray, tol: Tol) -> None:
    """Elementwise |got - want| <= atol + rtol*|want|, same shape; the message names the worst entry."""
    __tracebackhide__ = True
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{label}: shape {got.shape} != expected {want.shape}")
    if got.size == 0:
        return
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    bound = tol.atol + tol.rtol * np.abs(want.astype(np.float64))
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        i = np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), got.shape)
        raise AssertionError(
            f"{label}: {int(bad.sum())}/{got.size} entries off; worst at {tuple(map(int, i))}: got {got[i]!r}, "
            f"expected {want[i]!r}, |diff|={err[i]:.3g} > atol {tol.atol:g} + rtol {tol.rtol:g}*|expected| "
            f"({tol.reason})"
        )


def assert_same_keys_and_shapes(label: str, grads: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray]) -> None:
    """A grads dict has exactly the params' keys (same order), shapes and dtypes."""
    __tracebackhide__ = True
    if list(grads) != list(params):
        raise AssertionError(f"{label}: keys {list(grads)} != params keys {list(params)}")
    for k in params:
        if grads[k].shape != params[k].shape or grads[k].dtype != params[k].dtype:
            raise AssertionError(
                f"{label}[{k!r}]: {grads[k].shape} {grads[k].dtype} != param {params[k].shape} {params[k].dtype}"
            )


def assert_grads_close(label: str, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tol: Tol) -> None:
    __tracebackhide__ = True
    assert_same_keys_and_shapes(label, got, want)
    for k in want:
        assert_close(f"{label}[{k!r}]", got[k], want[k], tol)
