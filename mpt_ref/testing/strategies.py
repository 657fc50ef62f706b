"""Hypothesis strategies for prompt-learning modules. Import as ``hs``.

Building blocks (``dims``, ``finite_arrays``, ``ids``) and one ``@composite`` per module that returns a
``Case(config, params, inputs, dout)``: parameters under PEFT keys, integer inputs, and an upstream
gradient of the output's shape. Bounds appear only where the math needs them, with the reason.
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
from mpt_ref.kind import Kind

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


# ================================================================================================
# Fixed examples past every vector / tile width: assert_conforms always checks these (hypothesis'
# explicit phase), whatever the random draws of a hypothesis version or seed reach.
# ================================================================================================


def edge_examples(kind: Any, dtype: Any = np.float64, limits: SizeLimits | None = None, seed: int = 0) -> list[Case]:
    """One case per kind with every size just past a common SIMD / tile width — D = 17, H = 17, B = 9
    (repeated, unsorted task ids), T == R = 5 for MPT — shrunk to fit ``limits``; values from
    ``numpy.random.default_rng(seed)`` as ``seeded_arrays`` draws them."""
    kind, limits, dtype = Kind.parse(kind), limits or SizeLimits(), np.dtype(dtype)
    rng = np.random.default_rng(seed)
    uniform = lambda shape, bound: rng.uniform(-bound, bound, shape).astype(dtype)  # noqa: E731
    D, H, T, B = (min(s, limits.max_dim) for s in (17, 17, 5, 9))
    B = min(B, limits.max_batch)
    if kind == Kind.MPT:
        K, R = min(3, limits.max_tasks), T
        B = max(1, min(B, limits.max_work // (T * D * R)))
        config = MultitaskPromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D,
                                             num_tasks=K, num_ranks=R)
        params = {"prefix_task_cols": uniform((K, T, R), MAX_ABS), "prefix_task_rows": uniform((K, R, D), MAX_ABS),
                  "embedding.weight": uniform((T, D), MAX_ABS)}
        inputs = {"indices": rng.integers(0, T, (B, T)), "task_ids": np.arange(B)[::-1] % K}
        return [Case(config, params, inputs, uniform((B, T, D), MAX_ABS))]
    if kind == Kind.PROMPT_EMBEDDING:
        B = max(1, min(B, limits.max_work // (T * D)))
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D)
        return [Case(config, {"embedding.weight": uniform((T, D), MAX_ABS)}, {"indices": rng.integers(0, T, (B, T))},
                     uniform((B, T, D), MAX_ABS))]
    lstm = kind == Kind.LSTM_ENCODER
    L = min(2, limits.max_layers) if lstm else 2
    if lstm:
        D = min(D, 9)  # the LSTM's reference and bound loop over time in Python: keep the case quick
        T = max(1, min(T, limits.max_steps // L))
    work = T * H * (D + H) * (L if lstm else 1)
    B = max(1, min(B, limits.max_work // work))
    config = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=T, token_dim=D, encoder_hidden_size=H,
                                 encoder_reparameterization_type="LSTM" if lstm else "MLP", encoder_num_layers=L)
    params = {key: uniform(shape, ENCODER_MAX_ABS / (np.sqrt(shape[1]) if len(shape) == 2 and key != "embedding.weight"
                                                     else 1.0))
              for key, shape in encoder_param_shapes(config).items()}
    return [Case(config, params, {"indices": rng.integers(0, T, (B, T))}, uniform((B, T, D), MAX_ABS))]
