"""SGD and Adam with PyTorch's update rules and defaults, over a params dict keyed by PEFT names.

SGD (torch.optim.SGD): g ← g + λθ; with momentum μ: b ← μb + (1−dampening)g (b ← g on the first step),
g ← b (or g + μb with nesterov); θ ← θ − lr·g.
Adam (torch.optim.Adam): g ← g + λθ; m ← β1 m + (1−β1) g; v ← β2 v + (1−β2) g²;
θ ← θ − lr · (m / (1−β1^t)) / (sqrt(v / (1−β2^t)) + ε)   (ε added after the square root).
Updates are in place on the arrays of ``params``. Given a module instead of a params dict, the
optimizer steps a copy of its state_dict and writes it back with ``load_state_dict`` after each step:
a module's own parameter arrays are read-only (modules/base.py), so a saved forward cache can never
silently outlive a parameter update.
"""

from __future__ import annotations

import numpy as np

from mpt_ref._types import Params
from mpt_ref.modules.base import Module


def _params_of(target: Params | Module) -> tuple[Params, Module | None]:
    return (target.state_dict(), target) if isinstance(target, Module) else (target, None)


class SGD:
    def __init__(self, params: Params | Module, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        params, self.module = _params_of(params)
        self.params, self.lr, self.momentum, self.dampening = params, lr, momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov
        self.buffers: dict[str, np.ndarray] = {}

    def step(self, grads: Params) -> None:
        for key, theta in self.params.items():
            g = grads[key] + self.weight_decay * theta if self.weight_decay else grads[key]
            if self.momentum:
                buf = self.buffers.get(key)
                buf = g.copy() if buf is None else self.momentum * buf + (1 - self.dampening) * g
                self.buffers[key] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            theta -= self.lr * g
        if self.module is not None:
            self.module.load_state_dict(self.params)


class Adam:
    def __init__(self, params: Params | Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        params, self.module = _params_of(params)
        self.params, self.lr, self.betas, self.eps, self.weight_decay = params, lr, betas, eps, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: Params) -> None:
        self.t += 1
        b1, b2 = self.betas
        for key, theta in self.params.items():
            g = grads[key] + self.weight_decay * theta if self.weight_decay else grads[key]
            self.m[key] = b1 * self.m[key] + (1 - b1) * g
            self.v[key] = b2 * self.v[key] + (1 - b2) * g * g
            m_hat = self.m[key] / (1 - b1**self.t)
            v_hat = self.v[key] / (1 - b2**self.t)
            theta -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        if self.module is not None:
            self.module.load_state_dict(self.params)
