"""The fast paths' table, one entry per Kind, under mpt_ref.core.ops's signature (and built by its
``op_table``): what tests/test_kernels.py holds against ``mpt_ref.core.ops.OPS`` kind by kind."""

from __future__ import annotations

from mpt_ref.core.ops import Op, op_table
from mpt_ref.kernels import embedding, encoder, mpt
from mpt_ref.kind import Kind

KERNEL_OPS: dict[Kind, Op] = op_table(embedding, mpt, encoder)
