"""The oracle never cries wolf: correct ports with other summation orders pass the error model.

Cases come from NumPy generators (hypothesis is too slow for tens of thousands) with the sizes of
``strategies.SizeLimits``: D, H, T, R, B around vector/tile widths, T == R, K = 1, repeated tasks, random
rows, S = 2, L = 1..3, LSTM train mode with dropout masks. Each case is judged once per port
(tests/_ports.py: matmul, einsum, pairwise backends; float32, and float16 storage with float32
accumulation) by the same code as assert_conforms (mpt_ref.testing.conformance.check_case).

The default suite runs a few hundred cases per module and port. The stress run (spec/tolerances.md
records its counts) is opt-in:

    MPT_REF_STRESS=20000 nice python -m pytest -q -s -m stress tests/test_oracle_no_false_alarms.py

MPT_REF_STRESS_SEED picks another chunk of cases (run chunks in parallel or one after another).
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict

import numpy as np
import pytest
from _ports import BACKENDS, Port

from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
)
from mpt_ref.kind import Kind
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.conformance import case_expected, check_case

MODULES = [k.value for k in Kind]
EDGES = np.array(hs.EDGE_SIZES)


class HalfPort(Port):
    """float16 storage, float32 accumulation: every contraction in float32, every result rounded to
    float16 (NumPy's float16 ufuncs compute in float32 and round the result)."""

    def mm(self, a, b):
        return (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)


def size(rng: np.random.Generator, hi: float, lo: int = 1) -> int:
    """As strategies.edge_sizes: half the time 1..4, else one of EDGE_SIZES, <= hi."""
    hi = max(lo, int(hi))
    if rng.random() < 0.5:
        return int(rng.integers(lo, min(hi, 4) + 1)) if hi >= lo else lo
    edges = EDGES[(EDGES >= lo) & (EDGES <= hi)]
    return int(rng.choice(edges)) if edges.size else lo


def random_case(kind: Kind, rng: np.random.Generator, dtype, limits: hs.SizeLimits = hs.SizeLimits()) -> hs.Case:
    W = float(limits.max_work)
    s2s = bool(rng.integers(2))
    task_type = "SEQ_2_SEQ_LM" if s2s else "CAUSAL_LM"
    arr = lambda shape, bound=2.0: rng.uniform(-bound, bound, shape).astype(dtype)  # noqa: E731
    if kind == Kind.PROMPT_EMBEDDING:
        D = size(rng, min(limits.max_dim, W))
        N = size(rng, min(limits.max_dim // 2, W / D))
        cfg = PromptTuningConfig(task_type=task_type, num_virtual_tokens=N, token_dim=D)
        T = cfg.total_virtual_tokens
        B = size(rng, min(limits.max_batch, W / (T * D)))
        tokens = int(rng.integers(1, T + 3))
        params = {"embedding.weight": arr((T, D), 4.0)}
        idx = rng.integers(0, T, (B, tokens))
        return hs.Case(cfg, params, {"indices": idx}, arr((B, tokens, D), 4.0))
    if kind == Kind.MPT:
        D = size(rng, min(limits.max_dim, W))
        N = size(rng, min(limits.max_dim // (2 if s2s else 1), W / D))
        T = N * (2 if s2s else 1)
        R = T if rng.random() < 0.3 and T * T * D <= W else size(rng, min(limits.max_dim, W / (T * D)))
        K = int(rng.integers(1, limits.max_tasks + 1))
        cfg = MultitaskPromptTuningConfig(task_type=task_type, num_virtual_tokens=N, token_dim=D, num_tasks=K, num_ranks=R)
        B = size(rng, min(limits.max_batch, W / (T * D * R)))
        params = {"prefix_task_cols": arr((K, T, R), 4.0), "prefix_task_rows": arr((K, R, D), 4.0),
                  "embedding.weight": arr((T, D), 4.0)}
        idx = np.tile(np.arange(T), (B, 1)) if rng.random() < 0.5 else rng.integers(0, T, (B, T))
        tasks = rng.integers(0, K, B if rng.random() < 0.7 else 1)
        return hs.Case(cfg, params, {"indices": idx, "task_ids": tasks}, arr((B, T, D), 4.0))
    lstm = kind == Kind.LSTM_ENCODER
    dropout = lstm and rng.random() < 0.3
    L = int(rng.integers(2 if dropout else 1, limits.max_layers + 1)) if lstm else 2
    Lw = L if lstm else 1
    D = size(rng, min(limits.max_dim, W / Lw))
    H = size(rng, min(limits.max_dim, W / (D * Lw)))
    cap = W / (H * (D + H) * Lw)
    if lstm:
        cap = min(cap, limits.max_steps / L)
    N = size(rng, min(limits.max_dim, cap) / (2 if s2s else 1))
    p = float(rng.choice([0.25, 0.5, 0.9])) if dropout else 0.0
    cfg = PromptEncoderConfig(task_type=task_type, num_virtual_tokens=N, token_dim=D, encoder_hidden_size=H,
                              encoder_reparameterization_type="LSTM" if lstm else "MLP", encoder_num_layers=L,
                              encoder_dropout=p)
    T = cfg.total_virtual_tokens
    B = size(rng, min(limits.max_batch, W / (T * H * (D + H) * Lw)))
    gain = float(rng.choice([1.0, 2.0]))
    params = {k: arr(shape, gain * 2.0 / (np.sqrt(shape[1]) if len(shape) == 2 and k != "embedding.weight" else 1.0))
              for k, shape in hs.encoder_param_shapes(cfg).items()}
    if rng.random() < 0.2:  # coarse grid: exact zeros at ReLU inputs, ties
        params = {k: (np.round(v.astype(np.float64) * 2) / 2).astype(dtype) for k, v in params.items()}
    idx = np.tile(np.arange(T), (B, 1)) if rng.random() < 0.5 else rng.integers(0, T, (B, T))
    inputs = {"indices": idx}
    if dropout:
        inputs["dropout_masks"] = [rng.random((B, T, 2 * H)) < 0.5 for _ in range(L - 1)]
    return hs.Case(cfg, params, inputs, arr((B, T, D), 2.0))


PORTS = {f"{b} float32": (Port(b), np.float32) for b in BACKENDS} | {"matmul float16/f32-acc": (HalfPort("matmul"), np.float16)}


FAILED: list = []  # (port, case) of every false alarm, for debugging


def run(kind: Kind, n: int, seed: int, ports=PORTS) -> dict[str, list]:
    """{port: [cases, false alarms, max ratio, first failure]} over n cases per dtype."""
    stats: dict[str, list] = defaultdict(lambda: [0, 0, 0.0, None])
    by_dtype = defaultdict(list)
    for name, (port, dtype) in ports.items():
        by_dtype[np.dtype(dtype)].append((name, port))
    for dtype, named in by_dtype.items():
        rng = np.random.default_rng([seed, zlib.crc32(kind.value.encode()), dtype.itemsize])
        for _ in range(n):
            case = random_case(kind, rng, dtype)
            ex = case_expected(kind, case, dtype)  # one reference and bound, every port judged against it
            for name, port in named:
                f, b = port.callables(kind.value)
                with np.errstate(all="ignore"):
                    checks = check_case(kind, case, f, b, dtype, ex=ex)
                s = stats[name]
                s[0] += 1
                bad = [c for c in checks if not c.ok]
                s[2] = max(s[2], max(c.ratio for c in checks))
                if bad:
                    s[1] += 1
                    s[3] = s[3] or (case.summary(), [c.describe() for c in bad])
                    FAILED.append((name, case))
    return dict(stats)


def _report(kind, stats):
    for name, (cases, alarms, ratio, first) in stats.items():
        print(f"{kind.value:<17} {name:<24} {cases:>7} cases {alarms:>3} false alarms  max |err|/bound {ratio:.3g}")
        if first:
            print("   first:", first)


DEFAULT_CASES = {Kind.PROMPT_EMBEDDING: 200, Kind.MPT: 300, Kind.MLP_ENCODER: 300, Kind.LSTM_ENCODER: 200}


@pytest.mark.parametrize("module", MODULES)
def test_correct_ports_raise_no_false_alarm(module):
    kind = Kind.parse(module)
    stats = run(kind, DEFAULT_CASES[kind], seed=12)
    _report(kind, stats)
    assert all(s[1] == 0 for s in stats.values()), {k: s[3] for k, s in stats.items() if s[1]}
    assert all(s[0] == DEFAULT_CASES[kind] for s in stats.values())


@pytest.mark.stress
@pytest.mark.skipif(not os.environ.get("MPT_REF_STRESS"), reason="stress run: set MPT_REF_STRESS=<cases per module>")
@pytest.mark.parametrize("module", MODULES)
def test_stress_no_false_alarm(module):
    kind = Kind.parse(module)
    which = os.environ.get("MPT_REF_STRESS_PORTS", "")  # e.g. "float32" or "float16": ports whose name has it
    ports = {k: v for k, v in PORTS.items() if which in k}
    stats = run(kind, int(os.environ["MPT_REF_STRESS"]), seed=int(os.environ.get("MPT_REF_STRESS_SEED", "1000")),
                ports=ports)
    _report(kind, stats)
    assert all(s[1] == 0 for s in stats.values()), {k: s[3] for k, s in stats.items() if s[1]}
