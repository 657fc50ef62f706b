"""Import paths of modules that moved, kept working: ``alias`` makes the old name the new module itself
(same object, so a monkeypatch or ``set_threads`` through either name is seen through both).

A shim at the old path calls it by name at import time, so the old path never appears as an import
edge of its package (a shim under core/ of a module that moved to kernels/ would otherwise point up).
"""

from __future__ import annotations

import importlib
import sys


def alias(old: str, new: str) -> None:
    """Make ``import old`` give the module ``new`` (called from the shim module ``old`` itself)."""
    sys.modules[old] = importlib.import_module(new)
