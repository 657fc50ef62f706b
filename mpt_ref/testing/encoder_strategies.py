"""Hypothesis strategies for the P-tuning PromptEncoder: single LSTM layers, bidirectional stacks, whole
encoders (MLP / LSTM). Parameter shapes are written out here from spec/mlp.md and spec/lstm.md,
independently of the code. Imported through mpt_ref.testing.strategies (``hs``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpt_ref.modules.config import (
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    TaskType,
)
from mpt_ref.testing.table_strategies import (
    Case,
    SizeLimits,
    _sized,
    dims,
    finite_arrays,
    prompt_indices,
    seeded_arrays,
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
def edge_encoder_configs(draw: st.DrawFn, encoder_type: str, limits: SizeLimits, dropout: bool = False
                         ) -> PromptEncoderConfig:
    """Sizes at kernel edges (D, H, T), the work of one forward within ``limits``."""
    lstm = encoder_type == "LSTM"
    budget = float(limits.max_work)
    L = draw(st.integers(2 if dropout else 1, max(limits.max_layers, 2 if dropout else 1)), label="L") if lstm else 2
    D = _sized(draw, "D", limits.max_dim, budget / (L if lstm else 1))
    H = _sized(draw, "H", limits.max_dim, budget / (D * (L if lstm else 1)))
    s2s = draw(st.booleans(), label="seq2seq (S=2)")
    cap = budget / (H * (D + H) * (L if lstm else 1))
    if lstm:
        cap = min(cap, limits.max_steps / L)
    N = _sized(draw, "N", max(1, min(limits.max_dim, int(cap)) // (2 if s2s else 1)), cap / (2 if s2s else 1))
    p = draw(st.sampled_from([0.25, 0.5, 0.9]), label="p") if dropout else 0.0
    return PromptEncoderConfig(
        task_type=TaskType.SEQ_2_SEQ_LM if s2s else TaskType.CAUSAL_LM, num_virtual_tokens=N, token_dim=D,
        encoder_hidden_size=H, encoder_reparameterization_type=encoder_type, encoder_num_layers=L,
        encoder_dropout=p,
    )


@st.composite
def _encoder_cases(draw: st.DrawFn, config: PromptEncoderConfig, dtype: Any, max_batch: int,
                   limits: SizeLimits | None = None) -> Case:
    T, D = config.total_virtual_tokens, config.token_dim
    if limits is None:
        B = draw(dims(1, max_batch), label="B")
    else:
        H = config.encoder_hidden_size or D
        L = config.encoder_num_layers if config.encoder_reparameterization_type == "LSTM" else 1
        B = _sized(draw, "B", limits.max_batch, limits.max_work / (T * H * (D + H) * L))
    if limits is None:
        params = {
            key: draw(finite_arrays(shape, dtype, ENCODER_MAX_ABS), label=key)
            for key, shape in encoder_param_shapes(config).items()
        }
    else:
        gain = draw(st.sampled_from([1.0, 2.0]), label="weight gain")
        params = {key: draw(seeded_arrays(shape, dtype, gain * ENCODER_MAX_ABS, shape[1] if len(shape) == 2 and key != "embedding.weight" else None), label=key)
                  for key, shape in encoder_param_shapes(config).items()}
    inputs: dict[str, Any] = {"indices": draw(prompt_indices(B, T, T, seeded=limits is not None))}
    if config.encoder_dropout > 0:
        H = config.encoder_hidden_size or D
        shape = (B, T, 2 * H)
        inputs["dropout_masks"] = (draw(keep_masks(config.encoder_num_layers - 1, shape)) if limits is None else
                                   [draw(seeded_arrays(shape, np.float64, 1.0), label=f"keep mask {k}") > 0
                                    for k in range(config.encoder_num_layers - 1)])
    dout = draw(finite_arrays((B, T, D), dtype) if limits is None else seeded_arrays((B, T, D), dtype), label="dout")
    return Case(config, params, inputs, dout)


@st.composite
def mlp_encoder_cases(draw: st.DrawFn, dtype: Any = np.float64, max_batch: int = 3, limits: SizeLimits | None = None,
                      **config_kw: Any) -> Case:
    """A P-tuning MLP encoder: config, params under PEFT keys, indices (B, T), dout (B, T, D).
    limits: sizes at kernel edges within ``limits`` (assert_conforms)."""
    if limits is not None:
        return draw(_encoder_cases(draw(edge_encoder_configs("MLP", limits)), dtype, max_batch, limits))
    return draw(_encoder_cases(draw(encoder_configs("MLP", **config_kw)), dtype, max_batch))


@st.composite
def lstm_encoder_cases(
    draw: st.DrawFn, dtype: Any = np.float64, max_layers: int = 3, max_batch: int = 3, dropout: bool = False,
    limits: SizeLimits | None = None, **config_kw: Any
) -> Case:
    """A P-tuning LSTM encoder. dropout=True: p > 0, L >= 2, and inputs["dropout_masks"] holds L−1 keep
    masks (B, T, 2H) for train mode. limits: sizes at kernel edges within ``limits`` (assert_conforms)."""
    if limits is not None:
        return draw(_encoder_cases(draw(edge_encoder_configs("LSTM", limits, dropout)), dtype, max_batch, limits))
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
