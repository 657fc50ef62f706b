"""The conformance cases' outputs and gradients, computed so that every machine gets the same bits.

NumPy's matmuls go through the BLAS (its summation order, blocking and FMA use vary by library and
CPU) and its exp/tanh through CPU-dispatched SIMD kernels, so the module classes give results that
differ in the last bits between machines. The golden vectors' ``output`` and ``grads`` are instead
evaluated here, in plain Python floats (IEEE-754 binary64, no FMA), with

- every sum exact, then rounded once (``math.fsum``) — so no summation order exists to differ;
- every product of two floats rounded once (as IEEE multiplication always is);
- sigmoid and tanh evaluated in ``decimal`` at 50 significant digits, then rounded to float64
  (``decimal`` is specified bit for bit, unlike libm).

The result is the same on any platform; it is *not* the correctly rounded real-number result (the
products and the nonlinearities are rounded before they are summed), but within a few ulp of it.
Float32 cases are evaluated the same way from their float32 parameters and rounded to float32 at the
end. The module classes agree with these values within each case's tolerance (tests/test_vectors.py).

Shape letters: B batch, T tokens, D token_dim, H hidden, K tasks, R ranks, L layers.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from mpt_ref.kind import Kind

_CTX = Context(prec=50, rounding=ROUND_HALF_EVEN)  # a fixed context, not the (mutable) thread default

Vec = list  # list[float]
Mat = list  # list[list[float]]


def sigmoid(x: float) -> float:
    d = Decimal(x)  # exact
    return float(_CTX.divide(Decimal(1), _CTX.add(Decimal(1), _CTX.exp(_CTX.minus(d)))))


def tanh(x: float) -> float:
    d = Decimal(x)
    e = _CTX.exp(_CTX.multiply(Decimal(-2), abs(d)))  # in (0, 1]: no overflow for any float
    t = _CTX.divide(_CTX.subtract(Decimal(1), e), _CTX.add(Decimal(1), e))
    return float(t) if d >= 0 else -float(t)


def dot(xs: Sequence[float], ys: Sequence[float], *extra: float) -> float:
    """Σ x_i·y_i (+ extra), each product rounded, the sum exact then rounded once."""
    return math.fsum([x * y for x, y in zip(xs, ys)] + list(extra))


def linear(rows: Mat, W: Mat, b: Vec) -> Mat:
    """rows (N, I), W (O, I), b (O) -> (N, O): x W^T + b."""
    return [[dot(x, W[j], b[j]) for j in range(len(W))] for x in rows]


def linear_backward(dy: Mat, rows: Mat, W: Mat) -> tuple[Mat, Mat, Vec]:
    """-> dx (N, I), dW (O, I), db (O)."""
    O, I = len(W), len(W[0]) if W else 0
    dx = [[dot([d[j] for j in range(O)], [W[j][i] for j in range(O)]) for i in range(I)] for d in dy]
    dW = [[dot([d[j] for d in dy], [x[i] for x in rows]) for i in range(I)] for j in range(O)]
    db = [math.fsum(d[j] for d in dy) for j in range(O)]
    return dx, dW, db


def relu(rows: Mat) -> Mat:
    return [[v if v > 0 else 0.0 for v in r] for r in rows]


def relu_backward(dy: Mat, pre: Mat) -> Mat:
    return [[d if p > 0 else 0.0 for d, p in zip(dr, pr)] for dr, pr in zip(dy, pre)]


def mlp_head(params: dict, rows: Mat, num_linear: int) -> tuple[Mat, list]:
    """mlp_head.{0,2,4}: Linear (ReLU Linear)*: -> out, per-layer (input, pre-activation)."""
    trace = []
    x = rows
    for n in range(num_linear):
        W, b = params[f"mlp_head.{2 * n}.weight"], params[f"mlp_head.{2 * n}.bias"]
        z = linear(x, W, b)
        trace.append((x, z))
        x = relu(z) if n < num_linear - 1 else z
    return x, trace


def mlp_head_backward(params: dict, dout: Mat, trace: list) -> tuple[Mat, dict]:
    grads = {}
    d = dout
    for n in reversed(range(len(trace))):
        x, z = trace[n]
        if n < len(trace) - 1:
            d = relu_backward(d, z)
        d, dW, db = linear_backward(d, x, params[f"mlp_head.{2 * n}.weight"])
        grads[f"mlp_head.{2 * n}.weight"], grads[f"mlp_head.{2 * n}.bias"] = dW, db
    return d, grads


def _gates(z: Vec, H: int) -> tuple[Vec, Vec, Vec, Vec]:
    """torch's gate order i, f, g, o."""
    return ([sigmoid(v) for v in z[:H]], [sigmoid(v) for v in z[H:2 * H]],
            [tanh(v) for v in z[2 * H:3 * H]], [sigmoid(v) for v in z[3 * H:]])


