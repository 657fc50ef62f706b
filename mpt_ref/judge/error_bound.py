"""Per-element rounding-error bounds for a port of each module: a running (Wilkinson) error analysis.

Derivation and constants: spec/tolerances.md. In short: every quantity of the computation is carried
as a pair ``Bounded(v, e)`` — its exact value ``v`` (evaluated in float64) and a bound ``e >= 0`` on
how far a correct port, rounding with unit roundoff ``u``, can be from it. Each elementary operation
propagates the bound of its inputs and adds its own rounding:

    a + b          e = e_a + e_b + u (|a| + |b| + e_a + e_b)
    a * b          e = |a| e_b + e_a |b| + e_a e_b + u (|a b| + ...)
    A @ B  (n)     e = |A| e_B + e_A |B| + e_A e_B + γ_n |A| |B|          γ_n = n u / (1 − n u)
    Σ_n a          e = Σ e_a + γ_n Σ |a|
    σ(a), tanh(a)  e = L(a, e_a) e_a + c_fn u                              L = sup of the derivative on
                                                                           [a − e_a, a + e_a] (≤ 1/4, 1)
    relu(a)        e = e_a                                                 (1-Lipschitz, exact)
    relu'(a) · d   e = e_d, or |d| + e_d where |a| <= e_a (the port may take the other branch)

γ_n |A||B| is the classic bound for an inner product of n terms in *any* summation order (Higham,
Accuracy and Stability of Numerical Algorithms, §3.1), so matmul / einsum / pairwise / blocked sums
are all covered; |A||B| is the reference evaluated on absolute values. Gradients are run through the
same algebra from the bounded forward values, so the forward error of every cached quantity (gates,
cell states, ReLU inputs) is carried into the backward pass.

``Rounding`` says how the port rounds: ``u_acc`` inside sums/products, ``u_store`` when a result is
stored (float16 storage with float32 accumulation has u_store = 2^-11 > u_acc = 2^-24), ``c_fn`` ulps
of error for exp/tanh/sigmoid, and ``depth_slack`` multiplying every rounding term (module doc of
mpt_ref.tolerances: why). The functions below return (value, bound) for each module's output and
gradients; nothing here knows about classes or files.

Shape letters as in the cores: B batch, T tokens, D token_dim, H hidden, K tasks, R ranks, L layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array, IntArray, Params
from mpt_ref.core.ops import num_lstm_layers
from mpt_ref.kind import Kind
from mpt_ref.tolerances import Rounding


class Bounded(NamedTuple):
    v: Array  # exact value (float64)
    e: Array  # worst-case bound on |port − v|, >= 0, same shape
    s: Array  # probabilistic scale: |port − v| <= lam · s with overwhelming probability (module doc)

    def bound(self, lam: float) -> Array:
        """The bound used: the smaller of the worst case and lam · s (an overflowed e is ignored)."""
        with np.errstate(invalid="ignore", over="ignore"):
            b = np.fmin(self.e, lam * self.s)  # fmin ignores a NaN (overflowed) side
        return np.where(np.isnan(b), np.inf, b)


def _f64(x: Array) -> Array:
    return np.asarray(x, dtype=np.float64)


def _sq(x: Array) -> Array:
    return x * x


def _t(x: Array) -> Array:
    return np.swapaxes(x, -1, -2)


class ErrorAlgebra:
    """The elementary operations of the module doc, for one ``Rounding``: each returns the exact value,
    the worst-case bound e and the probabilistic scale s of its result."""

    def __init__(self, r: Rounding) -> None:
        self.r = r
        self.u = r.u_acc * r.depth_slack
        self.us = max(r.u_store - r.u_acc, 0.0) * r.depth_slack  # extra rounding when a result is stored
        self.fn = r.c_fn * r.u_store * r.depth_slack
        self.tiny = r.tiny
        self.lam = r.lam

    def gamma(self, n: int) -> float:
        nu = n * self.u
        if nu >= 0.5:
            return float("inf")  # no worst-case bound: the sum is longer than the precision can carry
        return nu / (1 - nu)

    def _store(self, v: Array, e: Array, s: Array) -> Bounded:
        av = np.abs(v)
        rs = self.us * av
        # a bound that overflowed turns into NaN downstream (0 · inf): NaN means "no bound" (see bound())
        return Bounded(v, e + self.us * (av + e) + self.tiny, np.sqrt(s * s + rs * rs) + self.tiny)

    # inputs -------------------------------------------------------------------------------------
    def exact(self, x: Array) -> Bounded:
        x = _f64(x)
        return Bounded(x, np.zeros_like(x), np.zeros_like(x))

    def param(self, x: Array) -> Bounded:
        """A parameter or upstream gradient as the port receives it (rounded when inputs_rounded)."""
        x = _f64(x)
        e = self.r.u_store * np.abs(x) + self.tiny if self.r.inputs_rounded else np.zeros_like(x)  # + underflow
        return Bounded(x, e, e.copy())

    def constant(self, x: Array) -> Bounded:
        """A constant the port computes itself (e.g. 1/(1−p)): rounded once."""
        x = _f64(x)
        e = (self.r.u_store * self.r.depth_slack) * np.abs(x)
        return Bounded(x, e, e.copy())

    # arithmetic -----------------------------------------------------------------------------------
    # (the hot paths of the LSTM bound: squares written out, each |·| taken once; same operations, same bits)
    def add(self, a: Bounded, b: Bounded) -> Bounded:
        e = a.e + b.e
        mag = np.abs(a.v) + np.abs(b.v)
        um = self.u * mag
        return self._store(a.v + b.v, e + self.u * (mag + e), np.sqrt(a.s * a.s + b.s * b.s + um * um))

    def mul(self, a: Bounded, b: Bounded) -> Bounded:
        aa, ab = np.abs(a.v), np.abs(b.v)
        e = aa * b.e + a.e * ab + a.e * b.e
        v = a.v * b.v
        av = np.abs(v)
        x, y, z, w = aa * b.s, a.s * ab, a.s * b.s, self.u * av
        return self._store(v, e + self.u * (av + e), np.sqrt(x * x + y * y + z * z + w * w))

    def one_minus(self, a: Bounded) -> Bounded:
        return self.add(self.exact(np.ones_like(a.v)), Bounded(-a.v, a.e, a.s))

    def _contract(self, v: Array, e: Array, s2: Array, mag: Array, mag_e: Array, n: int) -> Bounded:
        """A sum of n terms: worst case γ_n Σ|terms|, probabilistic √n u Σ|terms| (Higham & Mary)."""
        return self._store(v, e + self.gamma(n) * mag_e, np.sqrt(s2 + n * _sq(self.u * mag)))

    def matmul(self, a: Bounded, b: Bounded) -> Bounded:
        """a (..., n) @ b (..., n, m): n products summed in any order."""
        n = a.v.shape[-1]
        aa, ab = np.abs(a.v), np.abs(b.v)
        e = aa @ b.e + a.e @ ab + a.e @ b.e
        s2 = _sq(aa) @ _sq(b.s) + _sq(a.s) @ _sq(ab) + _sq(a.s) @ _sq(b.s)
        return self._contract(a.v @ b.v, e, s2, aa @ ab, (aa + a.e) @ (ab + b.e), n + 1)

    def affine(self, x: Bounded, w: Bounded, *biases: Bounded) -> Bounded:
        """x (..., I) @ wᵀ (I, O) + Σ biases: one sum of I products and the biases, in any order."""
        n = x.v.shape[-1] + len(biases)
        ax, aw = np.abs(x.v), np.abs(w.v)
        T_ = _t  # wᵀ over the last two axes (weights may be stacked: (..., O, I))
        e = ax @ T_(w.e) + x.e @ T_(aw) + x.e @ T_(w.e)
        s2 = _sq(ax) @ T_(_sq(w.s)) + _sq(x.s) @ T_(_sq(aw)) + _sq(x.s) @ T_(_sq(w.s))
        mag, mag_e = ax @ T_(aw), (ax + x.e) @ T_(aw + w.e)
        v = x.v @ T_(w.v)
        for b in biases:
            v, e, s2 = v + b.v, e + b.e, s2 + _sq(b.s)
            mag, mag_e = mag + np.abs(b.v), mag_e + np.abs(b.v) + b.e
        # a port may store the product before adding the biases (float16: rounded to u_store): charge
        # the storage rounding on Σ|terms| rather than on the (possibly cancelled) result
        e, s2 = e + self.us * mag_e, s2 + _sq(self.us * mag)
        return self._contract(v, e, s2, mag, mag_e, n + 1)

    def sum(self, a: Bounded, axis: int) -> Bounded:
        n = a.v.shape[axis]
        aa = np.abs(a.v)
        return self._contract(a.v.sum(axis=axis), a.e.sum(axis=axis), _sq(a.s).sum(axis=axis), aa.sum(axis=axis),
                              (aa + a.e).sum(axis=axis), n)

    def scatter_rows(self, a: Bounded, index: IntArray, num_rows: int) -> Bounded:
        """out[j] = Σ_{i: index[i] = j} a[i] (a (N, D)): the embedding backward's scatter-add."""
        D = a.v.shape[-1]
        v, e, s2, mag, mag_e = (np.zeros((num_rows, D)) for _ in range(5))
        aa = np.abs(a.v)
        for acc, x in ((v, a.v), (e, a.e), (s2, _sq(a.s)), (mag, aa), (mag_e, aa + a.e)):
            np.add.at(acc, index, x)
        n = int(np.bincount(index, minlength=num_rows).max(initial=1))
        return self._contract(v, e, s2, mag, mag_e, n)

    # nonlinearities ------------------------------------------------------------------------------
    def _smooth(self, v: Array, a: Bounded, deriv) -> Bounded:
        """f(a) with f' = deriv(|z|) decreasing in |z|: the sup of f' over [a − r, a + r] is at the point
        nearest 0 (mean value theorem), for r = e (worst case) and r = lam · s (probabilistic)."""
        with np.errstate(invalid="ignore"):
            lip_e = deriv(np.maximum(np.abs(a.v) - a.e, 0))
            lip_s = deriv(np.maximum(np.abs(a.v) - self.lam * a.s, 0))
        return self._store(v, lip_e * a.e + self.fn, lip_s * a.s + self.fn)

    def sigmoid(self, a: Bounded) -> Bounded:
        def dsig(z: Array) -> Array:
            y = 1 / (1 + np.exp(-z))
            return y * (1 - y)  # <= 1/4
        return self._smooth(1 / (1 + np.exp(-a.v)), a, dsig)

    def tanh(self, a: Bounded) -> Bounded:
        return self._smooth(np.tanh(a.v), a, lambda z: 1 - np.tanh(z) ** 2)  # <= 1

    def relu(self, a: Bounded) -> Bounded:
        return Bounded(np.maximum(a.v, 0), a.e.copy(), a.s.copy())

    def relu_backward(self, d: Bounded, pre: Bounded) -> Bounded:
        """d ⊙ [pre > 0]; where |pre| is within pre's error the port may have taken the other branch."""
        on = pre.v > 0

        def err(r: Array, dr: Array) -> Array:
            unsure = ~(np.abs(pre.v) > r) & ~(r <= 0)  # a NaN (overflowed) radius counts as unsure
            return np.where(unsure, np.abs(d.v) + dr, np.where(on, dr, 0.0))

        return Bounded(d.v * on, err(pre.e, d.e), err(self.lam * pre.s, d.s))

    def sigmoid_backward(self, d: Bounded, y: Bounded) -> Bounded:
        return self.mul(self.mul(d, y), self.one_minus(y))

    def tanh_backward(self, d: Bounded, y: Bounded) -> Bounded:
        return self.mul(d, self.one_minus(self.mul(y, y)))


