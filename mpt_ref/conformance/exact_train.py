"""The LSTM encoder in train mode with explicit dropout keep masks, evaluated like conformance/exact.py
(every sum exact then rounded once, sigmoid/tanh in decimal): the golden vectors' train-mode cases get
the same bits on every machine. Built from exact.py's one-layer pieces: between layers k and k + 1
(k < L − 1) the BiLSTM output is multiplied by its scale (0 or 1/(1 − p), each product rounded once),
and the gradient flowing back through it likewise."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mpt_ref.conformance import exact


def _layer_params(params: dict, k: int) -> dict:
    """Layer k's lstm_head keys renamed to layer 0 (exact.lstm_stack runs one layer as layer 0)."""
    return {key.replace(f"_l{k}", "_l0"): v for key, v in params.items()
            if key.startswith("lstm_head.") and (key.endswith(f"_l{k}") or f"_l{k}_" in key)}


def _scaled(seqs: list, scale: list) -> list:
    return [[[v * s for v, s in zip(row, srow)] for row, srow in zip(seq, sseq)] for seq, sseq in zip(seqs, scale)]


def lstm_encoder_train(params: dict[str, np.ndarray], indices: np.ndarray, grad_output: np.ndarray,
                       scales: Sequence[np.ndarray], num_layers: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """output (B, T, D) and the parameter gradients of an LSTM encoder in train mode, in the params' dtype.
    scales: L − 1 arrays (B, T, 2H) of 0 or 1/(1 − p)."""
    dtype = next(iter(params.values())).dtype
    p: dict[str, Any] = {k: v.astype(np.float64).tolist() for k, v in params.items()}
    idx = indices.tolist()
    B, Tp = len(idx), len(idx[0])
    E = p["embedding.weight"]
    T, D = len(E), len(E[0])
    flat_ids = [i for row in idx for i in row]
    rows = [E[i] for i in flat_ids]
    s = [np.asarray(m, dtype=np.float64).tolist() for m in scales]
    x, traces = [rows[b * Tp:(b + 1) * Tp] for b in range(B)], []
    for k in range(num_layers):
        pk = _layer_params(p, k)
        x, trace = exact.lstm_stack(pk, x, 1)
        traces.append((pk, trace))
        if k < num_layers - 1:
            x = _scaled(x, s[k])
    out, head_trace = exact.mlp_head(p, [v for seq in x for v in seq], 2)
    dflat = [g for row in grad_output.astype(np.float64).tolist() for g in row]
    dy, grads = exact.mlp_head_backward(p, dflat, head_trace)
    d = [dy[b * Tp:(b + 1) * Tp] for b in range(B)]
    for k in reversed(range(num_layers)):
        if k < num_layers - 1:
            d = _scaled(d, s[k])
        pk, trace = traces[k]
        d, layer_grads = exact.lstm_stack_backward(pk, d, trace)
        grads.update({key.replace("_l0", f"_l{k}"): v for key, v in layer_grads.items()})
    grads["embedding.weight"] = exact._embedding_grad([v for seq in d for v in seq], flat_ids, T, D)
    output = np.array(out, dtype=np.float64).reshape(B, Tp, D).astype(dtype)
    return output, {k: np.array(grads[k], dtype=np.float64).reshape(params[k].shape).astype(dtype) for k in params}
