"""Stage 1 (source training) and stage 2 (target adaptation) of MPT, and the comparison table.

Stage 1: one teacher prompt (PromptEmbedding) per source task; then a multitask prompt
(MultitaskPromptEmbedding, K = source tasks) trained on all of them with CE + α·KL + β·MSE against the
teachers (α = β = 0 is PEFT's plain multitask training), saved as a PEFT MPT source checkpoint.
Stage 2: for a held-out task, a K = 1 target prompt initialised from that checkpoint by each PEFT init,
against random-init prompt tuning and P-tuning (MLP, LSTM), same steps and learning rate, several seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mpt_ref.io.checkpoint import write_safetensors
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
)
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder
from mpt_ref.train.base_model import BaseModel
from mpt_ref.train.data import Task, make_tasks, sample
from mpt_ref.train.loop import Batch, accuracy, train, trainable_count


@dataclasses.dataclass(frozen=True)
class Settings:
    vocab: int = 48
    dim: int = 16
    length: int = 8
    tokens: int = 4          # N virtual tokens
    sources: int = 3
    targets: int = 2
    group: int = 4           # key tokens per class and task
    batch: int = 32
    teacher_steps: int = 60
    source_steps: int = 150
    target_steps: int = 40
    target_examples: int = 32  # few-shot: the target task's whole training set
    lr: float = 0.2
    alpha: float = 1.0       # KL weight
    beta: float = 1.0        # hidden-state MSE weight
    task_weights: tuple[float, ...] = ()  # λ_t per source task (empty: all 1)
    seeds: int = 3
    threshold: float = 0.7   # accuracy for "steps to reach"
    every: int = 5           # evaluation interval (steps)
    seed: int = 0


QUICK = Settings(teacher_steps=10, source_steps=10, target_steps=10, seeds=1, every=5)


def batches_for(task: Task, task_id: int, s: Settings, rng: np.random.Generator) -> Callable[[int], Batch]:
    return lambda step: Batch(*sample(task, s.batch, s.length, s.vocab, rng), task_id)


def multitask_batches(tasks: list[Task], s: Settings, rng: np.random.Generator) -> Callable[[int], Batch]:
    return lambda step: Batch(*sample(tasks[step % len(tasks)], s.batch, s.length, s.vocab, rng), step % len(tasks))


def source_stage(model: BaseModel, sources: list[Task], s: Settings, path: Path, *, overwrite: bool = False,
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    rng = np.random.default_rng(s.seed + 1)
    teachers = {}
    for t, task in enumerate(sources):
        teacher = PromptEmbedding(PromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim), seed=s.seed + t,
                                  dtype=np.float64)
        hist = train(model, teacher, batches_for(task, 0, s, rng), s.teacher_steps, s.lr)
        teachers[t] = teacher
        progress(f"  teacher {task.name}: loss {hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}")
    cfg = MultitaskPromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim, num_tasks=len(sources), num_ranks=1)
    student = MultitaskPromptEmbedding(cfg, seed=s.seed, dtype=np.float64)
    student.load_state_dict({"embedding.weight": np.mean([t.state_dict()["embedding.weight"] for t in teachers.values()],
                                                         axis=0)}, strict=False)  # start from the teachers' mean
    ones = {"prefix_task_cols": np.ones_like(student.state_dict()["prefix_task_cols"]),
            "prefix_task_rows": np.ones_like(student.state_dict()["prefix_task_rows"])}
    student.load_state_dict(ones, strict=False)  # rank-1 all-ones factors: P_t = 1, the shared prompt itself
    hist = train(model, student, multitask_batches(sources, s, rng), s.source_steps, s.lr,
                 teachers=teachers, alpha=s.alpha, beta=s.beta, task_weights=dict(enumerate(s.task_weights)))
    progress(f"  multitask prompt (α={s.alpha}, β={s.beta}): loss {hist['loss'][0]:.3f} -> {hist['loss'][-1]:.3f}")
    sd = student.state_dict()
    write_safetensors(path, {"prompt_embeddings": sd["embedding.weight"].astype(np.float32),
                             "prefix_task_cols": sd["prefix_task_cols"].astype(np.float32),
                             "prefix_task_rows": sd["prefix_task_rows"].astype(np.float32)}, overwrite=overwrite)
    return {"teachers": teachers, "student": student, "history": hist}


def target_methods(s: Settings, source: Path, closest: int, seed: int) -> dict[str, Any]:
    """Fresh modules for every method compared on a target task (K = 1 MPT targets)."""
    mpt = lambda init, **kw: MultitaskPromptEmbedding(  # noqa: E731
        MultitaskPromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim, num_ranks=1, prompt_tuning_init=init,
                                    prompt_tuning_init_state_dict_path=str(source), **kw), seed=seed, dtype=np.float64)
    enc = lambda kind: PromptEncoder(PromptEncoderConfig(  # noqa: E731
        num_virtual_tokens=s.tokens, token_dim=s.dim, encoder_hidden_size=s.dim, encoder_reparameterization_type=kind),
        seed=seed, dtype=np.float64).eval()
    return {
        "MPT AVERAGE_SOURCE_TASKS": mpt("AVERAGE_SOURCE_TASKS"),
        "MPT EXACT_SOURCE_TASK": mpt("EXACT_SOURCE_TASK", prompt_tuning_init_task=closest),
        "MPT ONLY_SOURCE_SHARED": mpt("ONLY_SOURCE_SHARED"),
        "prompt tuning (random init)": PromptEmbedding(PromptTuningConfig(num_virtual_tokens=s.tokens, token_dim=s.dim),
                                                       seed=seed, dtype=np.float64),
        "P-tuning MLP": enc("MLP"),
        "P-tuning LSTM": enc("LSTM"),
    }


def target_stage(model: BaseModel, target: Task, closest: int, s: Settings, source: Path,
                 progress: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for seed in range(s.seeds):
        rng = np.random.default_rng(1000 + seed)
        train_set = sample(target, s.target_examples, s.length, s.vocab, rng)
        test = Batch(*sample(target, 512, s.length, s.vocab, np.random.default_rng(99)), 0)
        for name, module in target_methods(s, source, closest, seed).items():
            hist = train(model, module, lambda step: Batch(*train_set, 0), s.target_steps, s.lr,
                         evaluate=lambda m: accuracy(model, m, test), every=s.every)
            r = results.setdefault(name, {"final": [], "reach": [], "params": trainable_count(module)})
            r["final"].append(hist["accuracy"][-1])
            hit = [i for i, a in enumerate(hist["accuracy"]) if a >= s.threshold]
            r["reach"].append((hit[0] + 1) * s.every if hit else None)
        progress(f"  {target.name} seed {seed} done")
    return results


def run(s: Settings, out_dir: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    model = BaseModel.init(s.vocab, s.dim, 2, seed=s.seed)
    sources, targets = make_tasks(s.vocab, s.sources, s.targets, s.group, s.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    source_path = out_dir / "mpt_source.safetensors"
    progress("stage 1: source training")
    source_stage(model, sources, s, source_path, overwrite=True, progress=progress)
    progress("stage 2: target adaptation")
    return {t.name: target_stage(model, t, j % s.sources, s, source_path, progress) for j, t in enumerate(targets)}


def format_table(results: dict[str, Any], s: Settings) -> str:
    lines = [f"target accuracy after {s.target_steps} steps on {s.target_examples} examples (mean ± std over "
             f"{s.seeds} seeds), steps to reach {s.threshold:.0%}, trainable parameters"]
    for target, methods in results.items():
        lines.append(f"{target}:")
        for name, r in methods.items():
            acc = np.array(r["final"])
            reached = [x for x in r["reach"] if x is not None]
            reach = f"{np.mean(reached):.0f} ({len(reached)}/{len(r['reach'])} seeds)" if reached else "never"
            lines.append(f"  {name:<28} {acc.mean():.3f} ± {acc.std():.3f}   reach: {reach:<18} params: {r['params']}")
    return "\n".join(lines)
