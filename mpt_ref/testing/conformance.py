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

Each case is run twice (the two results must be the same bits: a port that keeps state between calls
or draws random dropout in eval mode is reported as such) and judged against the float64 reference,
every entry within its own error bound for a correct port in ``dtype`` (spec/tolerances.md): the
output must have shape (B, T, D) and dtype ``dtype``, the gradients exactly the parameters' keys (none
missing, none extra) with their shapes and dtype. Torch tensors are accepted (detached, copied to the
CPU). A failing case raises one short AssertionError: every failing tensor of the *shrunk* case, the
parameters nearest the input first (a bug there shows in everything downstream), the precision class
that judged, the minimal case as shapes and small integer inputs; hypothesis' reproduction after it.

The engine is mpt_ref.testing.engine, the same that runs ``mpt-ref conform --exec`` on ports in any
language.

Sizes are drawn around kernel vector/tile widths (``strategies.EDGE_SIZES``: 1–9, 15–17, 31–33, 63–65)
for D, H, T, R and B within ``limits`` (``strategies.SizeLimits``), with T == R, R > D, K = 1, repeated
and unsorted task ids, S = 2, L = 1..3, encoders in eval mode with encoder_dropout 0 or > 0 (a port
left in train mode is caught), and (LSTM) train mode with explicit dropout masks.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from hypothesis import settings as hsettings

from mpt_ref.modules.bounds import Expected
from mpt_ref.kind import Kind
from mpt_ref.testing import engine
from mpt_ref.testing import strategies as hs
from mpt_ref.testing.engine import call_inputs, case_expected, case_strategy, dropout_scales  # noqa: F401
from mpt_ref.tolerances import Rounding

Forward = Callable[..., np.ndarray]              # (params, *inputs, config) -> output (B, T, D)
Backward = Callable[..., dict[str, np.ndarray]]  # (params, dout, *inputs, config) -> grads


def check_case(kind: Kind, case: hs.Case, forward: Forward, backward: Backward | None, dtype: np.dtype,
               rounding: Rounding | None = None, ex: Expected | None = None, repeat: bool = False) -> list:
    """Every TensorCheck of one case (output first, then gradients nearest the input first). ex: the
    case's ``case_expected`` when already computed (several ports judged on one case)."""
    pc = engine.precision_class(dtype, rounding=rounding)
    return engine.run_case("case", Kind.parse(kind), case, engine.callable_port(forward, backward), pc,
                           gradients=backward is not None, repeat=repeat, ex=ex)


def assert_conforms(
    forward: Forward,
    backward: Backward | None = None,
    *,
    module: str,
    dtype: Any = np.float64,
    accumulation: str | None = None,
    settings: hsettings | None = None,
    limits: hs.SizeLimits | None = None,
    dropout: bool = True,
    seed: int | None = None,
    rounding: Rounding | None = None,
    max_examples: int | None = None,
    shrink: bool | None = None,
    repeat: bool = True,
) -> None:
    """Assert ``forward`` (and ``backward``) agree with mpt-ref on generated cases of ``module``.

    module: "prompt_embedding", "mpt", "mlp_encoder" or "lstm_encoder" (a ``Kind``). Calling convention:
    module doc. dtype: the port's dtype, "float64", "float32" or "float16" (any other is an InputError
    naming these); params, dout and the expected output dtype follow it. accumulation: float16 only,
    "float32" (default: float16 storage, float32 sums, as GPU and MLAS half kernels) or "float16" (every
    partial sum rounded to float16, as a framework's own float16 CPU reductions).
    Besides the drawn cases, the fixed ``strategies.edge_examples`` (every size just past a common vector /
    tile width) always run first, so a bug that only appears at such sizes is caught whatever a hypothesis
    version or seed draws.
    settings: hypothesis settings to run under (default: the active profile, e.g. your conftest's);
    max_examples / shrink override just that (shrink=False reports the first failing case as found).
    limits: the sizes drawn (``strategies.SizeLimits``). dropout: also draw LSTM train-mode cases with
    explicit dropout masks. seed: a fixed hypothesis seed. rounding: another error model than the one of
    ``dtype`` (``mpt_ref.tolerances.ROUNDING``). repeat: call the port twice per case and require the same
    bits (False: once).
    """
    __tracebackhide__ = True
    kind = Kind.parse(module)
    pc = engine.precision_class(dtype, accumulation, rounding)  # a bad dtype fails here, not inside hypothesis
    port = engine.callable_port(forward, backward)
    gradients = backward is not None
    outcome = engine.explore(kind, port, pc, settings=settings, limits=limits, dropout=dropout, seed=seed,
                             max_examples=max_examples, shrink=shrink, gradients=gradients, repeat=repeat)
    if outcome.failure is None:
        return
    f = outcome.failure
    hint = "" if rounding is not None else engine.other_class_hint(
        kind, f.case, f.checks, lambda: port(kind, f.case, gradients), pc, gradients)
    message = engine.failure_message(kind, pc, f, hint, outcome.flaky)
    if outcome.reproduction:
        message += "\n\n--- hypothesis reproduction ---\n" + outcome.reproduction
    raise AssertionError(message) from None