# ================================================================================================
# Modules. Each returns (out: Bounded, grads: {PEFT key: Bounded}) for params, inputs and dout.
# ================================================================================================


def _map(f, *parts: Bounded) -> Bounded:
    """Apply an exact rearrangement (index, reshape, transpose, concatenate) to v, e and s alike."""
    return Bounded(*(f(*(p[k] for p in parts)) for k in range(3)))


def _cat(parts: Sequence[Bounded], axis: int) -> Bounded:
    return _map(lambda *xs: np.concatenate(xs, axis=axis), *parts)


def _idx(a: Bounded, key: object) -> Bounded:
    return _map(lambda x: x[key], a)


def _stack(parts: Sequence[Bounded], axis: int) -> Bounded:
    return _map(lambda *xs: np.stack(xs, axis=axis), *parts)


def embedding_bound(alg: ErrorAlgebra, params: Params, indices: IntArray, dout: Array) -> tuple[Bounded, Params]:
    E = alg.param(params["embedding.weight"])
    out = _idx(E, indices)  # B,T',D  a gather is exact
    d = alg.param(dout)
    D = E.v.shape[1]
    dE = alg.scatter_rows(_map(lambda q: q.reshape(-1, D), d), indices.reshape(-1), E.v.shape[0])
    return out, {"embedding.weight": dE}


