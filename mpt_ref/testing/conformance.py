"""``assert_conforms``: a hypothesis-driven differential check of any implementation against mpt-ref.

    from mpt_ref.testing.conformance import assert_conforms

    def my_forward(params, indices, task_ids):          # params: PEFT key -> ndarray
        return my_port.mpt(params, indices, task_ids)   # -> (B, T, D)

    def test_my_port_conforms():
        assert_conforms(my_forward, module="mpt")       # add backward=... to check gradients too

Hypothesis draws configs (S = 2, K = 1, R > D, L = 1..3 included), parameters, inputs and an upstream
gradient, runs the reference and your callables, and fails with the shrunk minimal case.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import Phase, given, note, settings

from mpt_ref.modules.kind import Kind
from mpt_ref.modules.multitask import MultitaskPromptEmbedding
from mpt_ref.modules.prompt_embedding import PromptEmbedding
from mpt_ref.modules.prompt_encoder import PromptEncoder
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import VECTORS, Tol

Forward = Callable[..., np.ndarray]               # (params, **inputs) -> output (B, T, D)
Backward = Callable[..., dict[str, np.ndarray]]   # (params, grad_output, **inputs) -> grads

CASE_STRATEGIES = {
    Kind.PROMPT_EMBEDDING: (hs.prompt_embedding_cases, PromptEmbedding),
    Kind.MPT: (hs.mpt_cases, MultitaskPromptEmbedding),
    Kind.MLP_ENCODER: (hs.mlp_encoder_cases, PromptEncoder),
    Kind.LSTM_ENCODER: (hs.lstm_encoder_cases, PromptEncoder),
}


def reference_module(module: str, case: hs.Case, dtype: Any) -> Any:
    """The mpt-ref module of kind ``module`` holding ``case.params`` (eval mode for encoders)."""
    cls = CASE_STRATEGIES[Kind.parse(module)][1]
    ref = cls(case.config, dtype=dtype)
    ref.load_state_dict(case.params)
    return ref.eval() if isinstance(ref, PromptEncoder) else ref


def assert_conforms(
    forward: Forward,
    *,
    module: str,
    backward: Backward | None = None,
    dtype: Any = np.float64,
    tol: Tol | None = None,
    max_examples: int = 50,
    shrink: bool = True,
) -> None:
    """Assert ``forward`` (and ``backward``) agree with mpt-ref on generated cases of ``module``.

    module: "prompt_embedding", "mpt", "mlp_encoder" or "lstm_encoder" (encoders in eval mode).
    forward(params, indices[, task_ids]) -> output; backward(params, grad_output, indices[, task_ids])
    -> {PEFT key: gradient of sum(output * grad_output)}. params are copies: mutating them is harmless.
    tol defaults to the conformance-vector tolerance for ``dtype`` (mpt_ref.tolerances.VECTORS).
    shrink=False reports the first failing case as found (faster; the minimal case is easier to read).
    """
    module = Kind.parse(module)
    dtype = np.dtype(dtype)
    tol = tol or VECTORS[dtype.name]
    strategy = CASE_STRATEGIES[module][0](dtype=dtype)

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])

    @settings(max_examples=max_examples, deadline=None, database=None, phases=phases)
    @given(strategy)
    def check(case: hs.Case) -> None:
        note(f"config={case.config.to_dict()}")
        ref = reference_module(module, case, dtype)
        inputs = {k: v for k, v in case.inputs.items() if k in ("indices", "task_ids")}
        copy = lambda: {k: v.copy() for k, v in case.params.items()}  # noqa: E731
        assert_close(f"{module} output", np.asarray(forward(copy(), **inputs)), ref.forward(**inputs), tol)
        if backward is not None:
            want = ref.backward(case.dout, **inputs)
            got = backward(copy(), case.dout.copy(), **inputs)
            missing = sorted(set(want) - set(got))
            assert not missing, f"{module} backward: gradients missing for {missing}"
            for key in want:
                assert_close(f"{module} grad {key}", np.asarray(got[key]), want[key], tol)

    check()
