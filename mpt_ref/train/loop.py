"""One training loop for every prompt method: the method maps parameters to a prompt (B, T, D) and a
prompt gradient back to parameter gradients; the frozen base model and the losses do the rest."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref._types import Array, Params
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.train.base_model import BaseModel, base_backward, base_forward
from mpt_ref.train.losses import cross_entropy, distillation_kl, mse
from mpt_ref.train.optim import Adam


class Batch(NamedTuple):
    input_ids: np.ndarray  # B,L
    mask: np.ndarray       # B,L
    labels: np.ndarray     # B
    task: int              # the MPT task id of the whole batch


def prompt_and_backward(module: Any, batch_size: int, task: int) -> tuple[Array, Callable[[Array], Params]]:
    """The prompt PEFT would prepend (B, T, D), and dprompt -> grads (PEFT's get_prompt semantics:
    encoders and plain prompts are computed once and repeated, so their gradient is Σ_b dprompt[b])."""
    T = module.total_virtual_tokens
    if isinstance(module, MultitaskPromptEmbedding):
        idx, tasks = np.tile(np.arange(T), (batch_size, 1)), np.array([task])
        return module.forward(idx, tasks), lambda d: module.backward(d, idx, tasks)
    one = np.arange(T)[None]  # 1,T
    prompt = module.forward(one)  # 1,T,D
    return np.repeat(prompt, batch_size, axis=0), lambda d: module.backward(d.sum(axis=0, keepdims=True), one)


def step_loss(model: BaseModel, module: Any, batch: Batch, teacher: Any = None, alpha: float = 0.0,
              beta: float = 0.0, temperature: float = 2.0) -> tuple[float, Params]:
    """CE (+ α·KL(teacher‖student) + β·MSE(hidden)) and its parameter gradients."""
    prompt, to_grads = prompt_and_backward(module, len(batch.labels), batch.task)
    logits, hidden, cache = base_forward(model, prompt, batch.input_ids, batch.mask)
    loss, dlogits = cross_entropy(logits, batch.labels)
    dhidden = None
    if teacher is not None and (alpha or beta):
        t_prompt, _ = prompt_and_backward(teacher, len(batch.labels), 0)
        t_logits, t_hidden, _ = base_forward(model, t_prompt, batch.input_ids, batch.mask)
        kl, dkl = distillation_kl(logits, t_logits, temperature)
        sq, dsq = mse(hidden, t_hidden)
        loss, dlogits, dhidden = loss + alpha * kl + beta * sq, dlogits + alpha * dkl, beta * dsq
    return loss, to_grads(base_backward(model, dlogits, dhidden, cache))


def train(model: BaseModel, module: Any, batches: Callable[[int], Batch], steps: int, lr: float,
          teachers: dict[int, Any] | None = None, alpha: float = 0.0, beta: float = 0.0,
          evaluate: Callable[[Any], float] | None = None, every: int = 10,
          task_weights: dict[int, float] | None = None, temperature: float = 2.0) -> dict[str, list[float]]:
    """Adam on the module's parameters; returns the loss per step and accuracy every ``every`` steps.
    task_weights: λ_t scaling the loss (and so the gradient) of batches of task t (default 1);
    temperature: τ of the distillation KL."""
    optimizer = Adam(module, lr=lr)  # writes the module's parameters back after each step
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    for step in range(steps):
        batch = batches(step)
        teacher = (teachers or {}).get(batch.task)
        loss, grads = step_loss(model, module, batch, teacher, alpha, beta, temperature)
        weight = (task_weights or {}).get(batch.task, 1.0)
        optimizer.step({k: weight * g for k, g in grads.items()} if weight != 1.0 else grads)
        history["loss"].append(loss)
        if evaluate is not None and (step + 1) % every == 0:
            history["accuracy"].append(evaluate(module))
    return history


def accuracy(model: BaseModel, module: Any, batch: Batch) -> float:
    prompt, _ = prompt_and_backward(module, len(batch.labels), batch.task)
    logits, _, _ = base_forward(model, prompt, batch.input_ids, batch.mask)
    return float((logits.argmax(axis=1) == batch.labels).mean())


def trainable_count(module: Any) -> int:
    return int(sum(v.size for v in module.state_dict().values()))