def mpt_bound(alg: ErrorAlgebra, params: Params, indices: IntArray, task_ids: IntArray, dout: Array
              ) -> tuple[Bounded, Params]:
    """out[b] = E[indices[b]] ⊙ (C[t_b] @ R[t_b]) and its gradients (spec/mpt.md)."""
    C, Rw, E = (alg.param(params[k]) for k in ("prefix_task_cols", "prefix_task_rows", "embedding.weight"))
    K, T, _ = C.v.shape
    B = indices.shape[0]
    tasks = np.broadcast_to(np.asarray(task_ids).reshape(-1), (B,))
    P = alg.matmul(C, Rw)  # K,T,D  every task's prompt
    x = _idx(E, indices)  # B,T,D
    Pb = _idx(P, tasks)  # B,T,D
    out = alg.mul(x, Pb)
    d = alg.param(dout)
    dx = alg.mul(d, Pb)  # B,T,D
    D = E.v.shape[1]
    dE = alg.scatter_rows(_map(lambda q: q.reshape(-1, D), dx), indices.reshape(-1), T)
    dxp = alg.mul(d, x)  # B,T,D
    onehot = (np.arange(K)[:, None] == tasks[None, :]).astype(np.float64)  # K,B  rows per task
    n = int(onehot.sum(axis=1).max(initial=1))
    per_task = lambda q: np.einsum("kb,btd->ktd", onehot, q)
    adxp = np.abs(dxp.v)
    dp = alg._contract(per_task(dxp.v), per_task(dxp.e), per_task(_sq(dxp.s)), per_task(adxp),
                       per_task(adxp + dxp.e), n)  # K,T,D
    dC = alg.matmul(dp, _map(lambda q: q.transpose(0, 2, 1), Rw))  # K,T,R
    dR = alg.matmul(_map(lambda q: q.transpose(0, 2, 1), C), dp)  # K,R,D
    return out, {"prefix_task_cols": dC, "prefix_task_rows": dR, "embedding.weight": dE}


