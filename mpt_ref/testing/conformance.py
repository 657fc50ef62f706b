"""``assert_conforms``: a hypothesis-driven differential check of any implementation against mpt-ref.

    from mpt_ref.testing.conformance import assert_conforms

    def my_forward(params, indices, task_ids, config):          # params: PEFT key -> ndarray
        return my_port.mpt(params, indices, task_ids)           # -> (B, T, D)

    def my_backward(params, dout, indices, task_ids, config):   # -> {PEFT key: d sum(out * dout) / d param}
        return my_port.mpt_grads(params, dout, indices, task_ids)

    def test_my_port_conforms():
        assert_conforms(my_forward, my_backward, module="mpt", dtype=np.float32)

Calling convention (positional, config last), per module:

    prompt_embedding  forward(params, indices, config)
    mpt               forward(params, indices, task_ids, config)
    mlp_encoder       forward(params, indices, dropout_masks, config)   dropout_masks is always None
    lstm_encoder      forward(params, indices, dropout_masks, config)   None (eval), or L−1 boolean keep
                                                                        masks (B, T, 2H): train mode,
                                                                        kept values × 1/(1 − p)
    backward(params, dout, <the same inputs>, config) -> {PEFT key: gradient}

params hold the case's arrays in ``dtype`` (copies: mutating them is harmless); indices (B, T) and
task_ids (B,) or (1,) are int64; ``config`` is the PEFT-style config (``num_virtual_tokens``,
``token_dim``, ``total_virtual_tokens``, ``num_tasks``, ``num_ranks``, ``encoder_hidden_size``,
``encoder_num_layers``, ``encoder_dropout`` = p, ``to_dict()``), so no size has to be guessed from shapes.

Each case is judged against the float64 reference, every entry within its own error bound for a
correct port in ``dtype`` (spec/tolerances.md): the output must have shape (B, T, D) and dtype
``dtype``, the gradients exactly the parameters' keys (none missing, none extra) with their shapes and
dtype. A failing case raises one AssertionError listing every failing tensor, the parameters nearest the
input first (a bug there shows in everything downstream); hypothesis prints the shrunk case once, as
shapes and small integer inputs.

Sizes are drawn around kernel vector/tile widths (``strategies.EDGE_SIZES``: 1–9, 15–17, 31–33, 63–65)
for D, H, T, R and B within ``limits`` (``strategies.SizeLimits``), with T == R, R > D, K = 1, repeated
and unsorted task ids, S = 2, L = 1..3, and (LSTM) train mode with explicit dropout masks.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import Phase, example, given
from hypothesis import seed as hseed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mpt_ref.modules.bounds import (
    Expected,
    TensorCheck,
    check_tensor,
    expected,
    rounding_for,
)
from mpt_ref.modules.kind import Kind
from mpt_ref.testing import strategies as hs
from mpt_ref.tolerances import Rounding

Forward = Callable[..., np.ndarray]              # (params, *inputs, config) -> output (B, T, D)
Backward = Callable[..., dict[str, np.ndarray]]  # (params, dout, *inputs, config) -> grads


def case_strategy(module: Any, dtype: Any = np.float64, limits: hs.SizeLimits | None = None,
                  dropout: bool = True) -> st.SearchStrategy[hs.Case]:
    """The cases ``assert_conforms`` draws for ``module`` (a Kind or its name)."""
    kind = Kind.parse(module)
    limits = limits or hs.SizeLimits()
    if kind == Kind.PROMPT_EMBEDDING:
        return hs.prompt_embedding_cases(dtype=dtype, limits=limits)
    if kind == Kind.MPT:
        return hs.mpt_cases(dtype=dtype, limits=limits)
    if kind == Kind.MLP_ENCODER:
        return hs.mlp_encoder_cases(dtype=dtype, limits=limits)
    eval_cases = hs.lstm_encoder_cases(dtype=dtype, limits=limits)
    return eval_cases | hs.lstm_encoder_cases(dtype=dtype, limits=limits, dropout=True) if dropout else eval_cases


def call_inputs(kind: Kind, case: hs.Case) -> list[Any]:
    """The positional inputs after params (forward) or after dout (backward), before config."""
    idx = case.inputs["indices"].copy()
    if kind == Kind.MPT:
        return [idx, case.inputs["task_ids"].copy()]
    if kind.is_encoder:
        masks = case.inputs.get("dropout_masks")
        return [idx, None if not masks else [m.copy() for m in masks]]
    return [idx]


def dropout_scales(case: hs.Case) -> list[np.ndarray] | None:
    """The masks as the reference applies them: 0 or 1/(1 − p)."""
    masks = case.inputs.get("dropout_masks")
    if not masks:
        return None
    p = case.config.encoder_dropout
    return [m.astype(np.float64) / (1 - p) for m in masks]


def _nearest_input_first(keys: list[str]) -> list[str]:
    """embedding first, then the LSTM by layer, then the head by layer, then MPT's factors."""
    def rank(key: str) -> tuple[int, str]:
        if key == "embedding.weight":
            return (0, "")
        if key.startswith("lstm_head."):
            layer = key.rsplit("_l", 1)[1].split("_")[0]
            return (1 + int(layer), key)
        if key.startswith("mlp_head."):
            return (100 + int(key.split(".")[1]), key)
        return (200, key)
    return sorted(keys, key=rank)


