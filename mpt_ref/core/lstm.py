"""One LSTM layer, one direction, over a whole sequence, and its backward pass through time (BPTT).
Math: spec/lstm.md.

Shape letters: B batch, T time steps, I input width (D for layer 0, 2H above), H hidden width.
Gate order on the 4H axis is PyTorch's i, f, g, o (onnx_export converts to ONNX's i, o, f, c).
The initial state is zero (PEFT never passes one); the final (h, c) is not returned (PEFT drops it).

The reverse direction is the forward recurrence run on the time-flipped input, with its output
flipped back, so ``lstm_forward(x, ..., reverse=True) == flip(lstm_forward(flip(x), ...))``
exactly: one loop serves both directions. The input projection of every time step is one matmul;
only the recurrence h[t-1] -> h[t] loops over time. Nothing loops over the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array
from mpt_ref.core.activations import sigmoid, sigmoid_backward, tanh, tanh_backward
from mpt_ref.core.linear import matmul_rows


class LSTMCache(NamedTuple):
    x: Array       # B,T,I    input in processing order (already flipped when reverse)
    gates: Array   # B,T,4H   [σ(z_i) | σ(z_f) | tanh(z_g) | σ(z_o)], after the nonlinearities
    c: Array       # B,T+1,H  cell states in processing order, c[:, 0] = 0
    tanh_c: Array  # B,T,H    tanh(c[:, 1:])
    h: Array       # B,T+1,H  hidden states in processing order, h[:, 0] = 0
    w_ih: Array    # 4H,I
    w_hh: Array    # 4H,H
    reverse: bool


def lstm_forward(
    x: Array, w_ih: Array, w_hh: Array, b_ih: Array, b_hh: Array, *, reverse: bool = False
) -> tuple[Array, LSTMCache]:
    """x (B, T, I), w_ih (4H, I), w_hh (4H, H), b_ih (4H,), b_hh (4H,) -> y (B, T, H), cache.

    y[:, t] = h_t; with reverse=True the recurrence runs from t = T−1 down to 0.
    """
    if reverse:
        x = x[:, ::-1]  # B,T,I
    B, T, _ = x.shape
    H = w_hh.shape[1]
    zx = matmul_rows(x, w_ih.T)  # B,T,4H   input part of every step's pre-activation, one 2-D matmul
    zx += b_ih + b_hh
    gates = np.empty((B, T, 4 * H), dtype=x.dtype)
    c = np.zeros((B, T + 1, H), dtype=x.dtype)
    h = np.zeros((B, T + 1, H), dtype=x.dtype)
    for t in range(T):
        # one (B, H) GEMM per step: BLAS may block it differently for another B, so a row run alone can
        # differ in the last bits from the same row in a batch (spec/lstm.md, "Batch invariance")
        z = zx[:, t] + h[:, t] @ w_hh.T  # B,4H
        i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), sigmoid(z[:, 3 * H :])  # B,H each
        g = tanh(z[:, 2 * H : 3 * H])  # B,H
        c[:, t + 1] = f * c[:, t] + i * g  # B,H
        h[:, t + 1] = o * tanh(c[:, t + 1])  # B,H
        gates[:, t] = np.concatenate([i, f, g, o], axis=1)  # B,4H
    tanh_c = tanh(c[:, 1:])  # B,T,H  (recomputed once for the cache: same values as in the loop)
    y = h[:, 1:]  # B,T,H
    cache = LSTMCache(x, gates, c, tanh_c, h, w_ih, w_hh, reverse)
    return (y[:, ::-1] if reverse else y), cache


def lstm_backward(dout: Array, cache: LSTMCache) -> tuple[Array, Array, Array, Array, Array]:
    """dout (B, T, H) -> dx (B, T, I), dw_ih (4H, I), dw_hh (4H, H), db_ih (4H,), db_hh (4H,).

    Walks the steps in reverse processing order, carrying dh (into h[t-1] through w_hh) and dc (into
    c[t-1] through the forget gate). db_ih and db_hh are equal: both biases enter z the same way.
    """
    x, gates, c, tanh_c, h, w_ih, w_hh, reverse = cache
    if reverse:
        dout = dout[:, ::-1]  # B,T,H  into processing order
    B, T, H = dout.shape
    dz = np.empty_like(gates)  # B,T,4H  gradient of the pre-activations z
    dh_next = np.zeros((B, H), dtype=dout.dtype)  # from step t+1 through w_hh
    dc_next = np.zeros((B, H), dtype=dout.dtype)  # from step t+1 through the forget gate
    for t in reversed(range(T)):
        i, f, g, o = (gates[:, t, k * H : (k + 1) * H] for k in range(4))  # B,H each
        dh = dout[:, t] + dh_next  # B,H
        dc = dc_next + tanh_backward(dh * o, tanh_c[:, t])  # B,H
        dz[:, t, :H] = sigmoid_backward(dc * g, i)
        dz[:, t, H : 2 * H] = sigmoid_backward(dc * c[:, t], f)
        dz[:, t, 2 * H : 3 * H] = tanh_backward(dc * i, g)
        dz[:, t, 3 * H :] = sigmoid_backward(dh * tanh_c[:, t], o)
        dc_next = dc * f  # B,H
        dh_next = dz[:, t] @ w_hh  # B,H
    dz2 = dz.reshape(B * T, 4 * H)  # BT,4H
    dw_ih = dz2.T @ x.reshape(B * T, x.shape[-1])  # 4H,I  (explicit width: B*T may be 0)
    dw_hh = dz2.T @ h[:, :-1].reshape(B * T, H)  # 4H,H   h[t-1] feeds step t
    db = dz2.sum(axis=0)  # 4H
    dx = matmul_rows(dz, w_ih)  # B,T,I
    return (dx[:, ::-1] if reverse else dx), dw_ih, dw_hh, db, db.copy()
