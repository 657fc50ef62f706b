"""Moved to mpt_ref.kernels.encoder (the fast paths' layer); this old path gives that module itself."""

from mpt_ref._moved import alias

alias(__name__, "mpt_ref.kernels.encoder")
