"""Independent *correct* ports of the four modules, written the way other implementations are: in the
candidate's dtype, with another summation order than mpt-ref. Used to prove the oracle raises no false
alarm (tests/test_oracle_*.py). Not mpt-ref code: the math is re-derived from spec/*.md.

Backends (how every contraction is summed):
    matmul    a @ b (BLAS), sigmoid 1/(1+exp(-z)), LSTM gates from one fused matmul of [x_t, h] and [W_ih W_hh]
    einsum    np.einsum loops, sigmoid 0.5·tanh(z/2)+0.5, fused gates
    pairwise  products materialized, then np.add.reduce over a contiguous axis (pairwise summation),
              sigmoid through exp(-|z|), separate x/h projections with the biases added one by one

Calling convention: that of assert_conforms (positional; config last):
    forward(params, indices[, task_ids][, dropout_masks], config) -> output
    backward(params, dout, indices[, task_ids][, dropout_masks], config) -> grads
"""

from __future__ import annotations

import numpy as np

BACKENDS = ("matmul", "einsum", "pairwise")


class Port:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    # primitives ---------------------------------------------------------------------------------
    def mm(self, a, b):
        """a (..., n) @ b (..., n, m) in the backend's order; broadcasting like matmul."""
        if self.backend == "matmul":
            return a @ b
        if self.backend == "einsum":
            return np.einsum("...in,...nm->...im", a, b)
        prod = a[..., :, None, :] * np.swapaxes(b, -1, -2)[..., None, :, :]  # ..., i, m, n
        return np.add.reduce(prod, axis=-1)

    def sig(self, z):
        with np.errstate(over="ignore"):
            if self.backend == "matmul":
                return (1 / (1 + np.exp(-z))).astype(z.dtype)
            if self.backend == "einsum":
                h = z.dtype.type(0.5)
                return h * np.tanh(h * z) + h
            e = np.exp(-np.abs(z))
            return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)

    def rowsum(self, a):
        """Σ over all leading axes of a (N..., m) -> (m,)."""
        a2 = a.reshape(-1, a.shape[-1])
        if self.backend == "pairwise":
            return np.add.reduce(np.ascontiguousarray(a2.T), axis=-1)
        return self.mm(np.ones((1, a2.shape[0]), a.dtype), a2)[0]

    def scatter(self, rows, index, num_rows):
        """out[j] = Σ rows[i] where index[i] == j, as a one-hot contraction (N, D) -> (T, D)."""
        onehot = (np.arange(num_rows)[:, None] == index[None, :]).astype(rows.dtype)  # T,N
        return self.mm(onehot, rows)

    # modules ------------------------------------------------------------------------------------
    def embedding_forward(self, p, indices, config=None):
        return p["embedding.weight"][indices]

    def embedding_backward(self, p, dout, indices, config=None):
        E = p["embedding.weight"]
        return {"embedding.weight": self.scatter(dout.reshape(-1, E.shape[1]), indices.reshape(-1), E.shape[0])}

    def mpt_forward(self, p, indices, task_ids, config=None):
        C, R, E = p["prefix_task_cols"], p["prefix_task_rows"], p["embedding.weight"]
        tasks = np.broadcast_to(task_ids, (indices.shape[0],))
        return E[indices] * self.mm(C[tasks], R[tasks])  # per row: B matmuls, not per task

    def mpt_backward(self, p, dout, indices, task_ids, config=None):
        C, R, E = p["prefix_task_cols"], p["prefix_task_rows"], p["embedding.weight"]
        tasks = np.broadcast_to(task_ids, (indices.shape[0],))
        P = self.mm(C[tasks], R[tasks])  # B,T,D
        x = E[indices]
        T, D = E.shape
        dE = self.scatter((dout * P).reshape(-1, D), indices.reshape(-1), T)
        G = dout * x  # B,T,D
        dCb = self.mm(G, np.swapaxes(R[tasks], -1, -2))  # B,T,R  per row, then summed per task
        dRb = self.mm(np.swapaxes(C[tasks], -1, -2), G)  # B,R,D
        K = C.shape[0]
        dC = self.scatter(dCb.reshape(len(tasks), -1), tasks, K).reshape(C.shape)
        dR = self.scatter(dRb.reshape(len(tasks), -1), tasks, K).reshape(R.shape)
        return {"prefix_task_cols": dC, "prefix_task_rows": dR, "embedding.weight": dE}

    # encoders -----------------------------------------------------------------------------------
    def _lstm_dir(self, p, x, k, suffix, reverse):
        w_ih, w_hh = p[f"lstm_head.weight_ih_l{k}{suffix}"], p[f"lstm_head.weight_hh_l{k}{suffix}"]
        b_ih, b_hh = p[f"lstm_head.bias_ih_l{k}{suffix}"], p[f"lstm_head.bias_hh_l{k}{suffix}"]
        B, T, _ = x.shape
        H = w_hh.shape[1]
        h = np.zeros((B, H), x.dtype)
        c = np.zeros((B, H), x.dtype)
        steps = range(T - 1, -1, -1) if reverse else range(T)
        y = np.zeros((B, T, H), x.dtype)
        saved = []
        W = np.concatenate([w_ih, w_hh], axis=1).T  # I+H,4H
        for t in steps:
            if self.backend == "pairwise":
                z = self.mm(x[:, t], w_ih.T) + b_ih + self.mm(h, w_hh.T) + b_hh
            else:
                z = self.mm(np.concatenate([x[:, t], h], axis=1), W) + (b_ih + b_hh)
            i, f, o = self.sig(z[:, :H]), self.sig(z[:, H:2 * H]), self.sig(z[:, 3 * H:])
            g = np.tanh(z[:, 2 * H:3 * H])
            c_prev, h_prev = c, h
            c = f * c + i * g
            tc = np.tanh(c)
            h = o * tc
            y[:, t] = h
            saved.append((t, i, f, g, o, c_prev, tc, h_prev))
        return y, (saved, w_ih, w_hh, x)

    def _lstm_dir_back(self, dy, cache):
        saved, w_ih, w_hh, x = cache
        B, _, H = dy.shape
        dh_next = np.zeros((B, H), dy.dtype)
        dc_next = np.zeros((B, H), dy.dtype)
        dx = np.zeros(x.shape, dy.dtype)
        dw_ih, dw_hh, db = np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros(4 * H, dy.dtype)
        one = dy.dtype.type(1)
        for t, i, f, g, o, c_prev, tc, h_prev in reversed(saved):
            dh = dy[:, t] + dh_next
            dc = dc_next + dh * o * (one - tc * tc)
            dz = np.concatenate([dc * g * i * (one - i), dc * c_prev * f * (one - f), dc * i * (one - g * g),
                                 dh * tc * o * (one - o)], axis=1)  # B,4H
            dc_next = dc * f
            dh_next = self.mm(dz, w_hh)
            dx[:, t] = self.mm(dz, w_ih)
            dw_ih += self.mm(dz.T, x[:, t])  # accumulated per step (mpt-ref: one matmul over B·T)
            dw_hh += self.mm(dz.T, h_prev)
            db += self.rowsum(dz)
        return dx, [dw_ih, dw_hh, db, db.copy()]

    def _linear(self, x, w, b):
        return self.mm(x, w.T) + b

    def encoder_forward(self, p, indices, dropout_masks=None, config=None, *, _keep=False):
        x = p["embedding.weight"][indices]
        lstm = "lstm_head.weight_ih_l0" in p
        caches, scales = [], []
        if lstm:
            L = sum(k.startswith("lstm_head.weight_ih_l") and not k.endswith("_reverse") for k in p)
            p_drop = getattr(config, "encoder_dropout", 0.0) if dropout_masks else 0.0
            for k in range(L):
                yf, cf = self._lstm_dir(p, x, k, "", False)
                yr, cr = self._lstm_dir(p, x, k, "_reverse", True)
                caches.append((cf, cr))
                x = np.concatenate([yf, yr], axis=-1)
                if dropout_masks and k < L - 1:
                    s = dropout_masks[k].astype(x.dtype) * x.dtype.type(1 / (1 - p_drop))
                    scales.append(s)
                    x = x * s
            n = 2
        else:
            n = 3
        head = []
        for j in range(n):
            if j:
                x = np.maximum(x, 0)
            head.append(x)
            x = self._linear(x, p[f"mlp_head.{2 * j}.weight"], p[f"mlp_head.{2 * j}.bias"])
        return (x, (caches, scales, head, indices)) if _keep else x

    def encoder_backward(self, p, dout, indices, dropout_masks=None, config=None):
        _, (caches, scales, head, indices) = self.encoder_forward(p, indices, dropout_masks, config, _keep=True)
        grads = {}
        d = dout
        for j in reversed(range(len(head))):
            w = p[f"mlp_head.{2 * j}.weight"]
            xin = head[j]
            d2, x2 = d.reshape(-1, w.shape[0]), xin.reshape(-1, w.shape[1])
            grads[f"mlp_head.{2 * j}.weight"] = self.mm(d2.T, x2)
            grads[f"mlp_head.{2 * j}.bias"] = self.rowsum(d2)
            d = self.mm(d, w)
            if j:
                d = d * (xin > 0)
        lstm_grads = {}
        for k in reversed(range(len(caches))):
            if scales and k < len(caches) - 1:
                d = d * scales[k]
            H = d.shape[-1] // 2
            dxf, gf = self._lstm_dir_back(d[..., :H], caches[k][0])
            dxr, gr = self._lstm_dir_back(d[..., H:], caches[k][1])
            for suffix, gs in (("", gf), ("_reverse", gr)):
                for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), gs):
                    lstm_grads[f"lstm_head.{name}_l{k}{suffix}"] = g
            d = dxf + dxr
        E = p["embedding.weight"]
        dE = self.scatter(d.reshape(-1, E.shape[1]), indices.reshape(-1), E.shape[0])
        out = {"embedding.weight": dE}
        out.update({key: lstm_grads[key] for key in p if key in lstm_grads})
        out.update({key: grads[key] for key in p if key in grads})
        return out

    def callables(self, module: str):
        """(forward, backward) in assert_conforms' positional convention for ``module``."""
        if module == "prompt_embedding":
            return self.embedding_forward, self.embedding_backward
        if module == "mpt":
            return self.mpt_forward, self.mpt_backward
        return self.encoder_forward, self.encoder_backward
