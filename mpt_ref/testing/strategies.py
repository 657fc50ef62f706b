"""Hypothesis strategies for prompt-learning modules. Import as ``hs``.

Building blocks (``dims``, ``finite_arrays``, ``ids``) and one ``@composite`` per module that returns a
``Case(config, params, inputs, dout)``: parameters under PEFT keys, integer inputs, and an upstream
gradient of the output's shape. Bounds appear only where the math needs them, with the reason.
The prompt-table modules' strategies live in table_strategies.py, the encoders' in
encoder_strategies.py; this module gathers them, with one entry per Kind in ``CASES`` and
``edge_examples``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from mpt_ref.kind import Kind
from mpt_ref.modules.config import (
    MultitaskPromptTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
)
from mpt_ref.testing.encoder_strategies import (
    ENCODER_MAX_ABS,
    edge_encoder_configs,
    encoder_configs,
    encoder_param_shapes,
    head_param_shapes,
    keep_masks,
    lstm_encoder_cases,
    lstm_layer_cases,
    lstm_param_shapes,
    lstm_stack_cases,
    mlp_encoder_cases,
)
from mpt_ref.testing.table_strategies import (
    EDGE_SIZES,
    MAX_ABS,
    Case,
    SizeLimits,
    dims,
    edge_mpt_configs,
    edge_sizes,
    finite_arrays,
    ids,
    mpt_cases,
    mpt_configs,
    prompt_embedding_cases,
    prompt_indices,
    prompt_tuning_configs,
    seeded_arrays,
    task_id_arrays,
)

__all__ = [
    "CASES", "EDGE_CASES", "EDGE_SIZES", "ENCODER_MAX_ABS", "MAX_ABS", "Case", "SizeLimits", "dims", "edge_encoder_configs",
    "edge_examples", "edge_mpt_configs", "edge_sizes", "encoder_configs", "encoder_param_shapes", "finite_arrays",
    "head_param_shapes", "ids", "keep_masks", "lstm_encoder_cases", "lstm_layer_cases", "lstm_param_shapes",
    "lstm_stack_cases", "mlp_encoder_cases", "mpt_cases", "mpt_configs", "prompt_embedding_cases",
    "prompt_indices", "prompt_tuning_configs", "seeded_arrays", "task_id_arrays",
]

# One entry per Kind: the strategy of its cases, called with (dtype=..., limits=...) as assert_conforms does.
CASES: dict[Kind, Callable[..., st.SearchStrategy[Case]]] = {
    Kind.PROMPT_EMBEDDING: prompt_embedding_cases,
    Kind.MPT: mpt_cases,
    Kind.MLP_ENCODER: mlp_encoder_cases,
    Kind.LSTM_ENCODER: lstm_encoder_cases,
}


# ================================================================================================
# Fixed examples past every vector / tile width: assert_conforms always checks these (hypothesis'
# explicit phase), whatever the random draws of a hypothesis version or seed reach.
# ================================================================================================

_Uniform = Callable[[tuple[int, ...], float], np.ndarray]


def _edge_mpt(uniform: _Uniform, rng: np.random.Generator, limits: SizeLimits, D: int, H: int, T: int, B: int) -> Case:
    K, R = min(3, limits.max_tasks), T
    B = max(1, min(B, limits.max_work // (T * D * R)))
    config = MultitaskPromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D,
                                         num_tasks=K, num_ranks=R)
    params = {"prefix_task_cols": uniform((K, T, R), MAX_ABS), "prefix_task_rows": uniform((K, R, D), MAX_ABS),
              "embedding.weight": uniform((T, D), MAX_ABS)}
    inputs = {"indices": rng.integers(0, T, (B, T)), "task_ids": np.arange(B)[::-1] % K}
    return Case(config, params, inputs, uniform((B, T, D), MAX_ABS))


def _edge_table(uniform: _Uniform, rng: np.random.Generator, limits: SizeLimits, D: int, H: int, T: int, B: int) -> Case:
    B = max(1, min(B, limits.max_work // (T * D)))
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D)
    return Case(config, {"embedding.weight": uniform((T, D), MAX_ABS)}, {"indices": rng.integers(0, T, (B, T))},
                uniform((B, T, D), MAX_ABS))


def _edge_encoder(lstm: bool) -> Callable[..., Case]:
    def edge(uniform: _Uniform, rng: np.random.Generator, limits: SizeLimits, D: int, H: int, T: int, B: int) -> Case:
        L = min(2, limits.max_layers) if lstm else 2
        if lstm:
            D = min(D, 9)  # the LSTM's reference and bound loop over time in Python: keep the case quick
            T = max(1, min(T, limits.max_steps // L))
        work = T * H * (D + H) * (L if lstm else 1)
        B = max(1, min(B, limits.max_work // work))
        config = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D,
                                     encoder_hidden_size=H, encoder_reparameterization_type="LSTM" if lstm else "MLP",
                                     encoder_num_layers=L)
        params = {key: uniform(shape, ENCODER_MAX_ABS / (np.sqrt(shape[1]) if len(shape) == 2
                                                         and key != "embedding.weight" else 1.0))
                  for key, shape in encoder_param_shapes(config).items()}
        return Case(config, params, {"indices": rng.integers(0, T, (B, T))}, uniform((B, T, D), MAX_ABS))
    return edge


# One entry per Kind: (uniform, rng, limits, D, H, T, B) -> the kind's edge case.
EDGE_CASES: dict[Kind, Callable[..., Case]] = {
    Kind.PROMPT_EMBEDDING: _edge_table,
    Kind.MPT: _edge_mpt,
    Kind.MLP_ENCODER: _edge_encoder(lstm=False),
    Kind.LSTM_ENCODER: _edge_encoder(lstm=True),
}


def edge_examples(kind: Any, dtype: Any = np.float64, limits: SizeLimits | None = None, seed: int = 0) -> list[Case]:
    """One case per kind with every size just past a common SIMD / tile width — D = 17, H = 17, B = 9
    (repeated, unsorted task ids), T == R = 5 for MPT — shrunk to fit ``limits``; values from
    ``numpy.random.default_rng(seed)`` as ``seeded_arrays`` draws them."""
    kind, limits, dtype = Kind.parse(kind), limits or SizeLimits(), np.dtype(dtype)
    rng = np.random.default_rng(seed)

    def uniform(shape: tuple[int, ...], bound: float) -> np.ndarray:
        return rng.uniform(-bound, bound, shape).astype(dtype)

    D, H, T, B = (min(s, limits.max_dim) for s in (17, 17, 5, 9))
    return [EDGE_CASES[kind](uniform, rng, limits, D, H, T, min(B, limits.max_batch))]
