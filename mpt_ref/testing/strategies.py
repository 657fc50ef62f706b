"""Hypothesis strategies for prompt-learning modules. Import as ``hs``.

Building blocks (``dims``, ``finite_arrays``, ``ids``) and one ``@composite`` per module that returns a
``Case(config, params, inputs, dout)``: parameters under PEFT keys, integer inputs, and an upstream
gradient of the output's shape. Bounds appear only where the math needs them, with the reason.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..config import MultitaskPromptTuningConfig, PromptTuningConfig, TaskType

# |values| <= 4 keeps products of three factors far from overflow in float32 and keeps finite-difference
# rounding (~eps*|L|/h) well below the gradcheck tolerance; the math is polynomial, so no other bound.
MAX_ABS = 4.0


class Case(NamedTuple):
    config: Any                   # the PEFT-style config the params belong to
    params: dict[str, np.ndarray]  # PEFT key -> array
    inputs: dict[str, np.ndarray]  # "indices" (B,T), "task_ids" (B,) or (1,) for MPT
    dout: np.ndarray               # upstream gradient, shape of the output


def dims(min_value: int = 1, max_value: int = 6) -> st.SearchStrategy[int]:
    """One side length. Small on purpose: gradcheck costs two forwards per parameter entry."""
    return st.integers(min_value, max_value)


def float_dtypes() -> st.SearchStrategy[np.dtype]:
    return st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])


def finite_arrays(shape: tuple[int, ...], dtype: Any = np.float64, max_abs: float = MAX_ABS) -> st.SearchStrategy[np.ndarray]:
    dtype = np.dtype(dtype)
    elements = st.floats(-max_abs, max_abs, width=dtype.itemsize * 8, allow_nan=False, allow_subnormal=False)
    return hnp.arrays(dtype, shape, elements=elements)


def ids(upper: int, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """int64 ids in [0, upper)."""
    return hnp.arrays(np.int64, shape, elements=st.integers(0, upper - 1))


@st.composite
def prompt_indices(draw: st.DrawFn, batch: int, num_rows: int, tokens: int) -> np.ndarray:
    """(B, tokens) ids in [0, num_rows): either PEFT's arange(T) rows or arbitrary (repeats allowed)."""
    if draw(st.booleans(), label="arange rows") and tokens == num_rows:
        return np.tile(np.arange(num_rows, dtype=np.int64), (batch, 1))
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
def prompt_embedding_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 4) -> Case:
    config = draw(prompt_tuning_configs())
    T, D = config.total_virtual_tokens, config.token_dim
    B = draw(dims(1, max_batch), label="B")
    tokens = draw(dims(1, T + 2), label="T'")  # any number of looked-up positions, repeats allowed
    params = {"embedding.weight": draw(finite_arrays((T, D), dtype), label="E")}
    indices = draw(prompt_indices(B, T, tokens))
    dout = draw(finite_arrays((B, tokens, D), dtype), label="dout")
    return Case(config, params, {"indices": indices}, dout)


@st.composite
def mpt_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 5) -> Case:
    config = draw(mpt_configs())
    T, D, K, R = config.total_virtual_tokens, config.token_dim, config.num_tasks, config.num_ranks
    B = draw(dims(1, max_batch), label="B")
    params = {
        "prefix_task_cols": draw(finite_arrays((K, T, R), dtype), label="C"),
        "prefix_task_rows": draw(finite_arrays((K, R, D), dtype), label="R"),
        "embedding.weight": draw(finite_arrays((T, D), dtype), label="E"),
    }
    inputs = {"indices": draw(prompt_indices(B, T, T)), "task_ids": draw(task_id_arrays(B, K))}
    dout = draw(finite_arrays((B, T, D), dtype), label="dout")
    return Case(config, params, inputs, dout)
