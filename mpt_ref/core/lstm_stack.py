"""PEFT's ``lstm_head``: a bidirectional, L-layer, batch-first LSTM with inter-layer dropout.
Math: spec/lstm.md.

Shape letters: B batch, T time steps, D input width (token_dim), H hidden width, L layers.

Layer k reads X_k (X_0 = the input, B,T,D) and writes Y_k = [forward | reverse] (B,T,2H), forward
features first, as torch concatenates them. Between layers, in train mode, inverted dropout scales
Y_k elementwise: X_{k+1} = Y_k ⊙ S_k, with S_k ∈ {0, 1/(1−p)} given explicitly (``dropout_scales``) so
the forward and backward passes see the same masks. No dropout after the last layer.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from mpt_ref._types import Array, Params
from mpt_ref.core.lstm import LSTMCache, lstm_backward, lstm_forward

PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # torch's per-(layer, direction) order
DIRECTIONS = ("", "_reverse")  # key suffixes; forward first


def direction_keys(layer: int, suffix: str) -> tuple[str, str, str, str]:
    """e.g. (``lstm_head.weight_ih_l1_reverse``, ...) in torch's order."""
    return tuple(f"lstm_head.{name}_l{layer}{suffix}" for name in PARAM_NAMES)  # type: ignore[return-value]


def lstm_keys(num_layers: int) -> tuple[str, ...]:
    """State-dict keys of the stack in PEFT order: per layer, the forward four then the reverse four."""
    return tuple(key for k in range(num_layers) for suffix in DIRECTIONS for key in direction_keys(k, suffix))


class LSTMStackCache(NamedTuple):
    layers: tuple[tuple[LSTMCache, LSTMCache], ...]  # L x (forward, reverse)
    dropout_scales: tuple[Array, ...]                # L-1 of B,T,2H, or () when no dropout


def lstm_stack_forward(
    params: Params, x: Array, *, num_layers: int, dropout_scales: Sequence[Array] | None = None
) -> tuple[Array, LSTMStackCache]:
    """params with ``lstm_keys(L)``, x (B, T, D) -> y (B, T, 2H) of the last layer, cache.

    dropout_scales: None (eval, or p = 0) or L−1 arrays (B, T, 2H); S_k multiplies layer k's output.
    """
    scales = tuple(dropout_scales or ())
    caches = []
    for k in range(num_layers):
        y_fwd, cache_fwd = lstm_forward(x, *(params[key] for key in direction_keys(k, "")))  # B,T,H
        y_rev, cache_rev = lstm_forward(x, *(params[key] for key in direction_keys(k, "_reverse")), reverse=True)
        caches.append((cache_fwd, cache_rev))
        x = np.concatenate([y_fwd, y_rev], axis=-1)  # B,T,2H  forward features first
        if scales and k < num_layers - 1:
            x = x * scales[k]  # B,T,2H  inverted dropout between layers
    return x, LSTMStackCache(tuple(caches), scales)


def lstm_stack_backward(dout: Array, cache: LSTMStackCache) -> tuple[Array, Params]:
    """dout (B, T, 2H) -> dx (B, T, D), grads keyed like the stack's params (PEFT order)."""
    grads: Params = {}
    num_layers = len(cache.layers)
    for k in reversed(range(num_layers)):
        if cache.dropout_scales and k < num_layers - 1:
            dout = dout * cache.dropout_scales[k]  # B,T,2H
        H = dout.shape[-1] // 2
        cache_fwd, cache_rev = cache.layers[k]
        dx_fwd, *dparams_fwd = lstm_backward(dout[..., :H], cache_fwd)  # B,T,I
        dx_rev, *dparams_rev = lstm_backward(dout[..., H:], cache_rev)  # B,T,I
        grads.update(zip(direction_keys(k, ""), dparams_fwd))
        grads.update(zip(direction_keys(k, "_reverse"), dparams_rev))
        dout = dx_fwd + dx_rev  # B,T,I  both directions read the same input
    return dout, {key: grads[key] for key in lstm_keys(num_layers)}


def init_lstm_stack(rng: np.random.Generator, input_size: int, hidden: int, num_layers: int, dtype: np.dtype) -> Params:
    """PyTorch's nn.LSTM default: every weight and bias U(−1/√H, 1/√H), drawn in key order, float64 then cast.
    Shapes: weight_ih_l0 (4H, D), weight_ih_lk (4H, 2H) for k > 0, weight_hh (4H, H), biases (4H,)."""
    bound = 1 / np.sqrt(hidden)
    params: Params = {}
    for k in range(num_layers):
        width = input_size if k == 0 else 2 * hidden
        shapes = ((4 * hidden, width), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,))
        for suffix in DIRECTIONS:
            for key, shape in zip(direction_keys(k, suffix), shapes):
                params[key] = rng.uniform(-bound, bound, shape).astype(dtype)
    return params
