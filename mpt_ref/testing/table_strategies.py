"""Hypothesis strategies: the building blocks (``Case``, sizes, arrays, ids) and the prompt-table modules
(prompt tuning, MPT). Imported through mpt_ref.testing.strategies (``hs``), which also has the encoders'.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptTuningConfig,
    TaskType,
)

# |values| <= 4 keeps products of three factors far from overflow in float32 and keeps finite-difference
# rounding (~eps*|L|/h) well below the gradcheck tolerance; the math is polynomial, so no other bound.
MAX_ABS = 4.0


class Case(NamedTuple):
    config: Any                   # the PEFT-style config the params belong to
    params: dict[str, np.ndarray]  # PEFT key -> array
    inputs: dict[str, np.ndarray]  # "indices" (B,T), "task_ids" (B,) or (1,) for MPT
    dout: np.ndarray               # upstream gradient, shape of the output

    def summary(self) -> str:
        """The case in a few lines: config, every array's shape, the integer inputs in full when short."""
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        keep = ("num_virtual_tokens", "token_dim", "num_tasks", "num_ranks", "encoder_hidden_size",
                "encoder_num_layers", "encoder_dropout", "encoder_reparameterization_type", "task_type")
        if isinstance(cfg, dict):
            cfg = {k: getattr(v, "value", v) for k, v in cfg.items() if k in keep}
        lines = [f"config {cfg}", "params " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in self.params.items())]
        for k, v in self.inputs.items():
            if isinstance(v, (list, tuple)):
                lines.append(f"{k}: {len(v)} masks " + ", ".join(str(m.shape) for m in v))
            elif v.size <= 64:
                lines.append(f"{k} {v.shape} = {np.array2string(v, separator=',').replace(chr(10), '')}")
            else:
                lines.append(f"{k} {v.shape} {v.dtype}")
        lines.append(f"dout {self.dout.shape} {self.dout.dtype}")
        return "\n".join(lines)

    def __repr__(self) -> str:  # hypothesis prints the falsifying case through this: shapes, not arrays
        return "Case(" + self.summary().replace("\n", "; ") + ")"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


# Sizes at the edges of real kernels' vector / tile widths (4, 8, 16, 32, 64 lanes): a port that is
# wrong only in a loop's tail or past one tile is found only when a side crosses one of these.
EDGE_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65)


@dataclasses.dataclass(frozen=True)
class SizeLimits:
    """Upper bounds of the sizes ``assert_conforms`` draws. D, H, T, R come from ``EDGE_SIZES`` (or
    1..4) up to ``max_dim``; the product the module's cost grows with stays <= ``max_work``:
    B·T·D·R (MPT), B·T·D (embedding), B·T·H·(D+H) (MLP), B·T·H·(D+H)·L (LSTM), and T·L <= max_steps
    (the LSTM's time loop runs in Python in the reference and in the error bound)."""

    max_dim: int = 65
    max_batch: int = 17
    max_tasks: int = 5
    max_layers: int = 3
    max_work: int = 150_000
    max_steps: int = 70


def edge_sizes(lo: int, hi: int) -> st.SearchStrategy[int]:
    """A size in [lo, hi]: small (shrinks well) or one of ``EDGE_SIZES``."""
    edges = [s for s in EDGE_SIZES if lo <= s <= hi]
    small = st.integers(lo, max(lo, min(hi, 4)))
    return st.one_of(small, st.sampled_from(edges)) if edges else small


@st.composite
def seeded_arrays(draw: st.DrawFn, shape: tuple[int, ...], dtype: Any = np.float64, max_abs: float = MAX_ABS,
                  fan_in: int | None = None) -> np.ndarray:
    """Large arrays for edge sizes: values from numpy's generator seeded by hypothesis (drawing tens of
    thousands of floats one by one would overrun hypothesis' buffer, and its sparse fill makes arrays
    nearly constant, which hides swapped gates or rows). Uniform in ±max_abs, or ±max_abs/√fan_in (a
    weight matrix: pre-activations stay O(1), so sigmoid/tanh do not saturate at H = 65), or on a coarse
    grid (exact ties and ReLU inputs of exactly 0)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="array seed"))
    mode = draw(st.sampled_from(["uniform", "grid"]), label="values")
    bound = max_abs / np.sqrt(fan_in) if fan_in else max_abs
    x = rng.uniform(-bound, bound, shape)
    if mode == "grid":
        x = np.round(x * 4 / bound) * bound / 4
    return x.astype(dtype)


def _sized(draw: st.DrawFn, label: str, hi: int, budget: float, lo: int = 1) -> int:
    """A size <= hi that keeps the remaining work budget (the product of the sizes drawn) >= 1."""
    return draw(edge_sizes(lo, max(lo, min(hi, int(budget)))), label=label)


def dims(min_value: int = 1, max_value: int = 6) -> st.SearchStrategy[int]:
    """One side length. Small on purpose: gradcheck costs two forwards per parameter entry."""
    return st.integers(min_value, max_value)


def finite_arrays(shape: tuple[int, ...], dtype: Any = np.float64, max_abs: float = MAX_ABS) -> st.SearchStrategy[np.ndarray]:
    dtype = np.dtype(dtype)
    elements = st.floats(-max_abs, max_abs, width=dtype.itemsize * 8, allow_nan=False, allow_subnormal=False)
    return hnp.arrays(dtype, shape, elements=elements)


def ids(upper: int, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """int64 ids in [0, upper)."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, upper - 1))


