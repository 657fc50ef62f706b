"""The error contract (mpt_ref/conformance/errors.py, written to spec/vectors/errors.json): every case
raises its mpt-ref class, which derives from the builtin a port should raise, with mpt-ref's message."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import pytest

from mpt_ref.conformance.errors import ERROR_CASES, check_error_case

VECTORS = Path(__file__).resolve().parents[1] / "spec" / "vectors"


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["name"] for c in ERROR_CASES])
def test_each_case_raises_its_class_builtin_and_message(case):
    exc = check_error_case(case)
    assert type(exc).__name__ == case["error"], f"{case['name']}: raised {exc!r}"
    assert isinstance(exc, getattr(builtins, case["builtin"]))
    assert re.search(case["message"], str(exc)), f"{case['name']}: message {str(exc)!r} !~ {case['message']!r}"


def test_case_names_are_unique():
    names = [c["name"] for c in ERROR_CASES]
    assert len(names) == len(set(names))


def test_committed_error_contract_is_current():
    on_disk = json.loads((VECTORS / "errors.json").read_text())
    assert on_disk["cases"] == json.loads(json.dumps(list(ERROR_CASES)))
