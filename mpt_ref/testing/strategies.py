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


# ================================================================================================
# P-tuning PromptEncoder: single LSTM layers, bidirectional stacks, whole encoders (MLP / LSTM).
# Parameter shapes are written out here from spec/mlp.md and spec/lstm.md, independently of the code.
# ================================================================================================

from mpt_ref.modules.config import (  # noqa: E402
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
)

# Weights and inputs within ±2 keep sigmoid/tanh away from full saturation, so the gradients that
# gradcheck and PEFT compare carry information; the math itself needs no bound.
ENCODER_MAX_ABS = 2.0


def lstm_param_shapes(input_size: int, hidden: int, num_layers: int) -> dict[str, tuple[int, ...]]:
    """PEFT's ``lstm_head.*`` keys and shapes, in state_dict order (spec/lstm.md)."""
    shapes = {}
    for k in range(num_layers):
        width = input_size if k == 0 else 2 * hidden
        for suffix in ("", "_reverse"):
            shapes[f"lstm_head.weight_ih_l{k}{suffix}"] = (4 * hidden, width)
            shapes[f"lstm_head.weight_hh_l{k}{suffix}"] = (4 * hidden, hidden)
            shapes[f"lstm_head.bias_ih_l{k}{suffix}"] = (4 * hidden,)
            shapes[f"lstm_head.bias_hh_l{k}{suffix}"] = (4 * hidden,)
    return shapes