def _linear_backward(alg: ErrorAlgebra, d: Bounded, x: Bounded, w: Bounded) -> tuple[Bounded, Bounded, Bounded]:
    O, I = w.v.shape
    d2 = _map(lambda q: q.reshape(-1, O).T, d)  # O,N
    x2 = _map(lambda q: q.reshape(-1, I), x)  # N,I
    return alg.matmul(d, w), alg.matmul(d2, x2), alg.sum(d2, axis=1)


def head_bound(alg: ErrorAlgebra, params: Params, x: Bounded, num_linear: int
               ) -> tuple[Bounded, list[tuple[Bounded, Bounded, Bounded]]]:
    """Linear, ReLU, Linear[, ReLU, Linear] forward: out and per Linear (input, weight, pre-ReLU output)."""
    saved = []
    y = x
    for j in range(num_linear):
        w, b = alg.param(params[f"mlp_head.{2 * j}.weight"]), alg.param(params[f"mlp_head.{2 * j}.bias"])
        z = alg.affine(y, w, b)
        saved.append((y, w, z))
        y = alg.relu(z) if j < num_linear - 1 else z
    return y, saved


def head_backward_bound(alg: ErrorAlgebra, d: Bounded, saved: list) -> tuple[Bounded, Params]:
    grads: Params = {}
    for j in reversed(range(len(saved))):
        x, w, _ = saved[j]
        d, grads[f"mlp_head.{2 * j}.weight"], grads[f"mlp_head.{2 * j}.bias"] = _linear_backward(alg, d, x, w)
        if j > 0:
            d = alg.relu_backward(d, saved[j - 1][2])
    return d, grads


