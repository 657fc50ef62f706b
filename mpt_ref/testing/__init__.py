"""Public testing helpers: hypothesis strategies and assertion helpers other projects can import.

    from mpt_ref.testing import strategies as hs
    from mpt_ref.testing.assertions import assert_close

Needs the ``test`` extra (hypothesis).
"""
