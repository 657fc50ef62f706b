"""PyTorch -> ONNX tensor layout conversions, one small function each (tests/test_onnx_layout.py).

Shape letters: H hidden width, I input width of a layer (D for layer 0, 2H above), T steps, B batch.

PyTorch's nn.LSTM stacks its gate blocks on the 4H axis as i, f, g, o; ONNX's LSTM expects i, o, f, c
(c is PyTorch's g). ONNX packs both directions of a layer into one W, R and B, forward at index 0,
and B holds the input bias then the recurrent bias (8H per direction). Math: spec/onnx.md.
"""

from __future__ import annotations

import numpy as np

from mpt_ref._types import Array

# gate blocks: PyTorch orders them i,f,g,o, ONNX i,o,f,c; the position in PyTorch's order of each ONNX
# block: i<-i, o<-o, f<-f, c<-g
_ONNX_FROM_TORCH = (0, 3, 1, 2)

# layout 0 (the default) is time-major; PEFT's LSTM is batch-first (B, T, .)
BATCH_FIRST_TO_TIME_MAJOR = (1, 0, 2)  # (B, T, I) -> (T, B, I); its own inverse
LSTM_Y_TO_TIME_BATCH_DIR = (0, 2, 1, 3)  # Y (T, 2, B, H) -> (T, B, 2, H); then merge to (T, B, 2H)


def gates_to_onnx(x: Array) -> Array:
    """Reorder the 4 gate blocks on axis 0 from PyTorch's i,f,g,o to ONNX's i,o,f,c.
    x (4H, ...) -> (4H, ...). A new array; the input is untouched."""
    if x.shape[0] % 4:
        raise ValueError(f"gate axis: expected a length divisible by 4 (4H), got shape {x.shape}")
    blocks = np.split(x, 4, axis=0)  # 4 x (H, ...)
    return np.concatenate([blocks[k] for k in _ONNX_FROM_TORCH], axis=0)


def lstm_w(weight_ih: Array, weight_ih_reverse: Array) -> Array:
    """ONNX W (2, 4H, I) from torch's ``weight_ih_l{k}`` and ``weight_ih_l{k}_reverse`` (4H, I) each."""
    return np.stack([gates_to_onnx(weight_ih), gates_to_onnx(weight_ih_reverse)])


def lstm_r(weight_hh: Array, weight_hh_reverse: Array) -> Array:
    """ONNX R (2, 4H, H) from torch's ``weight_hh_l{k}`` and ``weight_hh_l{k}_reverse`` (4H, H) each."""
    return np.stack([gates_to_onnx(weight_hh), gates_to_onnx(weight_hh_reverse)])


def lstm_b(bias_ih: Array, bias_hh: Array, bias_ih_reverse: Array, bias_hh_reverse: Array) -> Array:
    """ONNX B (2, 8H) = per direction [Wb (iofc) | Rb (iofc)] from torch's four (4H,) biases."""
    forward = np.concatenate([gates_to_onnx(bias_ih), gates_to_onnx(bias_hh)])  # 8H
    reverse = np.concatenate([gates_to_onnx(bias_ih_reverse), gates_to_onnx(bias_hh_reverse)])  # 8H
    return np.stack([forward, reverse])