def lstm_directions_bound(alg: ErrorAlgebra, x: Bounded, w_ih: Bounded, w_hh: Bounded, b_ih: Bounded,
                          b_hh: Bounded) -> tuple[Bounded, dict]:
    """Both directions of one layer at once (spec/lstm.md), gates i, f, g, o: axis 0 is the direction,
    x (2,B,T,I) with the reverse direction's input already reversed in time, weights (2,4H,·), biases
    (2,1,4H); returns y (2,B,T,H) in each direction's own time order, and a cache. Every operation acts
    on each direction's entries exactly as one direction alone would (the same bits: one matmul per
    direction, elementwise steps entry by entry), in half the Python calls."""
    _, B, T, _ = x.v.shape
    H = w_hh.v.shape[-1]
    zero = alg.exact(np.zeros((2, B, H)))
    h, c = zero, zero
    hs, cs, gates, tcs = [h], [c], [], []
    w_cat = _cat([w_ih, w_hh], -1)  # 2,4H,I+H
    ifo = np.r_[0 : 2 * H, 3 * H : 4 * H]  # the sigmoid gates' columns of z
    cols = lambda a, b: (Ellipsis, slice(a, b))  # noqa: E731
    for t in range(T):
        xt = _idx(x, (slice(None), slice(None), t))  # 2,B,I
        # z = x_t W_ihᵀ + h W_hhᵀ + b_ih + b_hh: one sum of I + H products and two biases, any order
        z = alg.affine(_cat([xt, h], -1), w_cat, b_ih, b_hh)  # 2,B,4H
        # elementwise steps of the same shape done in one call each (same operations per entry, same bits)
        sig = alg.sigmoid(_idx(z, (Ellipsis, ifo)))  # 2,B,3H  [i f o]
        i, f, o = (_idx(sig, cols(k * H, (k + 1) * H)) for k in range(3))
        g = alg.tanh(_idx(z, cols(2 * H, 3 * H)))  # 2,B,H
        fc_ig = alg.mul(_cat([f, i], -1), _cat([c, g], -1))  # 2,B,2H  [f ⊙ c, i ⊙ g]
        c = alg.add(_idx(fc_ig, cols(0, H)), _idx(fc_ig, cols(H, 2 * H)))  # 2,B,H
        tc = alg.tanh(c)
        h = alg.mul(o, tc)
        hs.append(h), cs.append(c), gates.append((i, f, g, o, sig)), tcs.append(tc)
    y = _stack(hs[1:], 2)  # 2,B,T,H
    return y, {"x": x, "hs": hs, "cs": cs, "gates": gates, "tcs": tcs, "w_ih": w_ih, "w_hh": w_hh}


def lstm_directions_backward_bound(alg: ErrorAlgebra, dout: Bounded, cache: dict) -> tuple[Bounded, list[Bounded]]:
    """BPTT (spec/lstm.md) of both directions at once: dout (2,B,T,H) in each direction's time order ->
    dx (2,B,T,I) in that order, [dw_ih, dw_hh, db_ih, db_hh] each (2, ...)."""
    _, B, T, H = dout.v.shape
    x, hs, cs, w_ih, w_hh = cache["x"], cache["hs"], cache["cs"], cache["w_ih"], cache["w_hh"]
    dh_next = dc_next = alg.exact(np.zeros((2, B, H)))
    dzs: list[Bounded] = [None] * T  # type: ignore[list-item]
    cols = lambda a, b: (Ellipsis, slice(a, b))  # noqa: E731
    for t in reversed(range(T)):
        i, f, g, o, sig = cache["gates"][t]
        tc = cache["tcs"][t]
        dh = alg.add(_idx(dout, (slice(None), slice(None), t)), dh_next)  # 2,B,H
        dc = alg.add(dc_next, alg.tanh_backward(alg.mul(dh, o), tc))
        # the sigmoid gates [i f o] in one call: dz = (dc ⊙ g, dc ⊙ c_{t-1}, dh ⊙ tanh c_t) ⊙ σ'
        dsig = alg.sigmoid_backward(alg.mul(_cat([dc, dc, dh], -1), _cat([g, cs[t], tc], -1)), sig)  # 2,B,3H
        dz = _cat([_idx(dsig, cols(0, 2 * H)), alg.tanh_backward(alg.mul(dc, i), g), _idx(dsig, cols(2 * H, 3 * H))],
                  axis=-1)  # 2,B,4H
        dzs[t] = dz
        dc_next = alg.mul(dc, f)
        dh_next = alg.matmul(dz, w_hh)  # 2,B,H
    dz = _stack(dzs, 2)  # 2,B,T,4H
    dz2 = _map(lambda q: _t(q.reshape(2, B * T, 4 * H)), dz)  # 2,4H,BT
    hprev = _map(lambda q: q.reshape(2, B * T, H), _stack(hs[:-1], 2))  # 2,BT,H
    I = x.v.shape[-1]
    dw_ih = alg.matmul(dz2, _map(lambda q: q.reshape(2, B * T, I), x))  # 2,4H,I
    dw_hh = alg.matmul(dz2, hprev)  # 2,4H,H
    db = alg.sum(dz2, axis=-1)  # 2,4H
    dx = alg.matmul(dz, _map(lambda q: q[:, None], w_ih))  # 2,B,T,I
    return dx, [dw_ih, dw_hh, db, db]


_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_SUFFIXES = ("", "_reverse")


