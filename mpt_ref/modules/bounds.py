"""Moved to mpt_ref.judge.bounds (the judge: what counts as conforming); this old path gives that module itself."""

from mpt_ref._moved import alias

alias(__name__, "mpt_ref.judge.bounds")