@st.composite
def prompt_indices(draw: st.DrawFn, batch: int, num_rows: int, tokens: int, seeded: bool = False) -> np.ndarray:
    """(B, tokens) ids in [0, num_rows): either PEFT's arange(T) rows or arbitrary (repeats allowed).
    seeded: arbitrary ids from a hypothesis-seeded numpy generator (large B·T)."""
    if draw(st.booleans(), label="arange rows") and tokens == num_rows:
        return np.tile(np.arange(num_rows, dtype=np.int64), (batch, 1))
    if seeded:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="indices seed"))
        return rng.integers(0, num_rows, (batch, tokens), dtype=np.int64)
    return draw(ids(num_rows, (batch, tokens)), label="indices")


@st.composite
def task_id_arrays(draw: st.DrawFn, batch: int, num_tasks: int) -> np.ndarray:
    """Length B, or length 1 (broadcast to the whole batch)."""
    length = draw(st.sampled_from([batch, 1]) if batch != 1 else st.just(1), label="len(task_ids)")
    return draw(ids(num_tasks, (length,)), label="task_ids")


@st.composite
def prompt_tuning_configs(draw: st.DrawFn, max_tokens: int = 5, max_dim: int = 6) -> PromptTuningConfig:
    s2s = draw(st.booleans(), label="seq2seq (S=2)")
    return PromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM,
        num_virtual_tokens=draw(dims(1, max_tokens), label="N"),
        token_dim=draw(dims(1, max_dim), label="D"),
    )


@st.composite
def mpt_configs(draw: st.DrawFn, max_tokens: int = 4, max_dim: int = 6, max_tasks: int = 4, max_ranks: int = 4) -> MultitaskPromptTuningConfig:
    """Includes S=2 (seq2seq), K=1, R=1 and R > D."""
    s2s = draw(st.booleans(), label="seq2seq (S=2)")
    return MultitaskPromptTuningConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM,
        num_virtual_tokens=draw(dims(1, max_tokens), label="N"),
        token_dim=draw(dims(1, max_dim), label="D"),
        num_tasks=draw(dims(1, max_tasks), label="K"),
        num_ranks=draw(dims(1, max_ranks), label="R"),
    )


@st.composite
def prompt_embedding_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 4,
                           limits: SizeLimits | None = None) -> Case:
    """limits: draw sizes at kernel edges within ``limits`` (assert_conforms) instead of the small ones."""
    if limits is None:
        config = draw(prompt_tuning_configs())
        B = draw(dims(1, max_batch), label="B")
    else:
        budget = float(limits.max_work)
        D = _sized(draw, "D", limits.max_dim, budget)
        N = _sized(draw, "N", limits.max_dim // 2, budget / D)
        s2s = draw(st.booleans(), label="seq2seq (S=2)")
        config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM,
                                    num_virtual_tokens=N, token_dim=D)
        B = _sized(draw, "B", limits.max_batch, budget / (D * config.total_virtual_tokens * 2))
    T, D = config.total_virtual_tokens, config.token_dim
    tokens = draw(dims(1, T + 2), label="T'")  # any number of looked-up positions, repeats allowed
    arrays = finite_arrays if limits is None else seeded_arrays
    params = {"embedding.weight": draw(arrays((T, D), dtype), label="E")}
    indices = draw(prompt_indices(B, T, tokens, seeded=limits is not None))
    dout = draw(arrays((B, tokens, D), dtype), label="dout")
    return Case(config, params, {"indices": indices}, dout)


@st.composite
def edge_mpt_configs(draw: st.DrawFn, limits: SizeLimits) -> MultitaskPromptTuningConfig:
    """Sizes at kernel edges: T == R (square factors) drawn on purpose, R > D, K = 1 included."""
    budget = float(limits.max_work)
    D = _sized(draw, "D", limits.max_dim, budget)
    s2s = draw(st.booleans(), label="seq2seq (S=2)")
    N = _sized(draw, "N", limits.max_dim // (2 if s2s else 1), budget / D)
    T = N * (2 if s2s else 1)
    if draw(st.booleans(), label="R = T") and T <= limits.max_dim and T * T * D <= budget:
        R = T
    else:
        R = _sized(draw, "R", limits.max_dim, budget / (D * T))
    K = draw(st.integers(1, limits.max_tasks), label="K")
    return MultitaskPromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM,
                                       num_virtual_tokens=N, token_dim=D, num_tasks=K, num_ranks=R)


@st.composite
def mpt_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 5, limits: SizeLimits | None = None) -> Case:
    """limits: draw sizes at kernel edges within ``limits`` (assert_conforms) instead of the small ones."""
    config = draw(mpt_configs() if limits is None else edge_mpt_configs(limits))
    T, D, K, R = config.total_virtual_tokens, config.token_dim, config.num_tasks, config.num_ranks
    if limits is None:
        B = draw(dims(1, max_batch), label="B")
    else:
        B = _sized(draw, "B", limits.max_batch, limits.max_work / (T * D * R))
    arrays = finite_arrays if limits is None else seeded_arrays
    params = {
        "prefix_task_cols": draw(arrays((K, T, R), dtype), label="C"),
        "prefix_task_rows": draw(arrays((K, R, D), dtype), label="R"),
        "embedding.weight": draw(arrays((T, D), dtype), label="E"),
    }
    inputs = {"indices": draw(prompt_indices(B, T, T, seeded=limits is not None)),
              "task_ids": draw(task_id_arrays(B, K))}
    dout = draw(arrays((B, T, D), dtype), label="dout")
    return Case(config, params, inputs, dout)
