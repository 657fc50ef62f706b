"""Every comparison tolerance in the project, named, each with its reason. Nothing else holds numbers.

A check passes when |got - want| <= atol + rtol * |want| elementwise (numpy.allclose).
"""

from __future__ import annotations

from typing import NamedTuple


class Tol(NamedTuple):
    rtol: float
    atol: float
    reason: str


# Central differences of a function that is linear in each single parameter entry (embedding, MPT,
# the last Linear): truncation error is zero, what remains is rounding, ~eps*|L|/h with h=1e-6.
GRADCHECK_F64 = Tol(1e-6, 1e-8, "float64 central differences, h=1e-6: rounding ~1e-10 relative")

# Central differences through tanh/sigmoid/ReLU (encoders): truncation O(h^2 f''') ~ 1e-12 plus
# rounding; kinks of ReLU are avoided by the strategies rather than by widening this.
GRADCHECK_NONLINEAR_F64 = Tol(1e-5, 1e-7, "float64 central differences through smooth nonlinearities")

# Same math, same dtype, different association order (grouped-by-task vs per-row, batch subsets).
REORDER_F64 = Tol(1e-12, 1e-14, "float64, same operations in another order: a few ulp")
REORDER_F32 = Tol(1e-5, 1e-6, "float32, same operations in another order: a few ulp of ~1e-7")

# PEFT / torch autograd in float64 against the NumPy reference (issue: ~1e-12).
PEFT_F64 = Tol(1e-12, 1e-12, "float64 torch vs NumPy: different BLAS kernels, a few ulp")
# PEFT in float32 (its native dtype) against the float32 reference: matmul blocking differs.
PEFT_F32 = Tol(1e-5, 1e-6, "float32 torch vs NumPy matmul: different summation order")

# The spec's hand-worked LSTM example prints every number to 10 significant digits.
HAND_WORKED_10_DIGITS = Tol(1e-9, 1e-12, "spec example numbers printed to 10 significant digits")

# Conformance vectors: what another implementation must reach against spec/vectors, per dtype. Stamped
# into each case.json so ports need none of our code. Cases are tiny (T <= 4, D <= 6, L <= 3), so
# error growth through sums and recurrences is a few ulp times the number of terms.
VECTORS = {
    "float64": Tol(1e-10, 1e-12, "float64 port: other summation order / BLAS / libm, tiny cases"),
    "float32": Tol(1e-5, 1e-6, "float32 port: ~100 ulp for reordered sums and float32 libm tanh/exp"),
}
