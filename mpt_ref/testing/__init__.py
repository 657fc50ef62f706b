"""Public testing helpers: hypothesis strategies and assertion helpers other projects can import.

    from mpt_ref.testing import strategies as hs
    from mpt_ref.testing.assertions import assert_close

Needs the ``testing`` extra (hypothesis): ``pip install 'mpt-ref[testing]'``.
"""

try:
    import hypothesis as _hypothesis  # noqa: F401
except ModuleNotFoundError as _exc:  # a plain install: say which extra brings it
    raise ModuleNotFoundError(
        "mpt_ref.testing needs hypothesis, which a plain install of mpt-ref does not bring: "
        "pip install 'mpt-ref[testing]'",
        name="hypothesis",
    ) from _exc
