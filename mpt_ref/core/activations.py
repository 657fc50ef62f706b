"""Elementwise activations and their derivatives, written through the saved *outputs*.

Every backward takes the upstream gradient and the forward output y (not the input), because that is
what the callers keep in their caches:

    relu:    y = max(x, 0)            dx = dout ⊙ [y > 0]      (zero at x = 0, torch's convention)
    sigmoid: y = 1 / (1 + e^{-x})     dx = dout ⊙ y ⊙ (1 − y)
    tanh:    y = tanh(x)              dx = dout ⊙ (1 − y²)
"""

from __future__ import annotations

import numpy as np

from mpt_ref._types import Array


def relu(x: Array) -> Array:
    return np.maximum(x, 0)


def relu_backward(dout: Array, y: Array) -> Array:
    """y > 0 exactly where x > 0, so the saved output decides the mask."""
    return dout * (y > 0)


def sigmoid(x: Array) -> Array:
    """Logistic function without overflow: e^{-|x|} never exceeds 1."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(dout: Array, y: Array) -> Array:
    return dout * y * (1 - y)


def tanh(x: Array) -> Array:
    return np.tanh(x)


def tanh_backward(dout: Array, y: Array) -> Array:
    return dout * (1 - y * y)
