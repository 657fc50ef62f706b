"""Reports of a list of ``TensorCheck`` rows: a text table, JSON, and JUnit XML for CI systems."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Iterable
from xml.etree import ElementTree as ET

from mpt_ref.io.atomic import atomic_write_bytes
from mpt_ref.judge.bounds import TensorCheck


def _num(x: float, fmt: str = ".3g") -> str:
    return "-" if not math.isfinite(x) else format(x, fmt)


def format_table(checks: Iterable[TensorCheck], *, provider_column: bool = False) -> str:
    """One line per tensor: max |diff|, max |diff|/bound (<= 1 conforms), verdict."""
    checks = list(checks)
    head = f"{'case':<30} {'tensor':<36} " + (f"{'provider':<14} " if provider_column else "")
    lines = [head + f"{'max |diff|':>10} {'/bound':>8}  verdict"]
    for c in checks:
        verdict = "OK" if c.ok else "FAIL" + (f" ({c.note})" if c.note else "")
        if not c.ok and c.bad:
            verdict += f" {c.bad}/{c.size} entries, worst {c.worst}: got {c.got:.9g}, want {c.want:.9g}, bound {c.bound:.3g}"
        prov = f"{c.provider:<14} " if provider_column else ""
        lines.append(f"{c.case:<30} {c.tensor:<36} {prov}{_num(c.max_abs):>10} {_num(c.ratio, '.2g'):>8}  {verdict}")
    return "\n".join(lines)


def summary_line(checks: list[TensorCheck]) -> str:
    failed = sum(not c.ok for c in checks)
    return f"{len(checks) - failed}/{len(checks)} tensors conform" + (f", {failed} FAILED" if failed else "")


def to_json(checks: list[TensorCheck], verdict: str, **meta: object) -> bytes:
    ok = bool(checks) and all(c.ok for c in checks)
    body = {"verdict": "PASS" if ok else "FAIL", "summary": verdict, "ok": ok, **meta,
            "checks": [c.to_dict() for c in checks]}
    return (json.dumps(body, indent=2) + "\n").encode()


def to_junit_xml(checks: list[TensorCheck], suite: str) -> bytes:
    """One testsuite, one testcase per tensor (classname = case), a <failure> for each that fails."""
    failures = sum(not c.ok for c in checks)
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0")
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=c.case, name=c.tensor + (f" [{c.provider}]" if c.provider else ""))
        if not c.ok:
            ET.SubElement(tc, "failure", message=c.describe()).text = c.describe()
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def write_reports(checks: list[TensorCheck], verdict: str, *, json_path: str | None, junit_path: str | None,
                  suite: str, **meta: object) -> None:
    if json_path == "-":  # stdout (the CLI then prints its table to stderr)
        sys.stdout.write(to_json(checks, verdict, **meta).decode())
    elif json_path:  # the CLI has refused an existing file without --force before any work
        atomic_write_bytes(Path(json_path), to_json(checks, verdict, **meta), overwrite=True)
    if junit_path:
        atomic_write_bytes(Path(junit_path), to_junit_xml(checks, suite), overwrite=True)
