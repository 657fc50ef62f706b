"""The ``mlp_head`` Sequential of PEFT's PromptEncoder: Linear, ReLU, Linear[, ReLU, Linear].

PyTorch numbers the Sequential's children, ReLUs included, so the Linear layers sit at indices
0, 2, 4, ... and their parameters are ``mlp_head.{2j}.weight`` / ``mlp_head.{2j}.bias``:

    MLP mode  (3 Linear): D → H → H → D      keys mlp_head.0, mlp_head.2, mlp_head.4
    LSTM mode (2 Linear): 2H → 2H → D        keys mlp_head.0, mlp_head.2

A ReLU follows every Linear but the last. Math: spec/mlp.md. Shape letters: B batch, T tokens,
I head input width, O head output width.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mpt_ref._types import Array, Params
from mpt_ref.core.activations import relu, relu_backward
from mpt_ref.core.linear import (
    LinearCache,
    init_linear,
    linear_backward,
    linear_forward,
)


def head_keys(num_linear: int) -> tuple[str, ...]:
    """State-dict keys of a head with ``num_linear`` Linear layers, in PEFT order."""
    return tuple(f"mlp_head.{2 * j}.{name}" for j in range(num_linear) for name in ("weight", "bias"))


class HeadCache(NamedTuple):
    linears: tuple[LinearCache, ...]  # one per Linear; linears[j+1].x is ReLU output j (the saved output)


def mlp_head_forward(params: Params, x: Array, *, num_linear: int) -> tuple[Array, HeadCache]:
    """params with ``head_keys(num_linear)``, x (B, T, I) -> out (B, T, O), cache."""
    caches = []
    y = x
    for j in range(num_linear):
        if j > 0:
            y = relu(y)  # B,T,width of Linear j-1
        y, cache = linear_forward(y, params[f"mlp_head.{2 * j}.weight"], params[f"mlp_head.{2 * j}.bias"])
        caches.append(cache)
    return y, HeadCache(tuple(caches))


def mlp_head_backward(dout: Array, cache: HeadCache) -> tuple[Array, Params]:
    """dout (B, T, O) -> dx (B, T, I), grads keyed like the head's params (PEFT order)."""
    grads: Params = {}
    dx = dout  # B,T,width: gradient at Linear j's output, then (after the step) at its input
    for j in reversed(range(len(cache.linears))):
        dx, grads[f"mlp_head.{2 * j}.weight"], grads[f"mlp_head.{2 * j}.bias"] = linear_backward(
            dx, cache.linears[j]
        )
        if j > 0:
            dx = relu_backward(dx, cache.linears[j].x)  # the ReLU output is Linear j's input
    return dx, {k: grads[k] for k in head_keys(len(cache.linears))}


def init_mlp_head(rng: np.random.Generator, widths: Sequence[int], dtype: np.dtype) -> Params:
    """widths = (I, hidden..., O): len(widths) − 1 Linear layers, PyTorch default init, drawn in order."""
    params: Params = {}
    for j, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        params[f"mlp_head.{2 * j}.weight"], params[f"mlp_head.{2 * j}.bias"] = init_linear(
            rng, fan_in, fan_out, dtype
        )
    return params
