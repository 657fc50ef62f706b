"""Every layer that differs by module kind keeps one table keyed by ``Kind``; adding a kind is one entry
per table. This fails, naming the table and the kinds it lacks, when a table misses a kind (or holds
something that is not a kind)."""

from __future__ import annotations

import importlib

import pytest

from mpt_ref.kind import Kind

# (module, table name): what the table holds per kind
TABLES = [
    ("mpt_ref.kind", "TAKES_TASK_IDS"),              # the forward's inputs (indices, or indices and task ids)
    ("mpt_ref.core.ops", "OPS"),                     # the plain reference's forward / backward
    ("mpt_ref.kernels.ops", "KERNEL_OPS"),           # the fast paths' forward / backward
    ("mpt_ref.judge.error_bound", "BOUNDS"),         # the error model's bounds
    ("mpt_ref.judge.exact", "EXACT"),                # the exact evaluator of the golden vectors
    ("onnx_export.exporter", "TASK_IDS_INPUT"),      # the exported graph's inputs
    ("onnx_export._faithful", "BUILDERS"),           # the faithful ONNX graph
    ("onnx_export._folded", "BUILDERS"),             # the folded ONNX graph
    ("onnx_export._folded", "ANY_ROWS_BUILDERS"),    # the folded-any ONNX graph
    ("onnx_export.reference", "NAN_POLICY"),         # the ONNX oracle's NaN policy
    ("mpt_ref.testing.strategies", "CASES"),         # hypothesis strategies
    ("mpt_ref.testing.strategies", "EDGE_CASES"),    # fixed edge examples of assert_conforms
    ("mpt_ref.testing.engine", "STRATEGIES"),         # the cases conform and assert_conforms draw
    ("mpt_ref.conformance.cases", "MODULE_CLASSES"),  # the class a vector case builds
    ("mpt_ref.interop.build", "DEFAULT_CONFIGS"),    # the CLI's --kind choices (mpt-ref export)
]


@pytest.mark.parametrize("module, name", TABLES, ids=[f"{m}.{n}" for m, n in TABLES])
def test_table_has_one_entry_per_kind(module, name):
    table = getattr(importlib.import_module(module), name)
    missing = [k.value for k in Kind if k not in table]
    extra = [k for k in table if not isinstance(k, Kind)]
    assert not missing and not extra, f"{module}.{name}: missing kinds {missing}, keys that are not a Kind {extra}"


def test_every_kind_has_golden_vector_cases():
    from mpt_ref.conformance.cases import CASES

    missing = [k.value for k in Kind if not any(case.module == k for case in CASES)]
    assert not missing, f"mpt_ref.conformance.cases.CASES: no vector case of kinds {missing}"


def test_kind_moved_to_the_foundation_keeps_its_old_path():
    from mpt_ref.kind import Kind as old

    assert old is Kind
