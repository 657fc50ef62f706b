"""Stage 1 of MPT: everything trained on the source tasks before any target is seen.

- Teachers: one PromptEmbedding per source task, all from one common init (so their mean is a prompt
  in the same coordinates), trained with cross-entropy.
- A multitask prompt: one PromptEmbedding trained on all source tasks in turn (plain multitask
  prompt tuning), from the teachers' mean.
- MPT: a MultitaskPromptEmbedding (K = sources, R = 1) from the teachers' mean with all-ones factors
  (P_t = E at the start), trained with Σ_t [CE + α·KL(teacher_t ‖ student) + β·MSE(hidden)], one task per
  step in turn; once with distillation (the paper's method) and once without (α = β = 0, its ablation).

Curves: mean source accuracy every ``curve_every`` steps on a held-out source set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from mpt_ref.io.checkpoint import write_safetensors
from mpt_ref.modules.config import MultitaskPromptTuningConfig, PromptTuningConfig
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.train.base_model import BaseModel
from mpt_ref.train.data import FamilySpec, Task, sample
from mpt_ref.train.loop import Batch, accuracy, train


class SourceStage(NamedTuple):
    teachers: list[PromptEmbedding]
    multitask: PromptEmbedding
    mpt: MultitaskPromptEmbedding          # with distillation
    mpt_plain: MultitaskPromptEmbedding    # without distillation
    checkpoint: Path                       # mpt as a PEFT MPT source checkpoint (float32)
    accuracy: dict[str, list[float]]       # per source task, on a held-out set
    curves: dict[str, list[float]]         # mean held-out source accuracy every curve_every steps


def prompt_config(s: Any) -> PromptTuningConfig:
    return PromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim)


def mpt_config(s: Any, tasks: int) -> MultitaskPromptTuningConfig:
    return MultitaskPromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim, num_tasks=tasks, num_ranks=1)


def streaming(tasks: list[Task], spec: FamilySpec, batch: int, rng: np.random.Generator) -> Callable[[int], Batch]:
    """Fresh examples every step, one task per step in turn (round robin); the batch's task id is the
    task's index (prompt tuning ignores it, MPT picks its factors by it)."""
    return lambda step: Batch(*sample(tasks[step % len(tasks)], batch, spec, rng), step % len(tasks))


