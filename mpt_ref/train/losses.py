"""Losses with their gradients. Each returns (loss, gradient with respect to its first argument).

Shape letters: B batch, C classes, D hidden width.
"""

from __future__ import annotations

import numpy as np

from mpt_ref._types import Array


def log_softmax(z: Array) -> Array:
    z = z - z.max(axis=-1, keepdims=True)  # B,C  shift for stability
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(logits: Array, labels: np.ndarray) -> tuple[float, Array]:
    """mean_b −log softmax(logits_b)[y_b]; d/dlogits = (softmax − onehot) / B."""
    B = logits.shape[0]
    logp = log_softmax(logits)  # B,C
    loss = -float(logp[np.arange(B), labels].mean())
    grad = np.exp(logp)
    grad[np.arange(B), labels] -= 1
    return loss, grad / B


def distillation_kl(student_logits: Array, teacher_logits: Array, temperature: float) -> tuple[float, Array]:
    """τ² · mean_b KL(softmax(t_b/τ) ‖ softmax(s_b/τ)) (Hinton et al.'s τ² keeps gradient scale across τ);
    d/ds = τ · (softmax(s/τ) − softmax(t/τ)) / B."""
    B = student_logits.shape[0]
    log_q = log_softmax(student_logits / temperature)  # B,C  student
    log_p = log_softmax(teacher_logits / temperature)  # B,C  teacher
    p = np.exp(log_p)
    loss = temperature**2 * float((p * (log_p - log_q)).sum() / B)
    return loss, temperature * (np.exp(log_q) - p) / B


def mse(student: Array, teacher: Array) -> tuple[float, Array]:
    """mean over all entries of (s − t)²; d/ds = 2 (s − t) / N."""
    diff = student - teacher
    return float(np.mean(diff**2)), 2 * diff / diff.size