def lstm_direction(seq: Mat, w_ih: Mat, w_hh: Mat, b_ih: Vec, b_hh: Vec) -> tuple[Mat, list]:
    """One direction over seq (T, I) in processing order -> h (T, H), per-step trace."""
    H = len(w_hh[0])
    h, c = [0.0] * H, [0.0] * H
    ys, trace = [], []
    for x in seq:
        z = [math.fsum([a * b for a, b in zip(w_ih[k], x)] + [a * b for a, b in zip(w_hh[k], h)] + [b_ih[k], b_hh[k]])
             for k in range(4 * H)]
        i, f, g, o = _gates(z, H)
        c_new = [math.fsum([f[j] * c[j], i[j] * g[j]]) for j in range(H)]
        tc = [tanh(v) for v in c_new]
        h_new = [o[j] * tc[j] for j in range(H)]
        trace.append((x, h, c, i, f, g, o, tc))
        h, c = h_new, c_new
        ys.append(h)
    return ys, trace


def lstm_direction_backward(dys: Mat, trace: list, w_ih: Mat, w_hh: Mat) -> tuple[Mat, list]:
    """dys (T, H) in processing order -> dx (T, I), and per-step gradient terms of the weights."""
    H = len(w_hh[0])
    I = len(w_ih[0])
    dh_next, dc_next = [0.0] * H, [0.0] * H
    dxs: list = [None] * len(trace)
    steps = []
    for t in reversed(range(len(trace))):
        x, h_prev, c_prev, i, f, g, o, tc = trace[t]
        dh = [math.fsum([dys[t][j], dh_next[j]]) for j in range(H)]
        do = [dh[j] * tc[j] for j in range(H)]
        dc = [math.fsum([(dh[j] * o[j]) * math.fsum([1.0, -(tc[j] * tc[j])]), dc_next[j]]) for j in range(H)]
        di = [dc[j] * g[j] for j in range(H)]
        dg = [dc[j] * i[j] for j in range(H)]
        df = [dc[j] * c_prev[j] for j in range(H)]
        dc_next = [dc[j] * f[j] for j in range(H)]
        dz = ([di[j] * (i[j] * math.fsum([1.0, -i[j]])) for j in range(H)]
              + [df[j] * (f[j] * math.fsum([1.0, -f[j]])) for j in range(H)]
              + [dg[j] * math.fsum([1.0, -(g[j] * g[j])]) for j in range(H)]
              + [do[j] * (o[j] * math.fsum([1.0, -o[j]])) for j in range(H)])
        dxs[t] = [dot(dz, [w_ih[k][m] for k in range(4 * H)]) for m in range(I)]
        dh_next = [dot(dz, [w_hh[k][m] for k in range(4 * H)]) for m in range(H)]
        steps.append((dz, x, h_prev))
    return dxs, steps