def held_out(tasks: list[Task], n: int, spec: FamilySpec, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    return [Batch(*sample(t, n, spec, rng), i) for i, t in enumerate(tasks)]


def mean_accuracy(model: BaseModel, module: Any, sets: list[Batch]) -> float:
    return float(np.mean([accuracy(model, module, b) for b in sets]))


def with_shared_prompt(module: MultitaskPromptEmbedding, table: np.ndarray) -> MultitaskPromptEmbedding:
    """E := table and every factor := 1, so each task's prompt starts as the table itself."""
    sd = module.state_dict()
    module.load_state_dict({"embedding.weight": table, "prefix_task_cols": np.ones_like(sd["prefix_task_cols"]),
                            "prefix_task_rows": np.ones_like(sd["prefix_task_rows"])})
    return module


def source_stage(model: BaseModel, sources: list[Task], s: Any, checkpoint: Path, seed: int,
                 progress: Callable[[str], None]) -> SourceStage:
    spec, K = s.spec, len(sources)
    rng = np.random.default_rng(seed)
    curve_sets = held_out(sources, s.curve_examples, spec, seed + 1)
    final_sets = held_out(sources, s.test_examples, spec, seed + 2)
    common = PromptEmbedding(prompt_config(s), seed=seed + 3, dtype=np.float64).state_dict()

    teachers, teacher_curves = [], []
    for t, task in enumerate(sources):
        teacher = PromptEmbedding(prompt_config(s), seed=seed + 3, dtype=np.float64)
        teacher.load_state_dict(common)
        hist = train(model, teacher, streaming([task], spec, s.batch, rng), s.teacher_steps, s.teacher_lr,
                     evaluate=lambda m: accuracy(model, m, curve_sets[t]), every=s.curve_every)
        teachers.append(teacher)
        teacher_curves.append(hist["accuracy"])
    progress(f"teachers: {K} x {s.teacher_steps} steps, held-out accuracy "
             f"{np.mean([c[-1] for c in teacher_curves]):.3f}")
    mean_table = np.mean([t.state_dict()["embedding.weight"] for t in teachers], axis=0)  # T,D

    multitask = PromptEmbedding(prompt_config(s), seed=seed + 3, dtype=np.float64)
    multitask.load_state_dict({"embedding.weight": mean_table})
    hist_mt = train(model, multitask, streaming(sources, spec, s.batch, rng), s.multitask_steps,
                    s.multitask_lr, evaluate=lambda m: mean_accuracy(model, m, curve_sets), every=s.curve_every)
    progress(f"multitask prompt: {s.multitask_steps} steps, held-out accuracy {hist_mt['accuracy'][-1]:.3f}")

    by_task = dict(enumerate(teachers))
    mpts, mpt_curves = {}, {}
    for name, alpha, beta in (("mpt", s.alpha, s.beta), ("mpt_plain", 0.0, 0.0)):
        student = with_shared_prompt(MultitaskPromptEmbedding(mpt_config(s, K), seed=seed + 4, dtype=np.float64),
                                     mean_table)
        hist = train(model, student, streaming(sources, spec, s.batch, rng), s.multitask_steps, s.multitask_lr,
                     teachers=by_task, alpha=alpha, beta=beta, temperature=s.temperature,
                     evaluate=lambda m: mean_accuracy(model, m, curve_sets), every=s.curve_every)
        mpts[name], mpt_curves[name] = student, hist["accuracy"]
        progress(f"MPT {'with' if alpha or beta else 'without'} distillation: {s.multitask_steps} steps, "
                 f"held-out accuracy {hist['accuracy'][-1]:.3f}")

    sd = mpts["mpt"].state_dict()
    write_safetensors(checkpoint, {"prompt_embeddings": sd["embedding.weight"].astype(np.float32),
                                   "prefix_task_cols": sd["prefix_task_cols"].astype(np.float32),
                                   "prefix_task_rows": sd["prefix_task_rows"].astype(np.float32)}, overwrite=True)
    average = MultitaskPromptEmbedding(mpt_config(s, 1), seed=0, dtype=np.float64)
    average.load_state_dict({"embedding.weight": sd["embedding.weight"],
                             "prefix_task_cols": sd["prefix_task_cols"].mean(axis=0, keepdims=True),
                             "prefix_task_rows": sd["prefix_task_rows"].mean(axis=0, keepdims=True)})
    shared = with_shared_prompt(MultitaskPromptEmbedding(mpt_config(s, 1), seed=0, dtype=np.float64),
                                sd["embedding.weight"])
    as_task0 = [Batch(*b[:3], 0) for b in final_sets]  # a K = 1 module reads every set as its task 0
    acc = {
        "teachers": [accuracy(model, teachers[t], final_sets[t]) for t in range(K)],
        "MPT": [accuracy(model, mpts["mpt"], b) for b in final_sets],
        "MPT no distillation": [accuracy(model, mpts["mpt_plain"], b) for b in final_sets],
        "multitask prompt": [accuracy(model, multitask, b) for b in final_sets],
        "mean of teachers": [accuracy(model, _table(s, mean_table), b) for b in final_sets],
        "MPT shared prompt P* alone": [accuracy(model, shared, b) for b in as_task0],
        "MPT AVERAGE_SOURCE_TASKS config": [accuracy(model, average, b) for b in as_task0],
    }
    curves = {"teachers (mean)": list(np.mean(teacher_curves, axis=0)), "multitask prompt": hist_mt["accuracy"],
              "MPT": mpt_curves["mpt"], "MPT no distillation": mpt_curves["mpt_plain"]}
    return SourceStage(teachers, multitask, mpts["mpt"], mpts["mpt_plain"], checkpoint, acc, curves)


def _table(s: Any, table: np.ndarray) -> PromptEmbedding:
    module = PromptEmbedding(prompt_config(s), seed=0, dtype=np.float64)
    module.load_state_dict({"embedding.weight": table})
    return module