def case_expected(kind: Kind, case: hs.Case, dtype: np.dtype, rounding: Rounding | None = None,
                  gradients: bool = True) -> Expected:
    """The reference and error bounds of one case (modules.bounds.expected)."""
    return expected(kind, case.params, case.inputs, case.dout if gradients else None, dtype,
                    dropout_scales=dropout_scales(case), rounding=rounding)


def check_case(kind: Kind, case: hs.Case, forward: Forward, backward: Backward | None, dtype: np.dtype,
               rounding: Rounding | None = None, ex: Expected | None = None) -> list:
    """Every TensorCheck of one case (output first, then gradients nearest the input first). ex: the
    case's ``case_expected`` when already computed (several ports judged on one case)."""
    ex = ex or case_expected(kind, case, dtype, rounding, backward is not None)
    copy = lambda: {k: v.copy() for k, v in case.params.items()}  # noqa: E731
    checks = [check_tensor("case", "output", forward(copy(), *call_inputs(kind, case), case.config),
                           ex.output, ex.output_bound, dtype=dtype)]
    if backward is None:
        return checks
    got = backward(copy(), case.dout.copy(), *call_inputs(kind, case), case.config)
    if not isinstance(got, dict):
        return checks + [TensorCheck.failed("case", "gradients",
                                            f"backward returned {type(got).__name__}, expected a dict of PEFT keys")]
    extra = sorted(set(got) - set(ex.grads))
    if extra:
        checks.append(TensorCheck.failed("case", "gradients", f"unexpected keys {extra} (not parameters)"))
    for key in _nearest_input_first(list(ex.grads)):
        if key not in got:
            checks.append(TensorCheck.failed("case", f"grad {key}", "missing"))
            continue
        checks.append(check_tensor("case", f"grad {key}", got[key], ex.grads[key], ex.grad_bounds[key], dtype=dtype))
    return checks


def assert_conforms(
    forward: Forward,
    backward: Backward | None = None,
    *,
    module: str,
    dtype: Any = np.float64,
    settings: hsettings | None = None,
    limits: hs.SizeLimits | None = None,
    dropout: bool = True,
    seed: int | None = None,
    rounding: Rounding | None = None,
    max_examples: int | None = None,
    shrink: bool | None = None,
) -> None:
    """Assert ``forward`` (and ``backward``) agree with mpt-ref on generated cases of ``module``.

    module: "prompt_embedding", "mpt", "mlp_encoder" or "lstm_encoder" (a ``Kind``). Calling convention:
    module doc. dtype: the port's dtype (float64, float32, or float16 for float16 storage with float32
    accumulation); params, dout and the expected output dtype follow it.
    Besides the drawn cases, the fixed ``strategies.edge_examples`` (every size just past a common vector /
    tile width) always run first, so a bug that only appears at such sizes is caught whatever a hypothesis
    version or seed draws.
    settings: hypothesis settings to run under (default: the active profile, e.g. your conftest's);
    max_examples / shrink override just that (shrink=False reports the first failing case as found).
    limits: the sizes drawn (``strategies.SizeLimits``). dropout: also draw LSTM train-mode cases with
    explicit dropout masks. seed: a fixed hypothesis seed. rounding: another error model than the one of
    ``dtype`` (``mpt_ref.tolerances.ROUNDING``).
    """
    kind = Kind.parse(module)
    dtype = np.dtype(dtype)
    rounding_for(dtype)  # an unsupported dtype fails here, not inside hypothesis
    base = settings if settings is not None else hsettings()
    overrides: dict[str, Any] = {"deadline": None}
    if max_examples is not None:
        overrides["max_examples"] = max_examples
    if shrink is not None:
        overrides["phases"] = [p for p in base.phases if p != Phase.shrink] + ([Phase.shrink] if shrink else [])
    run_settings = hsettings(base, **overrides)

    def check(case: hs.Case) -> None:
        __tracebackhide__ = True
        failed = [c for c in check_case(kind, case, forward, backward, dtype, rounding) if not c.ok]
        if failed:
            raise AssertionError(
                f"{kind.value} port disagrees with mpt-ref ({dtype.name}, error model: spec/tolerances.md) "
                f"in {len(failed)} tensor(s), nearest the input first:\n  "
                + "\n  ".join(c.describe() for c in failed))

    test = given(case_strategy(kind, dtype, limits, dropout))(check)
    for case in hs.edge_examples(kind, dtype, limits):  # always run: sizes past every vector / tile width
        test = example(case)(test)
    test = run_settings(test)
    if seed is not None:
        test = hseed(seed)(test)
    test()
