"""Affine layer in PyTorch's layout: y = x Wᵀ + b, with W stored (out, in). Math: spec/mlp.md.

Shape letters: ... any leading axes (B,T for the encoders), I input width, O output width.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array


class LinearCache(NamedTuple):
    x: Array       # ...,I   the input (for an inner layer of a head: the previous ReLU's output)
    weight: Array  # O,I


def matmul_rows(x: Array, w: Array) -> Array:
    """x (..., I) @ w (I, O) -> (..., O) as ONE 2-D matmul over the flattened leading axes. (NumPy treats
    a 3-D @ 2-D product as a stack of small matmuls: 3-4x slower at B32 T20 768x3072, measured.) Same
    products and sums per output entry as x @ w."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


def linear_forward(x: Array, weight: Array, bias: Array) -> tuple[Array, LinearCache]:
    """x (..., I), weight (O, I), bias (O,) -> y (..., O), cache."""
    y = matmul_rows(x, weight.T)  # ...,O
    y += bias
    return y, LinearCache(x, weight)


def linear_backward(dout: Array, cache: LinearCache) -> tuple[Array, Array, Array]:
    """dout (..., O) -> dx (..., I), dweight (O, I), dbias (O,), in forward-argument order."""
    x, weight = cache
    O, I = weight.shape
    dout2, x2 = dout.reshape(-1, O), x.reshape(-1, I)  # N,O ; N,I  with N = product of leading axes
    dx = matmul_rows(dout, weight)  # ...,I
    dweight = dout2.T @ x2  # O,I
    dbias = dout2.sum(axis=0)  # O
    return dx, dweight, dbias


def init_linear(rng: np.random.Generator, fan_in: int, fan_out: int, dtype: np.dtype) -> tuple[Array, Array]:
    """PyTorch's nn.Linear default: weight (O, I) and bias (O,) both U(−1/√I, 1/√I), weight drawn first.
    (kaiming_uniform with a=√5 gives the same bound for the weight.) Drawn in float64, then cast."""
    bound = 1 / np.sqrt(fan_in)
    weight = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(dtype)
    bias = rng.uniform(-bound, bound, (fan_out,)).astype(dtype)
    return weight, bias
