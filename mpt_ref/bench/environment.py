"""What a benchmark's numbers depend on, recorded with them: package versions, threads, CPU model,
load average before and after the run (a loaded machine makes every time slower and noisier)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from mpt_ref._version import __version__

PACKAGES = ("numpy", "onnxruntime", "onnx", "torch", "peft")


def package_version(name: str) -> str | None:
    """The installed distribution's version (None when absent), read without importing the package."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what platform says; else 'unknown')."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def environment(threads: int) -> dict[str, Any]:
    """The snapshot taken before a run (``load_after`` is added when it ends)."""
    return {
        "mpt_ref": __version__,
        **{name: package_version(name) for name in PACKAGES},
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "threads": threads,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": f"{platform.system()} {platform.machine()}",
        "load_before": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def describe(env: dict[str, Any]) -> list[str]:
    """The environment as text lines (the head of the bench's table)."""
    versions = ", ".join(f"{name} {env.get(name) or 'absent'}" for name in ("mpt_ref", *PACKAGES))
    load = lambda key: "/".join(f"{x:.2f}" for x in env[key]) if env.get(key) else "n/a"  # noqa: E731
    return [f"versions: {versions}, {env['python']}".replace("mpt_ref ", "mpt-ref ", 1),
            f"machine: {env['cpu_model']}, {env['cpus']} cpus ({env['machine']}); {env['threads']} threads for "
            f"torch, onnxruntime and mpt-ref",
            f"load average (1/5/15 min): before {load('load_before')}, after {load('load_after')}"
            + ("  (a busy machine: times are slower and noisier)" if _busy(env) else "")]


def _busy(env: dict[str, Any]) -> bool:
    loads = [x[0] for x in (env.get("load_before"), env.get("load_after")) if x]
    return bool(loads) and max(loads) > (env.get("cpus") or 1) * 0.5
