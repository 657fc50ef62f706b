"""A differential fuzz of the checkpoint readers against the reference parsers (the safetensors
library, ``torch.load(weights_only=True)``), in a subprocess under a memory cap, with a poisoning canary
(a legitimate load after every hostile one). Marked ``peft``: it needs torch (the PEFT CI job).

Allowed outcomes: accepted-same, refused-both, and refused-mpt-only for a reason spec/checkpoints.md names.
Never allowed: accepted-different, accepted-mpt-only, escaped (an exception outside CheckpointError or a
5 s timeout), poisoned. MPT_REF_FUZZ_FILES / MPT_REF_FUZZ_SECONDS scale the run; the counts are printed
and, with MPT_REF_FUZZ_REPORT=path, written as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
NEVER = ("accepted-different", "accepted-mpt-only", "escaped", "poisoned")


@pytest.mark.peft
@pytest.mark.parametrize("seed", [0, 1])
def test_differential_fuzz_against_the_reference_parsers(seed, capsys):
    pytest.importorskip("torch")
    files = int(os.environ.get("MPT_REF_FUZZ_FILES", "51000"))
    seconds = float(os.environ.get("MPT_REF_FUZZ_SECONDS", "240"))
    proc = subprocess.run(
        [sys.executable, str(HERE / "_differential_worker.py"), "--seed", str(seed), "--max-files", str(files),
         "--seconds", str(seconds), "--memory-gib", "4"],
        capture_output=True, text=True, timeout=seconds + 60, cwd=HERE.parent, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\ndifferential fuzz seed {seed}: {report['files']} files in {report['seconds']} s: "
              f"{json.dumps(report['counts'])}")
    if os.environ.get("MPT_REF_FUZZ_REPORT"):
        Path(os.environ["MPT_REF_FUZZ_REPORT"]).with_suffix(f".seed{seed}.json").write_text(json.dumps(report, indent=2))
    bad = {fmt: {cls: n for cls, n in counts.items() if cls in NEVER or "UNDOCUMENTED" in cls}
           for fmt, counts in report["counts"].items()}
    assert not any(bad.values()), (bad, report["examples"])
    assert report["files"] >= min(files, 5000)  # 2 x 51,000 = 102,000 files unless a slow machine hits the time cap
    assert sum(report["counts"]["torch"].values()) and sum(report["counts"]["safetensors"].values())