def lstm_stack(params: dict, seqs: list, L: int) -> tuple[list, list]:
    """seqs: B sequences (T, D) -> B sequences (T, 2H) (forward features first), trace per layer."""
    traces = []
    x = seqs
    for layer in range(L):
        keys = [[f"lstm_head.{n}_l{layer}{s}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                for s in ("", "_reverse")]
        out, layer_trace = [], []
        for seq in x:
            yf, tf = lstm_direction(seq, *(params[k] for k in keys[0]))
            yr, tr = lstm_direction(seq[::-1], *(params[k] for k in keys[1]))
            yr = yr[::-1]
            out.append([a + b for a, b in zip(yf, yr)])  # list concatenation per step: (2H)
            layer_trace.append((tf, tr))
        traces.append((keys, layer_trace))
        x = out
    return x, traces


def lstm_stack_backward(params: dict, dys: list, traces: list) -> tuple[list, dict]:
    terms: dict[str, list] = {}
    d = dys
    for keys, layer_trace in reversed(traces):
        H = len(params[keys[0][1]][0])
        dx_all = []
        for dseq, (tf, tr) in zip(d, layer_trace):
            dxf, sf = lstm_direction_backward([s[:H] for s in dseq], tf, params[keys[0][0]], params[keys[0][1]])
            dxr, sr = lstm_direction_backward([s[H:] for s in dseq][::-1], tr, params[keys[1][0]], params[keys[1][1]])
            dxr = dxr[::-1]
            dx_all.append([[math.fsum([a, b]) for a, b in zip(u, v)] for u, v in zip(dxf, dxr)])
            for k, steps in ((keys[0], sf), (keys[1], sr)):
                for dz, x, h_prev in steps:
                    for name, inp in ((k[0], x), (k[1], h_prev)):
                        terms.setdefault(name, []).append([[dz[r] * v for v in inp] for r in range(len(dz))])
                    for name in (k[2], k[3]):
                        terms.setdefault(name, []).append(list(dz))
        d = dx_all
    grads = {}
    for name, parts in terms.items():
        if isinstance(parts[0][0], list):  # weights: sum (rows, cols) over all steps and rows
            grads[name] = [[math.fsum(p[r][c] for p in parts) for c in range(len(parts[0][0]))]
                           for r in range(len(parts[0]))]
        else:
            grads[name] = [math.fsum(p[r] for p in parts) for r in range(len(parts[0]))]
    return d, grads


def _embedding_grad(dx_rows: Mat, ids: list, T: int, D: int) -> Mat:
    return [[math.fsum(d[k] for d, i in zip(dx_rows, ids) if i == row) for k in range(D)] for row in range(T)]


class _Case(NamedTuple):
    p: dict         # params as nested lists of floats
    idx: list       # B,T'   ids
    tasks: list     # B      task of each row (MPT), else []
    num_layers: int  # L (LSTM), else 0
    T: int
    D: int


def _embedding(c: _Case, rows: Mat, drows: Mat) -> tuple[Mat, Mat, dict]:
    return rows, drows, {}


def _mpt(c: _Case, rows: Mat, drows: Mat) -> tuple[Mat, Mat, dict]:
    C, Rm = c.p["prefix_task_cols"], c.p["prefix_task_rows"]  # K,T,R  K,R,D
    T, D, tasks = c.T, c.D, c.tasks
    R = len(Rm[0])
    P = {k: [[dot(C[k][t], [Rm[k][r][d] for r in range(R)]) for d in range(D)] for t in range(T)]
         for k in sorted(set(tasks))}  # task prompt C_k R_k (T, D)
    Tp = len(c.idx[0])
    out, dx, dP = [], [], {k: [[[] for _ in range(D)] for _ in range(T)] for k in P}
    for b, k in enumerate(tasks):
        for t in range(Tp):
            e, g = rows[b * Tp + t], drows[b * Tp + t]
            out.append([e[d] * P[k][t][d] for d in range(D)])
            dx.append([g[d] * P[k][t][d] for d in range(D)])
            for d in range(D):
                dP[k][t][d].append(g[d] * e[d])
    K = len(C)
    dPs = {k: [[math.fsum(v) for v in row] for row in dP[k]] for k in dP}
    zero_c, zero_r = [[0.0] * R for _ in range(T)], [[0.0] * D for _ in range(R)]
    grads = {
        "prefix_task_cols": [[[dot(dPs[k][t], Rm[k][r]) for r in range(R)] for t in range(T)]
                             if k in dPs else zero_c for k in range(K)],
        "prefix_task_rows": [[[dot([C[k][t][r] for t in range(T)], [dPs[k][t][d] for t in range(T)])
                               for d in range(D)] for r in range(R)] if k in dPs else zero_r for k in range(K)],
    }
    return out, dx, grads


def _mlp_encoder(c: _Case, rows: Mat, drows: Mat) -> tuple[Mat, Mat, dict]:
    out, trace = mlp_head(c.p, rows, 3)
    dx, head_grads = mlp_head_backward(c.p, drows, trace)
    return out, dx, head_grads


def _lstm_encoder(c: _Case, rows: Mat, drows: Mat) -> tuple[Mat, Mat, dict]:
    B, Tp = len(c.idx), len(c.idx[0])
    seqs = [rows[b * Tp:(b + 1) * Tp] for b in range(B)]
    ys, traces = lstm_stack(c.p, seqs, c.num_layers)
    out, trace = mlp_head(c.p, [v for seq in ys for v in seq], 2)
    dy, head_grads = mlp_head_backward(c.p, drows, trace)
    dxs, lstm_grads = lstm_stack_backward(c.p, [dy[b * Tp:(b + 1) * Tp] for b in range(B)], traces)
    return out, [v for seq in dxs for v in seq], {**lstm_grads, **head_grads}


# One entry per Kind: (case, looked-up rows E[ids] (B·T', D), upstream rows (B·T', D)) ->
# (output rows, their gradient dE[ids], the other parameters' gradients).
EXACT: dict[Kind, Callable[[_Case, Mat, Mat], tuple[Mat, Mat, dict]]] = {
    Kind.PROMPT_EMBEDDING: _embedding,
    Kind.MPT: _mpt,
    Kind.MLP_ENCODER: _mlp_encoder,
    Kind.LSTM_ENCODER: _lstm_encoder,
}


def exact_output_and_grads(module: str, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray],
                           grad_output: np.ndarray, *, num_layers: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """output (B, T', D) and d sum(output * grad_output) / d params for a conformance case's module kind
    ("prompt_embedding" | "mpt" | "mlp_encoder" | "lstm_encoder", eval mode), in the params' dtype."""
    if module not in EXACT:
        raise ValueError(f"module: expected prompt_embedding, mpt, mlp_encoder or lstm_encoder, got {module!r}")
    dtype = next(iter(params.values())).dtype
    p: dict[str, Any] = {k: v.astype(np.float64).tolist() for k, v in params.items()}
    idx = inputs["indices"].tolist()  # B,T'
    G = grad_output.astype(np.float64).tolist()  # B,T',D
    E = p["embedding.weight"]
    T, D = len(E), len(E[0])
    B = len(idx)
    tasks = inputs["task_ids"].tolist() if "task_ids" in inputs else []
    tasks = tasks * B if len(tasks) == 1 else tasks
    flat_ids = [i for row in idx for i in row]
    rows = [E[i] for i in flat_ids]  # (B·T', D)
    dflat = [g for row in G for g in row]
    out, dx, grads = EXACT[module](_Case(p, idx, tasks, num_layers, T, D), rows, dflat)
    grads["embedding.weight"] = _embedding_grad(dx, flat_ids, T, D)
    shape = (B, len(idx[0]) if B else 0, D)
    output = np.array(out, dtype=np.float64).reshape(shape).astype(dtype)
    ordered = {k: np.array(grads[k], dtype=np.float64).reshape(params[k].shape).astype(dtype) for k in params}
    return output, ordered
