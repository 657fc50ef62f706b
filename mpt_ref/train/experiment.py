"""The few-shot experiment behind ``mpt-ref train-demo`` (spec/training.md).

One replicate = a new frozen base model, a new draw of the task family (source tasks, dev targets,
test targets), a new source stage (source.py), learning rates chosen per method and shot count on the
dev targets, then every method (methods.py) adapted to every test target from the same few shots.
Replicates are independent, so they may run in parallel processes with identical results.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mpt_ref.errors import ConfigError
from mpt_ref.train.base_model import BaseModel
from mpt_ref.train.data import FamilySpec, make_family, sample
from mpt_ref.train.loop import Batch, accuracy, train, trainable_count
from mpt_ref.train.methods import METHODS, Context, Method
from mpt_ref.train.source import source_stage

CHANCE = 0.5  # every set has exactly half of each class (data.sample)


@dataclasses.dataclass(frozen=True)
class Settings:
    family: str = "lexicon"
    spec: FamilySpec = FamilySpec()
    dim: int = 32              # D
    tokens: int = 8            # N virtual tokens
    sources: int = 6
    dev_targets: int = 2       # only for choosing learning rates
    test_targets: int = 4
    shots: tuple[int, ...] = (4, 16, 32)  # training examples per class on a target
    draws: int = 2             # independent training sets per test target and shot count
    replicates: int = 4
    batch: int = 32            # source-stage batch (fresh examples every step)
    teacher_steps: int = 400
    teacher_lr: float = 0.1
    multitask_steps: int = 1800  # multitask prompt and MPT, round robin over the sources
    multitask_lr: float = 0.03
    alpha: float = 1.0         # KL weight (distillation)
    beta: float = 0.1          # hidden-state MSE weight
    temperature: float = 2.0
    target_steps: int = 60     # full-batch Adam steps on the target's shots
    lr_grids: tuple[tuple[str, tuple[float, ...]], ...] = (  # Adam learning rates tried on the dev targets
        ("scratch", (0.03, 0.1, 0.3, 1.0, 3.0)), ("transfer", (0.001, 0.003, 0.01, 0.03)),
        ("encoder", (0.003, 0.01, 0.03, 0.1, 0.3)))
    test_examples: int = 256   # per test target (and per source task for source accuracies)
    dev_examples: int = 128
    curve_examples: int = 64   # per source task, for the source-stage learning curves
    curve_every: int = 100
    seed: int = 0

    def grid(self, name: str) -> tuple[float, ...]:
        return dict(self.lr_grids)[name]


QUICK = Settings(replicates=1, sources=4, dev_targets=1, test_targets=2, shots=(4, 32), draws=1, teacher_steps=100,
                 multitask_steps=200, target_steps=20, curve_every=50, test_examples=64, dev_examples=32, curve_examples=32,
                 lr_grids=(("scratch", (0.1,)), ("transfer", (0.01,)), ("encoder", (0.01,))))


def check(s: Settings) -> Settings:
    for name in ("replicates", "draws", "sources", "dev_targets", "test_targets", "target_steps"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}: expected >= 1, got {getattr(s, name)}")
    if not s.shots or any(k < 1 for k in s.shots) or len(set(s.shots)) != len(s.shots):
        raise ConfigError(f"shots: expected distinct examples-per-class counts >= 1, got {list(s.shots)}")
    return s


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _adapt(ctx: Context, method: Method, lr: float, test: Batch) -> tuple[float, float, list[float]]:
    """(accuracy before training, after, losses) of one method on one target's shots."""
    module = method.build(ctx)
    zero = accuracy(ctx.model, module, test)
    hist = train(ctx.model, module, lambda step: ctx.shots, ctx.s.target_steps, lr)
    return zero, accuracy(ctx.model, module, test), hist["loss"]


