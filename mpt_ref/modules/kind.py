"""Moved to mpt_ref.kind (the foundation layer); this old path re-exports it."""

from mpt_ref.kind import Kind

__all__ = ["Kind"]
