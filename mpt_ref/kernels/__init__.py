"""The fast paths: each op of mpt_ref/core/ again, with the same signatures, tuned for memory and speed
(chunked MPT, id-group scatter-add, distinct-row encoder work, a deterministic thread pool). The
modules use these; the core is the plain statement they are tested against (tests/test_kernels.py).
"""
