"""Properties that every module's backward and forward have, written once for all of them (and for a
port: pass your own callables).

    assert_linear_in_dout   backward(α·a + b) = α·backward(a) + backward(b)        (backward is linear in dout)
    assert_batch_invariant  forward(rows)[b] = forward(rows[b:b+1])[0]             (rows do not interact)

``backward`` maps an upstream gradient (an array shaped like the output) to a dict of gradients, or to one
array; ``forward`` maps a batch (any sliceable first axis) to an output batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from mpt_ref.testing.assertions import assert_close
from mpt_ref.tolerances import LINEARITY_F64, Tol


def _as_dict(grads: Any) -> Mapping[str, np.ndarray]:
    return grads if isinstance(grads, Mapping) else {"grad": np.asarray(grads)}


def assert_linear_in_dout(backward: Callable[[np.ndarray], Any], dout: np.ndarray, other: np.ndarray,
                          alpha: float, tol: Tol = LINEARITY_F64) -> None:
    """backward(α·dout + other) equals α·backward(dout) + backward(other) for every gradient, within ``tol``
    scaled by the size of the two sides (see tolerances.LINEARITY_F64)."""
    combined = _as_dict(backward(alpha * dout + other))
    g1, g2 = _as_dict(backward(dout)), _as_dict(backward(other))
    assert combined.keys() == g1.keys() == g2.keys(), f"gradient keys differ: {sorted(combined)} vs {sorted(g1)}"
    for k in combined:
        scale = np.abs(alpha * g1[k]).max(initial=0) + np.abs(g2[k]).max(initial=0) + 1
        assert_close(k, combined[k], alpha * g1[k] + g2[k], tol._replace(atol=tol.atol * scale))


def assert_batch_invariant(forward: Callable[[slice], np.ndarray], batch: int, tol: Tol | None = None) -> None:
    """``forward(slice(None))`` row b equals ``forward(slice(b, b + 1))[0]``: bit for bit when ``tol`` is
    None, else within ``tol``. ``forward`` receives the slice of the batch to run."""
    out = forward(slice(None))
    for b in range(batch):
        row = forward(slice(b, b + 1))[0]
        if tol is None:
            np.testing.assert_array_equal(row, out[b], err_msg=f"row {b} alone vs in the batch")
        else:
            assert_close(f"out[{b}]", row, out[b], tol)
