"""The judge: what counts as conforming, in one place.

- ``error_bound``: the error model — per-element rounding bounds of a correct port (spec/tolerances.md);
- ``bounds``: the judgment of one case: the float64 reference (mpt_ref.core) and its bounds
  (``expected``), and the comparison of a candidate's tensor with them (``check_tensor`` ->
  ``TensorCheck``, the report row);
- ``exact``: the golden vectors' outputs and gradients, the same bits on every machine.

The numbers the model is built from (unit roundoffs, slack) are in mpt_ref/tolerances.py.
"""