def head_param_shapes(widths: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """``mlp_head.{2j}.weight`` (out, in) and ``.bias`` (out,) for widths (in, ..., out)."""
    shapes = {}
    for j, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes[f"mlp_head.{2 * j}.weight"] = (fan_out, fan_in)
        shapes[f"mlp_head.{2 * j}.bias"] = (fan_out,)
    return shapes


def encoder_param_shapes(config: PromptEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every state_dict key of a PromptEncoder built from ``config``, with its shape, in PEFT order."""
    T, D = config.total_virtual_tokens, config.token_dim
    H = config.encoder_hidden_size if config.encoder_hidden_size is not None else D
    shapes = {"embedding.weight": (T, D)}
    if config.inference_mode:
        return shapes
    if config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM:
        shapes.update(lstm_param_shapes(D, H, config.encoder_num_layers))
        shapes.update(head_param_shapes((2 * H, 2 * H, D)))
    else:
        shapes.update(head_param_shapes((D, H, H, D)))
    return shapes


@st.composite
def encoder_configs(
    draw: st.DrawFn,
    encoder_type: str | None = None,
    max_layers: int = 3,
    max_tokens: int = 3,
    max_dim: int = 4,
    max_hidden: int = 3,
    dropout: bool = False,
) -> PromptEncoderConfig:
    """MLP or LSTM configs, S = 1 or 2, H = None (→ D) included. MLP keeps the default L = 2 (other
    values only add PEFT's warning). dropout=True draws LSTM configs with L >= 2 and p in (0, 1)."""
    kind = encoder_type or draw(st.sampled_from(["MLP", "LSTM"]), label="encoder type")
    lstm = kind == "LSTM"
    s2s = draw(st.booleans(), label="seq2seq (S=2)")
    D = draw(dims(1, max_dim), label="D")
    H = draw(st.none() | dims(1, max_hidden), label="H (None -> D)")
    if H is None and lstm:
        D = min(D, max_hidden)  # H := D must respect max_hidden too (it sets the LSTM's cost)
    L = draw(dims(2 if dropout else 1, max(max_layers, 2 if dropout else 1)), label="L") if lstm else 2
    p = draw(st.sampled_from([0.25, 0.5, 0.9]), label="p") if dropout else 0.0
    return PromptEncoderConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM,
        num_virtual_tokens=draw(dims(1, max_tokens), label="N"),
        token_dim=D,
        encoder_hidden_size=H,
        encoder_reparameterization_type=kind,
        encoder_num_layers=L,
        encoder_dropout=p,
    )


@st.composite
def keep_masks(draw: st.DrawFn, count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """``count`` boolean dropout keep masks of ``shape`` (True = kept)."""
    return [draw(hnp.arrays(np.bool_, shape), label=f"keep mask {k}") for k in range(count)]


@st.composite
def _encoder_cases(draw: st.DrawFn, config: PromptEncoderConfig, dtype: Any, max_batch: int) -> Case:
    T, D = config.total_virtual_tokens, config.token_dim
    B = draw(dims(1, max_batch), label="B")
    params = {
        key: draw(finite_arrays(shape, dtype, ENCODER_MAX_ABS), label=key)
        for key, shape in encoder_param_shapes(config).items()
    }
    inputs: dict[str, Any] = {"indices": draw(prompt_indices(B, T, T))}
    if config.encoder_dropout > 0:
        H = config.encoder_hidden_size or D
        inputs["dropout_masks"] = draw(keep_masks(config.encoder_num_layers - 1, (B, T, 2 * H)))
    return Case(config, params, inputs, draw(finite_arrays((B, T, D), dtype), label="dout"))


@st.composite
def mlp_encoder_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 3, **config_kw: Any) -> Case:
    """A P-tuning MLP encoder: config, params under PEFT keys, indices (B, T), dout (B, T, D)."""
    return draw(_encoder_cases(draw(encoder_configs("MLP", **config_kw)), dtype, max_batch))


@st.composite
def lstm_encoder_cases(
    draw: st.DrawFn, dtype: Any = np.float64, max_layers: int = 3, max_batch: int = 3, dropout: bool = False, **config_kw: Any
) -> Case:
    """A P-tuning LSTM encoder. dropout=True: p > 0, L >= 2, and inputs["dropout_masks"] holds L−1 keep
    masks (B, T, 2H) for train mode."""
    config = draw(encoder_configs("LSTM", max_layers=max_layers, dropout=dropout, **config_kw))
    return draw(_encoder_cases(config, dtype, max_batch))


@st.composite
def lstm_layer_cases(draw: st.DrawFn, dtype: Any = np.float64, max_steps: int = 4, max_width: int = 4, max_hidden: int = 3, max_batch: int = 3) -> Case:
    """One LSTM layer, one direction: config {"reverse": bool}, params {w_ih (4H,I), w_hh (4H,H), b_ih,
    b_hh (4H,)}, inputs {"x": (B, T, I)}, dout (B, T, H). T = 0 is not drawn (PEFT has T >= 1)."""
    B, T = draw(dims(1, max_batch), label="B"), draw(dims(1, max_steps), label="T")
    I, H = draw(dims(1, max_width), label="I"), draw(dims(1, max_hidden), label="H")
    arr = lambda shape, label: draw(finite_arrays(shape, dtype, ENCODER_MAX_ABS), label=label)  # noqa: E731
    params = {"w_ih": arr((4 * H, I), "w_ih"), "w_hh": arr((4 * H, H), "w_hh"), "b_ih": arr((4 * H,), "b_ih"),
              "b_hh": arr((4 * H,), "b_hh")}
    return Case({"reverse": draw(st.booleans(), label="reverse")}, params, {"x": arr((B, T, I), "x")},
                arr((B, T, H), "dout"))


@st.composite
def lstm_stack_cases(draw: st.DrawFn, dtype: Any = np.float64, max_layers: int = 3, max_steps: int = 3, max_width: int = 3, max_hidden: int = 2, max_batch: int = 2) -> Case:
    """A bidirectional stack: config {"num_layers": L}, params ``lstm_head.*`` (PEFT keys), inputs
    {"x": (B, T, D)}, dout (B, T, 2H)."""
    L = draw(dims(1, max_layers), label="L")
    B, T = draw(dims(1, max_batch), label="B"), draw(dims(1, max_steps), label="T")
    D, H = draw(dims(1, max_width), label="D"), draw(dims(1, max_hidden), label="H")
    params = {key: draw(finite_arrays(shape, dtype, ENCODER_MAX_ABS), label=key)
              for key, shape in lstm_param_shapes(D, H, L).items()}
    x = draw(finite_arrays((B, T, D), dtype, ENCODER_MAX_ABS), label="x")
    return Case({"num_layers": L}, params, {"x": x}, draw(finite_arrays((B, T, 2 * H), dtype, ENCODER_MAX_ABS), label="dout"))