def replicate(s: Settings, r: int, checkpoint: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """One whole replicate; every draw comes from (s.seed, r)."""
    t0 = time.perf_counter()
    say = lambda m: progress(f"[replicate {r + 1}/{s.replicates}] {m}")  # noqa: E731
    spec = s.spec
    model = BaseModel.init(spec.vocab, s.dim, 2, seed=_seed(s.seed, r, 0))
    names = ([f"source{i}" for i in range(s.sources)] + [f"dev{i}" for i in range(s.dev_targets)]
             + [f"test{i}" for i in range(s.test_targets)])
    tasks = make_family(s.family, names, spec, _seed(s.seed, r, 1))
    sources, devs = tasks[:s.sources], tasks[s.sources:s.sources + s.dev_targets]
    tests = tasks[s.sources + s.dev_targets:]
    stage = source_stage(model, sources, s, checkpoint, _seed(s.seed, r, 2) % 2**31, say)

    def ctx_for(phase: int, j: int, d: int, k: int, m: int, shots: Batch) -> Context:
        return Context(s, model, stage, shots, _seed(s.seed, r, 3, phase, j, d, k, m) % 2**31)

    lrs: dict[str, dict[int, float]] = {}
    for k in s.shots:  # dev: choose each method's learning rate per shot count
        sets = []
        for j, task in enumerate(devs):
            rng = np.random.default_rng(_seed(s.seed, r, 4, j, k))
            sets.append((Batch(*sample(task, 2 * k, spec, rng), 0), Batch(*sample(task, s.dev_examples, spec, rng), 0)))
        for m, method in enumerate(METHODS):
            grid = s.grid(method.grid)
            if len(grid) == 1:
                lrs.setdefault(method.name, {})[k] = grid[0]
                continue
            score = [np.mean([_adapt(ctx_for(0, j, 0, k, m, shots), method, lr, dev)[1] for j, (shots, dev) in
                              enumerate(sets)]) for lr in grid]
            lrs.setdefault(method.name, {})[k] = grid[int(np.argmax(score))]
    say(f"learning rates chosen on {len(devs)} dev targets ({time.perf_counter() - t0:.0f} s)")

    zero = {m.name: {k: [] for k in s.shots} for m in METHODS}
    final = {m.name: {k: [] for k in s.shots} for m in METHODS}
    drops = {m.name: [] for m in METHODS}
    params = {}
    for j, task in enumerate(tests):
        test = Batch(*sample(task, s.test_examples, spec, np.random.default_rng(_seed(s.seed, r, 5, j))), 0)
        for d in range(s.draws):
            for k in s.shots:
                shots = Batch(*sample(task, 2 * k, spec, np.random.default_rng(_seed(s.seed, r, 6, j, d, k))), 0)
                for m, method in enumerate(METHODS):
                    ctx = ctx_for(1, j, d, k, m, shots)
                    z, f, losses = _adapt(ctx, method, lrs[method.name][k], test)
                    zero[method.name][k].append(z)
                    final[method.name][k].append(f)
                    drops[method.name].append(losses[0] - losses[-1])
                    params.setdefault(method.name, trainable_count(method.build(ctx)))
        say(f"test target {j + 1}/{len(tests)} done ({time.perf_counter() - t0:.0f} s)")
    K, T, D = s.sources, s.tokens, s.dim
    return {
        "zero_shot": {n: {k: float(np.mean(v)) for k, v in by.items()} for n, by in zero.items()},
        "accuracy": {n: {k: float(np.mean(v)) for k, v in by.items()} for n, by in final.items()},
        "loss_drop": {n: float(np.mean(v)) for n, v in drops.items()},
        "lr": lrs,
        "params": params,
        "source_accuracy": {n: float(np.mean(v)) for n, v in stage.accuracy.items()},
        "curves": stage.curves,
        "stored": {"teachers": K * T * D, "multitask prompt": T * D, "MPT": T * D + K * T + K * D},
        "seconds": time.perf_counter() - t0,
    }


def checkpoint_name(r: int) -> str:
    return "mpt_source.safetensors" if r == 0 else f"mpt_source.rep{r}.safetensors"


_progress: Callable[[str], None] = print  # the run's progress callback, inherited by forked workers


def _replicate_job(args: tuple[Settings, int, Path]) -> dict[str, Any]:
    return replicate(*args, _progress)


def run(s: Settings, out_dir: Path, progress: Callable[[str], None] = print, jobs: int = 1) -> list[dict[str, Any]]:
    """Every replicate, in order; ``jobs`` > 1 runs them in that many forked processes (where the
    platform can fork; else one after the other). Writes each replicate's distilled MPT source
    checkpoint into out_dir (``checkpoint_name``)."""
    global _progress
    check(s)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = [(s, r, out_dir / checkpoint_name(r)) for r in range(s.replicates)]
    _progress = progress
    if jobs <= 1 or s.replicates == 1 or "fork" not in get_all_start_methods():
        return [_replicate_job(w) for w in work]
    with ProcessPoolExecutor(max_workers=min(jobs, s.replicates), mp_context=get_context("fork")) as pool:
        return list(pool.map(_replicate_job, work))
