"""A small frozen base model that prompts can steer, with the backward pass to its input embeddings.

    X      = [P ; W_tok[input_ids]]                (B, S, D)   S = T + L, prompt first (as PEFT)
    m      = [1 … 1 ; attention_mask]              (B, S)      prompt positions always attended
    A      = softmax((X Wq)(X Wk)ᵀ/√D + log-mask)  (B, S, S)   masked keys get −inf
    Y      = X + (A (X Wv)) Wo                     (B, S, D)
    h      = Σ_s m_s Y_s / Σ_s m_s                 (B, D)      pooled hidden state
    logits = h Wc + bc                             (B, C)

Weights are seeded and never trained. ``backward(dlogits, dhidden, cache)`` returns dL/dP (B, T, D),
the only gradient prompt training needs. Math: spec/training.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from mpt_ref._types import Array


class BaseModel(NamedTuple):
    tok: Array   # V,D
    wq: Array    # D,D
    wk: Array    # D,D
    wv: Array    # D,D
    wo: Array    # D,D
    wc: Array    # D,C
    bc: Array    # C

    @classmethod
    def init(cls, vocab: int, dim: int, classes: int, seed: int) -> "BaseModel":
        rng = np.random.default_rng(seed)
        w = lambda *s: rng.standard_normal(s) / np.sqrt(s[0])  # noqa: E731  fan-in scaled
        return cls(rng.standard_normal((vocab, dim)), w(dim, dim), w(dim, dim), w(dim, dim), w(dim, dim),
                   w(dim, classes), np.zeros(classes))


class BaseCache(NamedTuple):
    x: Array; q: Array; k: Array; v: Array; a: Array; z: Array; m: Array; T: int  # noqa: E702


def base_forward(model: BaseModel, prompt: Array, input_ids: np.ndarray, mask: np.ndarray) -> tuple[Array, Array, BaseCache]:
    """prompt (B,T,D), input_ids (B,L), mask (B,L) of 0/1 -> logits (B,C), hidden (B,D), cache."""
    B, T, D = prompt.shape
    x = np.concatenate([prompt, model.tok[input_ids]], axis=1)  # B,S,D
    m = np.concatenate([np.ones((B, T)), mask], axis=1)  # B,S
    q, k, v = x @ model.wq, x @ model.wk, x @ model.wv  # B,S,D each
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(D) + np.where(m[:, None, :] > 0, 0.0, -np.inf)  # B,S,S
    scores -= scores.max(axis=-1, keepdims=True)
    a = np.exp(scores)
    a /= a.sum(axis=-1, keepdims=True)  # B,S,S
    z = a @ v  # B,S,D
    y = x + z @ model.wo  # B,S,D
    hidden = (m[..., None] * y).sum(axis=1) / m.sum(axis=1, keepdims=True)  # B,D
    return hidden @ model.wc + model.bc, hidden, BaseCache(x, q, k, v, a, z, m, T)


def base_backward(model: BaseModel, dlogits: Array, dhidden: Array | None, cache: BaseCache) -> Array:
    """Gradient with respect to the prompt (B,T,D) of sum(logits·dlogits) + sum(hidden·dhidden)."""
    x, q, k, v, a, _, m, T = cache
    D = x.shape[-1]
    dh = dlogits @ model.wc.T + (0 if dhidden is None else dhidden)  # B,D
    dy = (m / m.sum(axis=1, keepdims=True))[..., None] * dh[:, None, :]  # B,S,D
    dz = dy @ model.wo.T  # B,S,D
    da = dz @ v.transpose(0, 2, 1)  # B,S,S
    dv = a.transpose(0, 2, 1) @ dz  # B,S,D
    ds = a * (da - (da * a).sum(axis=-1, keepdims=True)) / np.sqrt(D)  # B,S,S  softmax backward, 1/√D
    dq, dk = ds @ k, ds.transpose(0, 2, 1) @ q  # B,S,D each
    dx = dy + dq @ model.wq.T + dk @ model.wk.T + dv @ model.wv.T  # B,S,D  (residual + Q, K, V paths)
    return dx[:, :T]