def _reversed_in_time(a: Bounded) -> Bounded:
    return _idx(a, (slice(None), slice(None, None, -1)))  # B,T,·


def lstm_layer_bound(alg: ErrorAlgebra, params: Params, x: Bounded, layer: int) -> tuple[Bounded, dict]:
    """Bidirectional layer ``layer`` of the stack (PEFT keys): y (B,T,2H) = [forward, reverse], its cache."""
    w_ih, w_hh, b_ih, b_hh = (_stack([alg.param(params[f"lstm_head.{n}_l{layer}{s}"]) for s in _SUFFIXES], 0)
                              for n in _NAMES)  # 2,...
    b_ih, b_hh = (_map(lambda q: q[:, None], b) for b in (b_ih, b_hh))  # 2,1,4H: one bias for every row
    y2, cache = lstm_directions_bound(alg, _stack([x, _reversed_in_time(x)], 0), w_ih, w_hh, b_ih, b_hh)
    return _cat([_idx(y2, 0), _reversed_in_time(_idx(y2, 1))], axis=-1), cache


def lstm_layer_backward_bound(alg: ErrorAlgebra, d: Bounded, cache: dict, layer: int) -> tuple[Bounded, Params]:
    """d (B,T,2H) -> dx (B,T,I) (the two directions' sum) and the layer's gradient bounds (PEFT keys)."""
    H = d.v.shape[-1] // 2
    d2 = _stack([_idx(d, (Ellipsis, slice(None, H))), _reversed_in_time(_idx(d, (Ellipsis, slice(H, None))))], 0)
    dx2, dps = lstm_directions_backward_bound(alg, d2, cache)
    grads = {f"lstm_head.{n}_l{layer}{s}": _idx(g, j) for j, s in enumerate(_SUFFIXES) for n, g in zip(_NAMES, dps)}
    return alg.add(_idx(dx2, 0), _reversed_in_time(_idx(dx2, 1))), grads


def encoder_bound(alg: ErrorAlgebra, params: Params, indices: IntArray, dout: Array, *, encoder_type: str,
                  num_layers: int = 0, dropout_scales: Sequence[Array] | None = None) -> tuple[Bounded, Params]:
    """The P-tuning encoder (spec/mlp.md, spec/lstm.md): embedding → (BiLSTM stack) → MLP head."""
    E = alg.param(params["embedding.weight"])
    x = _idx(E, indices)  # B,T',D
    lstm_caches = []
    scales = [alg.constant(s) for s in (dropout_scales or ())]
    if encoder_type == "LSTM":
        for k in range(num_layers):
            x, cache = lstm_layer_bound(alg, params, x, k)  # B,T',2H
            lstm_caches.append(cache)
            if scales and k < num_layers - 1:
                x = alg.mul(x, scales[k])
        out, saved = head_bound(alg, params, x, 2)
    else:
        out, saved = head_bound(alg, params, x, 3)
    d, grads = head_backward_bound(alg, alg.param(dout), saved)
    lstm_grads: Params = {}
    if encoder_type == "LSTM":
        for k in reversed(range(num_layers)):
            if scales and k < num_layers - 1:
                d = alg.mul(d, scales[k])
            d, grads_k = lstm_layer_backward_bound(alg, d, lstm_caches[k], k)  # B,T',I
            lstm_grads.update(grads_k)
    T, D = E.v.shape
    dE = alg.scatter_rows(_map(lambda q: q.reshape(-1, D), d), indices.reshape(-1), T)
    return out, {"embedding.weight": dE, **lstm_grads, **grads}


# One entry per Kind, under one signature: (alg, params, indices, task_ids, dout, dropout_scales) ->
# (output bound, {key: gradient bound}). task_ids is read by MPT only, dropout_scales by the LSTM only.
BOUNDS: dict[Kind, Callable[..., tuple[Bounded, Params]]] = {
    Kind.PROMPT_EMBEDDING: lambda alg, p, idx, t, d, s: embedding_bound(alg, p, idx, d),
    Kind.MPT: lambda alg, p, idx, t, d, s: mpt_bound(alg, p, idx, t, d),
    Kind.MLP_ENCODER: lambda alg, p, idx, t, d, s: encoder_bound(alg, p, idx, d, encoder_type="MLP"),
    Kind.LSTM_ENCODER: lambda alg, p, idx, t, d, s: encoder_bound(alg, p, idx, d, encoder_type="LSTM",
                                                                  num_layers=num_lstm_layers(p), dropout_scales=s),
}
